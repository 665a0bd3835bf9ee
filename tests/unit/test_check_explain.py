"""`authz-sidecar check --explain`: every deny explains itself, stage by stage, in text and in JSON.

Real parts only: the CLI in-process (`sidecar.cli.main`), JWTs signed with `cryptography` keys and verified
through a `jwks_file`, SigV4 requests signed by botocore (its own canonical request and string to sign recorded
as it signs, to compare with what the sidecar computed), real policy files. `--at` fixes the time judged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from sidecar.cli import main
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, ISSUER, Issuer

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z
HOST = "api.example.test"
ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"
ALICE_KEY, ALICE_SECRET = "AKIDALICEEXAMPLE", "alice/K7MDENG+bPxRfiCYEXAMPLEKEY"
BOB_KEY, BOB_SECRET = "AKIDBOBEXAMPLE", "bob/K7MDENG+bPxRfiCYEXAMPLEKEY"
ALICE, BOB = "arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:user/bob"
ORDERS_ONLY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "Orders", "Effect": "Allow", "Action": "execute-api:Invoke", "Resource": f"{ARN}/GET/orders/*"}
    ],
}
PREFIX = len("explain:   ") + 19
"""Where a detail line's text starts in `check`'s text output (the `explain:` column, then the step's indent)."""


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.default()


def policy_document(*statements: dict[str, Any]) -> dict[str, Any]:
    """A policy whose statements all govern execute-api:Invoke."""
    return {"Version": "2012-10-17", "Statement": [{**s, "Action": "execute-api:Invoke"} for s in statements]}


CAROL_KEY, CAROL_TOKEN = "ASIAIOSFODNN7CAROL00", "IQoJb3JpZ2luX2VjECAROLsessionTOKENvalue=="


def write_config(tmp_path: Path, issuer: Issuer, resource_policy: dict[str, Any] | None = None) -> Path:
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks()))
    (tmp_path / "credentials.yaml").write_text(
        json.dumps(
            {
                "credentials": [
                    {
                        "access_key_id": ALICE_KEY,
                        "secret_access_key": ALICE_SECRET,
                        "principal_arn": ALICE,
                        "policies": [ORDERS_ONLY],
                    },
                    {"access_key_id": BOB_KEY, "secret_access_key": BOB_SECRET, "principal_arn": BOB},
                    {
                        "access_key_id": CAROL_KEY,
                        "secret_access_key": ALICE_SECRET,
                        "session_token": CAROL_TOKEN,
                        "principal_arn": "arn:aws:sts::123456789012:assumed-role/ci/carol",
                        "policies": [ORDERS_ONLY],
                    },
                ]
            }
        )
    )
    policy = ""
    if resource_policy is not None:
        (tmp_path / "resource.json").write_text(json.dumps(resource_policy))
        policy = "resource_policy: resource.json\n"
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
            authorizers:
              corp: {{type: jwt, issuer: "{ISSUER}", audiences: [{AUDIENCE}], jwks_file: jwks.json, leeway: 0}}
              iam: {{type: sigv4, credentials: {{file: credentials.yaml}}}}
              open: {{type: none}}
            routes:
              - {{match: "GET /orders/{{id}}", authorizer: corp}}
              - {{match: "GET /admin", authorizer: corp, scopes: [admin, "admin:all"]}}
              - {{match: "ANY /iam/{{proxy+}}", authorizer: iam}}
              - {{match: "GET /public/{{proxy+}}", authorizer: open}}
            """
        )
        + policy
    )
    return config


def check(
    config: Path, raw: str, capsys: pytest.CaptureFixture[str], *extra: str, at: float = T0
) -> tuple[str, dict[str, Any]]:
    """`check --explain` in text and `check --output json` on one request file: (text, JSON)."""
    request = config.parent / "request.req"
    request.write_text(raw)
    args = ["check", "--config", str(config), "--http", str(request), "--at", str(at), *extra]
    code = main([*args, "--explain"])
    text = capsys.readouterr().out
    result: dict[str, Any] = json.loads(_run([*args, "--output", "json", "--explain"], capsys))
    assert code == (0 if result["decision"] == "allow" else 1), text
    return text, result


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    main(args)
    return capsys.readouterr().out


def bearer(path: str, token: str) -> str:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n\r\n"


def step(result: dict[str, Any], stage: str) -> dict[str, Any]:
    found = [s for s in result["explanation"] if s["stage"] == stage]
    assert len(found) == 1, result["explanation"]
    return found[0]


def explain_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("explain:")]


# -- route --------------------------------------------------------------------------------------------------


def test_no_route_names_what_was_judged_and_the_route_keys(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    text, result = check(write_config(tmp_path, issuer), f"HEAD /nope HTTP/1.1\r\nHost: {HOST}\r\n\r\n", capsys)
    assert (result["reason"], result["route"], result["principal"]) == ("MissingAuthenticationToken", "", None)
    assert result["explanation"] == [
        {
            "stage": "route",
            "outcome": "deny",
            "summary": "MissingAuthenticationToken: no route key matches GET /nope (API Gateway's answer for an "
            "unknown route), and there is no $default route",
            "facts": {
                "method": "GET (sent as HEAD)",
                "path": "/nope",
                "routes": "ANY /iam/{proxy+}, GET /admin, GET /orders/{id}, GET /public/{proxy+}",
            },
            "details": [],
        }
    ]
    assert explain_lines(text) == [
        "explain:   route        deny  MissingAuthenticationToken: no route key matches GET /nope (API Gateway's "
        "answer for an unknown route), and there is no $default route",
        "explain:                      method: GET (sent as HEAD)",
        "explain:                      path: /nope",
        "explain:                      routes: ANY /iam/{proxy+}, GET /admin, GET /orders/{id}, GET /public/{proxy+}",
    ]


def test_no_route_in_a_large_table_lists_twenty_keys_and_counts_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = "".join(f"  - {{match: 'GET /r{n:02d}', authorizer: open}}\n" for n in range(25))
    config = tmp_path / "config.yaml"
    config.write_text("authorizers:\n  open: {type: none}\nroutes:\n" + routes)
    _, result = check(config, "GET /elsewhere HTTP/1.1\r\nHost: h\r\n\r\n", capsys)
    listed = step(result, "route")["facts"]["routes"]
    assert listed.startswith("GET /r00, GET /r01, ") and listed.endswith("GET /r19, ... (5 more)")


def test_requests_refused_before_routing_say_why(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, issuer)
    _, fragment = check(config, f"GET /orders/1#top HTTP/1.1\r\nHost: {HOST}\r\n\r\n", capsys)
    assert (fragment["status"], fragment["reason"]) == (400, "MalformedRequest")
    assert [(s["stage"], s["outcome"]) for s in fragment["explanation"]] == [("route", "deny")]
    assert "the sidecar is never asked" in fragment["explanation"][0]["summary"]
    raw = f"GET /orders/%2e%2e/admin HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    _, ambiguous = check(config, raw, capsys, "--raw-path")
    assert (ambiguous["status"], ambiguous["reason"]) == (400, "MalformedRequest")
    route = step(ambiguous, "route")
    assert route["outcome"] == "deny" and route["summary"].startswith("MalformedRequest: the path is ambiguous")
    assert route["facts"] == {"method": "GET", "path": "/orders/%2e%2e/admin"}


# -- scopes -------------------------------------------------------------------------------------------------


def test_insufficient_scope_shows_the_routes_scopes_and_the_tokens(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    token = issuer.token(issuer.claims(now=T0))
    text, result = check(write_config(tmp_path, issuer), bearer("/admin", token), capsys)
    assert (result["decision"], result["status"], result["reason"]) == ("deny", 403, "InsufficientScope")
    assert result["principal"] == {"kind": "jwt", "id": "user-123"}
    assert [s["stage"] for s in result["explanation"]] == ["route", "authenticate", "scopes"]
    scopes = step(result, "scopes")
    assert scopes["outcome"] == "deny"
    assert scopes["summary"] == "InsufficientScope: the token holds none of the scopes this route requires"
    assert scopes["facts"] == {
        "required_scopes": "admin, admin:all (any one of)",
        "token_scopes": "orders.read, orders.write",
    }
    lines = explain_lines(text)
    assert (
        "explain:   scopes       deny  InsufficientScope: the token holds none of the scopes this route requires"
        in (lines)
    )
    assert "explain:                      required_scopes: admin, admin:all (any one of)" in lines
    assert "explain:                      token_scopes: orders.read, orders.write" in lines
    assert "principal: jwt user-123" in text.splitlines()
    assert token not in text and token not in json.dumps(result)


def test_a_granted_scope_is_named(tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]) -> None:
    token = issuer.token(issuer.claims(now=T0, scope="orders.read admin:all"))
    _, result = check(write_config(tmp_path, issuer), bearer("/admin", token), capsys)
    assert result["decision"] == "allow"
    assert (
        step(result, "scopes")["outcome"] == "pass" and step(result, "scopes")["summary"] == "the token holds admin:all"
    )


# -- authenticate: JWT --------------------------------------------------------------------------------------


def test_expired_token_shows_exp_and_the_time_judged(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    token = issuer.token(issuer.claims(now=T0, exp=T0 + 300))
    text, result = check(write_config(tmp_path, issuer), bearer("/orders/1", token), capsys, at=T0 + 7500)
    assert result["reason"] == "TokenExpired" and result["principal"] is None
    authenticate = step(result, "authenticate")
    assert authenticate == {
        "stage": "authenticate",
        "outcome": "deny",
        "summary": "TokenExpired: the token expired 7200 s (2 h 0 min) before the time judged (leeway 0 s)",
        "facts": {
            "authorizer": "corp (type jwt)",
            "exp": "2027-01-15T08:05:00Z (1800000300)",
            "judged_at": "2027-01-15T10:05:00Z (1800007500)",
            "leeway": "0 s",
        },
        "details": [],
    }
    assert "explain:                      exp: 2027-01-15T08:05:00Z (1800000300)" in explain_lines(text)
    assert token not in text and token.split(".")[2] not in json.dumps(result)


def test_token_not_yet_valid_shows_nbf(tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]) -> None:
    token = issuer.token(issuer.claims(now=T0, nbf=T0 + 600, iat=T0))
    _, result = check(write_config(tmp_path, issuer), bearer("/orders/1", token), capsys, at=T0)
    authenticate = step(result, "authenticate")
    assert authenticate["summary"] == (
        "TokenNotYetValid: the token is not valid yet (nbf): nbf is 600 s (10 min) after the time judged (leeway 0 s)"
    )
    assert authenticate["facts"]["nbf"] == "2027-01-15T08:10:00Z (1800000600)"
    assert authenticate["facts"]["judged_at"] == "2027-01-15T08:00:00Z (1800000000)"


def test_wrong_audience_shows_the_expected_audiences(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    token = issuer.token(issuer.claims(now=T0, aud=["billing", "reports"]))
    _, result = check(write_config(tmp_path, issuer), bearer("/orders/1", token), capsys)
    authenticate = step(result, "authenticate")
    assert authenticate["summary"] == "InvalidAudience: the token is not meant for this API (aud/client_id)"
    assert authenticate["facts"] == {
        "authorizer": "corp (type jwt)",
        "aud": "billing, reports",
        "client_id": "(absent)",
        "expected_audiences": f"{AUDIENCE} (any one of)",
    }


def test_wrong_issuer_shows_both(tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]) -> None:
    token = issuer.token(issuer.claims(now=T0, iss="https://evil.example"))
    _, result = check(write_config(tmp_path, issuer), bearer("/orders/1", token), capsys)
    facts = step(result, "authenticate")["facts"]
    assert (facts["iss"], facts["expected_issuer"]) == ("https://evil.example", ISSUER)


def test_unknown_key_lists_the_published_keys(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, issuer)
    rotated = Issuer(ISSUER, {"rsa-2": issuer.keys["rsa-1"]})  # a key the JWKS file does not hold
    _, result = check(config, bearer("/orders/1", rotated.token(rotated.claims(now=T0))), capsys)
    authenticate = step(result, "authenticate")
    assert authenticate["summary"] == "UnknownKey: the token names a key the issuer does not publish"
    assert authenticate["facts"]["kid"] == "rsa-2"
    assert authenticate["facts"]["published_keys"] == "ec-1 EC [ES256], ed-1 OKP [Ed25519 EdDSA], rsa-1 RSA [RS256]"


def test_missing_token_says_where_it_looked(tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]) -> None:
    raw = f"GET /orders/1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n"
    text, result = check(write_config(tmp_path, issuer), raw, capsys)
    assert step(result, "authenticate")["facts"]["looked_in"] == "header.authorization"
    assert "YWxpY2U6c2VjcmV0" not in text and "YWxpY2U6c2VjcmV0" not in json.dumps(result)


# -- authenticate: SigV4 ------------------------------------------------------------------------------------


class RecordingSigner(botocore.auth.SigV4Auth):
    """botocore's signer, keeping the canonical request and string to sign it computed."""

    creq = ""
    sts = ""

    def canonical_request(self, request: AWSRequest) -> str:
        self.creq = super().canonical_request(request)
        return self.creq

    def string_to_sign(self, request: AWSRequest, canonical_request: str) -> str:
        self.sts = super().string_to_sign(request, canonical_request)
        return self.sts


