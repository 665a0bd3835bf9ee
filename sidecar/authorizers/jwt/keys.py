"""JSON Web Keys become verification keys: once per rotation, each bound to the algorithms it may verify.

`parse_jwk` / `parse_jwks` turn JWK JSON into `VerificationKey`s holding a `cryptography` public key and the set of
JWS algorithms that key may verify. The set is decided by the key's type and curve, narrowed by the JWK's `alg`;
`use`/`key_ops` that do not allow verification, symmetric (`oct`) keys and unknown types or algorithms are
skipped, never fatal, so one odd key in a provider's set cannot take the whole issuer down. Pure: no I/O, no
clock (where keys come from is `jwks.py`), no tokens (that is `token.py`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from ...issues import ConfigError, ConfigIssue, format_loc
from ...policy.jsonpos import JsonSyntaxError, Located, parse_located

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVE_ALGORITHM = MappingProxyType({"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"})
EC_COORDINATE_BYTES = MappingProxyType({"P-256": 32, "P-384": 48, "P-521": 66})
"""The full size of an EC coordinate per curve: RFC 7518 6.2.1.2 requires `x` and `y` of exactly this length."""
OKP_CURVES = frozenset({"Ed25519", "Ed448"})
"""Also the RFC 9864 fully-specified JWS algorithm names: `Ed25519` is EdDSA on an Ed25519 key, `Ed448` on Ed448."""
SUPPORTED_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_CURVE_ALGORITHM.values()) | {"EdDSA"} | OKP_CURVES
"""Every JWS algorithm the sidecar can verify: asymmetric only. HMAC and `none` are never supported."""

JWK_ALGORITHM_ALIASES = MappingProxyType({"ES521": "ES512"})
"""Legacy JWK `alg` spellings accepted in key sets (PyJWT and Wycheproof use `ES521` for ES512). Token headers
must use the registered name."""

MIN_RSA_BITS = 2048
MAX_KEYS = 100
"""A key set with more keys than this is truncated: bounds the work a hostile or broken JWKS can cause."""

_PUBLIC_MEMBERS = MappingProxyType(
    {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x")}
)


# Why a JWK was skipped: a closed set, the `reason` label of `authz_jwks_keys_skipped_total` (docs/metrics.md).
SKIP_MALFORMED = "malformed"
"""Not a JWK object, no `kty`, a `kid`/`alg` that is not a string, key material that does not load."""
SKIP_UNSUPPORTED = "unsupported"
"""A key type, curve or JWK `alg` the sidecar does not verify with, or an `alg` that does not fit the key."""
SKIP_SYMMETRIC = "symmetric"
SKIP_USAGE = "usage"
"""`use` other than `sig`, or `key_ops` without `verify`."""
SKIP_WEAK = "weak_key"
"""RSA shorter than 2048 bits, or with the ROCA fingerprint."""
SKIP_SHORT_EC = "short_ec_coordinates"
"""EC `x`/`y` shorter than the curve's coordinate size (leading zero bytes dropped; out of RFC 7518 6.2.1.2)."""
SKIP_TOO_MANY = "too_many"
"""Keys beyond `MAX_KEYS`."""
SKIP_REASONS = frozenset(
    {SKIP_MALFORMED, SKIP_UNSUPPORTED, SKIP_SYMMETRIC, SKIP_USAGE, SKIP_WEAK, SKIP_SHORT_EC, SKIP_TOO_MANY}
)


class KeyRejected(ValueError):
    """A JWK that will not be used for verification; the message says why (logged, never fatal), `reason` is one
    of `SKIP_REASONS`."""

    def __init__(self, message: str, reason: str = SKIP_UNSUPPORTED) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SkippedKey:
    """One JWK (or, for `too_many`, `count` of them) left out of a key set, and why."""

    index: int | None
    kid: str | None
    reason: str
    """One of `SKIP_REASONS`."""
    message: str
    count: int = 1

    def __str__(self) -> str:
        if self.index is None:
            return self.message
        return f"keys[{self.index}] (kid {_short_repr(self.kid)}): {self.message}"


def _short_repr(value: Any) -> str:
    """A JWKS member for a log line: repr (no raw control characters), cut to 64 characters."""
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


