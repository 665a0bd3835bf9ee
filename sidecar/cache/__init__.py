"""The decision cache: L1 in-process (`local.py`) in front of L2 Redis (`remote.py`), keyed by what a decision
depends on.

A key is `(config version, route, credential fingerprint, [method, path, values of the request attributes the
policies read])`; without a policy, a 12-byte digest of (version, route) followed by the fingerprint. The
credential fingerprint comes from the authorizer *before* verification (a token's hash), so only authorizers whose
verdict is a pure function of that credential offer one (JWT, Cognito, none); SigV4 does not, because a signature
covers the whole request and must be checked every time. A policy that reads the clock (`aws:CurrentTime`,
`aws:EpochTime`) makes its routes uncacheable. TTLs never outlive the credential (`Principal.expires_at`); allow
and deny TTLs are separate; errors and authentication failures are never cached.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from .. import reasons
from ..kv import Breaker, redis_client
from ..metrics import CACHE_REQUESTS, tally
from ..request import Decision, Request
from ..settings import Config, RedisSettings
from .blobs import SignedBlobStore
from .local import LocalCache
from .remote import RemoteCache, Signer, signing_key

TIME_KEYS = frozenset({"aws:currenttime", "aws:epochtime"})
CACHEABLE_DENIALS = frozenset({reasons.ACCESS_DENIED, reasons.INSUFFICIENT_SCOPE, reasons.ROUTE_DENY})
"""Denials that follow from who the caller is and what the policy says; anything transient is recomputed."""

__all__ = [
    "CACHEABLE_DENIALS",
    "DecisionCache",
    "KeyPlan",
    "LocalCache",
    "RedisLayer",
    "RemoteCache",
    "SignedBlobStore",
    "blob_store",
    "redis_layer",
]


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """How to key decisions on one route, worked out at config load."""

    version: str
    route: str
    with_resource: bool
    """A policy applies: the resource (method and path) is part of the decision."""
    request_keys: tuple[str, ...]
    """Policy condition keys computed from the request (e.g. `aws:sourceip`), in a fixed order."""
    ttl: float
    deny_ttl: float
    prefix: bytes = field(init=False, repr=False)
    """12 bytes of SHA-256 over (version, route): with the fingerprint, the whole key of a route without a
    policy, in one bytes object (about half the size of a tuple and the fingerprint it holds; the decision
    cache holds 100,000 keys)."""

    def __post_init__(self) -> None:
        digest = hashlib.sha256(f"{self.version}\x00{self.route}".encode("utf-8", "surrogatepass")).digest()
        object.__setattr__(self, "prefix", digest[:12])

    def key(self, request: Request, fingerprint: bytes, context: object | None = None) -> Hashable:
        """The cache key for `request` presented with a credential whose fingerprint is `fingerprint`."""
        if not self.with_resource:
            return self.prefix + fingerprint
        values: tuple[object, ...] = ()
        if self.request_keys and context is not None:
            get = context.get  # type: ignore[attr-defined]
            values = tuple(get(k) for k in self.request_keys)
        return (self.version, self.route, fingerprint, request.method, request.path, *values)


class DecisionCache:
    """L1 then L2 lookups, and the rules for what may be stored and for how long."""

    def __init__(self, local: LocalCache[Decision] | None, remote: RemoteCache | None) -> None:
        self.local = local
        self.remote = remote
        self._local_hit = tally(CACHE_REQUESTS, "local", "hit").inc
        self._local_miss = tally(CACHE_REQUESTS, "local", "miss").inc

    def get_local(self, key: Hashable) -> Decision | None:
        """L1 lookup (synchronous: no await on the warm path)."""
        if self.local is None:
            return None
        found = self.local.get(key)
        if found is None:
            self._local_miss()
        else:
            self._local_hit()
        return found

    async def get_remote(self, key: Hashable, plan: KeyPlan) -> Decision | None:
        """L2 lookup; a hit is copied into L1 for the rest of its lifetime there."""
        if self.remote is None:
            return None
        found = await self.remote.get(key)
        if found is None:
            return None
        decision, expires_at = found
        if self.local is not None:
            # Never longer than the entry has left: the writer already capped it at the credential's expiry.
            remaining = expires_at - time.time()
            self.local.set(key, decision, min(plan.ttl if decision.allowed else plan.deny_ttl, remaining))
        return decision

    def put(self, key: Hashable, decision: Decision, plan: KeyPlan, now: float | None = None) -> None:
        """Store a decision if it may be cached, for at most its TTL and never past the credential's expiry."""
        if decision.allowed:
            ttl = plan.ttl
        elif decision.reason in CACHEABLE_DENIALS:
            ttl = plan.deny_ttl
        else:
            return
        principal = decision.principal
        if principal is not None and principal.expires_at is not None:
            ttl = min(ttl, principal.expires_at - (time.time() if now is None else now))
        if decision.ttl is not None:
            ttl = min(ttl, decision.ttl)
        if ttl <= 0:
            return
        if self.local is not None:
            self.local.set(key, decision, ttl)
        if self.remote is not None:
            self.remote.put(key, decision, ttl)

    async def close(self) -> None:
        """Flush background writes and close the Redis client."""
        if self.remote is not None:
            await self.remote.close()


