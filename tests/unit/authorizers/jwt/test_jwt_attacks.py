"""The known JWT attacks, each refused with its own reason code, through the real authorizer and real keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.authorizers.jwt import errors as jwterrors
from sidecar.authorizers.jwt.authorizer import CognitoAuthorizer, JwtAuthorizer
from sidecar.authorizers.jwt.claims import ClaimRules
from sidecar.authorizers.jwt.jwks import StaticKeySource
from sidecar.authorizers.jwt.keys import parse_jwks
from sidecar.authorizers.jwt.settings import DEFAULT_ALGORITHMS
from sidecar.reasons import Denied
from tests.unit.authorizers.jwt.jwt_testkit import (
    AUDIENCE,
    ISSUER,
    NOW,
    FakeClock,
    Issuer,
    b64,
    ec_key,
    public_jwk,
    request,
    rsa_key,
    unsigned,
)

ISS = Issuer.default()
ATTACKER = Issuer(ISSUER, {"rsa-1": (rsa_key(7), "RS256")})  # same kid, another key


def authorizer(max_token_bytes: int = 4096) -> JwtAuthorizer:
    keys = StaticKeySource(parse_jwks(ISS.jwks(), fetched_at=NOW))
    rules = ClaimRules(issuer=ISSUER, audiences=frozenset({AUDIENCE}), leeway=30)
    return JwtAuthorizer(
        "corp",
        rules=rules,
        keys=keys,
        algorithms=frozenset(DEFAULT_ALGORITHMS),
        max_token_bytes=max_token_bytes,
        clock=FakeClock(),
    )


async def reason_for(token: str, auth: JwtAuthorizer | None = None) -> str:
    with pytest.raises(Denied) as info:
        await (auth or authorizer()).authenticate(request(token))
    denied = info.value
    assert denied.status == 401
    assert ("www-authenticate", 'Bearer error="invalid_token"') in denied.headers
    assert token not in denied.message  # never echo the token
    return denied.reason


def header_of(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(json.dumps(header))}.{b64(json.dumps(claims))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


async def test_honest_token_passes() -> None:
    principal = await authorizer().authenticate(request(ISS.token()))
    assert principal.id == "user-123"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", [b"", b"sig"])
async def test_alg_none_in_every_spelling(alg: str, signature: bytes) -> None:
    token = unsigned({"alg": alg, "kid": "rsa-1", "typ": "JWT"}, ISS.claims(), signature)
    assert await reason_for(token) == jwterrors.ALGORITHM_NONE


@pytest.mark.parametrize(
    "encoding",
    [
        lambda k: k.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        lambda k: k.public_bytes(Encoding.PEM, PublicFormat.PKCS1),
        lambda k: k.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        lambda k: json.dumps(public_jwk(rsa_key(0), "rsa-1")).encode(),
    ],
    ids=["pem-spki", "pem-pkcs1", "der", "jwk-json"],
)
async def test_rs256_to_hs256_confusion_with_the_public_key_as_secret(encoding: Any) -> None:
    secret = encoding(rsa_key(0).public_key())
    token = hs256({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, ISS.claims(), secret)
    assert await reason_for(token) == jwterrors.ALGORITHM_NOT_ALLOWED


async def test_hs256_cannot_be_allowed_even_by_config() -> None:
    from pydantic import ValidationError

    from sidecar.authorizers.jwt.settings import JwtSettings

    with pytest.raises(ValidationError, match="never accepted"):
        JwtSettings(type="jwt", issuer=ISSUER, audiences=(AUDIENCE,), algorithms=("HS256",))
    with pytest.raises(ValidationError, match="never accepted"):
        JwtSettings(type="jwt", issuer=ISSUER, audiences=(AUDIENCE,), algorithms=("none",))


async def test_ec_key_cannot_verify_rsa_algorithms() -> None:
    """A key's type decides its algorithms: a token labelled RS256 but naming the EC key is refused."""
    header = {"alg": "RS256", "kid": "ec-1", "typ": "JWT"}
    forged = unsigned(header, ISS.claims(), b"x" * 256)
    assert await reason_for(forged) == jwterrors.KEY_ALGORITHM_MISMATCH


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../dev/null",
        "/etc/passwd",
        "..\\..\\windows\\win.ini",
        "' OR '1'='1",
        "x' UNION SELECT 'secret' --",
        "rsa-1\x00",
        "rsa-1; ls",
        "k" * 5000,
    ],
)
async def test_kid_holding_path_or_sql_text_names_no_key(kid: str) -> None:
    private, _ = ISS.keys["rsa-1"]
    import jwt as pyjwt

    token = pyjwt.encode(ISS.claims(), private, algorithm="RS256", headers={"kid": kid})
    assert await reason_for(token, authorizer(max_token_bytes=16384)) == jwterrors.UNKNOWN_KEY


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk"])
async def test_header_pointing_at_attacker_key(name: str) -> None:
    attacker_jwk = public_jwk(rsa_key(7), "rsa-1")
    value: Any = attacker_jwk if name == "jwk" else "https://attacker.example/keys.json"
    token = ATTACKER.token(kid="rsa-1", **{name: value})
    assert await reason_for(token) == jwterrors.UNTRUSTED_KEY_HEADER