class JwksError(Exception):
    """A key set could not be fetched or parsed; the last good keys keep serving."""


@dataclass(frozen=True, eq=False, slots=True)
class VerificationKey:
    """One public key and what it may verify. Created once per key per rotation and reused while unchanged."""

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    key: Any
    """A `cryptography` public key object (RSA, EC or Ed25519/Ed448)."""
    fingerprint: str
    """SHA-256 over the members that decide the key's behaviour: equal fingerprints mean an unchanged key."""


def _fingerprint(jwk: Mapping[str, Any], members: Iterable[str]) -> str:
    relevant = {name: jwk.get(name) for name in (*members, "kid", "alg", "use", "key_ops")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _algorithms_for(kty: str, jwk: Mapping[str, Any]) -> frozenset[str]:
    """What the key's type and curve allow, before the JWK's own `alg` narrows it."""
    if kty == "RSA":
        return RSA_ALGORITHMS
    crv = jwk.get("crv")
    if kty == "EC":
        alg = EC_CURVE_ALGORITHM.get(crv) if isinstance(crv, str) else None
        if alg is None:
            raise KeyRejected(f"unsupported EC curve {crv!r}")
        return frozenset({alg})
    if kty == "OKP":
        if crv not in OKP_CURVES:
            raise KeyRejected(f"unsupported OKP curve {crv!r}")
        return frozenset({"EdDSA", crv})  # polymorphic EdDSA, or the curve's own RFC 9864 name
    if kty == "oct":
        raise KeyRejected("symmetric (oct) keys are never used: HMAC tokens are not accepted", SKIP_SYMMETRIC)
    raise KeyRejected(f"unsupported key type {kty!r}")


def _check_usage(jwk: Mapping[str, Any]) -> None:
    """`use` and `key_ops` must allow signature verification when present (RFC 7517 4.2, 4.3)."""
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise KeyRejected(f"key use is {_short_repr(use)}, not 'sig'", SKIP_USAGE)
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise KeyRejected("key_ops does not include 'verify'", SKIP_USAGE)


_ROCA_PRIMES: tuple[int, ...] = (
    *(3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103),
    *(107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167),
)


def _powers_of_65537(p: int) -> frozenset[int]:
    powers = {1}
    value = 65537 % p
    while value not in powers:
        powers.add(value)
        value = value * 65537 % p
    return frozenset(powers)


_ROCA_SUBGROUPS = tuple((p, _powers_of_65537(p)) for p in _ROCA_PRIMES)


def has_roca_fingerprint(modulus: int) -> bool:
    """Whether an RSA modulus has the structure of keys from the Infineon library broken by ROCA (CVE-2017-15361).

    Such primes are built as k*M + (65537^a mod M), so the modulus is a power of 65537 modulo each small prime of
    M. A random modulus passes this for all 38 primes with probability about 4e-9.
    """
    return all(modulus % p in powers for p, powers in _ROCA_SUBGROUPS)


def _check_ec_coordinates(public: Mapping[str, Any]) -> None:
    """Refuse, with its own reason, EC coordinates shorter than the curve's size: some issuers drop leading zero
    bytes (out of RFC 7518 6.2.1.2). Such a key is skipped like any invalid one; the distinct reason lets the
    fetch log it at WARNING and count it, since that issuer's tokens signed with it will fail as `UnknownKey`."""
    size = EC_COORDINATE_BYTES.get(public.get("crv"))  # type: ignore[arg-type]
    if size is None:
        return
    for name in ("x", "y"):
        value = public.get(name)
        if not isinstance(value, str):
            continue  # the loader refuses it as malformed
        try:
            length = len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        except (binascii.Error, ValueError):
            continue
        if length < size:
            raise KeyRejected(
                f"EC coordinate {name} is {length} bytes, not the {size} of {public.get('crv')} "
                "(leading zeros dropped: out of RFC 7518 6.2.1.2)",
                SKIP_SHORT_EC,
            )


def _load_public_key(kty: str, public: dict[str, Any]) -> Any:
    loaders: dict[str, Callable[[dict[str, Any]], Any]] = {
        "RSA": RSAAlgorithm.from_jwk,
        "EC": ECAlgorithm.from_jwk,
        "OKP": OKPAlgorithm.from_jwk,
    }
    if kty == "EC":
        _check_ec_coordinates(public)
    try:
        key = loaders[kty](public)
    except (InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        raise KeyRejected(f"invalid {kty} key: {exc}", SKIP_MALFORMED) from None
    if isinstance(key, RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyRejected(f"RSA key of {key.key_size} bits is shorter than {MIN_RSA_BITS}", SKIP_WEAK)
        if has_roca_fingerprint(key.public_numbers().n):
            raise KeyRejected(
                "RSA key has the ROCA fingerprint (CVE-2017-15361): its private key can be recovered", SKIP_WEAK
            )
    return key


def parse_jwk(jwk: Any, reuse: Mapping[str, VerificationKey] | None = None) -> VerificationKey:
    """Turn one JWK into a `VerificationKey`, or raise `KeyRejected` saying why it cannot verify anything.

    Only the public members are read, so a JWK that also carries private members (`d`, `p`, ...) yields its
    public key. `reuse` maps fingerprints to keys parsed before: an unchanged key is returned as the same object,
    which keeps verified-token cache entries valid across a refresh that did not rotate that key.
    """
    if not isinstance(jwk, dict):
        raise KeyRejected("a JWK must be a JSON object", SKIP_MALFORMED)
    kty = jwk.get("kty")
    if not isinstance(kty, str):
        raise KeyRejected("missing kty", SKIP_MALFORMED)
    allowed = _algorithms_for(kty, jwk)
    members = _PUBLIC_MEMBERS[kty]
    fingerprint = _fingerprint(jwk, members)
    if reuse is not None and fingerprint in reuse:
        return reuse[fingerprint]
    _check_usage(jwk)
    alg = jwk.get("alg")
    if alg is not None:
        if not isinstance(alg, str):
            raise KeyRejected("alg must be a string", SKIP_MALFORMED)
        alg = JWK_ALGORITHM_ALIASES.get(alg, alg)
        if alg not in allowed:
            raise KeyRejected(f"alg {_short_repr(alg)} is unknown or does not fit a {kty} key")
        if kty != "OKP":
            allowed = frozenset({alg})
        # An OKP key keeps both names: `EdDSA` on an Ed25519 key *is* `Ed25519` (RFC 9864 2.2), the same signature
        # operation, so a JWK saying either serves tokens saying either. The other curve's name never fits.
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyRejected("kid must be a string", SKIP_MALFORMED)
    public = {name: jwk[name] for name in members if name in jwk}
    return VerificationKey(
        kid=kid, kty=kty, algorithms=allowed, key=_load_public_key(kty, public), fingerprint=fingerprint
    )


@dataclass(frozen=True, eq=False, slots=True)
class KeySet:
    """An immutable snapshot of an issuer's usable keys. A refresh builds a new one; readers never see a partial set.

    `skipped` lists why each unusable JWK was left out (for logs, metrics and tests).
    """

    keys: tuple[VerificationKey, ...]
    fetched_at: float
    skipped: tuple[SkippedKey, ...] = ()
    by_kid: Mapping[str | None, tuple[VerificationKey, ...]] = field(init=False)

    def __post_init__(self) -> None:
        index: dict[str | None, list[VerificationKey]] = {}
        for key in self.keys:
            index.setdefault(key.kid, []).append(key)
        object.__setattr__(self, "by_kid", MappingProxyType({k: tuple(v) for k, v in index.items()}))

    def candidates(self, kid: str | None, alg: str) -> tuple[VerificationKey, ...]:
        """Keys that may verify a token with this `kid` and `alg`.

        With a `kid`, only keys carrying exactly that `kid`. Without one, a key is chosen only when it is the
        single key in the set able to verify `alg`: trying every key would let one forged token cost N
        verifications.
        """
        if kid is not None:
            return tuple(k for k in self.by_kid.get(kid, ()) if alg in k.algorithms)
        usable = tuple(k for k in self.keys if alg in k.algorithms)
        return usable if len(usable) == 1 else ()

    def has_kid(self, kid: str | None) -> bool:
        """Whether any key carries this `kid` (whatever its algorithms)."""
        return kid in self.by_kid

    def contains(self, key: VerificationKey) -> bool:
        """Whether this exact key object is still part of the set (identity: unchanged keys are reused)."""
        return any(k is key for k in self.by_kid.get(key.kid, ()))


def parse_jwks(document: Any, fetched_at: float, previous: KeySet | None = None) -> KeySet:
    """Parse a JWKS document (`{"keys": [...]}`, as bytes, text or decoded JSON) into a `KeySet`.

    Unusable keys are skipped with a reason; a document that is not a JWKS raises `JwksError`. An empty result
    is returned as an empty set: callers decide whether that is acceptable.
    """
    if isinstance(document, bytes | str):
        try:
            document = json.loads(document)
        except (ValueError, RecursionError) as exc:
            raise JwksError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError('not a JWKS: expected an object with a "keys" array')
    reuse = {k.fingerprint: k for k in previous.keys} if previous is not None else None
    keys: list[VerificationKey] = []
    skipped: list[SkippedKey] = []
    raw_keys: list[Any] = document["keys"]
    if len(raw_keys) > MAX_KEYS:
        extra = len(raw_keys) - MAX_KEYS
        skipped.append(SkippedKey(None, None, SKIP_TOO_MANY, f"{extra} keys beyond the limit of {MAX_KEYS}", extra))
        raw_keys = raw_keys[:MAX_KEYS]
    for index, jwk in enumerate(raw_keys):
        try:
            keys.append(parse_jwk(jwk, reuse))
        except KeyRejected as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            skipped.append(SkippedKey(index, kid if isinstance(kid, str) else None, exc.reason, str(exc)))
    return KeySet(keys=tuple(keys), fetched_at=fetched_at, skipped=tuple(skipped))


def parse_jwks_file(data: bytes, file: str) -> tuple[KeySet, tuple[ConfigIssue, ...]]:
    """A JWKS file's key set and, located, the keys it skipped (for the log); `ConfigError` when the file is not
    a key set or holds no usable key, every problem at `file:line:col` like the config's own: a JSON syntax
    error where it is, an unusable key at its `keys[i]`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(file, 0, 0, "", "invalid JWKS file: not UTF-8 text")]) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([_syntax_issue(file, text, exc)]) from None
    except (ValueError, RecursionError):
        raise ConfigError([ConfigIssue(file, 0, 0, "", "invalid JSON: nested too deeply")]) from None
    located = Located(text, document, None)

    def issue(path: tuple[str | int, ...], message: str) -> ConfigIssue:
        line, column = located.position(path)
        return ConfigIssue(file, line, column, format_loc(path), message)

    try:
        keyset = parse_jwks(document, fetched_at=0.0)
    except JwksError as exc:
        where: tuple[str | int, ...] = ("keys",) if isinstance(document, dict) and "keys" in document else ()
        raise ConfigError([issue(where, str(exc))]) from None
    skipped = tuple(issue(_skip_path(skip), _skip_message(skip)) for skip in keyset.skipped)
    if not keyset.keys:
        if not skipped:
            raise ConfigError([issue(("keys",), "the key set is empty: there is no key to verify tokens with")])
        raise ConfigError([replace(i, message=f"{i.message} (no key in the set is usable)") for i in skipped])
    return keyset, skipped


def _syntax_issue(file: str, text: str, exc: json.JSONDecodeError) -> ConfigIssue:
    """Where and why the JSON is malformed, in the words policy files use (`jsonpos`), else in `json`'s."""
    try:
        parse_located(text)
    except JsonSyntaxError as syntax:
        line, column = Located(text, None, {}).line_col(syntax.offset)
        return ConfigIssue(file, line, column, "", f"invalid JSON: {syntax}")
    return ConfigIssue(file, exc.lineno, exc.colno, "", f"invalid JSON: {exc.msg}")


def _skip_path(skip: SkippedKey) -> tuple[str | int, ...]:
    return ("keys",) if skip.index is None else ("keys", skip.index)


def _skip_message(skip: SkippedKey) -> str:
    if skip.index is None:
        return skip.message
    kid = f" (kid {_short_repr(skip.kid)})" if skip.kid is not None else ""
    return f"unusable key{kid}: {skip.message}"
