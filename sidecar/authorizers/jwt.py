"""The `jwt` and `cognito` authorizers: bearer tokens verified against an issuer's published keys.

A request's token is found through the configured identity source, checked structurally (size, compact form,
strict base64url, JSON objects without duplicate names, `alg` on the allowlist and never `none`, no `crit`, no key
material or key URLs in the header), verified with the issuer's key named by `kid` (keys come from `jwks.py`; the
key's type and JWK `alg` decide which algorithms it may verify, so an RSA key can never serve as an HMAC secret),
and only then are its claims validated: `iss` exact, `aud` any-of (or `client_id`), `exp` required, `nbf`/`iat`
not in the future, all with a leeway. The `cognito` type is the same machinery with Cognito's rules: issuer
derived from region and pool, `token_use`, access tokens matched by `client_id`, ID tokens by `aud`.

Every claim the sidecar reads must have its JSON type (`iss` a string, `aud` a string or a list of strings, ...),
and every value that leaves in a header (the principal id, `claim_to_headers`) must be one Envoy and the upstream
take as it is (no control characters, no white space at either end): both are checked once, when the principal is
built, and anything else is an `InvalidClaim` deny, never an exception.

The hot path for a token seen before is a SHA-256 of the token and one dictionary lookup: verified tokens are kept
in a bounded LRU until `min(exp + leeway, key staleness)` and dropped when their key leaves the key set. PyJWT
supplies the signature algorithms (`jwt.algorithms`) except RFC 9864's `Ed25519`/`Ed448`, verified here with
`cryptography`; its decoder is not used, because its parsing alone costs more than our whole budget for a cached
token and because we need a distinct reason for every failure.

Every failure raises `Denied` with one of the reason codes below (documented in docs/jwt.md). Tokens are never
logged.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import logging
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.algorithms import get_default_algorithms
from pydantic import Field, field_validator, model_validator

from ..reasons import STATUS_UNAUTHORIZED, Denied
from ..request import CompactMap, Principal, Request, header_safe
from .base import Authorizer, AuthorizerSettings, BuildContext
from .jwks import (
    OKP_CURVES,
    SUPPORTED_ALGORITHMS,
    CachePolicy,
    Clock,
    KeySet,
    KeySource,
    StaticKeySource,
    VerificationKey,
    check_key_url,
    shared_cache,
)
from .sources import IdentitySource

log = logging.getLogger(__name__)

# -- reason codes (see docs/jwt.md) ---------------------------------------------------------------------------
TOKEN_MISSING = "TokenMissing"
TOKEN_MALFORMED = "TokenMalformed"
TOKEN_TOO_LARGE = "TokenTooLarge"
ALGORITHM_NONE = "AlgorithmNone"
ALGORITHM_NOT_ALLOWED = "AlgorithmNotAllowed"
KEY_ALGORITHM_MISMATCH = "KeyAlgorithmMismatch"
UNSUPPORTED_CRITICAL = "UnsupportedCritical"
UNTRUSTED_KEY_HEADER = "UntrustedKeyHeader"
UNKNOWN_KEY = "UnknownKey"
INVALID_SIGNATURE = "InvalidSignature"
KEYS_UNAVAILABLE = "KeysUnavailable"
TOKEN_EXPIRED = "TokenExpired"
TOKEN_NOT_YET_VALID = "TokenNotYetValid"
TOKEN_ISSUED_IN_FUTURE = "TokenIssuedInFuture"
CLAIM_MISSING = "ClaimMissing"
INVALID_CLAIM = "InvalidClaim"
INVALID_ISSUER = "InvalidIssuer"
INVALID_AUDIENCE = "InvalidAudience"
INVALID_TOKEN_USE = "InvalidTokenUse"

REASONS = frozenset(
    {
        TOKEN_MISSING,
        TOKEN_MALFORMED,
        TOKEN_TOO_LARGE,
        ALGORITHM_NONE,
        ALGORITHM_NOT_ALLOWED,
        KEY_ALGORITHM_MISMATCH,
        UNSUPPORTED_CRITICAL,
        UNTRUSTED_KEY_HEADER,
        UNKNOWN_KEY,
        INVALID_SIGNATURE,
        KEYS_UNAVAILABLE,
        TOKEN_EXPIRED,
        TOKEN_NOT_YET_VALID,
        TOKEN_ISSUED_IN_FUTURE,
        CLAIM_MISSING,
        INVALID_CLAIM,
        INVALID_ISSUER,
        INVALID_AUDIENCE,
        INVALID_TOKEN_USE,
    }
)

STATUS_UNAVAILABLE = 503
INVALID_TOKEN_CHALLENGE = (("www-authenticate", 'Bearer error="invalid_token"'),)

UNTRUSTED_HEADERS = ("jku", "x5u", "jwk")
"""Header parameters that would let the token choose its own key. A token carrying one is refused outright;
`x5c`/`x5t` are ignored (never used to find or trust a key)."""


class Verifier(Protocol):
    """What `verify_signature` needs of a JWS algorithm (PyJWT's `Algorithm.verify` has this shape)."""

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool: ...


class FullySpecifiedEdDSA:
    """RFC 9864's fully-specified EdDSA algorithms: `Ed25519` verifies only with an Ed25519 key, `Ed448` only with
    an Ed448 key (PyJWT knows only the polymorphic `EdDSA`). Keys are bound to their curve in `jwks.py` already;
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


class JwtError(Exception):
    """A token failed a check; `reason` is one of the codes above. Turned into `Denied` by the authorizer."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


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
    # claims (`shared_values`): this hook also parses the unverified JOSE header.
    out = {_intern(k): v for k, v in pairs}
    if len(out) != len(pairs):
        raise ValueError("duplicate member name")
    return out


def shared_values(claims: Mapping[str, Any]) -> dict[str, Any]:
    """Verified claims with their short string values replaced by an equal string seen before, so that `iss`,
    `aud`, `scope` and the like exist once for all cached tokens, not once per token.

    The table is bounded and starts over when full: values that never repeat (`sub`, `jti`) pass through it,
    values that repeat come back at once. (Interning did the same job but grew the interpreter's intern table
    by ~100 bytes for every value that never repeats.)
    """
    table = _VALUES
    out: dict[str, Any] = {}
    for name, value in claims.items():
        if type(value) is str and len(value) <= _SHARE_MAX:
            found = table.get(value)
            if found is None:
                if len(table) >= _MAX_VALUES:
                    table.clear()
                table[value] = found = value
            value = found
        out[name] = value
    return out


_intern = sys.intern
_SHARE_MAX = 256
_VALUES: dict[str, str] = {}
_MAX_VALUES = 4096


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
"""Built once: `json.loads` with hooks would construct a decoder per call (several microseconds)."""


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
        raise JwtError(ALGORITHM_NOT_ALLOWED, f"algorithm {alg[:16]!r} is not allowed here")
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
            raise JwtError(KEY_ALGORITHM_MISMATCH, f"key {parsed.kid[:64]!r} may not verify {parsed.alg}")
        if parsed.kid is None:
            raise JwtError(UNKNOWN_KEY, "the token names no key (kid) and no single key fits its algorithm")
        raise JwtError(UNKNOWN_KEY, "the token names a key the issuer does not publish")
    algorithm = ALGORITHMS[parsed.alg]
    for key in candidates:
        try:
            if algorithm.verify(parsed.signing_input, key.key, parsed.signature):
                return key
        except (ValueError, TypeError):  # malformed signature bytes: simply not a valid signature
            continue
    raise JwtError(INVALID_SIGNATURE, "the signature does not verify")


def verify_jws(token: str, keyset: KeySet, algorithms: frozenset[str], max_bytes: int = 65536) -> bytes:
    """Verify a compact JWS and return its payload bytes (any payload, not only JWT claims).

    The synchronous core the authorizer builds on, exposed for conformance tests and tools.
    """
    parsed = parse_token(token, algorithms, max_bytes)
    verify_signature(parsed, keyset)
    return b64url_decode(parsed.payload_segment, "payload")


# -- claims -------------------------------------------------------------------------------------------------


_ABSENT: Any = object()


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim, None when absent. An integer is returned as the claim's own object (no float per cached
    token). `null`, any other JSON type, and a number beyond `_MAX_NUMERIC_DATE` are refused."""
    value = claims.get(name, _ABSENT)
    if value is _ABSENT:
        return None
    if type(value) is int:
        if abs(value) > _MAX_NUMERIC_DATE:
            raise JwtError(INVALID_CLAIM, f"'{name}' must be a NumericDate")
        return value
    if type(value) is not float or not abs(value) <= _MAX_NUMERIC_DATE:  # also NaN, which JSON cannot carry anyway
        raise JwtError(INVALID_CLAIM, f"'{name}' must be a NumericDate")
    return value


_MAX_NUMERIC_DATE = 2**53
"""Past this an integer is no longer exactly a float; no real date is anywhere near (year ~285 million)."""

STRING_CLAIMS = ("iss", "sub", "client_id", "scope")
"""Claims read as one string (when present: `null` or another JSON type is `InvalidClaim`)."""
STRING_OR_LIST_CLAIMS = ("aud", "scp")
"""Claims read as a string or a list of strings."""
COGNITO_STRING_CLAIMS = ("token_use", "username", "cognito:username")
COGNITO_STRING_OR_LIST_CLAIMS = ("cognito:groups",)


def check_claim_types(claims: Mapping[str, Any], strings: tuple[str, ...], strings_or_lists: tuple[str, ...]) -> None:
    """Refuse (`InvalidClaim`) a claim the sidecar reads whose JSON type is not the one it must have. Absent claims
    pass: whether they are required is decided by the rule that reads them."""
    for name in strings:
        value = claims.get(name, _ABSENT)
        if value is not _ABSENT and type(value) is not str:
            raise JwtError(INVALID_CLAIM, f"'{name}' must be a string")
    for name in strings_or_lists:
        value = claims.get(name, _ABSENT)
        if value is _ABSENT or type(value) is str:
            continue
        if type(value) is not list or not all(type(item) is str for item in value):
            raise JwtError(INVALID_CLAIM, f"'{name}' must be a string or a list of strings")


def _strings(value: Any) -> tuple[str, ...]:
    """A claim that may be one string or a list of strings (aud, scp); anything else yields nothing."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


