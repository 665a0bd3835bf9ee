"""RFC 9864 fully-specified EdDSA names: `Ed25519` and `Ed448` (node `jose` 6 and `joserfc` sign with them).

Tokens and keys come from an independent implementation, `joserfc`; the cross-curve tokens it refuses to make are
signed with `cryptography` directly. A key verifies only its own curve: Ed25519 keys `Ed25519`/`EdDSA`, Ed448 keys
`Ed448`/`EdDSA`, never the other name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from joserfc import jwt as josejwt
from joserfc.jwk import OKPKey

from sidecar.authorizers.base import BuildContext
from sidecar.authorizers.jwt import errors as jwterrors
from sidecar.authorizers.jwt.authorizer import JwtAuthorizer
from sidecar.authorizers.jwt.claims import ClaimRules
from sidecar.authorizers.jwt.jwks import StaticKeySource
from sidecar.authorizers.jwt.keys import parse_jwk, parse_jwks
from sidecar.authorizers.jwt.settings import DEFAULT_ALGORITHMS, JwtSettings, build_jwt
from sidecar.authorizers.jwt.token import ALGORITHMS
from sidecar.config import ApiSettings
from sidecar.reasons import Denied
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, ISSUER, NOW, FakeClock, Issuer, b64, request

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated via RFC 9864")  # joserfc, signing EdDSA on purpose

KEYS = {"ed25519": OKPKey.generate_key("Ed25519"), "ed448": OKPKey.generate_key("Ed448")}
CURVE = {"ed25519": "Ed25519", "ed448": "Ed448"}
CLAIMS = Issuer().claims()


def jwks(jwk_alg: str | None = None) -> dict[str, Any]:
    """joserfc's own public JWKs, optionally with a JWK `alg` (`"curve"`: the key's RFC 9864 name)."""
    keys = []
    for kid, key in KEYS.items():
        jwk = {**key.as_dict(private=False), "kid": kid, "use": "sig"}
        if jwk_alg is not None:
            jwk["alg"] = CURVE[kid] if jwk_alg == "curve" else jwk_alg
        keys.append(jwk)
    return {"keys": keys}


def joserfc_token(kid: str, alg: str, claims: dict[str, Any] = CLAIMS) -> str:
    return josejwt.encode({"alg": alg, "kid": kid}, claims, KEYS[kid], algorithms=[alg])


def authorizer(algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS, keyset: Any = None) -> JwtAuthorizer:
    return JwtAuthorizer(
        "corp",
        rules=ClaimRules(issuer=ISSUER, audiences=frozenset({AUDIENCE}), leeway=30),
        keys=StaticKeySource(keyset or parse_jwks(jwks(), fetched_at=NOW)),
        algorithms=frozenset(algorithms),
        clock=FakeClock(),
    )


async def reason(auth: JwtAuthorizer, token: str) -> str:
    with pytest.raises(Denied) as info:
        await auth.authenticate(request(token))
    return info.value.reason


async def test_joserfc_tokens_under_every_name_verify() -> None:
    """Ed25519 and Ed448 keys, each under its RFC 9864 name and the polymorphic EdDSA, whatever the JWK's `alg`
    says (absent, `EdDSA`, or the curve's name: the same signature operation under two names)."""
    for jwk_alg in (None, "EdDSA", "curve"):
        keyset = parse_jwks(jwks(jwk_alg), fetched_at=NOW)
        assert keyset.skipped == (), jwk_alg
        auth = authorizer(keyset=keyset)
        for kid in KEYS:
            for alg in (CURVE[kid], "EdDSA"):
                principal = await auth.authenticate(request(joserfc_token(kid, alg, {**CLAIMS, "jti": alg})))
                assert principal.id == CLAIMS["sub"], (jwk_alg, kid, alg)


def cross_token(kid: str, alg: str, private: Any) -> str:
    """A token whose header names `alg`, signed by `private` (joserfc refuses to make these)."""
    header = b64(json.dumps({"alg": alg, "kid": kid}))
    payload = b64(json.dumps(CLAIMS))
    signature = private.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{b64(signature)}"


async def test_the_curves_never_cross() -> None:
    auth = authorizer()
    ed25519_private = KEYS["ed25519"].private_key
    ed448_private = KEYS["ed448"].private_key
    assert isinstance(ed25519_private, ed25519.Ed25519PrivateKey)
    assert isinstance(ed448_private, ed448.Ed448PrivateKey)
    # the header's name does not fit the key named by kid: refused before any signature check
    assert await reason(auth, cross_token("ed25519", "Ed448", ed25519_private)) == jwterrors.KEY_ALGORITHM_MISMATCH
    assert await reason(auth, cross_token("ed448", "Ed25519", ed448_private)) == jwterrors.KEY_ALGORITHM_MISMATCH
    # the honest versions of the same tokens verify
    assert (await auth.authenticate(request(cross_token("ed25519", "Ed25519", ed25519_private)))).id == "user-123"
    assert (await auth.authenticate(request(cross_token("ed448", "Ed448", ed448_private)))).id == "user-123"
    # the verifiers themselves refuse a key of the other curve even if one were handed to them
    message = b"a.b"
    assert ALGORITHMS["Ed25519"].verify(message, ed25519_private.public_key(), ed25519_private.sign(message))
    assert not ALGORITHMS["Ed25519"].verify(message, ed448_private.public_key(), ed448_private.sign(message))
    assert not ALGORITHMS["Ed448"].verify(message, ed25519_private.public_key(), ed25519_private.sign(message))
    # a JWK whose alg names the other curve is skipped, never bound to it
    for kid, other in (("ed25519", "Ed448"), ("ed448", "Ed25519")):
        jwk = {**KEYS[kid].as_dict(private=False), "kid": kid, "alg": other}
        keyset = parse_jwks({"keys": [jwk]}, fetched_at=NOW)
        assert keyset.keys == () and "does not fit" in str(keyset.skipped[0])
    assert parse_jwk(KEYS["ed448"].as_dict(private=False)).algorithms == {"EdDSA", "Ed448"}


def build(tmp_path: Path, algorithms: list[str]) -> JwtAuthorizer:
    """The authorizer as the config builds it (settings validation, then `build_jwt`), keys from a JWKS file."""
    (tmp_path / "jwks.json").write_text(json.dumps(jwks()))
    settings = JwtSettings.model_validate(
        {"type": "jwt", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": algorithms, "jwks_file": "jwks.json"}
    )
    auth = build_jwt(settings, BuildContext(name="corp", base_dir=tmp_path, api=ApiSettings()))
    assert isinstance(auth, JwtAuthorizer)
    auth._clock = FakeClock()
    return auth


@pytest.mark.parametrize(
    ("algorithms", "admitted"),
    [
        (["EdDSA"], {"EdDSA", "Ed25519", "Ed448"}),  # EdDSA admits its fully-specified names
        (["Ed25519"], {"Ed25519"}),  # listed alone, a name admits only itself
        (["Ed448"], {"Ed448"}),
        (["Ed25519", "Ed448"], {"Ed25519", "Ed448"}),
    ],
)
async def test_the_algorithms_setting(tmp_path: Path, algorithms: list[str], admitted: set[str]) -> None:
    auth = build(tmp_path, algorithms)
    tokens = {
        "Ed25519": joserfc_token("ed25519", "Ed25519"),
        "Ed448": joserfc_token("ed448", "Ed448"),
        "EdDSA": joserfc_token("ed25519", "EdDSA"),
    }
    for alg, token in tokens.items():
        if alg in admitted:
            assert (await auth.authenticate(request(token))).id == "user-123", alg
        else:
            assert await reason(auth, token) == jwterrors.ALGORITHM_NOT_ALLOWED, alg


def test_the_default_algorithms_name_them() -> None:
    assert {"Ed25519", "Ed448"} <= set(
        JwtSettings.model_validate(
            {"type": "jwt", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": "k.json"}
        ).algorithms
    )
