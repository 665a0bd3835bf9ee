"""JSON Web Key Sets: JWKs become verification keys once per rotation, and a cache keeps them fresh off the hot path.

Three concerns live here, all about keys and none about tokens (that is `jwt.py`):

* `parse_jwk` / `parse_jwks` turn JWK JSON into `VerificationKey`s holding a `cryptography` public key and the set
  of JWS algorithms that key may verify. The set is decided by the key's type and curve, narrowed by the JWK's
  `alg`; `use`/`key_ops` that do not allow verification, symmetric (`oct`) keys and unknown types or algorithms
  are skipped, never fatal, so one odd key in a provider's set cannot take the whole issuer down.
* `StaticKeySource` serves a JWKS file loaded once at config load.
* `JwksCache` fetches a `jwks_uri` (found through OIDC discovery when not configured) at start and refreshes it in
  the background: `Cache-Control: max-age` clamped to configured bounds, a refetch on an unknown `kid` that is
  rate-limited and single-flight, the last good keys served on errors up to a maximum staleness, and every fetch
  bounded in time (1.5 s) and size (150 KB) as API Gateway bounds its own. The hot path only reads `keyset`.

Time comes from an injectable clock so tests drive rotation and staleness without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from ..metrics import JWKS_FETCHES, JWKS_KEYS_SKIPPED

log = logging.getLogger(__name__)

Clock = Callable[[], float]

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


def report_skipped(keyset: KeySet, authorizer: str, where: str) -> None:
    """Count every skipped JWK in `authz_jwks_keys_skipped_total` and log it: once per fetched or loaded document,
    never per request. Short EC coordinates are logged at WARNING (the issuer's tokens signed with that key will
    fail as `UnknownKey`, and the issuer can fix it); other skips, usually deliberate (encryption keys, symmetric
    keys), at INFO."""
    for skip in keyset.skipped:
        JWKS_KEYS_SKIPPED.labels(authorizer, skip.reason).inc(skip.count)
        level = logging.WARNING if skip.reason == SKIP_SHORT_EC else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "JWKS %s: skipped %s", where, skip)


class KeySource(Protocol):
    """Where an authorizer gets keys. `keyset` is read on the hot path; everything else happens around it."""

    keyset: KeySet | None
    max_staleness: float

    def usable(self, now: float) -> KeySet | None:
        """The current keys, or None when none are loaded or the last good ones are too old to trust."""

    async def refetch_for_unknown_kid(self) -> KeySet | None:
        """Fetch again because a token named a key we do not have (rate-limited); return the keys after."""

    async def start(self) -> None:
        """Load keys and begin background refresh."""

    async def stop(self) -> None:
        """End background work."""

    def is_ready(self) -> bool:
        """Whether usable keys are loaded."""


class StaticKeySource:
    """Keys from a JWKS file read once at config load. They never go stale and are never refetched."""

    max_staleness = float("inf")

    def __init__(self, keyset: KeySet) -> None:
        self.keyset: KeySet | None = keyset

    @classmethod
    def from_file(cls, path: str, name: str = "jwks") -> StaticKeySource:
        """Load a JWKS file; raise `ValueError` when it cannot be read or holds no usable key. `name` labels
        `authz_jwks_keys_skipped_total` (the authorizer)."""
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"cannot read JWKS file {path}: {exc}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS file {path} is larger than {MAX_JWKS_BYTES} bytes")
        try:
            keyset = parse_jwks(data, fetched_at=0.0)
        except JwksError as exc:
            raise ValueError(f"JWKS file {path}: {exc}") from None
        if not keyset.keys:
            raise ValueError(f"JWKS file {path} has no usable key ({'; '.join(map(str, keyset.skipped)) or 'empty'})")
        for skip in keyset.skipped:
            JWKS_KEYS_SKIPPED.labels(name, skip.reason).inc(skip.count)
            log.warning("JWKS file %s: skipped %s", path, skip)
        return cls(keyset)

    def usable(self, now: float) -> KeySet | None:
        return self.keyset

    async def refetch_for_unknown_kid(self) -> KeySet | None:
        return self.keyset

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def is_ready(self) -> bool:
        return True


FETCH_TIMEOUT = 1.5
MAX_JWKS_BYTES = 150 * 1024


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Bounds of a `JwksCache`, all in seconds except `max_bytes`."""

    refresh_min: float = 60.0
    """Shortest interval between scheduled refreshes, whatever `max-age` says."""
    refresh_max: float = 3600.0
    """Longest interval between scheduled refreshes; also used when the response has no `max-age`."""
    max_staleness: float = 21600.0
    """How long the last good keys keep serving while every fetch fails."""
    unknown_kid_interval: float = 30.0
    """Minimum time between refetches triggered by tokens naming an unknown `kid`."""
    retry_min: float = 1.0
    """First retry delay after a failed fetch; doubles up to `refresh_min`."""
    fetch_timeout: float = FETCH_TIMEOUT
    max_bytes: int = MAX_JWKS_BYTES


