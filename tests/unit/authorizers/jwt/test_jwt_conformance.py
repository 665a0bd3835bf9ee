"""Conformance against published vectors: Wycheproof JWS, RFC 7520 JWS examples, PyJWT's JWK fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.authorizers.jwt.errors import (
    ALGORITHM_NOT_ALLOWED,
    KEY_ALGORITHM_MISMATCH,
    REASONS,
    TOKEN_MALFORMED,
    JwtError,
)
from sidecar.authorizers.jwt.jwks import StaticKeySource
from sidecar.authorizers.jwt.keys import (
    SKIP_MALFORMED,
    SKIP_SYMMETRIC,
    SKIP_UNSUPPORTED,
    SKIP_USAGE,
    SKIP_WEAK,
    JwksError,
    KeyRejected,
    parse_jwk,
    parse_jwks,
)
from sidecar.authorizers.jwt.settings import DEFAULT_ALGORITHMS
from sidecar.authorizers.jwt.token import verify_jws
from sidecar.issues import ConfigError
from tests.unit.authorizers.jwt.jwt_testkit import DATA

ALL_ALGS = frozenset(DEFAULT_ALGORITHMS)
WYCHEPROOF = json.loads((DATA / "wycheproof" / "json_web_signature_test.json").read_text())

# Wycheproof marks these `valid`, but their key carries `"alg": "PS256"` while the token is PS384. We bind a key to
# its JWK `alg` (RFC 7517 4.4; required by our spec), so we refuse them; RFC 7520 figure 20 itself verifies below
# with the cookbook's key, which names no `alg`.
KEY_BOUND_TO_OTHER_ALG = {346: "PS384 token, key bound to PS256", 350: "PS384 token, key bound to PS256"}
# Marked `valid` (HS256) although a '?' sits inside a base64url segment: a lenient decoder skips it. Our decoder is
# strict (RFC 7515 2), so they are malformed before their algorithm is even looked at.
NOT_BASE64URL = {372: "'?' inside the header", 373: "'?' inside the payload"}


def _cases() -> list[Any]:
    out = []
    for group in WYCHEPROOF["testGroups"]:
        jwk = group.get("public") or group["private"]
        for test in group["tests"]:
            out.append(pytest.param(jwk, test, id=f"tc{test['tcId']}-{test['comment']}"))
    return out


@pytest.mark.parametrize(("jwk", "test"), _cases())
def test_wycheproof_jws(jwk: dict[str, Any], test: dict[str, Any]) -> None:
    keyset = parse_jwks({"keys": [jwk]}, fetched_at=0.0)
    symmetric = jwk["kty"] == "oct"
    expected_valid = test["result"] == "valid" and not symmetric and test["tcId"] not in KEY_BOUND_TO_OTHER_ALG
    token = test["jws"] if isinstance(test["jws"], str) else json.dumps(test["jws"])
    if expected_valid:
        assert verify_jws(token, keyset, ALL_ALGS) is not None
        return
    with pytest.raises(JwtError) as info:
        verify_jws(token, keyset, ALL_ALGS)
    assert info.value.reason in REASONS
    if test["tcId"] in NOT_BASE64URL:  # the header is checked first: HS256 there, a bad header here
        assert info.value.reason in (TOKEN_MALFORMED, ALGORITHM_NOT_ALLOWED)
    elif symmetric and test["result"] == "valid":
        assert info.value.reason == ALGORITHM_NOT_ALLOWED  # HS256 is never accepted
    if test["tcId"] in KEY_BOUND_TO_OTHER_ALG:
        assert info.value.reason == KEY_ALGORITHM_MISMATCH


def test_wycheproof_counts_are_what_we_think() -> None:
    """Guard against a silently shrunken vector file: every test is exercised above."""
    total = sum(len(g["tests"]) for g in WYCHEPROOF["testGroups"])
    assert total == WYCHEPROOF["numberOfTests"] == 401


def test_wycheproof_valid_cases_fail_when_their_alg_is_not_allowed() -> None:
    """The allowlist is per authorizer: the same valid token is refused once its algorithm is left out."""
    checked = 0
    for group in WYCHEPROOF["testGroups"]:
        jwk = group.get("public") or group["private"]
        if jwk["kty"] == "oct":
            continue
        keyset = parse_jwks({"keys": [jwk]}, fetched_at=0.0)
        for test in group["tests"]:
            if test["result"] != "valid" or test["tcId"] in KEY_BOUND_TO_OTHER_ALG:
                continue
            alg = _token_alg(test["jws"])
            verify_jws(test["jws"], keyset, alg)
            with pytest.raises(JwtError) as info:
                verify_jws(test["jws"], keyset, ALL_ALGS - alg)
            assert info.value.reason == ALGORITHM_NOT_ALLOWED
            checked += 1
    assert checked >= 25


def _token_alg(token: str) -> frozenset[str]:
    from sidecar.authorizers.jwt.token import b64url_decode

    return frozenset({json.loads(b64url_decode(token.split(".")[0], "header"))["alg"]})


RFC7520 = sorted((DATA / "rfc7520").glob("*.json"))


@pytest.mark.parametrize("path", RFC7520, ids=lambda p: p.stem)
def test_rfc7520_jws_examples(path: Path) -> None:
    example = json.loads(path.read_text())
    jwk = example["input"]["key"]
    compact = example["output"]["compact"]
    payload = example["input"]["payload"].encode()
    keyset = parse_jwks({"keys": [jwk]}, fetched_at=0.0)
    if jwk["kty"] == "oct":
        assert keyset.keys == ()  # an HMAC key is never loaded ...
        with pytest.raises(JwtError) as info:
            verify_jws(compact, keyset, ALL_ALGS)
        assert info.value.reason == ALGORITHM_NOT_ALLOWED  # ... and HS256 is never allowed
        return
    assert verify_jws(compact, keyset, ALL_ALGS) == payload
    tampered = compact[:-6] + ("AAAAAA" if not compact.endswith("AAAAAA") else "BBBBBB")
    with pytest.raises(JwtError):
        verify_jws(tampered, keyset, ALL_ALGS)


def test_rfc7520_private_keys_load_as_public_keys() -> None:
    """The cookbook ships private JWKs; only their public members are read."""
    example = json.loads((DATA / "rfc7520" / "4_1.rsa_v15_signature.json").read_text())
    key = parse_jwk(example["input"]["key"])
    assert not hasattr(key.key, "private_numbers")
    assert key.algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}


PYJWT = DATA / "pyjwt-keys"


def test_pyjwt_keyset_with_unknown_alg_loads_the_known_key() -> None:
    keyset = parse_jwks((PYJWT / "jwk_keyset_with_unknown_alg.json").read_bytes(), fetched_at=0.0)
    assert [k.kid for k in keyset.keys] == ["U1MayerhVuRj8xtFR8hyMH9lCfVMKlb3TG7mbQAS19M"]
    assert keyset.keys[0].algorithms == {"RS256"}
    assert len(keyset.skipped) == 1 and "lYXxnemSzWNBUoPug_h0hZnjPi5oKCmQ9awQJaZCWWM" in str(keyset.skipped[0])
    assert keyset.skipped[0].kid == "lYXxnemSzWNBUoPug_h0hZnjPi5oKCmQ9awQJaZCWWM"


def test_pyjwt_keyset_with_only_unknown_alg_yields_no_keys() -> None:
    keyset = parse_jwks((PYJWT / "jwk_keyset_only_unknown_alg.json").read_bytes(), fetched_at=0.0)
    assert keyset.keys == () and len(keyset.skipped) == 1
    with pytest.raises(ConfigError, match=r"keys\[0\]: unusable key .*\(no key in the set is usable\)"):
        StaticKeySource.from_file(str(PYJWT / "jwk_keyset_only_unknown_alg.json"))


def test_pyjwt_empty_file_is_not_a_key_set() -> None:
    with pytest.raises(JwksError):
        parse_jwks((PYJWT / "jwk_empty.json").read_bytes(), fetched_at=0.0)
    with pytest.raises(ConfigError, match="invalid JSON"):
        StaticKeySource.from_file(str(PYJWT / "jwk_empty.json"))


@pytest.mark.parametrize(
    ("name", "algorithms"),
    [
        ("jwk_ec_pub_P-256.json", {"ES256"}),
        ("jwk_ec_key_P-256.json", {"ES256"}),
        ("jwk_ec_pub_P-384.json", {"ES384"}),
        ("jwk_ec_pub_P-521.json", {"ES512"}),
        ("jwk_okp_pub_Ed25519.json", {"EdDSA", "Ed25519"}),
        ("jwk_okp_key_Ed25519.json", {"EdDSA", "Ed25519"}),
        ("jwk_okp_pub_Ed448.json", {"EdDSA", "Ed448"}),
        ("jwk_rsa_pub.json", {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
        ("jwk_rsa_key.json", {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ],
)
def test_pyjwt_keys_bind_their_algorithms(name: str, algorithms: set[str]) -> None:
    jwk = json.loads((PYJWT / name).read_text())
    jwk.pop("alg", None)  # the type and curve decide; a JWK alg would narrow further
    assert parse_jwk(jwk).algorithms == algorithms


@pytest.mark.parametrize(
    ("name", "why"),
    [("jwk_hmac.json", "symmetric"), ("jwk_ec_pub_secp256k1.json", "curve"), ("jwk_ec_key_secp256k1.json", "curve")],
)
def test_pyjwt_keys_we_never_use(name: str, why: str) -> None:
    with pytest.raises(KeyRejected, match=why):
        parse_jwk(json.loads((PYJWT / name).read_text()))


def test_jwk_alg_narrows_and_use_key_ops_bind() -> None:
    jwk = json.loads((PYJWT / "jwk_rsa_pub.json").read_text())
    assert parse_jwk({**jwk, "alg": "PS256"}).algorithms == {"PS256"}
    with pytest.raises(KeyRejected, match="does not fit"):
        parse_jwk({**jwk, "alg": "ES256"})
    with pytest.raises(KeyRejected, match="unknown"):
        parse_jwk({**jwk, "alg": "RSA-OAEP"})
    with pytest.raises(KeyRejected, match="use"):
        parse_jwk({**jwk, "use": "enc"})
    with pytest.raises(KeyRejected, match="key_ops"):
        parse_jwk({**jwk, "key_ops": ["encrypt"]})
    assert parse_jwk({**jwk, "key_ops": ["verify"], "use": "sig"}).kty == "RSA"


def test_short_rsa_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(KeyRejected, match="shorter than 2048"):
        parse_jwk(RSAAlgorithm.to_jwk(small, as_dict=True))


def test_unchanged_keys_are_reused_across_refreshes() -> None:
    """Keys are parsed once per rotation: a refresh returning the same JWK yields the same key object."""
    jwks = json.loads((PYJWT / "jwk_keyset_with_unknown_alg.json").read_text())
    first = parse_jwks(jwks, fetched_at=0.0)
    second = parse_jwks(jwks, fetched_at=60.0, previous=first)
    assert second is not first and second.keys[0] is first.keys[0]
    changed = json.loads(json.dumps(jwks))
    changed["keys"][0]["kid"] = "rotated"
    third = parse_jwks(changed, fetched_at=120.0, previous=second)
    assert third.keys[0] is not first.keys[0]


def test_strict_base64url_on_an_otherwise_valid_rs256_token() -> None:
    """Wycheproof's base64 group is HS256 only; the same edits on a valid RS256 token are malformed."""
    group = next(g for g in WYCHEPROOF["testGroups"] if g["tests"][0]["tcId"] == 259)
    keyset = parse_jwks({"keys": [group["public"]]}, fetched_at=0.0)
    valid = group["tests"][3]["jws"]
    verify_jws(valid, keyset, ALL_ALGS)
    header, payload, signature = valid.split(".")
    for edited in (
        f"{header}.{payload}?.{signature}",
        f"{header}.{payload} .{signature}",
        f"{header}.{payload}.{signature}=",
        f"{header}=.{payload}.{signature}",
        f"{header}.{payload}.+{signature[1:]}",
    ):
        with pytest.raises(JwtError) as info:
            verify_jws(edited, keyset, ALL_ALGS)
        assert info.value.reason == TOKEN_MALFORMED, edited


