"""`type: sigv4`: callers sign requests with AWS Signature Version 4 (or SigV4a) and an access key we know.

This is API Gateway's `AWS_IAM` authorization, done by the sidecar: the canonical request is rebuilt from what
Envoy forwards (`sigv4_canonical`), the signature checked against a key from the credential store
(`credentials`), and the caller becomes a Principal carrying its identity policies for the policy stage.

Hot path cost is one canonical request, one SHA-256 and one HMAC: signing keys are derived once per
(access key, date, region, service) and kept with the credential snapshot, SigV4a public keys once per access key,
and each credential's Principal is built once. Failures are `Denied` with the AWS error names and texts that API
Gateway users know (`IncompleteSignature`, `InvalidSignature`, ...), all 403 by default as API Gateway sends them;
`deny_status: 401` makes them 401 with a `WWW-Authenticate: AWS4-HMAC-SHA256` challenge instead.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ..inline import in_task
from ..reasons import ACCESS_DENIED, MISSING_AUTHENTICATION_TOKEN, Denied
from ..request import Principal, Request
from . import sigv4a
from .base import Authorizer, AuthorizerSettings, BuildContext
from .credentials import (
    DEFAULT_SIGNING_KEY_CACHE,
    Credential,
    CredentialSet,
    CredentialStore,
    FileCredentialStore,
)
from .sigv4_canonical import (
    ECDSA_ALGORITHM,
    EMPTY_SHA256,
    HMAC_ALGORITHM,
    TERMINATOR,
    UNSIGNED_PAYLOAD,
    MalformedSignature,
    SignatureParams,
    canonical_headers,
    canonical_query,
    parse_amz_date,
    parse_authorization,
    parse_http_date,
    parse_presigned,
    query_auth_params,
    remembered_path,
    remembered_query,
)

if TYPE_CHECKING:
    from ..config import RouteSettings

log = logging.getLogger(__name__)

# Reason codes (AWS / API Gateway names). The shared ones come from reasons.py; the rest are kept here because
# only this authorizer raises them.
INCOMPLETE_SIGNATURE = "IncompleteSignature"
INVALID_SIGNATURE = "InvalidSignature"
SIGNATURE_EXPIRED = "SignatureExpired"
REQUEST_TIME_TOO_SKEWED = "RequestTimeTooSkewed"
UNRECOGNIZED_CLIENT = "UnrecognizedClient"
INVALID_CLIENT_TOKEN_ID = "InvalidClientTokenId"
EXPIRED_TOKEN = "ExpiredToken"
CONTENT_SHA256_MISMATCH = "XAmzContentSHA256Mismatch"
UNSIGNED_PAYLOAD_NOT_ALLOWED = "UnsignedPayloadNotAllowed"
PARTIAL_BODY = "PartialBody"
REPLAYED_REQUEST = "ReplayedRequest"

REASONS = (
    MISSING_AUTHENTICATION_TOKEN,
    INCOMPLETE_SIGNATURE,
    INVALID_SIGNATURE,
    SIGNATURE_EXPIRED,
    REQUEST_TIME_TOO_SKEWED,
    UNRECOGNIZED_CLIENT,
    INVALID_CLIENT_TOKEN_ID,
    EXPIRED_TOKEN,
    ACCESS_DENIED,
    CONTENT_SHA256_MISMATCH,
    UNSIGNED_PAYLOAD_NOT_ALLOWED,
    PARTIAL_BODY,
    REPLAYED_REQUEST,
)
"""Every reason this authorizer can deny with (ACCESS_DENIED is left to the policy stage)."""

MSG_MISSING = "Missing Authentication Token"
MSG_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
MSG_BAD_TOKEN = "The security token included in the request is invalid."
MSG_EXPIRED_TOKEN = "The security token included in the request is expired"

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
MAX_EXPIRES = 604800
_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")
_DIGITS = re.compile(r"\d{1,7}\Z")


# ---------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CredentialSourceSettings(_Frozen):
    """Where the access keys come from. Only `file` exists today; other backends add keys here."""

    file: str
    reload_interval: float = Field(default=2.0, ge=0, le=3600)
    """Seconds between checks for a changed file (0: never reload)."""


class SigV4UpstreamHeaders(_Frozen):
    """Identity headers added to allowed requests for the upstream (each null = not sent)."""

    access_key_id: str | None = None
    principal_arn: str | None = None

    @field_validator("access_key_id", "principal_arn")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else None


class SigV4Settings(AuthorizerSettings):
    """`type: sigv4`: AWS SigV4 / SigV4a signed requests verified against a credential store."""

    type: Literal["sigv4"]
    service: str = Field(default="execute-api", min_length=1, pattern=r"^[a-z0-9\-]+$")
    region: str | None = Field(default=None, min_length=1)
    regions: tuple[str, ...] = ()
    credentials: CredentialSourceSettings
    normalize_path: bool | None = None
    """Remove dot and empty path segments before signing. Default: on, except for service `s3`."""
    double_encode: bool | None = None
    """URI-encode the (already encoded) wire path again. Default: on, except for service `s3`."""
    clock_skew: float = Field(default=300, ge=0, le=3600)
    allow_unsigned_payload: bool = False
    replay_guard: bool = False
    """Deny a signature seen before while it is still valid (beyond API Gateway; off by default)."""
    replay_redis_url: SecretStr | None = None
    """Share the replay guard between sidecars through this Redis (`SET NX PX`); local only when null."""
    replay_redis_timeout_ms: float = Field(default=5.0, gt=0, le=1000)
    replay_cache_size: int = Field(default=1_000_000, ge=1, le=100_000_000)
    upstream_headers: SigV4UpstreamHeaders = SigV4UpstreamHeaders()
    max_expires: int = Field(default=MAX_EXPIRES, ge=1, le=MAX_EXPIRES)
    algorithms: tuple[Literal["AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"], ...] = (
        "AWS4-HMAC-SHA256",
        "AWS4-ECDSA-P256-SHA256",
    )
    require_signed_session_token: bool = False
    """Deny header-signed requests whose X-Amz-Security-Token is not in SignedHeaders (AWS accepts either)."""
    deny_status: Literal[401, 403] = 403
    signing_key_cache_size: int = Field(default=DEFAULT_SIGNING_KEY_CACHE, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _region_xor_regions(self) -> SigV4Settings:
        if self.region is not None and self.regions:
            raise ValueError("give either `region` or `regions`, not both")
        if any(not r for r in self.regions):
            raise ValueError("`regions` entries must be non-empty")
        if not self.algorithms:
            raise ValueError("`algorithms` must list at least one algorithm")
        return self


@dataclass(frozen=True, slots=True)
class VerifierOptions:
    """The compiled, hot-path form of `SigV4Settings`."""

    service: str
    regions: frozenset[str]
    normalize_path: bool = True
    double_encode: bool = True
    clock_skew: float = 300.0
    allow_unsigned_payload: bool = False
    max_expires: int = MAX_EXPIRES
    algorithms: frozenset[str] = frozenset({HMAC_ALGORITHM, ECDSA_ALGORITHM})
    require_signed_session_token: bool = False
    deny_status: int = 403

    @classmethod
    def from_settings(cls, settings: SigV4Settings, default_region: str) -> VerifierOptions:
        """Apply the defaults that depend on other keys (S3 neither normalizes nor double-encodes)."""
        s3 = settings.service == "s3"
        regions = settings.regions or ((settings.region,) if settings.region else (default_region,))
        return cls(
            service=settings.service,
            regions=frozenset(regions),
            normalize_path=settings.normalize_path if settings.normalize_path is not None else not s3,
            double_encode=settings.double_encode if settings.double_encode is not None else not s3,
            clock_skew=float(settings.clock_skew),
            allow_unsigned_payload=settings.allow_unsigned_payload,
            max_expires=settings.max_expires,
            algorithms=frozenset(settings.algorithms),
            require_signed_session_token=settings.require_signed_session_token,
            deny_status=settings.deny_status,
        )


# ---------------------------------------------------------------------------------------------------------------
# Replay guard
# ---------------------------------------------------------------------------------------------------------------


class ReplayGuard(abc.ABC):
    """Remembers signatures for as long as they could be replayed. Implementations may be shared (Redis)."""

    @abc.abstractmethod
    async def first_use(self, key: str, ttl: float, now: float) -> bool:
        """Record `key` for `ttl` seconds; True if it was not already recorded (the request is not a replay)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (called when the authorizer stops)."""


class LocalReplayGuard(ReplayGuard):
    """An in-process replay guard: a dict of key -> expiry, bounded by `max_entries`.

    When full, expired entries are dropped first; if that is not enough the oldest tenth goes, which can only
    shorten how long a signature is remembered, never deny a fresh request.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, key: str, ttl: float, now: float) -> bool:
        """Synchronous core of `first_use`."""
        expiry = self._seen.get(key)
        if expiry is not None and expiry > now:
            return False
        if expiry is None and len(self._seen) >= self.max_entries:
            self._make_room(now)
        self._seen[key] = now + ttl
        return True

    def _make_room(self, now: float) -> None:
        for key in [k for k, expiry in self._seen.items() if expiry <= now]:
            del self._seen[key]
        if len(self._seen) >= self.max_entries:
            for key in list(self._seen)[: max(1, self.max_entries // 10)]:
                del self._seen[key]

    async def first_use(self, key: str, ttl: float, now: float) -> bool:
        return self.check(key, ttl, now)


class RedisReplayGuard(ReplayGuard):
    """A replay guard shared by every sidecar through Redis (`SET key 1 NX PX ttl`).

    If Redis fails, the local guard answers instead: the request is still checked against what this process
    has seen, so Redis trouble weakens the guard to per-process, never to "allow everything".
    """

    def __init__(self, client: Any, prefix: str = "authz:sigv4:replay:", fallback: LocalReplayGuard | None = None):
        self.client = client
        self.prefix = prefix
        self.fallback = fallback or LocalReplayGuard()

    async def first_use(self, key: str, ttl: float, now: float) -> bool:
        local_first = self.fallback.check(key, ttl, now)
        try:
            # In a Task: the asyncio listeners start a Check inline, outside any, and redis-py times its
            # commands with `asyncio.timeout`, which raises there; every SET failed and the guard was per process.
            stored = await in_task(self.client.set(self.prefix + key, b"1", nx=True, px=max(1, int(ttl * 1000))))
        except Exception as exc:  # redis.RedisError, OSError, timeouts: all degrade to the local answer
            log.warning("replay guard: redis unavailable (%s); using the local guard", exc.__class__.__name__)
            return local_first
        return bool(stored) and local_first

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception as exc:  # closing a broken connection must not fail a config swap
            log.debug("replay guard: closing redis failed: %s", exc.__class__.__name__)


# ---------------------------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out: who signed it, and how long its signature stays replayable."""

    credential: Credential
    snapshot: CredentialSet
    params: SignatureParams
    replay_key: str
    replay_ttl: float
    now: float
    unsigned_token: bool = False
    """The presigned URL's session token was appended after signing (not covered by the signature)."""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%dT%H%M%SZ")


class SigV4Verifier:
    """Checks one request's SigV4/SigV4a signature. Pure and synchronous: `authenticate` wraps it."""

    def __init__(self, store: CredentialStore, options: VerifierOptions) -> None:
        self.store = store
        self.options = options
        self._regions = tuple(sorted(options.regions))

    # -- errors ------------------------------------------------------------------------------------------------

    def _deny(self, reason: str, message: str, status: int | None = None) -> Denied:
        return Denied(reason, message, status or self.options.deny_status)

    # -- the steps ---------------------------------------------------------------------------------------------

    def _signature_params(self, request: Request, query: str) -> SignatureParams:
        authorization = request.headers.get("authorization", "").strip()
        presigned = "X-Amz-" in query and "X-Amz-Algorithm=" in query
        if authorization:
            if presigned:
                raise self._deny(
                    INCOMPLETE_SIGNATURE,
                    "Only one auth mechanism allowed; only the X-Amz-Algorithm "
                    "query parameter or the Authorization header should be specified",
                )
            return parse_authorization(authorization)
        if presigned:
            return parse_presigned(query_auth_params(query))
        if "X-Amz-Signature=" in query or "X-Amz-Credential=" in query:
            raise MalformedSignature("Query-string authentication requires the X-Amz-Algorithm parameter")
        raise self._deny(MISSING_AUTHENTICATION_TOKEN, MSG_MISSING)

    def _request_date(self, request: Request, params: SignatureParams) -> tuple[str, float]:
        """(ISO basic timestamp for the string to sign, epoch seconds) of the signing time."""
        if params.presigned:
            return params.amz_date, parse_amz_date(params.amz_date)
        amz_date = request.headers.get("x-amz-date")
        if amz_date is not None:
            if "x-amz-date" not in params.signed_headers:
                raise MalformedSignature("'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.")
            amz_date = amz_date.strip()
            return amz_date, parse_amz_date(amz_date)
        http_date = request.headers.get("date")
        if http_date is None:
            raise MalformedSignature(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
            )
        if "date" not in params.signed_headers:
            raise MalformedSignature("'Date' must be a 'SignedHeader' in the AWS Authorization.")
        epoch, iso = parse_http_date(http_date)
        return iso, epoch

    def _check_scope(self, request: Request, params: SignatureParams, amz_date: str) -> str:
        """Scope checks; returns the X-Amz-Region-Set (SigV4a) or ''."""
        opts = self.options
        if params.algorithm not in opts.algorithms:
            raise MalformedSignature(f"Signing algorithm {params.algorithm} is not accepted here")
        if "host" not in params.signed_headers:
            raise MalformedSignature("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
        if params.scope_date != amz_date[:8]:
            raise self._deny(
                INVALID_SIGNATURE,
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.",
            )
        if params.scope_terminator != TERMINATOR:
            raise self._deny(INVALID_SIGNATURE, f"Credential should be scoped with a valid terminator: '{TERMINATOR}'.")
        if params.scope_service != opts.service:
            raise self._deny(INVALID_SIGNATURE, f"Credential should be scoped to correct service: '{opts.service}'.")
        if params.algorithm == HMAC_ALGORITHM:
            if params.scope_region not in opts.regions:
                raise self._deny(INVALID_SIGNATURE, "Credential should be scoped to a valid region.")
            return ""
        region_set = params.region_set if params.presigned else request.headers.get("x-amz-region-set")
        if not region_set:
            raise MalformedSignature("SigV4a requires the X-Amz-Region-Set header or query parameter")
        if not params.presigned and "x-amz-region-set" not in params.signed_headers:
            raise MalformedSignature("'X-Amz-Region-Set' must be a 'SignedHeader' in the AWS Authorization.")
        if not sigv4a.region_set_matches(region_set, self._regions):
            raise self._deny(INVALID_SIGNATURE, "X-Amz-Region-Set does not include a region this API serves.")
        return region_set

    def _check_time(self, params: SignatureParams, signed_at: float, now: float) -> float:
        """Clock-skew and expiry checks; returns how long the signature stays valid from `now` (the replay TTL)."""
        skew = self.options.clock_skew
        if signed_at - now > skew:
            raise self._deny(
                REQUEST_TIME_TOO_SKEWED,
                f"Signature not yet current: {_iso(signed_at)} is still later "
                f"than {_iso(now + skew)} ({_iso(now)} + {skew / 60:g} min.)",
            )
        if not params.presigned:
            if now - signed_at > skew:
                raise self._deny(
                    SIGNATURE_EXPIRED,
                    f"Signature expired: {_iso(signed_at)} is now earlier than "
                    f"{_iso(now - skew)} ({_iso(now)} - {skew / 60:g} min.)",
                )
            return signed_at + skew - now
        if not _DIGITS.match(params.expires):
            raise MalformedSignature("X-Amz-Expires must be a whole number of seconds")
        expires = int(params.expires)
        if expires < 1 or expires > self.options.max_expires:
            raise MalformedSignature(f"X-Amz-Expires must be between 1 and {self.options.max_expires} seconds")
        if now > signed_at + expires:
            raise self._deny(
                SIGNATURE_EXPIRED, f"Signature expired: the presigned URL expired at {_iso(signed_at + expires)}"
            )
        return signed_at + expires - now

    def _credential(self, request: Request, params: SignatureParams, now: float) -> tuple[Credential, CredentialSet]:
        snapshot = self.store.current
        credential = snapshot.get(params.access_key_id)
        if credential is None:
            raise self._deny(UNRECOGNIZED_CLIENT, MSG_BAD_TOKEN)
        if not credential.enabled:
            raise self._deny(INVALID_CLIENT_TOKEN_ID, MSG_BAD_TOKEN)
        if credential.expires_at is not None and now >= credential.expires_at:
            raise self._deny(EXPIRED_TOKEN, MSG_EXPIRED_TOKEN)
        token = params.security_token if params.presigned else request.headers.get("x-amz-security-token")
        if credential.session_token is None:
            if token is not None:
                raise self._deny(INVALID_CLIENT_TOKEN_ID, MSG_BAD_TOKEN)
        else:
            if token is None or not hmac.compare_digest(
                token.encode("utf-8", "surrogatepass"), credential.session_token.encode()
            ):
                raise self._deny(INVALID_CLIENT_TOKEN_ID, MSG_BAD_TOKEN)
            if (
                self.options.require_signed_session_token
                and not params.presigned
                and "x-amz-security-token" not in params.signed_headers
            ):
                raise MalformedSignature("'X-Amz-Security-Token' must be a 'SignedHeader' in the AWS Authorization.")
        return credential, snapshot

    def _payload_hash(self, request: Request) -> str:
        declared = request.headers.get("x-amz-content-sha256")
        partial = request.headers.get(PARTIAL_BODY_HEADER, "").lower() == "true"
        if declared is not None:
            if declared == UNSIGNED_PAYLOAD:
                if not self.options.allow_unsigned_payload:
                    raise self._deny(
                        UNSIGNED_PAYLOAD_NOT_ALLOWED,
                        "This API requires signed payloads; x-amz-content-sha256: UNSIGNED-PAYLOAD is not accepted.",
                    )
                return UNSIGNED_PAYLOAD
            if not _HEX64.match(declared):
                raise MalformedSignature("x-amz-content-sha256 must be UNSIGNED-PAYLOAD or a SHA-256 hex digest")
        if partial:
            raise self._deny(PARTIAL_BODY, "The request body was too large to verify its signature.", 413)
        body = request.body
        actual = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        if declared is not None and declared.lower() != actual:
            raise self._deny(
                CONTENT_SHA256_MISMATCH,
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                400,
            )
        return declared if declared is not None else actual

    def canonical_request(
        self, request: Request, params: SignatureParams, payload_hash: str, *, unsigned_token: bool = False
    ) -> str:
        """The canonical request text for `request` as the signer must have built it.

        `unsigned_token`: the presigned URL's X-Amz-Security-Token was appended after signing (AWS's "after" style).
        """
        path, _, query = request.raw_path.partition("?")
        opts = self.options
        uri = remembered_path(path, opts.normalize_path, opts.double_encode)
        if params.presigned:
            canonical_qs = canonical_query(query, drop_signature=True, drop_token=unsigned_token)
        else:
            canonical_qs = remembered_query(query)
        try:
            headers_block = canonical_headers(request.headers, params.signed_headers)
        except KeyError:
            raise MalformedSignature("A header listed in SignedHeaders is missing from the request") from None
        return f"{request.method}\n{uri}\n{canonical_qs}\n{headers_block}\n{params.signed_headers_text}\n{payload_hash}"

    def verify(self, request: Request) -> Verified:
        """Verify `request`'s signature at `request.time`; raise `Denied` with an AWS reason if it does not hold."""
        try:
            return self._verify(request)
        except MalformedSignature as exc:
            raise self._deny(INCOMPLETE_SIGNATURE, str(exc)) from None
        except UnicodeError:  # text that is not encodable (lone surrogates): nothing a real signer produces
            raise self._deny(INCOMPLETE_SIGNATURE, "The request contains characters that cannot be signed") from None

    def _verify(self, request: Request) -> Verified:
        now = request.time or time.time()
        query = request.raw_path.partition("?")[2]
        params = self._signature_params(request, query)
        amz_date, signed_at = self._request_date(request, params)
        self._check_scope(request, params, amz_date)
        ttl = self._check_time(params, signed_at, now)
        credential, snapshot = self._credential(request, params, now)
        payload_hash = self._payload_hash(request)
        sts = self._string_to_sign(request, params, amz_date, payload_hash, unsigned_token=False)
        unsigned_token = False
        if not self._signature_matches(params, credential, snapshot, sts):
            # A presigned URL may carry a session token appended after signing; try without it (AWS accepts
            # both styles) unless this authorizer insists on signed tokens.
            retry = (
                params.presigned and params.security_token is not None and not self.options.require_signed_session_token
            )
            if not retry:
                raise self._deny(INVALID_SIGNATURE, MSG_BAD_SIGNATURE)
            unsigned_token = True
            sts = self._string_to_sign(request, params, amz_date, payload_hash, unsigned_token=True)
            if not self._signature_matches(params, credential, snapshot, sts):
                raise self._deny(INVALID_SIGNATURE, MSG_BAD_SIGNATURE)
        if params.algorithm == HMAC_ALGORITHM:
            replay_key = f"{credential.access_key_id}:{params.signature}"
        else:
            # ECDSA signatures are malleable, so a replay is recognized by what was signed, not by the signature.
            replay_key = f"{credential.access_key_id}:a:{hashlib.sha256(sts).hexdigest()}"
        return Verified(credential, snapshot, params, replay_key, max(1.0, ttl), now, unsigned_token)

    def _string_to_sign(
        self, request: Request, params: SignatureParams, amz_date: str, payload_hash: str, *, unsigned_token: bool
    ) -> bytes:
        creq = self.canonical_request(request, params, payload_hash, unsigned_token=unsigned_token)
        creq_hash = hashlib.sha256(creq.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{params.algorithm}\n{amz_date}\n{params.scope}\n{creq_hash}".encode("utf-8", "surrogatepass")

    @staticmethod
    def _signature_matches(
        params: SignatureParams, credential: Credential, snapshot: CredentialSet, sts: bytes
    ) -> bool:
        if params.algorithm == HMAC_ALGORITHM:
            key = snapshot.signing_key(credential, params.scope_date, params.scope_region, params.scope_service)
            expected = hmac.new(key, sts, hashlib.sha256).hexdigest().encode()
            return hmac.compare_digest(expected, params.signature.encode("utf-8", "surrogatepass"))
        return sigv4a.verify(snapshot.ecdsa_public_key(credential), params.signature, sts)


# ---------------------------------------------------------------------------------------------------------------
# The authorizer
# ---------------------------------------------------------------------------------------------------------------


def build_principal(credential: Credential, authorizer: str, upstream: SigV4UpstreamHeaders) -> Principal:
    """The Principal a verified credential becomes (built once per credential snapshot)."""
    context: dict[str, Any] = {
        "aws:PrincipalArn": credential.principal_arn,
        "aws:PrincipalAccount": credential.account,
        "aws:PrincipalType": credential.principal_type,
        "aws:userid": credential.user_id,
    }
    if credential.username:
        context["aws:username"] = credential.username
    headers: list[tuple[str, str]] = []
    if upstream.access_key_id:
        headers.append((upstream.access_key_id, credential.access_key_id))
    if upstream.principal_arn:
        headers.append((upstream.principal_arn, credential.principal_arn))
    return Principal(
        kind="sigv4",
        id=credential.principal_arn,
        authorizer=authorizer,
        arn=credential.principal_arn,
        account=credential.account,
        claims=MappingProxyType({"access_key_id": credential.access_key_id}),
        context=MappingProxyType(context),
        upstream_headers=tuple(headers),
        policies=credential.policies,
        expires_at=credential.expires_at,
    )


class SigV4Authorizer(Authorizer):
    """Identifies callers by their AWS SigV4/SigV4a signature."""

    kind = "sigv4"
    challenge = HMAC_ALGORITHM

    def __init__(
        self,
        name: str,
        verifier: SigV4Verifier,
        upstream_headers: SigV4UpstreamHeaders | None = None,
        replay_guard: ReplayGuard | None = None,
        make_guard: Callable[[], ReplayGuard] | None = None,
    ) -> None:
        super().__init__(name)
        self.verifier = verifier
        self.upstream_headers = upstream_headers or SigV4UpstreamHeaders()
        self.replay_guard = replay_guard
        self._make_guard = make_guard or LocalReplayGuard
        self._variants: dict[bool, SigV4Authorizer] = {}

    def upstream_header_names(self) -> frozenset[str]:
        names = (self.upstream_headers.access_key_id, self.upstream_headers.principal_arn)
        return frozenset(name for name in names if name)

    def for_route(self, route: RouteSettings) -> Authorizer:
        """A route's `replay_guard` overrides the authorizer's: such routes get a sibling instance that shares
        the verifier (credential store, signing-key cache) and differs only in the guard. Every route that turns
        the guard on shares one guard; the signature covers the path, so routes cannot collide in it."""
        wanted = route.replay_guard
        if wanted is None or wanted == (self.replay_guard is not None):
            return self
        variant = self._variants.get(wanted)
        if variant is None:
            guard = self._make_guard() if wanted else None
            variant = SigV4Authorizer(self.name, self.verifier, self.upstream_headers, guard)
            self._variants[wanted] = variant
        return variant

    @property
    def store(self) -> CredentialStore:
        """The credential store this authorizer verifies against."""
        return self.verifier.store

    async def authenticate(self, request: Request) -> Principal:
        verified = self.verifier.verify(request)
        if self.replay_guard is not None and not await self.replay_guard.first_use(
            verified.replay_key, verified.replay_ttl, verified.now
        ):
            raise Denied(REPLAYED_REQUEST, "This signed request was already used.", self.verifier.options.deny_status)
        memo_key = (self.name, verified.credential.access_key_id)
        principal: Principal | None = verified.snapshot.memo.get(memo_key)
        if principal is None:
            principal = build_principal(verified.credential, self.name, self.upstream_headers)
            verified.snapshot.memo[memo_key] = principal
        return principal

    async def start(self) -> None:
        await self.store.start()

    async def stop(self) -> None:
        await self.store.stop()
        for instance in (self, *self._variants.values()):
            if instance.replay_guard is not None:
                await instance.replay_guard.close()


def redis_client(url: str, timeout: float) -> Any:
    """An asyncio Redis client with tight timeouts (connections are made lazily, on first use)."""
    import redis.asyncio as redis_asyncio

    return redis_asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def build_sigv4(settings: Any, ctx: BuildContext) -> Authorizer:
    """Build a `sigv4` authorizer: load the credential file (ConfigError on problems) and compile the options."""
    assert isinstance(settings, SigV4Settings)
    path = Path(settings.credentials.file)
    if not path.is_absolute():
        path = ctx.base_dir / path
    store = FileCredentialStore(
        path,
        reload_interval=settings.credentials.reload_interval,
        max_signing_keys=settings.signing_key_cache_size,
        api=ctx.api,
    )
    options = VerifierOptions.from_settings(settings, ctx.api.region)

    def make_guard() -> ReplayGuard:
        local = LocalReplayGuard(settings.replay_cache_size)
        if not settings.replay_redis_url:
            return local
        url = settings.replay_redis_url.get_secret_value()
        return RedisReplayGuard(redis_client(url, settings.replay_redis_timeout_ms / 1000), fallback=local)

    guard = make_guard() if settings.replay_guard else None
    return SigV4Authorizer(ctx.name, SigV4Verifier(store, options), settings.upstream_headers, guard, make_guard)