async def test_x5c_is_never_trusted() -> None:
    """An embedded certificate chain is ignored: the attacker's signature fails against the issuer's key."""
    token = ATTACKER.token(kid="rsa-1", x5c=["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"])
    assert await reason_for(token) == jwterrors.INVALID_SIGNATURE


async def test_signature_from_another_key_with_the_same_kid() -> None:
    assert await reason_for(ATTACKER.token(kid="rsa-1")) == jwterrors.INVALID_SIGNATURE


async def test_expired() -> None:
    assert await reason_for(ISS.token(ISS.claims(exp=int(NOW) - 31, iat=int(NOW) - 600))) == jwterrors.TOKEN_EXPIRED


async def test_expiry_within_leeway_passes() -> None:
    await authorizer().authenticate(request(ISS.token(ISS.claims(exp=int(NOW) - 29))))


async def test_nbf_in_the_future() -> None:
    assert await reason_for(ISS.token(ISS.claims(nbf=int(NOW) + 120))) == jwterrors.TOKEN_NOT_YET_VALID


async def test_iat_in_the_future() -> None:
    assert await reason_for(ISS.token(ISS.claims(iat=int(NOW) + 120))) == jwterrors.TOKEN_ISSUED_IN_FUTURE


async def test_exp_is_required() -> None:
    assert await reason_for(ISS.token(ISS.claims(exp=None))) == jwterrors.CLAIM_MISSING


@pytest.mark.parametrize("exp", ["1900000000", True, None, [1], 1e400, 10**400, 2**60, -(2**60)])
async def test_exp_must_be_a_number(exp: Any) -> None:
    claims = ISS.claims()
    claims["exp"] = exp
    token = ISS.token(claims) if exp != 1e400 else _raw_claims_token('{"exp": 1e400}')
    assert await reason_for(token) == jwterrors.INVALID_CLAIM  # `null` too: present, and not a NumericDate


def _raw_claims_token(payload_json: str) -> str:
    import jwt as pyjwt

    private, _ = ISS.keys["rsa-1"]
    return pyjwt.api_jws.encode(payload_json.encode(), private, algorithm="RS256", headers={"kid": "rsa-1"})


@pytest.mark.parametrize("iss", ["https://evil.example", ISSUER + "/", ISSUER.upper(), None])
async def test_wrong_issuer(iss: str | None) -> None:
    assert await reason_for(ISS.token(ISS.claims(iss=iss))) == jwterrors.INVALID_ISSUER


@pytest.mark.parametrize("aud", ["other-api", ["other-api", "third"], None, []])
async def test_wrong_audience(aud: Any) -> None:
    assert await reason_for(ISS.token(ISS.claims(aud=aud))) == jwterrors.INVALID_AUDIENCE


async def test_audience_any_of_or_client_id() -> None:
    auth = authorizer()
    await auth.authenticate(request(ISS.token(ISS.claims(aud=["x", AUDIENCE]))))
    await auth.authenticate(request(ISS.token(ISS.claims(aud=None, client_id=AUDIENCE))))


async def test_wrong_token_use_for_cognito() -> None:
    pool = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Abc"
    issuer = Issuer(pool, ISS.keys)
    auth = CognitoAuthorizer(
        "pool",
        rules=ClaimRules(pool, frozenset({"client-1"}), 30, token_uses=frozenset({"access"})),
        keys=StaticKeySource(parse_jwks(ISS.jwks(), fetched_at=NOW)),
        algorithms=frozenset({"RS256"}),
        clock=FakeClock(),
    )
    id_token = issuer.token(issuer.claims(aud="client-1", token_use="id"))
    assert await reason_for(id_token, auth) == jwterrors.INVALID_TOKEN_USE
    assert await reason_for(issuer.token(issuer.claims(aud=None)), auth) == jwterrors.INVALID_TOKEN_USE


