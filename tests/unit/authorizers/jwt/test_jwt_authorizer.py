"""The `jwt` and `cognito` authorizers: identity sources, principals, Cognito rules, the verified-token cache and
config loading through the real pipeline."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar import reasons
from sidecar.authorizers.jwt import authorizer as jwtauthorizer
from sidecar.authorizers.jwt import claims as jwtclaims
from sidecar.authorizers.jwt import errors as jwterrors
from sidecar.authorizers.jwt.authorizer import CognitoAuthorizer, JwtAuthorizer
from sidecar.authorizers.jwt.claims import ClaimRules
from sidecar.authorizers.jwt.jwks import StaticKeySource
from sidecar.authorizers.jwt.keys import KeySet, parse_jwks
from sidecar.authorizers.jwt.settings import DEFAULT_ALGORITHMS
from sidecar.authorizers.sources import IdentitySource
from sidecar.config import ConfigError, parse_config
from sidecar.pipeline import Pipeline
from sidecar.reasons import Denied
from sidecar.runtime import RuntimeHolder, compile_runtime
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, ISSUER, NOW, FakeClock, Issuer, request

ISS = Issuer.default()
POOL_ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Pool1"
POOL = Issuer(POOL_ISSUER, ISS.keys)


def make(
    *,
    sources: tuple[str, ...] = ("header.authorization",),
    claim_to_headers: dict[str, str] | None = None,
    clock: FakeClock | None = None,
    keys: Any = None,
    cache_size: int = 100,
) -> JwtAuthorizer:
    return JwtAuthorizer(
        "corp",
        rules=ClaimRules(issuer=ISSUER, audiences=frozenset({AUDIENCE}), leeway=30),
        keys=keys or StaticKeySource(parse_jwks(ISS.jwks(), fetched_at=NOW)),
        algorithms=frozenset(DEFAULT_ALGORITHMS),
        sources=tuple(IdentitySource.parse(s) for s in sources),
        claim_to_headers=claim_to_headers,
        cache_size=cache_size,
        clock=clock or FakeClock(),
    )


def cognito(token_use: tuple[str, ...] = ("access",)) -> CognitoAuthorizer:
    return CognitoAuthorizer(
        "pool",
        rules=ClaimRules(POOL_ISSUER, frozenset({"app-client"}), 30, token_uses=frozenset(token_use)),
        keys=StaticKeySource(parse_jwks(ISS.jwks(), fetched_at=NOW)),
        algorithms=frozenset({"RS256"}),
        clock=FakeClock(),
    )


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed-1"])
async def test_oidc_issuer_tokens_in_each_algorithm(kid: str) -> None:
    principal = await make().authenticate(request(ISS.token(kid=kid)))
    assert principal.kind == "jwt" and principal.id == "user-123" and principal.authorizer == "corp"
    assert principal.expires_at == int(NOW) + 300


async def test_principal_claims_scopes_and_context() -> None:
    claims = ISS.claims(scope="a b", scp=["c"], groups=["admins", "ops"], nested={"x": 1}, email="u@example.test")
    principal = await make().authenticate(request(ISS.token(claims)))
    assert principal.scopes == {"a", "b", "c"}
    assert principal.claims["email"] == "u@example.test"
    ctx = principal.context
    assert ctx["jwt:sub"] == "user-123"
    assert ctx["jwt:iss"] == ISSUER
    assert ctx["jwt:aud"] == AUDIENCE
    assert ctx["jwt:scope"] == ("a", "b", "c")
    assert ctx["jwt:groups"] == ("admins", "ops")
    assert "jwt:nested" not in ctx  # objects are not condition keys


@pytest.mark.parametrize(("scp", "expected"), [("x y", {"x", "y"}), (["x", "y"], {"x", "y"}), (None, set())])
async def test_scp_as_string_or_list(scp: Any, expected: set[str]) -> None:
    principal = await make().authenticate(request(ISS.token(ISS.claims(scope=None, scp=scp))))
    assert principal.scopes == expected


async def test_client_credentials_token_is_identified_by_client_id() -> None:
    claims = ISS.claims(sub=None, aud=None, client_id=AUDIENCE)
    assert (await make().authenticate(request(ISS.token(claims)))).id == AUDIENCE
    with pytest.raises(Denied) as info:
        await make().authenticate(request(ISS.token(ISS.claims(sub=None))))
    assert info.value.reason == jwterrors.CLAIM_MISSING


async def test_claim_to_headers() -> None:
    auth = make(
        claim_to_headers={"sub": "x-user", "groups": "x-groups", "tenant": "x-tenant", "obj": "x-obj", "n": "x-n"}
    )
    claims = ISS.claims(groups=["a", "b"], obj={"k": "v\n"}, n=None, name="José")
    claims["n"] = None  # a JSON null, sent as JSON
    principal = await auth.authenticate(request(ISS.token(claims)))
    headers = dict(principal.upstream_headers)
    assert headers["x-user"] == "user-123"
    assert headers["x-groups"] == "a,b"
    assert headers["x-tenant"] == ""  # absent claim: overwrite whatever the client sent
    assert headers["x-obj"] == '{"k":"v\\n"}'  # objects as JSON: the newline is escaped, the value header-safe
    assert headers["x-n"] == "null"


@pytest.mark.parametrize("evil", ["v\r\nx-injected: 1", "a\x00b", "tab\there", "del\x7f", "c1\x85", " lead", "trail "])
async def test_claim_headers_that_cannot_arrive_unchanged_refuse_the_token(evil: str) -> None:
    """A claim for a header that Envoy would refuse (control characters: 503) or the upstream would read as
    another value (cut down, or trimmed) refuses the token: never a quiet edit ("ad\nmin" is not "admin")."""
    auth = make(claim_to_headers={"evil": "x-evil"})
    for value in (evil, [evil, "ok"]) if evil.strip() == evil else (evil,):  # (a list joins with commas)
        with pytest.raises(Denied) as info:
            await auth.authenticate(request(ISS.token(ISS.claims(evil=value))))
        assert info.value.reason == jwterrors.INVALID_CLAIM and info.value.status == 401
        assert evil not in info.value.message
    # the same claim not mapped to a header does not matter
    assert (await make().authenticate(request(ISS.token(ISS.claims(evil=evil))))).id == "user-123"


@pytest.mark.parametrize(
    ("sources", "req_kwargs"),
    [
        (("header.x-token",), {"headers": {"x-token": "{t}"}}),
        (("header.x-token",), {"headers": {"x-token": "Bearer {t}"}}),
        (("$request.header.X-Token",), {"headers": {"x-token": "{t}"}}),
        (("query.access_token",), {"path": "/orders/1?access_token={t}"}),
        (("$request.querystring.access_token",), {"path": "/orders/1?a=1&access_token={t}"}),
        (("cookie.session",), {"headers": {"cookie": "theme=dark; session={t}; x=y"}}),
        (("header.x-token", "cookie.session"), {"headers": {"cookie": "session={t}"}}),
        (("header.authorization",), {"headers": {"authorization": "bearer   {t}"}}),
        (("header.authorization",), {"headers": {"authorization": "{t}"}}),
    ],
)
async def test_identity_sources(sources: tuple[str, ...], req_kwargs: dict[str, Any]) -> None:
    token = ISS.token()
    kwargs = json.loads(json.dumps(req_kwargs).replace("{t}", token))
    principal = await make(sources=sources).authenticate(request(None, **kwargs))
    assert principal.id == "user-123"


def test_identity_source_syntax_is_checked() -> None:
    for bad in ("authorization", "body.token", "header.", "header.a b", "$request.path.x"):
        with pytest.raises(ValueError):
            IdentitySource.parse(bad)


async def test_cognito_access_token_by_client_id_and_groups() -> None:
    claims = POOL.claims(
        aud=None, token_use="access", client_id="app-client", username="alice", **{"cognito:groups": ["admins"]}
    )
    principal = await cognito().authenticate(request(POOL.token(claims)))
    assert principal.kind == "cognito"
    assert principal.context["cognito:groups"] == ("admins",)
    assert principal.context["cognito:username"] == "alice"
    assert principal.context["jwt:cognito:groups"] == ("admins",)
    assert principal.scopes == {"orders.read", "orders.write"}
    other_client = POOL.token(POOL.claims(aud=None, token_use="access", client_id="someone-else"))
    with pytest.raises(Denied) as info:
        await cognito().authenticate(request(other_client))
    assert info.value.reason == jwterrors.INVALID_AUDIENCE


async def test_cognito_id_token_by_aud() -> None:
    auth = cognito(("id",))
    principal = await auth.authenticate(request(POOL.token(POOL.claims(aud="app-client", token_use="id"))))
    assert principal.context["cognito:groups"] == ()
    for claims in (
        POOL.claims(aud="someone-else", token_use="id"),
        POOL.claims(aud=None, client_id="app-client", token_use="id"),  # an ID token must carry aud
    ):
        with pytest.raises(Denied) as info:
            await auth.authenticate(request(POOL.token(claims)))
        assert info.value.reason == jwterrors.INVALID_AUDIENCE
    with pytest.raises(Denied) as info:
        await auth.authenticate(request(POOL.token(POOL.claims(aud=None, client_id="app-client", token_use="access"))))
    assert info.value.reason == jwterrors.INVALID_TOKEN_USE


# -- verified-token cache -------------------------------------------------------------------------------------


async def test_cached_token_skips_parsing_and_crypto(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = make()
    token = ISS.token()
    first = await auth.authenticate(request(token))
    calls = []
    monkeypatch.setattr(jwtauthorizer, "parse_token", lambda *a: calls.append(a))
    monkeypatch.setattr(jwtauthorizer, "verify_signature", lambda *a: calls.append(a))
    for _ in range(3):
        assert await auth.authenticate(request(token)) is first
    assert calls == []


async def test_cached_token_expires_with_the_token() -> None:
    clock = FakeClock()
    auth = make(clock=clock)
    token = ISS.token(ISS.claims(exp=int(NOW) + 60))
    await auth.authenticate(request(token))
    clock.advance(60 + 29)
    await auth.authenticate(request(token))  # inside the leeway
    clock.advance(2)
    with pytest.raises(Denied) as info:
        await auth.authenticate(request(token))
    assert info.value.reason == jwterrors.TOKEN_EXPIRED


class SwappableKeys(StaticKeySource):
    """A key source whose key set the test replaces, as a refresh would."""

    def swap(self, keyset: KeySet) -> None:
        self.keyset = keyset


async def test_cached_token_dropped_when_its_key_rotates_out() -> None:
    first = parse_jwks(ISS.jwks(), fetched_at=NOW)
    keys = SwappableKeys(first)
    auth = make(keys=keys)
    token = ISS.token(kid="ec-1")
    principal = await auth.authenticate(request(token))
    keys.swap(parse_jwks(ISS.jwks(), fetched_at=NOW + 1, previous=first))  # same keys, new snapshot
    assert await auth.authenticate(request(token)) is principal
    without_ec = {"keys": [k for k in ISS.jwks()["keys"] if k["kid"] != "ec-1"]}
    keys.swap(parse_jwks(without_ec, fetched_at=NOW + 2, previous=keys.keyset))
    with pytest.raises(Denied) as info:
        await auth.authenticate(request(token))
    assert info.value.reason == jwterrors.UNKNOWN_KEY


async def test_cache_is_bounded() -> None:
    auth = make(cache_size=3)
    for i in range(10):
        await auth.authenticate(request(ISS.token(ISS.claims(jti=str(i)))))
    assert len(auth._cache) == 3


async def test_failures_are_not_cached() -> None:
    auth = make()
    token = ISS.token(ISS.claims(aud="other"))
    for _ in range(2):
        with pytest.raises(Denied):
            await auth.authenticate(request(token))
    assert len(auth._cache) == 0


# -- config and pipeline --------------------------------------------------------------------------------------


def write_jwks(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "jwks.json"
    path.parent.mkdir()
    path.write_text(json.dumps(ISS.jwks()))
    return path


CONFIG = """\
authorizers:
  corp:
    type: jwt
    issuer: "https://idp.example.test"
    audiences: [orders-api]
    algorithms: [RS256, ES256, EdDSA]
    jwks_file: keys/jwks.json
    claim_to_headers: {sub: X-User}
  pool:
    type: cognito
    region: eu-west-1
    user_pool_id: eu-west-1_Pool1
    client_ids: [app-client]
    token_use: [access, id]
    jwks_file: keys/jwks.json