_SCOPE_SETS: dict[str, frozenset[str]] = {}
_MAX_SCOPE_SETS = 1024


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from `scope` (space-separated, RFC 8693) and `scp` (list or string, as Okta and Azure AD send).

    The common shape, a `scope` string and no `scp`, is memoized: tokens share a handful of scope strings, and
    one shared frozenset per string saves ~200 bytes on every cached token.
    """
    scope = claims.get("scope")
    if type(scope) is str and "scp" not in claims:
        found = _SCOPE_SETS.get(scope)
        if found is None:
            found = frozenset(scope.split())
            if len(_SCOPE_SETS) < _MAX_SCOPE_SETS:
                _SCOPE_SETS[scope] = found
        return found
    scopes: set[str] = set()
    if isinstance(scope, str):
        scopes.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        scopes.update(scp.split())
    elif isinstance(scp, list):
        scopes.update(s for s in scp if isinstance(s, str))
    return frozenset(scopes)


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """What a verified token's claims must say. `token_uses` is Cognito's rule set (None for plain `jwt`)."""

    issuer: str
    audiences: frozenset[str]
    leeway: float
    token_uses: frozenset[str] | None = None

    def check(self, claims: Mapping[str, Any], now: float) -> float:
        """Validate the claims at time `now`; return `exp`. Claim types are checked before any rule reads them."""
        exp = _number(claims, "exp")
        if exp is None:
            raise JwtError(CLAIM_MISSING, "the token has no 'exp'")
        nbf = _number(claims, "nbf")
        iat = _number(claims, "iat")
        check_claim_types(claims, STRING_CLAIMS, STRING_OR_LIST_CLAIMS)
        if self.token_uses is not None:
            check_claim_types(claims, COGNITO_STRING_CLAIMS, COGNITO_STRING_OR_LIST_CLAIMS)
        if now >= exp + self.leeway:
            raise JwtError(TOKEN_EXPIRED, "the token has expired")
        if nbf is not None and nbf > now + self.leeway:
            raise JwtError(TOKEN_NOT_YET_VALID, "the token is not valid yet (nbf)")
        if iat is not None and iat > now + self.leeway:
            raise JwtError(TOKEN_ISSUED_IN_FUTURE, "the token was issued in the future (iat)")
        if claims.get("iss") != self.issuer:
            raise JwtError(INVALID_ISSUER, "the token comes from another issuer")
        if self.token_uses is None:
            self._check_audience(claims)
        else:
            self._check_cognito(claims)
        return exp

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        """API Gateway's rule: any `aud` value, or else `client_id`, must be a configured audience."""
        if self.audiences.intersection(_strings(claims.get("aud"))):
            return
        client_id = claims.get("client_id")
        if isinstance(client_id, str) and client_id in self.audiences:
            return
        raise JwtError(INVALID_AUDIENCE, "the token is not meant for this API (aud/client_id)")

    def _check_cognito(self, claims: Mapping[str, Any]) -> None:
        """Cognito access tokens carry `client_id` and no `aud`; ID tokens carry `aud`."""
        assert self.token_uses is not None
        use = claims.get("token_use")
        if use not in self.token_uses:
            raise JwtError(INVALID_TOKEN_USE, f"token_use must be {' or '.join(sorted(self.token_uses))}")
        if use == "access":
            client = claims.get("client_id")
            if not isinstance(client, str) or client not in self.audiences:
                raise JwtError(INVALID_AUDIENCE, "the access token was issued to another app client (client_id)")
        elif not self.audiences.intersection(_strings(claims.get("aud"))):
            raise JwtError(INVALID_AUDIENCE, "the ID token was issued to another app client (aud)")


