"""`envoy-config --offload` through real Envoys: the JWT routes Envoy decides itself (jwt_authn + rbac) give the
same allow/deny and the same upstream identity headers as the sidecar gives them over ext_authz, for one corpus of
valid, expired, early, future-issued, wrong-issuer, wrong-audience, wrong-scope, wrong-algorithm, tampered, forged,
missing and odd-claim tokens; the routes it cannot decide still reach the sidecar, and their CheckRequests show the
offloaded ones never do."""

from __future__ import annotations

import base64
import json
import re
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from sidecar.authorizers.jwt import errors as jwt_errors
from sidecar.config import load_config
from sidecar.harness.envoy import EnvoyPorts
from sidecar.harness.envoy_config import CANONICAL_BEARER, explain, render
from sidecar.runtime import compile_runtime
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.test_jwt_e2e import serving_keys
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, Issuer, rsa_key, unsigned

pytestmark = pytest.mark.e2e

IDENTITY = ("x-user", "x-authz-principal", "x-authz-authorizer", "x-authz-route")


def config_text(issuer_url: str) -> str:
    return textwrap.dedent(
        f"""\
        server: {{watch_config: false}}
        upstream_headers: {{route: x-authz-route}}
        authorizers:
          corp:
            type: jwt
            issuer: "{issuer_url}"
            jwks_uri: "{issuer_url}/jwks.json"
            audiences: [{AUDIENCE}, other-api]
            algorithms: [RS256]
            claim_to_headers: {{sub: x-user}}
            max_token_bytes: 2048
          public: {{type: none}}
          closed: {{type: deny, message: "Closed for now"}}
        rate_limits:
          - {{name: per-ip, key: [ip], window: 60, limit: 1000, routes: ["GET /limited"]}}
        routes:
          - {{match: "GET /orders/{{id}}", authorizer: corp, scopes: [orders.read]}}
          - {{match: "GET /me", authorizer: corp}}
          - {{match: "GET /limited", authorizer: corp}}
          - {{match: "GET /public", authorizer: public}}
          - {{match: "ANY /admin/{{proxy+}}", authorizer: closed}}
        """
    )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Issuer, str, Path]]:
    with serving_keys() as key_server:
        issuer = Issuer(key_server.url, {"rsa": (rsa_key(0), "RS256")})
        key_server.jwks = issuer.jwks()
        text = config_text(key_server.url)
        path = tmp_path / "sidecar.yaml"
        path.write_text(text)
        yield issuer, text, path


def tamper(token: str) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "admin"
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"