routes:
  - {match: "GET /orders/{id}", authorizer: corp, scopes: [orders.read]}
  - {match: "POST /orders", authorizer: corp, scopes: [orders.admin]}
  - {match: "GET /pool", authorizer: pool}
"""


async def test_config_to_pipeline(tmp_path: Path) -> None:
    write_jwks(tmp_path)
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(CONFIG)
    config = parse_config(CONFIG, str(config_file))
    runtime = compile_runtime(config)
    await runtime.start()
    try:
        assert runtime.is_ready()
        pipeline = Pipeline(RuntimeHolder(runtime))
        now = time.time()  # built from config, the authorizer reads the real clock
        token = ISS.token(ISS.claims(now))
        allowed = await pipeline.check(request(token, path="/orders/1"))
        assert allowed.allowed and ("x-user", "user-123") in allowed.all_headers()
        post = request(token, path="/orders")
        post = type(post)(method="POST", raw_path="/orders", path="/orders", headers=post.headers)
        denied = await pipeline.check(post)
        assert (denied.status, denied.reason) == (403, reasons.INSUFFICIENT_SCOPE)
        missing = await pipeline.check(request(None, path="/orders/1"))
        assert (missing.status, missing.reason) == (401, jwterrors.TOKEN_MISSING)
        assert ("www-authenticate", "Bearer") in missing.headers
        bad = await pipeline.check(request(ISS.token(ISS.claims(now, aud="x")), path="/orders/1"))
        assert (bad.status, bad.reason) == (401, jwterrors.INVALID_AUDIENCE)
        pool_token = POOL.token(POOL.claims(now, aud="app-client", token_use="id"))
        assert (await pipeline.check(request(pool_token, path="/pool"))).allowed
    finally:
        await runtime.stop()


@pytest.mark.parametrize(
    ("snippet", "field"),
    [
        ("algorithms: [HS256]", "authorizers.corp.algorithms"),
        ("algorithms: [ES256K]", "authorizers.corp.algorithms"),
        ("leeway: -1", "authorizers.corp.leeway"),
        ("identity_source: body.token", "authorizers.corp.identity_source"),
        ("claim_to_headers: {sub: 'bad header'}", "authorizers.corp.claim_to_headers"),
        ("jwks_uri: http://keys.example.test/jwks", "authorizers.corp"),
        ("jwks_refresh_min: 900\n    jwks_refresh_max: 60", "authorizers.corp"),
        ("unknown_key: 1", "authorizers.corp.unknown_key"),
    ],
)
def test_config_errors_point_at_the_field(snippet: str, field: str) -> None:
    text = f"""\
