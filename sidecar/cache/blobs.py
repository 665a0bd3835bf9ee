"""Opaque values shared by every replica through Redis, signed like the decision cache's entries.

For state that is not a `Decision` but must be shared as safely: a Lambda authorizer's results (`type: lambda`),
which the runtime hands to authorizers as `BuildContext.blob_store` when the config has `cache.redis`. The store
knows nothing of what it holds: the user encodes its values (an expiry among them, if it needs one checked beyond
Redis's own TTL) and namespaces its keys. Like the decision cache's entries, a value is sealed with the cluster's
signing key under its Redis key, so an entry nobody here wrote, or one moved from another key, is ignored and
counted (`authz_cache_requests_total{layer=...,result="rejected"}`). Every command has the connection's timeout and
goes through a circuit breaker; trouble is "nothing stored", never an error.
"""

from __future__ import annotations

from .remote import SignedEntries

__all__ = ["SignedBlobStore"]


class SignedBlobStore(SignedEntries):
    """Signed bytes in Redis under `prefix + sha256(key)`, stored in the background, for at most their TTL."""

    async def get(self, key: bytes) -> bytes | None:
        """The value stored for `key` if Redis answers in time and the entry verifies; None otherwise."""
        payload = await self._read(self.redis_key(key))
        if payload is not None:
            self._hit()
        return payload

    async def put(self, key: bytes, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds. Returns at once: the write goes on in the background."""
        if ttl > 0 and self.breaker.allow(self.clock()):
            self._write(self.redis_key(key), value, ttl)
