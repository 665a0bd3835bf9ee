"""Security finding 12: claims the issuer signed but the sidecar cannot use as they are.

A claim of an unexpected JSON type is a reasoned deny (`InvalidClaim`), never an exception (it was a 500 with a
traceback for a Cognito `token_use` list); a value bound for a header (the principal id in `x-authz-principal`,
`claim_to_headers`) that Envoy would refuse or the upstream would read differently is refused once, when the
principal is built (it was an allow whose header Envoy refused: 503). Every token here is signed with real keys.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from sidecar import reasons
from sidecar.authorizers.jwt import errors as jwterrors
from sidecar.authorizers.jwt.authorizer import CognitoAuthorizer, JwtAuthorizer
from sidecar.authorizers.jwt.claims import ClaimRules
from sidecar.authorizers.jwt.jwks import StaticKeySource
from sidecar.authorizers.jwt.keys import parse_jwks
from sidecar.authorizers.jwt.settings import DEFAULT_ALGORITHMS
from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.reasons import Denied
from sidecar.request import Principal
from sidecar.runtime import RuntimeHolder, compile_runtime
from sidecar.transports.http.render import render
from tests.conftest import REPO
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, ISSUER, NOW, FakeClock, Issuer, request

ISS = Issuer.default()
POOL_ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Pool1"
POOL = Issuer(POOL_ISSUER, ISS.keys)
CLIENT = "app-client"


def _documented_reasons() -> frozenset[str]:
    """The reason codes docs/jwt.md documents (its "Reason codes" table)."""
    text = (REPO / "docs" / "jwt.md").read_text(encoding="utf-8")
    table = text.split("## Reason codes", 1)[1].split("\n## ", 1)[0]
    return frozenset(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE))


DOCUMENTED = _documented_reasons()
assert jwterrors.REASONS <= DOCUMENTED and reasons.INTERNAL_ERROR not in DOCUMENTED
HEADERS = {"sub": "x-user", "name": "x-name", "groups": "x-groups", "scope": "x-scope", "client_id": "x-client"}
COGNITO_HEADERS = {"username": "x-user", "cognito:groups": "x-groups", "email": "x-email"}


def jwt_authorizer() -> JwtAuthorizer:
    return JwtAuthorizer(
        "corp",
        rules=ClaimRules(issuer=ISSUER, audiences=frozenset({AUDIENCE}), leeway=30),
        keys=StaticKeySource(parse_jwks(ISS.jwks(), fetched_at=NOW)),
        algorithms=frozenset(DEFAULT_ALGORITHMS),
        claim_to_headers=HEADERS,
        clock=FakeClock(),
    )


def cognito_authorizer() -> CognitoAuthorizer:
    return CognitoAuthorizer(
        "pool",
        rules=ClaimRules(POOL_ISSUER, frozenset({CLIENT}), 30, token_uses=frozenset({"access", "id"})),
        keys=StaticKeySource(parse_jwks(ISS.jwks(), fetched_at=NOW)),
        algorithms=frozenset({"RS256", "ES256"}),
        claim_to_headers=COGNITO_HEADERS,
        clock=FakeClock(),
    )


def cognito_claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "iss": POOL_ISSUER,
        "sub": "5f1c-uuid",
        "token_use": "access",
        "client_id": CLIENT,
        "username": "alice",
        "cognito:groups": ["admins"],
        "scope": "aws.cognito.signin.user.admin",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 300,
    }
    base.update(overrides)
    return base


def sign(claims: dict[str, Any], kid: str = "ec-1") -> str:
    """Any JSON payload, signed by the issuer's real key (PyJWT's JWS layer: it does not look at the claims)."""
    private, alg = ISS.keys[kid]
    return pyjwt.api_jws.encode(json.dumps(claims).encode(), private, algorithm=alg, headers={"kid": kid})


async def refusal(auth: JwtAuthorizer, token: str) -> Denied:
    with pytest.raises(Denied) as info:
        await auth.authenticate(request(token))
    return info.value


WRONG_TYPES = [["x"], {"k": "v"}, 7, 1.5, True, None]
"""One of each JSON type that is not a string (a list of strings too, where one string is expected)."""


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("claim", ["iss", "sub", "client_id", "scope"])
async def test_string_claims_of_another_type_are_invalid(claim: str, value: Any) -> None:
    claims = ISS.claims(client_id=AUDIENCE)
    claims[claim] = value
    denied = await refusal(jwt_authorizer(), sign(claims))
    assert (denied.reason, denied.status) == (jwterrors.INVALID_CLAIM, 401)
    assert repr(claim) in denied.message


@pytest.mark.parametrize("value", [{"k": "v"}, 7, True, None, ["ok", 3], [["nested"]], [None]], ids=repr)
@pytest.mark.parametrize("claim", ["aud", "scp"])
async def test_string_or_list_claims_of_another_type_are_invalid(claim: str, value: Any) -> None:
    claims = ISS.claims()
    claims[claim] = value
    denied = await refusal(jwt_authorizer(), sign(claims))
    assert (denied.reason, denied.status) == (jwterrors.INVALID_CLAIM, 401)


@pytest.mark.parametrize("value", [None, 1e300, 2.0**60, -(2.0**60)], ids=repr)
@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_time_claims_null_or_out_of_range_are_invalid(claim: str, value: Any) -> None:
    """`null` was read as absent (an `nbf`/`iat` of null passed), and a float was bounded only by being finite
    (`exp` 1e300 was a token cached for ever); now both are refused as integers beyond 2^53 already were."""
    claims = ISS.claims()
    claims[claim] = value
    assert (await refusal(jwt_authorizer(), sign(claims))).reason == jwterrors.INVALID_CLAIM


@pytest.mark.parametrize("value", [["access"], {"use": "access"}, 1, True, None], ids=repr)
@pytest.mark.parametrize("claim", ["token_use", "username", "cognito:username"])
async def test_cognito_claims_of_another_type_are_invalid(claim: str, value: Any) -> None:
    """The finding's own case first: `"token_use": ["access"]` raised TypeError (unhashable list) -> 500."""
    claims = cognito_claims()
    claims[claim] = value
    denied = await refusal(cognito_authorizer(), sign(claims))
    assert (denied.reason, denied.status) == (jwterrors.INVALID_CLAIM, 401)