# -- principals ---------------------------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


def header_value(value: Any) -> str:
    """Render a claim for an upstream header: strings as they are, lists comma-joined, objects as JSON, other
    scalars as JSON (`true`, `null`, `42`). Nothing is removed: the caller refuses a value that is not
    `header_safe` (a claim quietly cut down could become another user's value)."""
    if type(value) is str:
        return value
    if isinstance(value, list):
        return ",".join(header_value(v) for v in value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _context_value(value: Any) -> Any:
    """Claims become policy keys when they are scalars or lists of scalars (lists become tuples)."""
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float | bool) for v in value):
        return tuple(value)
    return None


CONTEXT_PREFIX = "jwt:"


def claim_context(claims: Mapping[str, Any], scopes: frozenset[str], prefix: str = CONTEXT_PREFIX) -> dict[str, Any]:
    """Policy condition keys from verified claims: `jwt:<claim>` for each scalar or list claim, `jwt:scope` as the
    sorted tuple of scopes."""
    context: dict[str, Any] = {}
    for name, value in claims.items():
        converted = _context_value(value)
        if converted is not None:
            context[prefix + name] = converted
    context[prefix + "scope"] = tuple(sorted(scopes))
    return context


_ContextBuilder = Callable[[Mapping[str, Any], frozenset[str]], dict[str, Any]]


