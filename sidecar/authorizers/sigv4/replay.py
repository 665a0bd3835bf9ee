"""The replay guard: a signature is accepted once while it is still valid (beyond API Gateway; off by default).

`LocalReplayGuard` remembers signatures in this process; `RedisReplayGuard` shares them between sidecars through
Redis (`SET NX PX`) and falls back to the local answer when Redis fails, so Redis trouble weakens the guard to
per-process, never to "allow everything".
"""

from __future__ import annotations

import abc
import logging
from time import monotonic
from typing import Any

from pydantic import SecretStr

from ...inline import in_task
from ...kv import Breaker
from ...kv import redis_client as kv_client
from ...settings import RedisSettings

log = logging.getLogger(__name__)


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

    def __init__(
        self,
        client: Any,
        prefix: str = "authz:sigv4:replay:",
        fallback: LocalReplayGuard | None = None,
        breaker: Breaker | None = None,
    ):
        self.client = client
        self.prefix = prefix
        self.fallback = fallback or LocalReplayGuard()
        self.breaker = breaker or Breaker()

    async def first_use(self, key: str, ttl: float, now: float) -> bool:
        local_first = self.fallback.check(key, ttl, now)
        if not self.breaker.allow(monotonic()):
            return local_first  # Redis keeps failing: the local answer, without a timeout per request
        try:
            # In a Task: the asyncio listeners start a Check inline, outside any, and redis-py times its
            # commands with `asyncio.timeout`, which raises there; every SET failed and the guard was per process.
            stored = await in_task(self.client.set(self.prefix + key, b"1", nx=True, px=max(1, int(ttl * 1000))))
        except Exception as exc:  # redis.RedisError, OSError, timeouts: all degrade to the local answer
            self.breaker.failure(monotonic())
            log.warning("replay guard: redis unavailable (%s); using the local guard", exc.__class__.__name__)
            return local_first
        self.breaker.success()
        return bool(stored) and local_first

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception as exc:  # closing a broken connection must not fail a config swap
            log.debug("replay guard: closing redis failed: %s", exc.__class__.__name__)


def redis_client(url: str, timeout: float) -> Any:
    """A redis-py client for `url` with tight timeouts, from the shared layer (`kv`), as every Redis user gets."""
    return kv_client(RedisSettings(url=SecretStr(url), timeout_ms=timeout * 1000, lean_reads=False))


def guard_for(connection: RedisSettings, fallback: LocalReplayGuard) -> RedisReplayGuard:
    """The shared guard over one of the config's Redis connections (`SET NX` needs redis-py: no lean reads)."""
    client = kv_client(connection.model_copy(update={"lean_reads": False}))
    breaker = Breaker(threshold=connection.breaker_threshold, cooldown=connection.breaker_cooldown)
    return RedisReplayGuard(client, fallback=fallback, breaker=breaker)