@pytest.mark.parametrize("value", [{"g": 1}, 1, True, None, ["admins", 7]], ids=repr)
async def test_cognito_groups_of_another_type_are_invalid(value: Any) -> None:
    denied = await refusal(cognito_authorizer(), sign(cognito_claims(**{"cognito:groups": value})))
    assert denied.reason == jwterrors.INVALID_CLAIM


UNSAFE_IDS = ["a\r\nx-admin: 1", "a\nb", "a\x00b", "a\tb", "a\x01b", "a\x7fb", "a\x85b", " alice", "alice "]
"""Envoy refuses C0 controls and DEL in a header value (503); C1 controls are control characters too; a space at
either end is stripped by HTTP parsers, so " alice" would reach the upstream as "alice"."""


SAFE_IDS = ["José", "☃", "\U0001f600", "a b", "a\u2028b", "x" * 4000]
"""Other text is sent as UTF-8 (both transports), which Envoy passes through unchanged."""


async def test_where_principal_ids_stop_being_header_safe() -> None:
    for sub in SAFE_IDS:
        principal = await jwt_authorizer().authenticate(request(sign(ISS.claims(sub=sub))))
        assert principal.id == sub and dict(principal.upstream_headers)["x-user"] == sub
    for sub in UNSAFE_IDS:
        assert (await refusal(jwt_authorizer(), sign(ISS.claims(sub=sub)))).reason == jwterrors.INVALID_CLAIM, sub


