"""A compact JWS, checked and verified: structure first, cryptography second, claims never (that is `claims.py`).

A token is checked structurally (size, compact form, strict base64url, JSON objects without duplicate names, `alg`
on the allowlist and never `none`, no `crit`, no key material or key URLs in the header), then verified with the
issuer's key named by `kid` (keys come from `keys.py`; the key's type and JWK `alg` decide which algorithms it may
verify, so an RSA key can never serve as an HMAC secret). PyJWT supplies the signature algorithms
(`jwt.algorithms`) except RFC 9864's `Ed25519`/`Ed448`, verified here with `cryptography`; its decoder is not used,
because its parsing alone costs more than our whole budget for a cached token and because we need a distinct
reason for every failure.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.algorithms import get_default_algorithms

from ...explanation import Step, listed, refused, shown_value
from .errors import (
    ALGORITHM_NONE,
    ALGORITHM_NOT_ALLOWED,
    INVALID_SIGNATURE,
    KEY_ALGORITHM_MISMATCH,
    TOKEN_MALFORMED,
    TOKEN_MISSING,
    TOKEN_TOO_LARGE,
    UNKNOWN_KEY,
    UNSUPPORTED_CRITICAL,
    UNTRUSTED_KEY_HEADER,
    JwtError,
)
from .keys import OKP_CURVES, SUPPORTED_ALGORITHMS, KeySet, VerificationKey

if TYPE_CHECKING:
    from ..sources import IdentitySource

UNTRUSTED_HEADERS = ("jku", "x5u", "jwk")
"""Header parameters that would let the token choose its own key. A token carrying one is refused outright;
`x5c`/`x5t` are ignored (never used to find or trust a key)."""


class Verifier(Protocol):
    """What `verify_signature` needs of a JWS algorithm (PyJWT's `Algorithm.verify` has this shape)."""

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool: ...


class FullySpecifiedEdDSA:
    """RFC 9864's fully-specified EdDSA algorithms: `Ed25519` verifies only with an Ed25519 key, `Ed448` only with
    an Ed448 key (PyJWT knows only the polymorphic `EdDSA`). Keys are bound to their curve in `keys.py` already;
    the type check here keeps the two from ever crossing even if a caller hands in another key."""

    __slots__ = ("key_type",)

    def __init__(self, key_type: type[Ed25519PublicKey] | type[Ed448PublicKey]) -> None:
        self.key_type = key_type

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        if not isinstance(key, self.key_type):
            return False
        try:
            key.verify(sig, msg)
        except InvalidSignature:
            return False
        return True


ALGORITHMS: Mapping[str, Verifier] = MappingProxyType(
    {
        **{name: alg for name, alg in get_default_algorithms().items() if name in SUPPORTED_ALGORITHMS},
        "Ed25519": FullySpecifiedEdDSA(Ed25519PublicKey),
        "Ed448": FullySpecifiedEdDSA(Ed448PublicKey),
    }
)


def allowed_algorithms(names: Iterable[str]) -> frozenset[str]:
    """The header `alg` values an `algorithms:` list admits: as listed, and `EdDSA` also admits `Ed25519` and
    `Ed448` (the same signatures under their RFC 9864 names; a key still verifies only its own curve). `Ed25519`
    or `Ed448` listed alone admit only that name."""
    allowed = frozenset(names)
    return allowed | OKP_CURVES if "EdDSA" in allowed else allowed


# -- structure ----------------------------------------------------------------------------------------------

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_UNUSED_BITS_MASK = {2: 0b1111, 3: 0b11}
"""For a segment whose length is 2 or 3 mod 4, how many low bits of its last character encode nothing."""


def b64url_decode(segment: str, what: str) -> bytes:
    """Strict base64url (RFC 7515 2): URL alphabet only, no padding, no whitespace, zero unused bits.

    Strictness matters: lenient decoders let many different strings carry one signature, which breaks token
    caches and blocklists keyed by the token text.
    """
    remainder = len(segment) % 4
    if remainder == 1 or not _B64URL.fullmatch(segment):
        raise JwtError(TOKEN_MALFORMED, f"the {what} is not base64url")
    if remainder and _ALPHABET.index(segment[-1]) & _UNUSED_BITS_MASK[remainder]:
        raise JwtError(TOKEN_MALFORMED, f"the {what} is not canonical base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the checks above admit only decodable text
        raise JwtError(TOKEN_MALFORMED, f"the {what} is not base64url") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Member names are interned: across 100,000 cached tokens every claim name is the same few strings (interned
    # strings are freed like any other once nothing holds them). Values are shared later, and only for verified
    # claims (`claims.shared_values`): this hook also parses the unverified JOSE header.
    out = {_intern(k): v for k, v in pairs}
    if len(out) != len(pairs):
        raise ValueError("duplicate member name")
    return out


_intern = sys.intern


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
"""Built once: `json.loads` with hooks would construct a decoder per call."""


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object with unique member names (RFC 7515 5.2, RFC 7519 4); anything else is malformed."""
    try:
        text = data.decode("utf-8")
        value = _DECODER.decode(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise JwtError(TOKEN_MALFORMED, f"the {what} is not a JSON object") from None
    if not isinstance(value, dict):
        raise JwtError(TOKEN_MALFORMED, f"the {what} is not a JSON object")
    if "\\u" in text and not _valid_unicode(value):
        raise JwtError(TOKEN_MALFORMED, f"the {what} holds an unpaired surrogate (\\uD800-\\uDFFF)")
    return value


def _valid_unicode(value: Any) -> bool:
    """False when a `\\uD800`-style escape left an unpaired surrogate in a string: not Unicode (RFC 8259 8.2),
    and a claim holding one could not be sent upstream as a header or in a CheckResponse."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A compact JWS that passed every structural check, before any cryptography."""

    header: Mapping[str, Any]
    alg: str
    kid: str | None
    signing_input: bytes
    signature: bytes
    payload_segment: str


@dataclass(frozen=True, slots=True)
class CheckedHeader:
    """A protected header that passed every check for one algorithm allowlist."""

    fields: Mapping[str, Any]
    alg: str
    kid: str | None


def check_header(segment: str, algorithms: frozenset[str]) -> CheckedHeader:
    """Decode and check a protected header: `alg` allowed (never `none`), no key-bearing parameters, no `crit`."""
    header = parse_json_object(b64url_decode(segment, "header"), "header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JwtError(TOKEN_MALFORMED, "the header has no 'alg'")
    if alg.lower() == "none":
        raise JwtError(ALGORITHM_NONE, "unsigned tokens (alg none) are never accepted")
    if alg not in algorithms:
        message = f"algorithm {alg[:16]!r} is not allowed here"
        raise JwtError(
            ALGORITHM_NOT_ALLOWED,
            message,
            partial(
                refused, ALGORITHM_NOT_ALLOWED, message, ("alg", shown_value(alg)), ("allowed", listed(algorithms))
            ),
        )
    for name in UNTRUSTED_HEADERS:
        if name in header:
            raise JwtError(UNTRUSTED_KEY_HEADER, f"the header names its own key ({name}); keys come from the issuer")
    if "crit" in header:
        raise JwtError(UNSUPPORTED_CRITICAL, "the header marks extensions critical; none are supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwtError(TOKEN_MALFORMED, "'kid' must be a string")
    return CheckedHeader(MappingProxyType(header), alg, kid)


HEADER_CACHE_SIZE = 256
"""Distinct protected headers remembered per authorizer. An issuer's tokens share a handful (one per key), so a
new token usually skips header decoding; the bound keeps a flood of odd headers from growing memory."""


def parse_token(
    token: str, algorithms: frozenset[str], max_bytes: int, headers: dict[str, CheckedHeader] | None = None
) -> ParsedToken:
    """Check a compact JWS's structure and header; raise `JwtError` with a specific reason on the first problem.

    `headers` memoizes `check_header` results (only successes) for one allowlist.
    """
    if len(token) > max_bytes:
        raise JwtError(TOKEN_TOO_LARGE, f"the token is longer than {max_bytes} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError(TOKEN_MALFORMED, "a token is three base64url segments separated by '.'")
    header_segment, payload_segment, signature_segment = parts
    header = headers.get(header_segment) if headers is not None else None
    if header is None:
        header = check_header(header_segment, algorithms)
        if headers is not None:
            if len(headers) >= HEADER_CACHE_SIZE:
                headers.clear()
            headers[header_segment] = header
    if not _B64URL.fullmatch(payload_segment):  # decoded (strictly) once the signature verifies
        raise JwtError(TOKEN_MALFORMED, "the payload is not base64url")
    signature = b64url_decode(signature_segment, "signature")
    if not signature:
        raise JwtError(TOKEN_MALFORMED, "the token has no signature")
    return ParsedToken(
        header=header.fields,
        alg=header.alg,
        kid=header.kid,
        signing_input=f"{header_segment}.{payload_segment}".encode("ascii"),
        signature=signature,
        payload_segment=payload_segment,
    )


def verify_signature(parsed: ParsedToken, keyset: KeySet) -> VerificationKey:
    """The key that verifies `parsed`, or `JwtError`: UnknownKey (may be worth a refetch), KeyAlgorithmMismatch
    (the key exists but is bound to other algorithms) or InvalidSignature."""
    candidates = keyset.candidates(parsed.kid, parsed.alg)
    if not candidates:
        if parsed.kid is not None and keyset.has_kid(parsed.kid):
            message = f"key {parsed.kid[:64]!r} may not verify {parsed.alg}"
            raise JwtError(
                KEY_ALGORITHM_MISMATCH, message, partial(_key_step, KEY_ALGORITHM_MISMATCH, message, parsed, keyset)
            )
        if parsed.kid is None:
            message = "the token names no key (kid) and no single key fits its algorithm"
            raise JwtError(UNKNOWN_KEY, message, partial(_key_step, UNKNOWN_KEY, message, parsed, keyset))
        message = "the token names a key the issuer does not publish"
        raise JwtError(UNKNOWN_KEY, message, partial(_key_step, UNKNOWN_KEY, message, parsed, keyset))
    algorithm = ALGORITHMS[parsed.alg]
    for key in candidates:
        try:
            if algorithm.verify(parsed.signing_input, key.key, parsed.signature):
                return key
        except (ValueError, TypeError):  # malformed signature bytes: simply not a valid signature
            continue
    message = "the signature does not verify"
    raise JwtError(INVALID_SIGNATURE, message, partial(_key_step, INVALID_SIGNATURE, message, parsed, keyset))


def missing_step(message: str, sources: Iterable[IdentitySource]) -> Step:
    """TokenMissing explained: where the authorizer looked (`identity_source`), in order."""
    return refused(
        TOKEN_MISSING,
        message,
        ("looked_in", ", ".join(f"{source.where}.{source.name}" for source in sources)),
        ("note", "a header holds a token as 'Bearer <token>' or bare; another scheme (Basic, AWS4-...) is not read"),
    )


def _key_step(reason: str, message: str, parsed: ParsedToken, keyset: KeySet) -> Step:
    """What a key refusal found (`check --explain` only): the token's kid and alg, the keys the issuer publishes
    (their kids and algorithms, public facts), and how many were tried. Never the token or its signature."""
    tried = keyset.candidates(parsed.kid, parsed.alg)
    return refused(
        reason,
        message,
        ("kid", shown_value(parsed.kid) if parsed.kid is not None else "(absent)"),
        ("alg", parsed.alg),
        ("published_keys", listed(_key_label(key) for key in keyset.keys)),
        ("keys_tried", str(len(tried))),
    )


def _key_label(key: VerificationKey) -> str:
    return (
        f"{shown_value(key.kid) if key.kid is not None else '(no kid)'} {key.kty} [{' '.join(sorted(key.algorithms))}]"
    )


def verify_jws(token: str, keyset: KeySet, algorithms: frozenset[str], max_bytes: int = 65536) -> bytes:
    """Verify a compact JWS and return its payload bytes (any payload, not only JWT claims).

    The synchronous core the authorizer builds on, exposed for conformance tests and tools.
    """
    parsed = parse_token(token, algorithms, max_bytes)
    verify_signature(parsed, keyset)
    return b64url_decode(parsed.payload_segment, "payload")