authorizers:
  corp:
    type: jwt
    issuer: "https://idp.example.test"
    audiences: [orders-api]
    {snippet}
routes:
  - {{match: "GET /x", authorizer: corp}}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml")
    issue = info.value.issues[0]
    assert issue.field == field and issue.line >= 3


def test_cognito_config_checks() -> None:
    base = "authorizers:\n  pool: {type: cognito, region: %s, user_pool_id: %s, client_ids: %s}\n"
    parse_config(base % ("us-east-1", "us-east-1_Abc", "[c]"))
    for region, pool, clients in (
        ("nowhere", "us-east-1_Abc", "[c]"),
        ("us-east-1", "bad", "[c]"),
        ("us-east-1", "us-east-1_Abc", "[]"),
    ):
        with pytest.raises(ConfigError):
            parse_config(base % (region, pool, clients))


def test_missing_jwks_file_is_a_config_error(tmp_path: Path) -> None:
    config = parse_config(CONFIG, str(tmp_path / "sidecar.yaml"))
    with pytest.raises(ConfigError, match="cannot read JWKS file"):
        compile_runtime(config)


def test_fingerprint_is_the_token_digest() -> None:
    auth = make(sources=("header.x-token", "header.authorization"))
    one, two = ISS.token(ISS.claims(jti="1")), ISS.token(ISS.claims(jti="2"))
    assert auth.fingerprint(request(one)) == auth.fingerprint(request(None, headers={"x-token": one}))
    assert auth.fingerprint(request(one)) != auth.fingerprint(request(two))
    assert len(auth.fingerprint(request(one)) or b"") == 32
    assert auth.fingerprint(request(None)) is None
    assert auth.fingerprint(request(None, headers={"authorization": "Basic abc"})) is None