@pytest.mark.parametrize("sub", UNSAFE_IDS, ids=repr)
async def test_a_principal_id_that_cannot_be_a_header_value_is_invalid(sub: str) -> None:
    denied = await refusal(jwt_authorizer(), sign(ISS.claims(sub=sub)))
    assert (denied.reason, denied.status) == (jwterrors.INVALID_CLAIM, 401)
    assert "'sub'" in denied.message and sub not in denied.message  # names the claim, never echoes its value
    # a client-credentials token is identified by client_id: the same rule
    client = sign(ISS.claims(sub=None, aud=None, client_id=AUDIENCE))
    assert (await jwt_authorizer().authenticate(request(client))).id == AUDIENCE
    denied = await refusal(jwt_authorizer(), sign(ISS.claims(sub=None, aud=AUDIENCE, client_id=sub)))
    assert denied.reason == jwterrors.INVALID_CLAIM and "'client_id'" in denied.message


async def test_a_claim_nested_too_deep_to_render_is_invalid_not_a_crash() -> None:
    deep: Any = "x"
    for _ in range(900):  # the JSON decoder takes this; rendering it for a header recursed past the limit
        deep = [deep]
    denied = await refusal(jwt_authorizer(), sign(ISS.claims(groups=deep)))
    assert denied.reason == jwterrors.INVALID_CLAIM


async def test_through_the_pipeline_odd_claims_are_401_not_500(tmp_path: Path) -> None:
    """The real pipeline turns any exception into a 500 InternalError and renders allows for Envoy: both odd
    cases must come out as a 401 InvalidClaim deny with the reason in the body the transports send."""
    (tmp_path / "jwks.json").write_text(json.dumps(ISS.jwks()))
    config_text = f"""\
authorizers:
  corp: {{type: jwt, issuer: "{ISSUER}", audiences: [{AUDIENCE}], algorithms: [ES256], jwks_file: jwks.json}}
  pool:
    type: cognito
    region: eu-west-1
    user_pool_id: eu-west-1_Pool1
    client_ids: [{CLIENT}]
    algorithms: [ES256]
    jwks_file: jwks.json
routes:
  - {{match: "GET /orders/{{id}}", authorizer: corp}}
  - {{match: "GET /pool", authorizer: pool}}
"""
    runtime = compile_runtime(parse_config(config_text, str(tmp_path / "sidecar.yaml")))
    await runtime.start()
    try:
        pipeline = Pipeline(RuntimeHolder(runtime))
        now = time.time()
        cases = [
            ("/orders/1", ISS.claims(now, sub="a\r\nb")),
            ("/orders/1", ISS.claims(now, sub="a\x00b")),
            ("/pool", {**cognito_claims(token_use=["access"]), "iat": int(now), "exp": int(now) + 60}),
        ]
        for path, claims in cases:
            decision = await pipeline.check(request(sign(claims), path=path))
            assert (decision.allowed, decision.status, decision.reason) == (False, 401, jwterrors.INVALID_CLAIM)
            wire = render(decision, head_only=False, connection=b"", checked=set())
            assert wire.startswith(b"HTTP/1.1 401 ") and b'"reason":"InvalidClaim"' in wire
        allowed = await pipeline.check(request(sign(ISS.claims(now, sub="José")), path="/orders/1"))
        assert allowed.allowed and ("x-authz-principal", "José") in allowed.all_headers()
        assert render(allowed, head_only=False, connection=b"", checked=set()).startswith(b"HTTP/1.1 200 ")
    finally:
        await runtime.stop()


# -- property: any JSON in any claim, signed for real ---------------------------------------------------------


def header_safe(value: str) -> bool:
    """Independent of the implementation's regex: no character of Unicode category Cc (C0, DEL, C1), no space or
    tab at either end."""
    return not any(unicodedata.category(c) == "Cc" for c in value) and value == value.strip(" \t")