class LazyContext(Mapping[str, Any]):
    """A read-only mapping built on first access. Most requests never read policy condition keys (routes without
    claim conditions), so a cold token does not pay for building them; once built, the mapping is kept with the
    cached principal. It holds its inputs rather than a closure: it lives as long as the cached token."""

    __slots__ = ("_build", "_claims", "_data", "_scopes")

    def __init__(self, build: _ContextBuilder, claims: Mapping[str, Any], scopes: frozenset[str]) -> None:
        self._build: _ContextBuilder | None = build
        self._claims = claims
        self._scopes = scopes
        self._data: dict[str, Any] | None = None

    def _resolved(self) -> dict[str, Any]:
        data = self._data
        if data is None:
            assert self._build is not None
            data = self._data = self._build(self._claims, self._scopes)
            self._build = None
        return data

    def __getitem__(self, key: str) -> Any:
        return self._resolved()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolved())

    def __len__(self) -> int:
        return len(self._resolved())

    def __repr__(self) -> str:
        return f"LazyContext({self._resolved()!r})"


# -- the authorizers ----------------------------------------------------------------------------------------


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, eq=False, slots=True)
class _Verified:
    """A cached verification: reusable until `valid_until` while `keyset` is still the serving key set."""

    principal: Principal
    valid_until: float
    expires_at: float
    keyset: KeySet
    key: VerificationKey