async def test_authenticate_reuses_the_fingerprint_digest_as_the_token_cache_key() -> None:
    auth = make()
    token = ISS.token()
    same = request(token)  # the pipeline hands one Request object to fingerprint, then to authenticate
    digest = auth.fingerprint(same)
    assert digest is not None
    await auth.authenticate(same)
    assert next(iter(auth._cache)) is digest  # one bytes object keys both caches
    auth._cache.clear()
    await auth.authenticate(request(token))  # another Request with the same token: hashed again, same key
    assert next(iter(auth._cache)) == digest
    other = ISS.token(ISS.claims(sub="someone-else"))
    assert (await auth.authenticate(request(other))).id == "someone-else"  # a stale memo is never used
    assert list(auth._cache)[-1] == jwtauthorizer._digest(other)


async def test_cached_claims_are_compact_and_share_repeated_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar import request as requestmod
    from sidecar.memo import BoundedMemo

    monkeypatch.setattr(requestmod, "_SHAPES", BoundedMemo(1024))  # the process-wide table may be nearly full
    monkeypatch.setattr(jwtclaims, "_VALUES", {})
    auth = make()
    first = await auth.authenticate(request(ISS.token(ISS.claims(sub="u-1", tenant="acme"))))
    second = await auth.authenticate(request(ISS.token(ISS.claims(sub="u-2", tenant="acme"))))
    assert type(first.claims).__name__ == "CompactMap"
    assert dict(first.claims) == {**ISS.claims(sub="u-1", tenant="acme")}
    assert first.claims["iss"] is second.claims["iss"] and first.claims["tenant"] is second.claims["tenant"]
    assert first.claims._index is second.claims._index  # one index per claim-name sequence
    assert first.claims["sub"] == "u-1" and second.claims.get("sub") == "u-2"


async def test_unverified_tokens_add_nothing_to_the_shared_value_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jwtclaims, "_VALUES", {})
    auth = make()
    for i in range(50):  # the header parses before the signature check fails
        signed = ISS.token(ISS.claims(sub=f"forged-{i}", tenant=f"t-{i}"))
        forged = signed.rsplit(".", 1)[0] + ".AAAA"
        with pytest.raises(Denied):
            await auth.authenticate(request(forged))
    assert jwtclaims._VALUES == {}
    await auth.authenticate(request(ISS.token()))
    assert ISSUER in jwtclaims._VALUES