TRICKY = st.sampled_from(["a\r\nb", "\x00", "x\n", "\t", " lead", "trail ", "\x7f", "\x9b", "José", "", "a,b"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | TRICKY
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
CLAIMS = (
    *("iss", "aud", "exp", "nbf", "iat", "sub", "scope", "scp", "client_id"),
    *("token_use", "cognito:groups", "username", "cognito:username", "name", "groups", "email"),
)


def claim_sets(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` (a valid claim set) with some claims replaced by arbitrary JSON and some removed."""

    def build(changes: dict[str, Any], removed: set[str]) -> dict[str, Any]:
        claims = {**base, **changes}
        return {k: v for k, v in claims.items() if k not in removed}

    return st.builds(
        build,
        st.dictionaries(st.sampled_from(CLAIMS), json_values, max_size=3),
        st.sets(st.sampled_from(CLAIMS), max_size=2),
    )


JWT = jwt_authorizer()
COGNITO = cognito_authorizer()


def check_outcome(
    principal: Principal | None, denied: Denied | None, claims: dict[str, Any], mapping: dict[str, str]
) -> None:
    event("allowed" if denied is None else denied.reason)
    if denied is not None:
        assert denied.reason in DOCUMENTED, denied.reason
        assert denied.status == 401 and ("www-authenticate", 'Bearer error="invalid_token"') in denied.headers
        return
    assert principal is not None
    assert header_safe(principal.id) and principal.id in (claims.get("sub"), claims.get("client_id"))
    assert principal.id == (claims.get("sub") or claims["client_id"])  # as signed, nothing cut away
    for name, value in principal.upstream_headers:
        assert header_safe(value), (name, value)
    sent = dict(principal.upstream_headers)
    for claim, header in mapping.items():
        if isinstance(claims.get(claim), str):
            assert sent[header] == claims[claim]
        elif claim not in claims:
            assert sent[header] == ""
    assert type(claims["exp"]) in (int, float) and claims["exp"] + 30 > NOW


# 100 examples in the suite (was 250): tests/fuzz/targets/jwt.py drives this code at scale.
@settings(max_examples=100, deadline=None)
@given(claims=claim_sets(ISS.claims()))
@example(claims=ISS.claims(sub="a\r\nb"))
@example(claims=ISS.claims(name="x\x00y"))
@example(claims={**ISS.claims(), "aud": [AUDIENCE, {"k": 1}]})
async def test_any_signed_claims_allow_header_safe_or_deny_documented_jwt(claims: dict[str, Any]) -> None:
    principal = denied = None
    try:
        principal = await JWT.authenticate(request(sign(claims)))
    except Denied as exc:
        denied = exc
    check_outcome(principal, denied, claims, HEADERS)
    if principal is not None:
        assert claims["iss"] == ISSUER
        aud = claims.get("aud")
        assert aud == AUDIENCE or (isinstance(aud, list) and AUDIENCE in aud) or claims.get("client_id") == AUDIENCE


# 100 examples in the suite (was 250): tests/fuzz/targets/jwt.py drives this code at scale.
@settings(max_examples=100, deadline=None)
@given(claims=claim_sets(cognito_claims()))
@example(claims=cognito_claims(token_use=["access"]))
@example(claims=cognito_claims(token_use={"a": 1}))
@example(claims=cognito_claims(username="bob\r\n"))
async def test_any_signed_claims_allow_header_safe_or_deny_documented_cognito(claims: dict[str, Any]) -> None:
    principal = denied = None
    try:
        principal = await COGNITO.authenticate(request(sign(claims)))
    except Denied as exc:
        denied = exc
    check_outcome(principal, denied, claims, COGNITO_HEADERS)
    if principal is not None:
        assert claims["iss"] == POOL_ISSUER and claims["token_use"] in ("access", "id")
        context = principal.context  # the policy keys build from the same claims without raising
        assert isinstance(context["cognito:groups"], tuple)