class JwtAuthorizer(Authorizer):
    """Bearer JWTs from one issuer (type `jwt`)."""

    kind: ClassVar[str] = "jwt"
    challenge: ClassVar[str] = "Bearer"

    def __init__(
        self,
        name: str,
        *,
        rules: ClaimRules,
        keys: KeySource,
        algorithms: frozenset[str],
        sources: tuple[IdentitySource, ...] = (IdentitySource("header", "authorization"),),
        claim_to_headers: Mapping[str, str] | None = None,
        max_token_bytes: int = 16384,
        cache_size: int = 10_000,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(name)
        self.rules = rules
        self.keys = keys
        self.algorithms = allowed_algorithms(algorithms)
        self.sources = sources
        self.claim_to_headers = tuple((claims_name, header) for claims_name, header in (claim_to_headers or {}).items())
        self.max_token_bytes = max_token_bytes
        self.cache_size = cache_size
        self.remember_tokens = True
        """False on routes whose decision cache answers for the token (`behind_decision_cache`)."""
        self._clock = clock
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        self._last_digest: tuple[Request | None, bytes] = (None, b"")
        self._build_context = self._context  # one bound method for every LazyContext, not one per cached token
        self._headers: dict[str, CheckedHeader] = {}

    # lifecycle
    async def start(self) -> None:
        await self.keys.start()

    async def stop(self) -> None:
        self._cache.clear()
        await self.keys.stop()

    def is_ready(self) -> bool:
        return self.keys.is_ready()

    def behind_decision_cache(self) -> JwtAuthorizer:
        """A sibling that verifies and reads the token cache like this one but does not add to it: on a route whose
        decisions are cached per token, the decision cache answers first, and a token cache entry would only
        double what each token costs in memory (~640 bytes: the entry, the principal with its claims). A token
        seen again after its decision expired, or on a route without decision caching, is verified once more
        (~33 us for RS256) or found in the token cache that those routes fill."""
        sibling = copy.copy(self)
        sibling.remember_tokens = False
        return sibling

    # hot path
    def _token(self, request: Request) -> str:
        for source in self.sources:
            token = source.extract(request)
            if token is not None:
                return token
        raise Denied(TOKEN_MISSING, "A bearer token is required", STATUS_UNAUTHORIZED)

    def upstream_header_names(self) -> frozenset[str]:
        return frozenset(header for _, header in self.claim_to_headers)

    def fingerprint(self, request: Request) -> bytes | None:
        """SHA-256 of the presented token (the key of the verified-token cache), or None when there is none.

        A decision about a bearer token depends only on the token (and on time and keys, which the decision's TTL
        and `Principal.expires_at` bound), so the pipeline may cache decisions on this before authenticating.
        """
        for source in self.sources:
            token = source.extract(request)
            if token is not None:
                digest = _digest(token)
                self._last_digest = (request, digest)
                return digest
        return None

    async def authenticate(self, request: Request) -> Principal:
        token = self._token(request)
        now = self._clock()
        # After a decision-cache miss the pipeline has just called `fingerprint` with this very request: reuse its
        # digest, which also makes the token cache and the decision cache share one bytes object as their key.
        last_request, last_digest = self._last_digest
        digest = last_digest if last_request is request else _digest(token)
        entry = self._cache.get(digest)
        if entry is not None:
            if now < entry.valid_until and entry.keyset is self.keys.keyset:
                self._cache.move_to_end(digest)
                return entry.principal
            entry = self._revalidate(digest, entry, now)
            if entry is not None:
                return entry.principal
        try:
            return await self._verify(token, digest, now)
        except JwtError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("authorizer %s: token refused: %s", self.name, exc.reason)
            raise self._denied(exc) from None

    def _denied(self, exc: JwtError) -> Denied:
        if exc.reason == KEYS_UNAVAILABLE:
            return Denied(exc.reason, exc.message, STATUS_UNAVAILABLE)
        return Denied(exc.reason, exc.message, STATUS_UNAUTHORIZED, headers=INVALID_TOKEN_CHALLENGE)

    def _revalidate(self, digest: bytes, entry: _Verified, now: float) -> _Verified | None:
        """A cached token whose key set was refreshed: still good if its key survived the refresh."""
        keyset = self.keys.usable(now)
        if now < entry.expires_at + self.rules.leeway and keyset is not None and keyset.contains(entry.key):
            fresh = _Verified(
                principal=entry.principal,
                valid_until=min(entry.expires_at + self.rules.leeway, keyset.fetched_at + self.keys.max_staleness),
                expires_at=entry.expires_at,
                keyset=keyset,
                key=entry.key,
            )
            if now < fresh.valid_until:
                self._cache[digest] = fresh
                self._cache.move_to_end(digest)
                return fresh
        del self._cache[digest]
        return None

    async def _verify(self, token: str, digest: bytes, now: float) -> Principal:
        parsed = parse_token(token, self.algorithms, self.max_token_bytes, self._headers)
        keyset = self.keys.usable(now)
        if keyset is None:
            keyset = await self._refetch()
            if keyset is None:
                raise JwtError(KEYS_UNAVAILABLE, "the issuer's signing keys are not available")
        try:
            key = verify_signature(parsed, keyset)
        except JwtError as exc:
            if exc.reason != UNKNOWN_KEY or parsed.kid is None:
                raise
            newer = await self._refetch()
            if newer is None or newer is keyset:
                raise
            keyset = newer
            key = verify_signature(parsed, keyset)
        claims = parse_json_object(b64url_decode(parsed.payload_segment, "payload"), "payload")
        exp = self.rules.check(claims, now)
        principal = self._principal(claims, exp)
        self._remember(digest, principal, exp, keyset, key)
        return principal

    async def _refetch(self) -> KeySet | None:
        try:
            return await self.keys.refetch_for_unknown_kid()
        except Exception:  # a broken fetch must not turn a deny into an internal error
            log.exception("authorizer %s: key refetch failed", self.name)
            return self.keys.usable(self._clock())

    def _remember(self, digest: bytes, principal: Principal, exp: float, keyset: KeySet, key: VerificationKey) -> None:
        if self.cache_size <= 0 or not self.remember_tokens:
            return
        valid_until = min(exp + self.rules.leeway, keyset.fetched_at + self.keys.max_staleness)
        self._cache[digest] = _Verified(principal, valid_until, exp, keyset, key)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # principals
    def _identity(self, claims: Mapping[str, Any]) -> str:
        """`sub`, else `client_id` (their types are checked already); it goes upstream as `x-authz-principal`."""
        for name in ("sub", "client_id"):
            value = claims.get(name)
            if isinstance(value, str) and value:
                if not header_safe(value):
                    raise JwtError(
                        INVALID_CLAIM,
                        f"'{name}' cannot be sent upstream as it is (control characters or a space at either end)",
                    )
                return value
        raise JwtError(CLAIM_MISSING, "the token has neither 'sub' nor 'client_id'")

    def _claim_headers(self, claims: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        """`claim_to_headers`, each value checked once here: a value that cannot reach the upstream unchanged
        refuses the token (`InvalidClaim`) rather than allowing a request Envoy would fail."""
        headers = []
        for claim, header in self.claim_to_headers:
            if claim not in claims:
                headers.append((header, ""))
                continue
            try:
                value: str | None = header_value(claims[claim])
            except RecursionError:  # nested deeper than the renderer goes: no header could carry it anyway
                value = None
            if value is None or not header_safe(value):
                raise JwtError(
                    INVALID_CLAIM,
                    f"claim {claim[:64]!r} cannot be sent upstream as header {header} "
                    "(control characters or a space at either end)",
                )
            headers.append((header, value))
        return tuple(headers)

    def _context(self, claims: Mapping[str, Any], scopes: frozenset[str]) -> dict[str, Any]:
        return claim_context(claims, scopes)

    def _principal(self, verified: dict[str, Any], exp: float) -> Principal:
        # Compact: the claims live as long as the cached token (a dict cost ~410 bytes for six claims, this ~140).
        claims = CompactMap(shared_values(verified))
        scopes = scopes_of(claims)
        headers = self._claim_headers(claims) if self.claim_to_headers else ()
        return Principal(
            kind=self.kind,
            id=self._identity(claims),
            authorizer=self.name,
            scopes=scopes,
            claims=claims,
            context=LazyContext(self._build_context, claims, scopes),
            upstream_headers=headers,
            expires_at=exp,
        )


class CognitoAuthorizer(JwtAuthorizer):
    """Amazon Cognito user pool tokens (type `cognito`): Cognito's claim rules and `cognito:*` policy keys."""

    kind: ClassVar[str] = "cognito"

    def _context(self, claims: Mapping[str, Any], scopes: frozenset[str]) -> dict[str, Any]:
        context = claim_context(claims, scopes)
        groups = claims.get("cognito:groups")
        context["cognito:groups"] = tuple(_strings(groups))
        for name in ("username", "client_id", "token_use"):
            value = claims.get(name)
            if isinstance(value, str):
                context["cognito:" + name] = value
        username = claims.get("cognito:username")
        if isinstance(username, str):
            context["cognito:username"] = username
        return context


# -- settings -----------------------------------------------------------------------------------------------

DEFAULT_ALGORITHMS = (
    *("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"),
    *("EdDSA", "Ed25519", "Ed448"),
)


class TokenSettings(AuthorizerSettings):
    """Keys shared by `jwt` and `cognito` (see docs/jwt.md)."""

    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    identity_source: tuple[str, ...] = ("header.authorization",)
    """Where to look for the token, in order: `header.NAME`, `query.NAME`, `cookie.NAME` (one string or a list)."""
    leeway: float = Field(default=60.0, ge=0, le=600)
    """Seconds of clock skew tolerated on exp, nbf and iat."""
    claim_to_headers: dict[str, str] = {}
    """Claim name -> upstream header name. A header whose claim is absent is sent empty, so a client cannot
    supply it."""
    jwks_uri: str | None = None
    jwks_file: str | None = None
    """A local JWKS file instead of fetching keys (relative to the config file)."""
    allow_http: bool = False
    """Accept plain-http key URLs to non-loopback hosts (keys could be replaced in transit)."""
    max_token_bytes: int = Field(default=16384, ge=256, le=65536)
    token_cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
    """Verified tokens remembered (0 turns the cache off)."""
    jwks_refresh_min: float = Field(default=60.0, ge=1, le=86400)
    jwks_refresh_max: float = Field(default=3600.0, ge=1, le=7 * 86400)
    jwks_max_staleness: float = Field(default=21600.0, ge=0, le=30 * 86400)
    jwks_unknown_kid_interval: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("identity_source", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("identity_source")
    @classmethod
    def _sources(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one identity source is required")
        for text in value:
            IdentitySource.parse(text)
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one algorithm is required")
        for alg in value:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                raise ValueError(f"{alg} is never accepted: only asymmetric signatures are verified")
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"unsupported algorithm {alg!r} (supported: {', '.join(DEFAULT_ALGORITHMS)})")
        return value

    @field_validator("claim_to_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        out = {}
        for claim, header in value.items():
            name = header.strip().lower()
            if not _HEADER_NAME.match(name) or name in ("host", "authorization", "cookie", "content-length"):
                raise ValueError(f"claim {claim!r}: {header!r} is not a header name that may be set")
            out[claim] = name
        return out

    @model_validator(mode="after")
    def _bounds(self) -> TokenSettings:
        if self.jwks_refresh_min > self.jwks_refresh_max:
            raise ValueError("jwks_refresh_min must not exceed jwks_refresh_max")
        if self.jwks_uri and self.jwks_file:
            raise ValueError("set jwks_uri or jwks_file, not both")
        if self.jwks_uri:
            check_key_url(self.jwks_uri, self.allow_http)
        return self

    def cache_policy(self) -> CachePolicy:
        """The JWKS cache bounds these settings ask for."""
        return CachePolicy(
            refresh_min=self.jwks_refresh_min,
            refresh_max=self.jwks_refresh_max,
            max_staleness=self.jwks_max_staleness,
            unknown_kid_interval=self.jwks_unknown_kid_interval,
        )


class JwtSettings(TokenSettings):
    """`type: jwt`: any OIDC / OAuth 2 issuer."""

    type: Literal["jwt"]
    issuer: str = Field(min_length=1)
    """Exactly the `iss` the tokens carry; also where keys are discovered when no jwks_uri/jwks_file is set."""
    audiences: tuple[str, ...] = Field(min_length=1)
    """A token passes when any `aud` value, or else its `client_id`, is listed."""

    @model_validator(mode="after")
    def _discovery(self) -> JwtSettings:
        if not self.jwks_uri and not self.jwks_file:
            check_key_url(self.issuer, self.allow_http)
        return self


_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_POOL = re.compile(r"^[\w-]+_[0-9a-zA-Z]+$")


class CognitoSettings(TokenSettings):
    """`type: cognito`: an Amazon Cognito user pool."""

    type: Literal["cognito"]
    region: str
    user_pool_id: str
    client_ids: tuple[str, ...] = Field(min_length=1)
    token_use: tuple[Literal["access", "id"], ...] = ("access",)
    algorithms: tuple[str, ...] = ("RS256",)

    @field_validator("token_use", mode="before")
    @classmethod
    def _one_or_many_uses(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.match(value):
            raise ValueError(f"{value!r} is not an AWS region name")
        return value

    @field_validator("user_pool_id")
    @classmethod
    def _pool(cls, value: str) -> str:
        if not _POOL.match(value):
            raise ValueError(f"{value!r} is not a user pool id (like us-east-1_AbC123)")
        return value

    @property
    def issuer(self) -> str:
        """Cognito's issuer for this pool."""
        return f"https://cognito-idp.{self.region}.amazonaws.com/{self.user_pool_id}"


# -- building -----------------------------------------------------------------------------------------------


def _key_source(settings: TokenSettings, issuer: str, default_uri: str | None, ctx: BuildContext) -> KeySource:
    if settings.jwks_file:
        path = Path(settings.jwks_file)
        return StaticKeySource.from_file(str(path if path.is_absolute() else ctx.base_dir / path), ctx.name)
    uri = settings.jwks_uri or default_uri
    return shared_cache(
        jwks_uri=uri, issuer=issuer, policy=settings.cache_policy(), allow_http=settings.allow_http, name=ctx.name
    )


def _common(settings: TokenSettings) -> dict[str, Any]:
    return {
        "algorithms": frozenset(settings.algorithms),
        "sources": tuple(IdentitySource.parse(s) for s in settings.identity_source),
        "claim_to_headers": dict(settings.claim_to_headers),
        "max_token_bytes": settings.max_token_bytes,
        "cache_size": settings.token_cache_size,
    }


def build_jwt(settings: Any, ctx: BuildContext) -> Authorizer:
    """Build a `jwt` authorizer (loading a static JWKS file now, if one is configured)."""
    assert isinstance(settings, JwtSettings)
    rules = ClaimRules(issuer=settings.issuer, audiences=frozenset(settings.audiences), leeway=settings.leeway)
    keys = _key_source(settings, settings.issuer, None, ctx)
    return JwtAuthorizer(ctx.name, rules=rules, keys=keys, **_common(settings))


def build_cognito(settings: Any, ctx: BuildContext) -> Authorizer:
    """Build a `cognito` authorizer; keys default to the pool's `/.well-known/jwks.json`."""
    assert isinstance(settings, CognitoSettings)
    issuer = settings.issuer
    rules = ClaimRules(
        issuer=issuer,
        audiences=frozenset(settings.client_ids),
        leeway=settings.leeway,
        token_uses=frozenset(settings.token_use),
    )
    keys = _key_source(settings, issuer, issuer + "/.well-known/jwks.json", ctx)
    return CognitoAuthorizer(ctx.name, rules=rules, keys=keys, **_common(settings))


__all__ = [
    "REASONS",
    "ClaimRules",
    "CognitoAuthorizer",
    "CognitoSettings",
    "JwtAuthorizer",
    "JwtError",
    "JwtSettings",
    "build_cognito",
    "build_jwt",
    "parse_token",
    "verify_jws",
    "verify_signature",
]
