"""Redis clients: redis-py for writes and everything else, the lean RESP client (`resp.py`) for hot reads and
the gates' scripts.

One function builds the client for a connection's settings (plain URL with a blocking pool, Cluster or
Sentinel); every user (decision cache, SigV4 replay guard, usage plans and rate rules) gets it from here, with
the same timeouts.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from ..settings import RedisSettings
from .resp import LeanReader


class RedisLike(Protocol):
    """The two commands the cache uses (redis.asyncio.Redis, RedisCluster and Sentinel clients all fit)."""

    def get(self, name: str) -> Awaitable[Any]: ...

    def set(self, name: str, value: bytes, px: int | None = None) -> Awaitable[Any]: ...

    def mget(self, keys: list[str]) -> Awaitable[list[Any]]: ...


def redis_client(settings: RedisSettings) -> RedisLike:
    """A redis-py asyncio client for one connection (`redis.<name>`, or a user's inline short form): plain
    (BlockingConnectionPool), cluster or sentinel.

    The pool blocks (up to the operation timeout) instead of raising when all connections are busy: redis-py's
    default pool raises `MaxConnectionsError` past its limit, which under load would count as Redis failures.
    """
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.sentinel import Sentinel

    url = settings.url.get_secret_value()
    timeout = settings.timeout_ms / 1000
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": max(timeout, 0.05)}
    if settings.cluster:
        cluster = RedisCluster.from_url(url, max_connections=settings.max_connections, **options)
        return cluster  # type: ignore[return-value]  # wider signatures than the Protocol states
    if settings.sentinel is not None:
        nodes = [(h.rpartition(":")[0].strip("[]"), int(h.rpartition(":")[2])) for h in settings.sentinel.nodes]
        sentinel = Sentinel(nodes, **options)  # type: ignore[no-untyped-call]
        master: RedisLike = sentinel.master_for(settings.sentinel.master, **options)
        return master
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.max_connections, timeout=timeout, **options
    )
    client: RedisLike = aioredis.Redis(connection_pool=pool)  # type: ignore[assignment]  # wider signatures
    reader = LeanReader.from_url(url, timeout) if settings.lean_reads else None
    return client if reader is None else SplitClient(reader, client)


class SplitClient:
    """Reads through the lean RESP reader (`resp.py`), writes through redis-py (the gates' scripts use `reader`
    directly: `limits.redis_counters.RedisCounters`)."""

    times_reads = True

    def __init__(self, reader: LeanReader, writer: RedisLike) -> None:
        self.reader = reader
        self.writer = writer

    def get(self, name: str) -> Awaitable[Any]:
        return self.reader.get(name)

    def mget(self, keys: list[str]) -> Awaitable[list[Any]]:
        return self.reader.mget(keys)

    def set(self, name: str, value: bytes, px: int | None = None) -> Awaitable[Any]:
        return self.writer.set(name, value, px=px)

    async def aclose(self) -> None:
        await self.reader.aclose()
        close = getattr(self.writer, "aclose", None)
        if close is not None:
            await close()