@dataclass(frozen=True, slots=True)
class RedisLayer:
    """`cache.redis` resolved once per config: the connection and the signer every user of it shares (the decision
    cache, the shared results of `blob_store`). Once, because without a configured signing key a random one is
    drawn (and warned about): two would make a replica's own entries unreadable to itself."""

    connection: RedisSettings
    signer: Signer

    def breaker(self) -> Breaker:
        return Breaker(threshold=self.connection.breaker_threshold, cooldown=self.connection.breaker_cooldown)

    @property
    def timeout(self) -> float:
        return self.connection.timeout_ms / 1000


def redis_layer(config: Config) -> RedisLayer | None:
    """The config's `cache.redis`, or None without one. Raises ValueError/OSError for a signing key it cannot
    read."""
    r = config.cache.redis
    if r is None:
        return None
    key = signing_key(
        r.signing_key.get_secret_value() if r.signing_key else None,
        r.signing_key_file,
        r.signing_key_env,
        config.base_dir,
    )
    return RedisLayer(r.inline() or config.redis[r.connection or "default"], Signer(key))


def blob_store(layer: RedisLayer, prefix: str, metric_layer: str) -> SignedBlobStore:
    """A signed blob store on `layer` with its own client and breaker (the same timeout and breaker settings as
    the decision cache), its keys under `prefix`, counted as `metric_layer`."""
    return SignedBlobStore(
        redis_client(layer.connection), layer.signer, layer.timeout, prefix, layer.breaker(), layer=metric_layer
    )


def build(config: Config, layer: RedisLayer | None = None) -> DecisionCache | None:
    """The decision cache `cache` asks for, or None when every layer is off. `layer`: `cache.redis` resolved
    (`redis_layer`); None resolves it here."""
    settings = config.cache
    if settings.ttl <= 0 and settings.deny_ttl <= 0:
        return None
    local = LocalCache[Decision](settings.local.max_entries) if settings.local.enabled else None
    remote = None
    if layer is None and settings.redis is not None:
        layer = redis_layer(config)
    if layer is not None:
        connection = layer.connection
        client = redis_client(connection)
        remote = RemoteCache(
            client,
            layer.signer,
            timeout=layer.timeout,
            breaker=layer.breaker(),
            # MGET batching pays off against redis-py's per-command cost; the lean reader pipelines on one
            # connection and is cheaper without it while Checks arrive one at a time. Cluster cannot MGET.
            batch=not connection.cluster and not getattr(client, "times_reads", False),
        )
    if local is None and remote is None:
        return None
    return DecisionCache(local, remote)