async def test_oversized_token() -> None:
    big = ISS.token(ISS.claims(padding="x" * 5000))
    assert await reason_for(big) == jwterrors.TOKEN_TOO_LARGE


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "....",
        "eyJhbGciOiJSUzI1NiJ9..",
        "e30.e30.",  # {} header: no alg
        "W10.e30.AA",  # [] header
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.AA",  # payload not JSON (checked after signature -> see below)
        "eyJhbGciOiJSUzI1NiIsImFsZyI6Im5vbmUifQ.e30.AA",  # duplicate "alg"
        "eyJhbGciOiJSUzI1NiJ9 .e30.AA",
        "eyJhbGciOiJSUzI1NiJ9.e30=.AA",
        "eyJhbGciOiJSUzI1NiJ9.e30.A+/A",
        '{"payload":"e30","signatures":[]}',
        "eyJhbGciOjF9.e30.AA",  # alg is a number
        "eyJhbGciOiJSUzI1NiIsImtpZCI6MX0.e30.AA",  # kid is a number
    ],
)
async def test_malformed_tokens(token: str) -> None:
    reason = await reason_for(token)
    if token.startswith("eyJhbGciOiJSUzI1NiJ9.bm90"):
        assert reason == jwterrors.INVALID_SIGNATURE  # the only RSA key is tried; the payload is read only after
    else:
        assert reason == jwterrors.TOKEN_MALFORMED


async def test_payload_that_is_not_json_after_a_valid_signature() -> None:
    import jwt as pyjwt

    private, _ = ISS.keys["rsa-1"]
    token = pyjwt.api_jws.encode(b"not json", private, algorithm="RS256", headers={"kid": "rsa-1"})
    assert await reason_for(token) == jwterrors.TOKEN_MALFORMED


@pytest.mark.parametrize("escape", ["\\ud800", "\\uDFFF", "x\\udc80y", "\\ude00\\ud83d"])
async def test_unpaired_surrogate_in_signed_claims_is_malformed(escape: str) -> None:
    """`\\uD800` escapes decode to lone surrogates: not Unicode, and no header or CheckResponse could carry them."""
    payload = json.dumps(ISS.claims()).replace('"sub": "', f'"sub": "{escape}', 1)
    assert escape in payload
    assert await reason_for(_raw_claims_token(payload)) == jwterrors.TOKEN_MALFORMED


async def test_surrogate_pair_escapes_are_fine() -> None:
    claims = ISS.claims()
    payload = json.dumps(claims).replace('"sub": "', '"sub": "\\ud83d\\ude00', 1)
    principal = await authorizer().authenticate(request(_raw_claims_token(payload)))
    assert principal.id == "\U0001f600" + claims["sub"]


async def test_crit_with_unknown_extension() -> None:
    token = ISS.token(kid="rsa-1", crit=["exp-ext"], **{"exp-ext": 1})
    assert await reason_for(token) == jwterrors.UNSUPPORTED_CRITICAL
    b64_false = ISS.token(kid="rsa-1", crit=["b64"], b64=False)
    assert await reason_for(b64_false) == jwterrors.UNSUPPORTED_CRITICAL


async def test_missing_token_is_a_bearer_challenge() -> None:
    for req in (request(None), request(headers={"authorization": "Basic dXNlcjpwYXNz"})):
        with pytest.raises(Denied) as info:
            await authorizer().authenticate(req)
        assert info.value.reason == jwterrors.TOKEN_MISSING
        decision = info.value.decision(challenge=JwtAuthorizer.challenge)
        assert decision.status == 401
        assert ("www-authenticate", "Bearer") in decision.headers


async def test_every_attack_has_its_own_reason() -> None:
    """The codes exercised above are pairwise distinct: an operator can tell the attacks apart in metrics."""
    codes = [
        jwterrors.ALGORITHM_NONE,
        jwterrors.ALGORITHM_NOT_ALLOWED,
        jwterrors.UNKNOWN_KEY,
        jwterrors.UNTRUSTED_KEY_HEADER,
        jwterrors.TOKEN_EXPIRED,
        jwterrors.TOKEN_NOT_YET_VALID,
        jwterrors.TOKEN_ISSUED_IN_FUTURE,
        jwterrors.INVALID_ISSUER,
        jwterrors.INVALID_AUDIENCE,
        jwterrors.INVALID_TOKEN_USE,
        jwterrors.TOKEN_TOO_LARGE,
        jwterrors.TOKEN_MALFORMED,
        jwterrors.UNSUPPORTED_CRITICAL,
        jwterrors.INVALID_SIGNATURE,
        jwterrors.KEY_ALGORITHM_MISMATCH,
        jwterrors.TOKEN_MISSING,
    ]
    assert len(set(codes)) == len(codes)
    assert set(codes) <= jwterrors.REASONS