def noncanonical(token: str) -> str:
    """`token` with its signature's unused low bits set: the same bytes to a lenient decoder, malformed to ours."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    assert len(token.rsplit(".", 1)[1]) % 4 in (2, 3) and last % 4 == 0, "a signature with unused bits"
    return token[:-1] + alphabet[last + 1]


def tokens(issuer: Issuer) -> list[tuple[str, str | None]]:
    """(what the token is, the Authorization header) for every case."""
    now = time.time()
    forger = Issuer(issuer.url, {"rsa": (rsa_key(5), "RS256")})

    def t(**claims: Any) -> str:
        return issuer.token(issuer.claims(now, **claims))

    good = t()
    cases: list[tuple[str, str | None]] = [
        ("valid", f"Bearer {good}"),
        ("lower-case scheme", f"bearer {good}"),
        ("bare token", good),
        ("missing", None),
        ("other scheme", f"Basic {good}"),
        ("expired", f"Bearer {t(exp=int(now) - 3600)}"),
        ("expired within leeway", f"Bearer {t(exp=int(now) - 30)}"),
        ("nbf a second inside the leeway", f"Bearer {t(nbf=int(now) + 59)}"),
        ("not yet valid", f"Bearer {t(nbf=int(now) + 3600)}"),
        ("nbf within leeway", f"Bearer {t(nbf=int(now) + 30)}"),
        ("issued in the future", f"Bearer {t(iat=int(now) + 3600)}"),
        ("iat within leeway", f"Bearer {t(iat=int(now) + 30)}"),
        ("no iat", f"Bearer {t(iat=None)}"),
        ("scp list, issued in the future", f"Bearer {t(scope=None, scp=['orders.read'], iat=int(now) + 3600)}"),
        ("scp list, no iat", f"Bearer {t(scope=None, scp=['orders.read'], iat=None)}"),
        ("no exp", f"Bearer {t(exp=None)}"),
        ("wrong issuer", f"Bearer {t(iss='https://evil.example')}"),
        ("wrong audience", f"Bearer {t(aud='nobody')}"),
        ("audience list", f"Bearer {t(aud=['nobody', 'other-api'])}"),
        ("client_id instead of aud", f"Bearer {t(aud=None, client_id=AUDIENCE)}"),
        ("neither aud nor client_id", f"Bearer {t(aud=None)}"),
        ("client_id as principal", f"Bearer {t(sub=None, client_id=AUDIENCE)}"),
        ("sub and client_id", f"Bearer {t(client_id='svc-1')}"),  # one principal header: sub's
        ("no sub nor client_id", f"Bearer {t(sub=None)}"),
        ("numeric sub", f"Bearer {t(sub=123)}"),
        ("sub with a control character", f"Bearer {t(sub='a' + chr(1) + 'b')}"),
        ("sub with a trailing space", f"Bearer {t(sub='alice ')}"),
        ("aud of a wrong type", f"Bearer {t(aud=7)}"),
        ("aud list with a number", f"Bearer {t(aud=[AUDIENCE, 5])}"),
        ("scp list with a number", f"Bearer {t(scope=None, scp=['orders.read', 5])}"),
        ("long scp list", f"Bearer {t(scp=[f's{i}' for i in range(15)] + ['orders.read'])}"),
        ("fractional exp", f"Bearer {t(exp=int(now) + 300.5)}"),
        ("exp as a string", f"Bearer {t(exp=str(int(now) + 300))}"),
        ("iat as a string", f"Bearer {t(iat=str(int(now)))}"),
        ("scope list in scp", f"Bearer {t(scope=None, scp=['orders.read'])}"),
        ("scope string in scp", f"Bearer {t(scope=None, scp='a orders.read')}"),
        ("other scopes", f"Bearer {t(scope='orders.write profile')}"),
        ("scope prefix only", f"Bearer {t(scope='orders.readonly')}"),
        ("scope of a wrong type", f"Bearer {t(scope=['orders.read'])}"),
        ("too large", f"Bearer {t(pad='x' * 3000)}"),
        ("tampered", f"Bearer {tamper(good)}"),
        ("forged", f"Bearer {forger.token(forger.claims(now))}"),
        ("PS256 with the RSA key", f"Bearer {issuer.token(issuer.claims(now), alg='PS256')}"),
        ("alg none", "Bearer " + unsigned({"alg": "none", "kid": "rsa"}, issuer.claims(now)) + ""),
        ("garbage", "Bearer not.a.token"),
        ("crit in the header", f"Bearer {issuer.token(issuer.claims(now), crit=['exp'])}"),
        ("jku in the header", f"Bearer {issuer.token(issuer.claims(now), jku='https://evil.example/jwks')}"),
        ("exp beyond 2^53", f"Bearer {t(exp=10**18)}"),
        ("exp 2^53 + 1", f"Bearer {t(exp=2**53 + 1)}"),  # parses to the double 2^53
        ("empty kid", "Bearer " + pyjwt.encode(issuer.claims(now), issuer.keys["rsa"][0], "RS256", {"kid": ""})),
        ("nbf beyond 2^53", f"Bearer {t(nbf=10**18)}"),
        ("non-canonical signature", f"Bearer {noncanonical(good)}"),
    ]
    return cases


TARGETS = ["/orders/7", "/me"]


def outcomes(
    stack: Stack, cases: list[tuple[str, str | None]], refusals: dict[tuple[str, str], tuple[int, str]] | None = None
) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(allowed, upstream identity headers) per (target, case); each refusal's (status, reason) into `refusals`."""
    out: dict[tuple[str, str], tuple[Any, ...]] = {}
    for target in TARGETS:
        for name, header in cases:
            headers = {"authorization": header} if header is not None else {}
            headers["x-user"] = "spoofed"  # a client's own identity header never reaches the upstream
            response = stack.client.get(target, headers=headers)
            allowed = response.status_code == 200
            upstream = response.json()["headers"] if allowed else {}
            out[(target, name)] = (allowed, {k: upstream.get(k) for k in IDENTITY})
            if not allowed and refusals is not None:
                assert response.headers["content-type"] == "application/json", (name, response.text)
                refusals[(target, name)] = (response.status_code, response.json()["reason"])
    return out