def signed(
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    key: str,
    secret: str,
    *,
    headers: dict[str, str] | None = None,
    tamper: dict[str, str] | None = None,
) -> tuple[str, RecordingSigner]:
    """A raw request signed by botocore at T0 (`tamper` changes headers after signing, as a proxy might)."""
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda: dt.datetime.fromtimestamp(T0, dt.UTC).replace(tzinfo=None)
    )
    request = AWSRequest(method="GET", url=f"https://{HOST}{path}", headers=dict(headers or {}))
    signer = RecordingSigner(Credentials(key, secret), "execute-api", "us-east-1")
    signer.add_auth(request)
    sent = {name: value for name, value in request.headers.items() if name.lower() != "host"}
    sent.update(tamper or {})
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}", *(f"{name}: {value}" for name, value in sent.items())]
    return "\r\n".join(lines) + "\r\n\r\n", signer


def aws_block(details: list[str], title: str) -> str:
    """The quoted text under one of AWS's titles ("The Canonical String ...", "The String-to-Sign ...")."""
    start = details.index(title) + 1
    end = next(i for i in range(start, len(details)) if details[i].endswith("'"))
    text = "\n".join(details[start : end + 1])
    assert text.startswith("'") and text.endswith("'")
    return text[1:-1]


CANONICAL = "The Canonical String for this request should have been"
TO_SIGN = "The String-to-Sign should have been"