WYCHEPROOF_JWK = json.loads((DATA / "wycheproof" / "json_web_key_test.json").read_text())


def _jwk_cases() -> list[Any]:
    return [
        pytest.param(group, test, id=f"tc{test['tcId']}-{group['comment']}-{test['comment']}")
        for group in WYCHEPROOF_JWK["testGroups"]
        for test in group["tests"]
    ]


@pytest.mark.parametrize(("group", "test"), _jwk_cases())
def test_wycheproof_jwk(group: dict[str, Any], test: dict[str, Any]) -> None:
    """Key-set handling: every key that must not be used (ROCA, 1024-bit, e=1, wrong use/kty/curve/alg, invalid
    point, any symmetric key) is skipped, so its tokens are refused; the one valid asymmetric case verifies."""
    keyset = parse_jwks(group.get("public") or group["private"], fetched_at=0.0)
    symmetric = all(k.get("kty") == "oct" for k in (group.get("public") or group["private"])["keys"])
    if test["result"] == "valid" and not symmetric:
        assert verify_jws(test["jws"], keyset, ALL_ALGS) == b"foo"
        return
    with pytest.raises(JwtError) as info:
        verify_jws(test["jws"], keyset, ALL_ALGS)
    assert info.value.reason in REASONS
    if test["comment"] not in ("rejectsModifiedSignature", "rejectsValid"):  # (those two: HMAC tokens)
        assert keyset.keys == ()  # the key itself was refused


def test_wycheproof_jwk_reasons_for_skipped_keys() -> None:
    reasons = {
        g["comment"]: parse_jwks(g.get("public") or g["private"], fetched_at=0.0).skipped
        for g in WYCHEPROOF_JWK["testGroups"]
    }
    expected = {
        "jws_rsa_roca_key": ("ROCA", SKIP_WEAK),
        "keysize_too_small": ("shorter than 2048", SKIP_WEAK),
        "exponentOne": ("e", SKIP_MALFORMED),
        "wrong_algorithm": ("does not fit", SKIP_UNSUPPORTED),
        "invalid_algorithm": ("unknown", SKIP_UNSUPPORTED),
        "invalid_use": ("use", SKIP_USAGE),
        "invalid_point": ("invalid EC key", SKIP_MALFORMED),
        "jws_mixedSymmetryKeyset": ("symmetric", SKIP_SYMMETRIC),
    }
    for comment, (text, reason) in expected.items():
        assert text in str(reasons[comment][0]) and reasons[comment][0].reason == reason, comment