SAME_REFUSAL = ("expired", "not yet valid", "forged", "tampered", "wrong issuer", "garbage", "missing")
"""Cases whose refusal jwt_authn tells apart as the sidecar does (status and reason code); the others are refused
by the RBAC condition as 403 AccessDenied (docs/envoy-config.md)."""


def fitted(path: Path) -> Callable[[EnvoyPorts, str], str]:
    runtime = compile_runtime(load_config(path), private_limits=True)
    return lambda ports, template: render(runtime, ports, template, offload=True)


def test_offloaded_routes_decide_as_the_sidecar_does(
    authz_stack: StackFactory, setup: tuple[Issuer, str, Path]
) -> None:
    issuer, text, path = setup
    cases = tokens(issuer)
    sidecar = authz_stack(text)
    told, fitted_told = {}, {}
    by_sidecar = outcomes(sidecar, cases, told)
    offloaded = authz_stack(text, envoy_render=fitted(path))
    checks_before = _checks(offloaded)
    by_envoy = outcomes(offloaded, cases, fitted_told)
    differences = {k: (by_sidecar[k], by_envoy[k]) for k in by_sidecar if by_sidecar[k] != by_envoy[k]}
    assert not differences, json.dumps({f"{t} {n}": v for (t, n), v in differences.items()}, default=str)
    # Only the spellings jwt_authn cannot read as the sidecar does reach it (a lower-case scheme, a bare token,
    # another scheme, no token, non-canonical base64url): every canonical `Bearer` token was decided by Envoy alone.
    odd = [name for name, header in cases if header is None or not re.fullmatch(CANONICAL_BEARER, header)]
    assert set(odd) == {
        "lower-case scheme",
        "bare token",
        "missing",
        "other scheme",
        "non-canonical signature",
        "garbage",
    }
    assert _checks(offloaded) == checks_before + len(odd) * len(TARGETS), "an offloaded route asked the sidecar"
    for key in [(target, name) for target in TARGETS for name in SAME_REFUSAL]:
        assert fitted_told[key] == told[key], (key, told[key], fitted_told[key])
    documented = {v for v in vars(jwt_errors).values() if isinstance(v, str) and v[:1].isupper()} | {"AccessDenied"}
    assert {reason for _, reason in fitted_told.values()} <= documented
    allowed = {k for k, (ok, _) in by_sidecar.items() if ok}
    assert ("/orders/7", "valid") in allowed and ("/orders/7", "other scopes") not in allowed
    assert ("/me", "other scopes") in allowed and ("/me", "expired") not in allowed
    assert by_sidecar[("/me", "valid")][1]["x-authz-route"] == "GET /me"
    _decision_lines_hold(offloaded, len(cases) - len(odd), cases)
    asked = _checks(offloaded)
    # Open and closed routes: Envoy answers as the sidecar does, deny body included.
    for method, target in (("GET", "/public"), ("POST", "/admin/users"), ("GET", "/admin/a/b")):
        spoofed = {"x-authz-principal": "root", "x-user": "root", "authorization": "Bearer x.y.z"}
        answers = [s.client.request(method, target, headers=spoofed) for s in (sidecar, offloaded)]
        shown = [
            (a.status_code, a.headers.get("content-type"), a.text if a.status_code != 200 else "") for a in answers
        ]
        assert shown[0] == shown[1], shown
        if answers[0].status_code == 200:
            upstream = [{k: a.json()["headers"].get(k) for k in IDENTITY} for a in answers]
            assert upstream[0] == upstream[1] and upstream[0]["x-authz-principal"] == "anonymous", upstream
    assert _checks(offloaded) == asked
    # A route Envoy cannot decide still reaches the sidecar.
    assert offloaded.client.get("/limited").status_code == 401
    assert _checks(offloaded) == asked + 1
    # The leeway's edge (60 s), minted as it is sent, so almost always judged within the second it names: refused
    # from exp + leeway on. A jwt_authn clock skew of the whole leeway would let it through for that second.
    for stack in (sidecar, offloaded):
        edge = issuer.token(issuer.claims(time.time(), exp=int(time.time()) - 60))
        assert stack.client.get("/me", headers={"authorization": f"Bearer {edge}"}).status_code == 401