def test_invalid_signature_shows_the_canonical_request_as_aws_does(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, signer = signed(monkeypatch, "/iam/reports?b=2&a=1", ALICE_KEY, "not-alices-secret", headers={"X-Custom": "v"})
    text, result = check(write_config(tmp_path, issuer), raw, capsys)
    assert (result["reason"], result["status"]) == ("InvalidSignature", 403)
    authenticate = step(result, "authenticate")
    assert authenticate["facts"] == {
        "authorizer": "iam (type sigv4)",
        "access_key_id": ALICE_KEY,
        "principal": ALICE,
        "algorithm": "AWS4-HMAC-SHA256",
        "credential_scope": "20270115/us-east-1/execute-api/aws4_request",
        "signed_headers": "host;x-amz-date;x-custom",
    }
    details = authenticate["details"]
    # A wrong secret: the texts agree with botocore's own, line for line; only the key can differ.
    assert aws_block(details, CANONICAL) == signer.creq
    assert aws_block(details, TO_SIGN) == signer.sts
    assert details[0] == CANONICAL and TO_SIGN in details
    # The text output carries the same block, every line at one column (so it can be cut out and diffed).
    lines = explain_lines(text)
    first = lines.index(f"explain:   {' ' * 19}{CANONICAL}")
    block = [line[PREFIX:] for line in lines[first:]]
    assert block == details
    assert "not-alices-secret" not in text and ALICE_SECRET not in text
    signature = raw.split("Signature=")[1].split("\r\n")[0]
    assert signature not in text and signature not in json.dumps(result)


def test_a_session_token_never_appears_in_an_explanation(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda: dt.datetime.fromtimestamp(T0, dt.UTC).replace(tzinfo=None)
    )
    request = AWSRequest(method="GET", url=f"https://{HOST}/iam/reports", headers={})
    signer = RecordingSigner(Credentials(CAROL_KEY, "not-carols-secret", CAROL_TOKEN), "execute-api", "us-east-1")
    signer.add_auth(request)
    lines = ["GET /iam/reports HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items() if name.lower() != "host"]
    text, result = check(write_config(tmp_path, issuer), "\r\n".join(lines) + "\r\n\r\n", capsys)
    assert result["reason"] == "InvalidSignature"
    assert CAROL_TOKEN not in text and CAROL_TOKEN not in json.dumps(result)
    ours = aws_block(step(result, "authenticate")["details"], CANONICAL).split("\n")
    theirs = signer.creq.split("\n")
    differing = [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b]
    assert len(differing) == 1 and differing[0][1] == f"x-amz-security-token:{CAROL_TOKEN}"
    digest = hashlib.sha256(CAROL_TOKEN.encode()).hexdigest()[:12]
    assert differing[0][0] == f"x-amz-security-token:<{len(CAROL_TOKEN)} chars, sha256 {digest}>"


def test_invalid_signature_diff_names_the_header_changed_after_signing(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, signer = signed(
        monkeypatch, "/iam/reports", ALICE_KEY, ALICE_SECRET, headers={"X-Custom": "v"}, tamper={"X-Custom": "w"}
    )
    _, result = check(write_config(tmp_path, issuer), raw, capsys)
    ours = aws_block(step(result, "authenticate")["details"], CANONICAL).split("\n")
    theirs = signer.creq.split("\n")
    assert [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b] == [("x-custom:w", "x-custom:v")]


def test_signature_expired_shows_when_it_was_signed_and_judged(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, _ = signed(monkeypatch, "/iam/orders/1", ALICE_KEY, ALICE_SECRET)
    _, result = check(write_config(tmp_path, issuer), raw, capsys, at=T0 + 3600)
    authenticate = step(result, "authenticate")
    assert result["reason"] == "SignatureExpired"
    assert authenticate["facts"] == {
        "authorizer": "iam (type sigv4)",
        "signed_at": "2027-01-15T08:00:00Z (1800000000)",
        "judged_at": "2027-01-15T09:00:00Z (1800003600)",
        "clock_skew": "300 s",
    }


def test_unknown_access_key_is_named(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, _ = signed(monkeypatch, "/iam/orders/1", "AKIDNOBODY", "whatever")
    _, result = check(write_config(tmp_path, issuer), raw, capsys)
    assert result["reason"] == "UnrecognizedClient"
    facts = step(result, "authenticate")["facts"]
    assert (facts["access_key_id"], facts["found"]) == ("AKIDNOBODY", "no credential with this key")


# -- policy -------------------------------------------------------------------------------------------------


def test_sigv4_caller_without_identity_policy_or_resource_policy_is_told_why(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, _ = signed(monkeypatch, "/iam/orders/1", BOB_KEY, BOB_SECRET)
    text, result = check(write_config(tmp_path, issuer), raw, capsys)
    assert (result["reason"], result["principal"]) == ("AccessDenied", {"kind": "sigv4", "id": BOB})
    assert step(result, "authenticate")["facts"]["identity_policies"] == "(none attached)"
    policy = step(result, "policy")
    assert policy["outcome"] == "deny"
    assert policy["summary"] == (
        f"ImplicitDeny: {BOB}'s credential has no identity policy attached, and there is no resource policy; IAM "
        "callers (sigv4) need an identity policy or a resource policy that allows the request (API Gateway's rule "
        "for AWS_IAM routes)"
    )
    assert "identity: Neither (no identity policy is attached to the caller)" in policy["details"]
    assert "authorizer: Neither" not in text
    assert f"principal: sigv4 {BOB}" in text.splitlines()


def test_sigv4_caller_whose_policies_do_not_allow_is_told_which(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody = policy_document(
        {"Sid": "Partner", "Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Resource": f"{ARN}/*"}
    )
    raw, _ = signed(monkeypatch, "/iam/reports", ALICE_KEY, ALICE_SECRET)
    _, result = check(write_config(tmp_path, issuer, nobody), raw, capsys)
    policy = step(result, "policy")
    source = str(tmp_path / "credentials.yaml")
    assert policy["summary"] == (
        f"ImplicitDeny: none of {ALICE}'s identity policies allows it (identity policy {source} "
        f"credentials[0].policies[0]), and no statement of the resource policy {tmp_path / 'resource.json'} "
        "allows it"
    )
    assert policy["facts"] == {"action": "execute-api:invoke", "resource": f"{ARN}/GET/iam/reports"}
    assert "  Orders (Allow): no match at Resource" in policy["details"]
    assert (
        "  Partner (Allow): no match at Principal (caller arn:aws:iam::123456789012:user/alice, account 123456789012)"
        in (policy["details"])
    )


def test_policy_deny_keeps_the_statement_trace(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    document = policy_document(
        {"Sid": "Everyone", "Effect": "Allow", "Principal": "*", "Resource": f"{ARN}/*"},
        {"Sid": "NoAdmins", "Effect": "Deny", "Principal": "*", "Resource": f"{ARN}/GET/public/admin/*"},
    )
    config = write_config(tmp_path, issuer, document)
    text, result = check(config, f"GET /public/admin/x HTTP/1.1\r\nHost: {HOST}\r\n\r\n", capsys)
    assert (result["reason"], result["principal"]) == ("AccessDenied", {"kind": "anonymous", "id": "anonymous"})
    policy = step(result, "policy")
    assert policy["summary"] == (
        f"ExplicitDeny by statement 'NoAdmins' of resource policy {tmp_path / 'resource.json'} (decided by resource)"
    )
    assert policy["details"][0] == "outcome: ExplicitDeny (decided by resource)"
    assert "  Everyone (Allow): matched" in policy["details"]
    assert "  NoAdmins (Deny): matched" in policy["details"]
    assert "principal: anonymous" in text.splitlines()  # not "anonymous anonymous"
    assert "explain:                        NoAdmins (Deny): matched" in explain_lines(text)


# -- output -------------------------------------------------------------------------------------------------


def test_an_allow_explains_every_stage_it_ran(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    text, result = check(
        write_config(tmp_path, issuer), bearer("/orders/1", issuer.token(issuer.claims(now=T0))), capsys
    )
    assert result["decision"] == "allow"
    assert [(s["stage"], s["outcome"]) for s in result["explanation"]] == [
        ("route", "pass"),
        ("authenticate", "pass"),
        ("policy", "pass"),
    ]
    assert step(result, "authenticate")["summary"] == "corp (type jwt) identified user-123"
    assert [line.split()[1:3] for line in explain_lines(text) if not line.startswith("explain:    ")] == [
        ["route", "pass"],
        ["authenticate", "pass"],
        ["policy", "pass"],
    ]


def test_without_explain_text_has_no_explanation_but_json_always_does(
    tmp_path: Path, issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, issuer)
    request = tmp_path / "r.req"
    request.write_text(f"GET /nope HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
    text = _run(["check", "--config", str(config), "--http", str(request)], capsys)
    assert "decision:  deny (403)" in text and "explain:" not in text
    result = json.loads(
        _run(["check", "--config", str(config), "--http", str(request), "--output", "json", "--explain"], capsys)
    )
    assert result["explanation"][0]["stage"] == "route"


def test_help_says_what_explain_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "always in json" not in help_text
    assert "--explain show why, stage by stage" in help_text
    assert "explain: lines in text output, an explanation list in --output json" in help_text