_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])(no-cache|no-store)(?:$|[,\s=])", re.IGNORECASE)


def refresh_interval(cache_control: str | None, policy: CachePolicy) -> float:
    """Seconds until the next scheduled refresh: the response's `max-age` clamped to the policy's bounds."""
    if cache_control:
        if _NO_CACHE.search(cache_control):
            return policy.refresh_min
        match = _MAX_AGE.search(cache_control)
        if match:
            return min(max(float(match.group(1)), policy.refresh_min), policy.refresh_max)
    return policy.refresh_max


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback_host(host: str) -> bool:
    """Whether `host` names this machine (plain HTTP to it cannot be intercepted on the network)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_key_url(url: str, allow_http: bool) -> str:
    """Validate a JWKS or discovery URL: https, or http to loopback (or anywhere with `allow_http`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.scheme == "http" and not allow_http and not is_loopback_host(parts.hostname):
        raise ValueError(f"{url!r} uses plain http: keys could be replaced in transit (set allow_http to accept)")
    if parts.username or parts.password:
        raise ValueError(f"{url!r} must not carry credentials")
    return url


class JwksCache:
    """Keys from a `jwks_uri` (or OIDC discovery), fetched at start and refreshed in the background.

    The hot path reads `keyset` (or `usable(now)`, which also applies the staleness limit). All fetching happens
    in `refresh()`, which is single-flight: concurrent callers share one request. `tick()` performs the scheduled
    refresh when it is due; the background task calls it, and tests call it directly after moving their clock.
    """

    def __init__(
        self,
        *,
        jwks_uri: str | None = None,
        issuer: str | None = None,
        policy: CachePolicy | None = None,
        clock: Clock = time.time,
        allow_http: bool = False,
        background: bool = True,
        poll_interval: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str = "jwks",
    ) -> None:
        """`name` labels this cache's `authz_jwks_fetches_total` (the first authorizer that asked for it)."""
        if jwks_uri is None and issuer is None:
            raise ValueError("a JWKS cache needs a jwks_uri or an issuer to discover it from")
        self.policy = policy or CachePolicy()
        self.max_staleness = self.policy.max_staleness
        self.issuer = issuer
        self.allow_http = allow_http
        self.configured_uri = check_key_url(jwks_uri, allow_http) if jwks_uri else None
        self.discovery_url = (
            check_key_url(issuer.rstrip("/") + "/.well-known/openid-configuration", allow_http)
            if jwks_uri is None and issuer is not None
            else None
        )
        self.jwks_uri = self.configured_uri
        self.keyset: KeySet | None = None
        self.next_refresh_at = 0.0
        self.last_attempt_at = float("-inf")
        self.last_unknown_kid_fetch_at = float("-inf")
        self.last_error = ""
        self.fetch_count = 0
        self._clock = clock
        self._background = background
        self._poll_interval = poll_interval
        self._fetched = asyncio.Condition()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._users = 0
        self._retry_delay = self.policy.retry_min
        self.name = name
        self._fetched_ok = JWKS_FETCHES.labels(name, "ok")
        self._fetch_failed = JWKS_FETCHES.labels(name, "error")

    # -- reading (hot path) -------------------------------------------------------------------------------

    def usable(self, now: float) -> KeySet | None:
        """The current keys unless none loaded or the last good fetch is older than `max_staleness`."""
        keyset = self.keyset
        if keyset is None or now - keyset.fetched_at > self.max_staleness:
            return None
        return keyset

    def is_ready(self) -> bool:
        """True once usable keys are loaded."""
        return self.usable(self._clock()) is not None

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the keys (bounded by the fetch timeout) and begin background refresh. Never raises: a failed
        first fetch leaves the cache not ready and retrying."""
        self._users += 1
        if self._users > 1:
            return
        self._client = httpx.AsyncClient(
            timeout=self.policy.fetch_timeout, follow_redirects=False, transport=self._transport
        )
        if self.keyset is None:
            try:
                await self.refresh()
            except Exception:  # a bug while fetching must not fail the config that uses these keys
                log.exception("first JWKS fetch for %s failed unexpectedly", self.describe())
        if self._background:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jwks-refresh")

    async def stop(self) -> None:
        """Drop one user; the last one cancels background work and closes the HTTP client."""
        self._users = max(0, self._users - 1)
        if self._users:
            return
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._inflight = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        # Sleep until the refresh is due, but never longer than `poll_interval`: the clock is re-read on each
        # wake-up, so a wall-clock step (or a test's clock) cannot postpone a refresh by more than that.
        while True:
            delay = max(0.01, self.next_refresh_at - self._clock())
            await asyncio.sleep(min(delay, self._poll_interval))
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the refresher die: the hot path depends on it
                log.exception("JWKS refresh for %s failed unexpectedly", self.describe())

    # -- fetching -----------------------------------------------------------------------------------------

    async def tick(self) -> bool:
        """Refresh if the schedule says so. Returns whether a refresh ran and succeeded."""
        if self._clock() < self.next_refresh_at:
            return False
        return await self.refresh()

    async def refetch_for_unknown_kid(self) -> KeySet | None:
        """Refetch because a token named an unknown `kid`, at most once per `unknown_kid_interval`.

        Every request that arrives while the fetch runs waits for that same fetch; requests inside the interval
        get the current keys at once, so a stream of tokens with random `kid`s costs one fetch per interval.
        """
        now = self._clock()
        if not self.fetching:
            if now - self.last_unknown_kid_fetch_at < self.policy.unknown_kid_interval:
                return self.usable(now)
            self.last_unknown_kid_fetch_at = now
        await self.refresh()
        return self.usable(self._clock())

    async def refresh(self) -> bool:
        """Fetch now, sharing one in-flight fetch among all callers. Returns whether keys were updated."""
        task = self._inflight
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._fetch_and_swap(), name="jwks-fetch")
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        # shield: a caller giving up (its request cancelled) must not cancel the fetch the others wait for
        return await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled() and task.exception() is not None:
            log.error("JWKS fetch for %s raised", self.describe(), exc_info=task.exception())

    @property
    def fetching(self) -> bool:
        """Whether a fetch is in flight right now."""
        return self._inflight is not None and not self._inflight.done()

    async def wait_for_fetches(self, count: int) -> None:
        """Wait until `fetch_count` reaches `count` (for tests and tools observing the background refresher)."""
        async with self._fetched:
            await self._fetched.wait_for(lambda: self.fetch_count >= count)

    async def _fetch_and_swap(self) -> bool:
        try:
            return await self._fetch_and_swap_once()
        finally:
            async with self._fetched:
                self._fetched.notify_all()

    async def _fetch_and_swap_once(self) -> bool:
        now = self._clock()
        self.last_attempt_at = now
        self.fetch_count += 1
        try:
            body, cache_control = await self._fetch_keys()
            keyset = parse_jwks(body, fetched_at=now, previous=self.keyset)
            report_skipped(keyset, self.name, self.describe())
            if not keyset.keys:
                raise JwksError(f"no usable key ({'; '.join(map(str, keyset.skipped)) or 'empty key set'})")
        except JwksError as exc:
            self._fetch_failed.inc()
            self.last_error = str(exc)
            self.next_refresh_at = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, self.policy.refresh_min)
            log.warning("JWKS fetch for %s failed: %s (keeping %s)", self.describe(), exc, self._held())
            return False
        self._fetched_ok.inc()
        self.keyset = keyset
        self.last_error = ""
        self._retry_delay = self.policy.retry_min
        self.next_refresh_at = now + refresh_interval(cache_control, self.policy)
        return True

    def _held(self) -> str:
        return f"{len(self.keyset.keys)} keys" if self.keyset else "no keys"

    def describe(self) -> str:
        """The URL this cache reads, for logs."""
        return self.jwks_uri or self.discovery_url or "?"

    async def _fetch_keys(self) -> tuple[bytes, str | None]:
        if self.jwks_uri is None:
            self.jwks_uri = await self._discover()
        try:
            return await self._get(self.jwks_uri)
        except JwksError:
            if self.configured_uri is None:
                self.jwks_uri = None  # the provider may have moved its keys: discover again next time
            raise

    async def _discover(self) -> str:
        assert self.discovery_url is not None
        body, _ = await self._get(self.discovery_url)
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise JwksError("discovery document is not JSON") from None
        if not isinstance(document, dict):
            raise JwksError("discovery document is not a JSON object")
        if document.get("issuer") != self.issuer:
            raise JwksError(f"discovery document names issuer {document.get('issuer')!r}, expected {self.issuer!r}")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str):
            raise JwksError("discovery document has no jwks_uri")
        try:
            return check_key_url(uri, self.allow_http)
        except ValueError as exc:
            raise JwksError(str(exc)) from None

    async def _get(self, url: str) -> tuple[bytes, str | None]:
        """GET `url` within the fetch timeout, streaming and abandoning bodies over `max_bytes`."""
        if self._client is None:
            raise JwksError("the key cache is not started")
        limit = self.policy.max_bytes
        try:
            async with asyncio.timeout(self.policy.fetch_timeout):
                async with self._client.stream("GET", url, headers={"accept": "application/json"}) as response:
                    if response.status_code != 200:
                        raise JwksError(f"GET {url}: HTTP {response.status_code}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise JwksError(f"GET {url}: response of {declared} bytes exceeds {limit}")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_raw():
                        size += len(chunk)
                        if size > limit:
                            raise JwksError(f"GET {url}: response exceeds {limit} bytes; abandoned")
                        chunks.append(chunk)
                    return b"".join(chunks), response.headers.get("cache-control")
        except TimeoutError:
            raise JwksError(f"GET {url}: no complete response within {self.policy.fetch_timeout}s") from None
        except httpx.HTTPError as exc:
            raise JwksError(f"GET {url}: {type(exc).__name__}: {exc}") from None


_SHARED: weakref.WeakValueDictionary[tuple[Any, ...], JwksCache] = weakref.WeakValueDictionary()


def shared_cache(
    *,
    jwks_uri: str | None,
    issuer: str | None,
    policy: CachePolicy,
    allow_http: bool,
    clock: Clock = time.time,
    name: str = "jwks",
) -> JwksCache:
    """The process-wide cache for this key location and policy, created on first use.

    Authorizers that trust the same issuer share one cache, so the unknown-`kid` rate limit holds per issuer, and
    a config reload (which builds new authorizers while the old ones still serve) finds the keys already loaded.
    """
    key = (jwks_uri, issuer if jwks_uri is None else None, policy, allow_http, clock)
    cache = _SHARED.get(key)
    if cache is None:
        cache = JwksCache(
            jwks_uri=jwks_uri, issuer=issuer, policy=policy, clock=clock, allow_http=allow_http, name=name
        )
        _SHARED[key] = cache
    return cache