def _decision_lines_hold(stack: Stack, per_target: int, cases: list[tuple[str, str | None]]) -> None:
    """Envoy logs every request it judged, with the decision log's fields, and never a token."""
    deadline = time.monotonic() + 10
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:  # the access log is flushed on Envoy's own timer
        text = stack.envoy.log_path.read_text(errors="replace")
        lines = [json.loads(x) for x in text.splitlines() if x.startswith("{") and '"decided_by":"envoy"' in x]
        if len(lines) >= per_target * len(TARGETS):
            break
        time.sleep(0.05)
    assert len(lines) == per_target * len(TARGETS)
    assert {line["route"] for line in lines} == {"GET /orders/{id}", "GET /me"}
    valid = [line for line in lines if line["status"] == 200 and line["principal"] == "user-123"]
    assert valid and all(line["authorizer"] == "corp" and line["path"] in TARGETS for line in valid)
    assert any(line["reason"] == "Jwt is expired" and line["status"] == 401 for line in lines)
    tokens = [header.split()[-1] for _, header in cases if header and "." in header]
    assert not any(token in text for token in tokens if len(token) > 20), "a token reached the log"


def _checks(stack: Stack) -> float:
    metrics = httpx.get(f"{stack.admin_url}/metrics", timeout=5).text
    return sum(
        float(line.rpartition(" ")[2]) for line in metrics.splitlines() if line.startswith("authz_decisions_total{")
    )


def test_explain_says_why_a_route_stays(setup: tuple[Issuer, str, Path]) -> None:
    _, _, path = setup
    text = explain(compile_runtime(load_config(path), private_limits=True), offload=True)
    assert "decided by Envoy itself (jwt_authn provider corp + rbac) for a 'Bearer <jws>' token" in text
    assert "stays on ext_authz: gates run on this route (rate_limit:per-ip)" in text
    assert "GET /public  path ~ ^/public$  -> decided by Envoy itself (open)" in text
    assert "decided by Envoy itself (closed)" in text


def test_a_token_jwt_authn_cached_is_refused_once_it_expires(
    authz_stack: StackFactory, setup: tuple[Issuer, str, Path], tmp_path: Path
) -> None:
    """jwt_authn's JWT cache answers a token it verified without the clock skew, so the clock skew alone would let
    a cached token through past exp + leeway: the CEL exp rule must hold on every request (leeway 1 s here, so
    the wait is short; it waits for the clock, not for another process)."""
    issuer, text, _ = setup
    text = text.replace("    max_token_bytes: 2048\n", "    max_token_bytes: 2048\n    leeway: 1\n")
    assert "leeway: 1" in text
    path = tmp_path / "leeway.yaml"
    path.write_text(text)
    offloaded = authz_stack(text, envoy_render=fitted(path))
    exp = int(time.time()) + 1
    header = {"authorization": f"Bearer {issuer.token(issuer.claims(time.time(), exp=exp))}"}
    assert offloaded.client.get("/me", headers=header).status_code == 200  # verified, now in jwt_authn's cache
    while time.time() < exp + 1.2:  # bounded: about 3 s
        time.sleep(0.1)
    refused = offloaded.client.get("/me", headers=header)
    # refused by the rbac condition's exp rule (jwt_authn's cache let it by): 403 AccessDenied, where the sidecar
    # says 401 TokenExpired (docs/envoy-config.md)
    assert (refused.status_code, refused.json()["reason"]) == (403, "AccessDenied")