async def test_ec_signature_confusion_between_curves() -> None:
    """An ES256 key cannot verify an ES384-labelled token, even with a well-formed signature length."""
    token = unsigned({"alg": "ES384", "kid": "ec-1"}, ISS.claims(), b"\x01" * 96)
    assert await reason_for(token) == jwterrors.KEY_ALGORITHM_MISMATCH
    assert ec_key(0) is ISS.keys["ec-1"][0]


async def test_remembered_header_does_not_vouch_for_a_forged_token() -> None:
    """The header memo only skips decoding a header already checked; signature and claims are checked anew."""
    auth = authorizer()
    honest = ISS.token(kid="rsa-1")
    forged = ATTACKER.token(kid="rsa-1")
    assert honest.split(".")[0] == forged.split(".")[0]
    await auth.authenticate(request(honest))
    assert await reason_for(forged, auth) == jwterrors.INVALID_SIGNATURE
    expired = ISS.token(ISS.claims(exp=int(NOW) - 100, iat=int(NOW) - 200), kid="rsa-1")
    assert await reason_for(expired, auth) == jwterrors.TOKEN_EXPIRED


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
header_values = st.dictionaries(
    st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x5c", "b64", "cty", "zip"]) | st.text(max_size=6), json_values
) | st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "ES256", "EdDSA", "none", "HS256", "PS512"])},
    optional={"kid": st.sampled_from(["rsa-1", "ec-1", "ed-1", "x"]) | json_values},
)


FUZZ = authorizer(max_token_bytes=65536)  # one instance: failures are never cached, so examples stay independent


# 100 examples in the suite (was 300): tests/fuzz/targets/jwt.py drives this code at scale.
@settings(max_examples=100, deadline=None)
@given(token=st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_\-.=+/ ]{0,120}", fullmatch=True))
async def test_arbitrary_text_is_a_deny_never_a_crash(token: str) -> None:
    with pytest.raises(Denied) as info:
        await FUZZ.authenticate(request(headers={"authorization": f"Bearer {token}"}))
    assert info.value.reason in jwterrors.REASONS


# 100 examples in the suite (was 300): tests/fuzz/targets/jwt.py drives this code at scale.
@settings(max_examples=100, deadline=None)
@given(
    header=header_values,
    claims=st.dictionaries(
        st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "scope", "scp", "client_id"]), json_values
    ),
    signature=st.binary(max_size=300),
)
async def test_arbitrary_headers_and_claims_are_a_deny_never_a_crash(
    header: dict[str, Any], claims: dict[str, Any], signature: bytes
) -> None:
    token = unsigned(header, claims, signature)
    with pytest.raises(Denied) as info:
        await FUZZ.authenticate(request(token))
    assert info.value.reason in jwterrors.REASONS


# 60 examples in the suite (was 150): tests/fuzz/targets/jwt.py drives this code at scale.
@settings(max_examples=60, deadline=None)
@given(
    claims=st.dictionaries(
        st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "scope", "scp", "client_id", "x"]), json_values
    )
)
async def test_arbitrary_signed_claims_are_checked_not_crashed(claims: dict[str, Any]) -> None:
    """Validly signed garbage claims: each is allowed only when it satisfies every rule, else a reasoned deny."""
    import jwt as pyjwt

    token = pyjwt.api_jws.encode(json.dumps(claims).encode(), ec_key(0), algorithm="ES256", headers={"kid": "ec-1"})
    try:
        principal = await FUZZ.authenticate(request(token))
    except Denied as denied:
        assert denied.reason in jwterrors.REASONS
    else:
        assert claims["iss"] == ISSUER and claims["exp"] + 30 > NOW
        assert principal.id in (claims.get("sub"), claims.get("client_id"))


async def test_tokens_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [ISS.token(ISS.claims(aud="x")), ATTACKER.token(kid="rsa-1"), ISS.token(ISS.claims(exp=1))]
    for token in tokens:
        with pytest.raises(Denied):
            await authorizer().authenticate(request(token))
    assert caplog.records  # the refusals were logged ...
    for token in tokens:
        for part in token.split("."):
            assert part not in caplog.text  # ... without any part of the token


@pytest.mark.parametrize("token", ["\ud800abc.def.ghi", "é.é.é", "\x00", "a" * 3 + "\udcff"])
async def test_non_ascii_tokens_are_malformed(token: str) -> None:
    assert await reason_for(token) == jwterrors.TOKEN_MALFORMED
