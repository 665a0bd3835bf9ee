"""The `jwt` and `cognito` authorizers: bearer tokens verified against an issuer's published keys.

The hot path for a token seen before is a SHA-256 of the token and one dictionary lookup: verified tokens are kept
in a bounded LRU until `min(exp + leeway, key staleness)` and dropped when their key leaves the key set. A new
token is parsed and verified (`token.py`), its claims checked and turned into a Principal (`claims.py`). Every
failure raises `Denied` with one of the reason codes of `errors.py` (documented in docs/jwt.md). Tokens are never
logged.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from ...explanation import Step, refused, shown_value, when
from ...hop import HopNeeds, NotOffloadable, OffloadRules, TokenRules
from ...reasons import STATUS_UNAUTHORIZED, Denied
from ...request import CompactMap, Principal, Request
from ..base import Authorizer, IdentitySide
from ..sources import IdentitySource
from .claims import (
    ClaimRules,
    LazyContext,
    claim_context,
    claim_headers,
    cognito_context,
    principal_id,
    scopes_of,
    shared_values,
)
from .errors import KEYS_UNAVAILABLE, TOKEN_MISSING, UNKNOWN_KEY, JwtError
from .jwks import Clock, KeySource
from .keys import KeySet, VerificationKey
from .token import (
    CheckedHeader,
    allowed_algorithms,
    b64url_decode,
    missing_step,
    parse_json_object,
    parse_token,
    verify_signature,
)

log = logging.getLogger(__name__)

STATUS_UNAVAILABLE = 503
INVALID_TOKEN_CHALLENGE = (("www-authenticate", 'Bearer error="invalid_token"'),)


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
    identity_side: ClassVar[IdentitySide] = "authenticated"

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
        keys_at: tuple[str | None, str | None] = (None, None),
    ) -> None:
        super().__init__(name)
        self.keys_at = keys_at
        """(jwks_uri, jwks_file) as configured; both None when keys are found by OIDC discovery."""
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
        double what each token costs in memory (the entry, the principal with its claims). A token seen again after
        its decision expired, or on a route without decision caching, is verified once more or found in the token
        cache that those routes fill."""
        sibling = copy.copy(self)
        sibling.remember_tokens = False
        return sibling

    # hot path
    def _token(self, request: Request) -> str:
        for source in self.sources:
            token = source.extract(request)
            if token is not None:
                return token
        message = "A bearer token is required"
        raise Denied(TOKEN_MISSING, message, STATUS_UNAUTHORIZED, explain=partial(missing_step, message, self.sources))

    def upstream_header_names(self) -> frozenset[str]:
        return frozenset(header for _, header in self.claim_to_headers)

    def hop_needs(self) -> HopNeeds:
        """The identity sources' headers (a cookie source reads `cookie`; a query source, the path)."""
        names = [s.name if s.where == "header" else "cookie" for s in self.sources if s.where != "query"]
        return HopNeeds.of(names, f"authorizer {self.name} reads its token from {', '.join(names) or 'the query'}")

    def offload_rules(self) -> OffloadRules | NotOffloadable:
        """The claim rules, for Envoy's jwt_authn and an RBAC condition (`envoy-config --offload`)."""
        headers = [s for s in self.sources if s.where == "header"]
        if len(self.sources) != 1 or not headers:
            return NotOffloadable(f"authorizer {self.name} reads its token from somewhere else than one header")
        if self.keys_at == (None, None):
            return NotOffloadable(f"authorizer {self.name} finds its keys by OIDC discovery: set jwks_uri")
        if self.rules.leeway != int(self.rules.leeway):
            return NotOffloadable(f"authorizer {self.name}'s leeway is not whole seconds (jwt_authn's clock skew is)")
        return TokenRules(
            issuer=self.rules.issuer,
            audiences=self.rules.audiences,
            leeway=self.rules.leeway,
            algorithms=frozenset(self.algorithms),
            header=headers[0].name,
            claim_to_headers=self.claim_to_headers,
            max_token_bytes=self.max_token_bytes,
            jwks_uri=self.keys_at[0],
            jwks_file=self.keys_at[1],
            token_cache_size=self.cache_size,
        )

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
        # The request's time, as every stage reads it (SigV4 skew, policy dates): the proxy stamps it, and
        # `check --at` sets it. The clock is only a fallback for a request that carries none.
        now = request.time or self._clock()
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
            return Denied(exc.reason, exc.message, STATUS_UNAVAILABLE, explain=exc.explain)
        return Denied(
            exc.reason, exc.message, STATUS_UNAUTHORIZED, headers=INVALID_TOKEN_CHALLENGE, explain=exc.explain
        )

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
                message = "the issuer's signing keys are not available"
                raise JwtError(KEYS_UNAVAILABLE, message, partial(_keys_unavailable_step, message, self.keys))
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
    def _context(self, claims: Mapping[str, Any], scopes: frozenset[str]) -> dict[str, Any]:
        return claim_context(claims, scopes)

    def _principal(self, verified: dict[str, Any], exp: float) -> Principal:
        # Compact: the claims live as long as the cached token, and a CompactMap shares its key index with every
        # token of the same claim names where a dict would hold its own.
        claims = CompactMap(shared_values(verified))
        scopes = scopes_of(claims)
        headers = claim_headers(claims, self.claim_to_headers) if self.claim_to_headers else ()
        return Principal(
            kind=self.kind,
            id=principal_id(claims),
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
        return cognito_context(claims, scopes)

    def offload_rules(self) -> OffloadRules | NotOffloadable:
        return NotOffloadable(f"authorizer {self.name} (cognito): token_use and client_id rules jwt_authn lacks")


def _keys_unavailable_step(message: str, keys: KeySource) -> Step:
    """KeysUnavailable explained (`check --explain`): where the keys come from and why the last fetch failed, which
    otherwise only a WARNING line on stderr says."""
    describe = getattr(keys, "describe", None)
    attempt = getattr(keys, "last_attempt_at", float("-inf"))
    return refused(
        KEYS_UNAVAILABLE,
        message,
        ("keys_from", describe() if callable(describe) else type(keys).__name__),
        ("last_fetch_error", shown_value(getattr(keys, "last_error", "")) or "(none recorded)"),
        ("last_attempt", when(attempt) if attempt > float("-inf") else "(never)"),
    )
