"""L2: decisions shared by every replica through Redis, signed, bounded in time, and never trusted blindly.

Redis is a trust boundary. Each entry is `version byte + HMAC-SHA256(key || payload) + payload` under the cluster
signing key, so whoever can write to Redis can neither forge an allow nor move a real entry under another key;
an entry that fails the check is ignored and counted. Every operation has a few-millisecond timeout; a circuit
breaker stops asking a Redis that keeps failing, so an outage costs no per-request wait, and probes it until it
answers again. Redis trouble degrades to computing decisions locally: never to an allow, never to an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from time import monotonic
from types import MappingProxyType
from typing import Any, TypeVar

from ..inline import in_task
from ..kv import Breaker, RedisLike
from ..metrics import CACHE_REQUESTS, REDIS_ERRORS, tally
from ..request import Decision, Principal
from ..secret import read_secret

log = logging.getLogger(__name__)

_FORMAT = b"\x01"
_MAC_BYTES = 32
T = TypeVar("T")


def encode_decision(decision: Decision, expires_at: float) -> bytes:
    """The cacheable part of a Decision as compact JSON (no explanations, no claims, no policies), with the wall
    time after which no replica may serve it (the TTL, already capped by the credential's expiry)."""
    principal = decision.principal
    return json.dumps(
        {
            "e": expires_at,
            "a": decision.allowed,
            "s": decision.status,
            "r": decision.reason,
            "m": decision.message,
            "h": decision.all_headers(),
            "x": decision.headers_to_remove,
            "d": dict(decision.metadata),
            "ro": decision.route,
            "au": decision.authorizer,
            "st": decision.statement,
            "p": None
            if principal is None
            else [principal.kind, principal.id, principal.authorizer, principal.arn, principal.account],
        },
        separators=(",", ":"),
    ).encode()


def decode_decision(payload: bytes) -> tuple[Decision, float]:
    """Inverse of `encode_decision`: the decision and its absolute expiry (raises ValueError/KeyError/TypeError)."""
    data = json.loads(payload)
    expires_at = float(data["e"])
    p = data["p"]
    principal = (
        None
        if p is None
        else Principal(kind=p[0], id=p[1], authorizer=p[2], arn=p[3], account=p[4], expires_at=expires_at)
    )
    decision = Decision(
        allowed=bool(data["a"]),
        status=int(data["s"]),
        reason=str(data["r"]),
        message=str(data["m"]),
        headers=tuple((str(k), str(v)) for k, v in data["h"]),
        headers_to_remove=tuple(str(h) for h in data["x"]),
        metadata=MappingProxyType(dict(data["d"])),
        principal=principal,
        route=str(data["ro"]),
        authorizer=str(data["au"]),
        statement=str(data["st"]),
    )
    return decision, expires_at


class Signer:
    """HMAC-SHA256 over (key, payload) with the cluster's signing key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def seal(self, redis_key: str, payload: bytes) -> bytes:
        mac = hmac.new(self._key, redis_key.encode() + b"\x00" + payload, hashlib.sha256).digest()
        return _FORMAT + mac + payload

    def open(self, redis_key: str, blob: bytes) -> bytes | None:
        """The payload if the entry is ours and was stored under this key; None otherwise."""
        if len(blob) <= 1 + _MAC_BYTES or blob[:1] != _FORMAT:
            return None
        mac, payload = blob[1 : 1 + _MAC_BYTES], blob[1 + _MAC_BYTES :]
        expected = hmac.new(self._key, redis_key.encode() + b"\x00" + payload, hashlib.sha256).digest()
        return payload if hmac.compare_digest(mac, expected) else None


def signing_key(value: str | None, file: str | None, env: str | None, base_dir: Path) -> bytes:
    """The configured signing key, or a random per-process one (with a warning: replicas cannot share)."""
    configured = read_secret(value, file, env, base_dir)
    if configured is not None:
        return configured
    log.warning(
        "cache.redis has no signing_key: using a random per-process key, so replicas cannot share cached decisions"
    )
    return secrets.token_bytes(32)


class SignedEntries:
    """What every user of signed entries in Redis shares: fixed-size keys with nothing readable in them, entries
    sealed and opened with the cluster's signing key, one timeout per command, the circuit breaker, writes in the
    background, and the counters of `authz_cache_requests_total` under its `layer` label."""

    def __init__(
        self,
        client: RedisLike,
        signer: Signer,
        timeout: float,
        prefix: str,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = monotonic,
        layer: str = "redis",
    ) -> None:
        self.client = client
        self.signer = signer
        self.timeout = timeout
        self.prefix = prefix
        self.breaker = breaker or Breaker()
        self.clock = clock
        self._pending: set[asyncio.Task[None]] = set()
        self._reads_timed = not getattr(client, "times_reads", False)
        self._hit = tally(CACHE_REQUESTS, layer, "hit").inc
        self._miss = tally(CACHE_REQUESTS, layer, "miss").inc
        self._error = tally(CACHE_REQUESTS, layer, "error").inc
        self._rejected = tally(CACHE_REQUESTS, layer, "rejected").inc
        self._skipped = tally(CACHE_REQUESTS, layer, "skipped").inc

    def redis_key(self, key: object) -> str:
        """A fixed-size key with nothing readable in it (no paths, addresses or ids in Redis)."""
        return self.prefix + hashlib.sha256(repr(key).encode()).hexdigest()

    async def _read(self, name: str) -> bytes | None:
        """The verified payload stored under `name`, or None, each case counted: the breaker is open (skipped),
        Redis failed (error), nothing is stored (miss), or the entry is not ours (rejected)."""
        if not self.breaker.allow(self.clock()):
            self._skipped()
            return None
        blob = await self._fetch(name)
        if blob is _FAILED:
            return None
        if blob is None:
            self._miss()
            return None
        return self._opened(name, blob)

    def _fetch(self, name: str) -> Awaitable[Any]:
        """One GET (`_FAILED` if it fails)."""
        return self._call("get", lambda: self.client.get(name), timed=self._reads_timed)

    def _opened(self, name: str, blob: Any) -> bytes | None:
        """The payload of an entry read under `name`, or None (counted, and logged) when it is not ours: forged,
        written with another signing key, or moved from another key. Only a bulk string can be an entry: a hostile
        or confused server's integer, array or error reply is rejected as it is (`bytes(n)` would allocate n zero
        bytes, and `bytes` of a list or an error raises)."""
        payload = self.signer.open(name, bytes(blob)) if isinstance(blob, bytes | bytearray) else None
        if payload is None:
            self._rejected()
            log.warning("ignored a redis cache entry that failed its integrity check")
        return payload

    def _write(self, name: str, payload: bytes, ttl: float) -> None:
        """Seal `payload` and store it under `name` for `ttl` seconds in the background: the request never waits
        for Redis to acknowledge."""
        task = asyncio.ensure_future(self._set(name, self.signer.seal(name, payload), int(ttl * 1000)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _set(self, name: str, blob: bytes, ttl_ms: int) -> None:
        await self._call("set", lambda: self.client.set(name, blob, px=max(ttl_ms, 1)))

    async def _call(self, operation: str, command: Callable[[], Awaitable[T]], timed: bool = True) -> T | Any:
        """Run a Redis command; any failure is "no answer". `timed=False` for a client that times its own reads
        (`resp.LeanReader`), which saves an `asyncio.timeout` per call."""
        try:
            if timed:
                result = await in_task(self._timed(command))
            else:
                result = await command()
        except Exception as exc:  # timeouts, connection errors, pool exhaustion: all mean "no answer"
            self.breaker.failure(self.clock())
            REDIS_ERRORS.labels(operation).inc()
            self._error()
            log.debug("redis %s failed: %r", operation, exc)
            return _FAILED
        self.breaker.success()
        return result

    async def _timed(self, command: Callable[[], Awaitable[T]]) -> T:
        # `asyncio.timeout` needs a Task; `_call` may run inline in a listener's callback (see sidecar/inline.py)
        async with asyncio.timeout(self.timeout):
            return await command()

    def _in_flight(self) -> set[asyncio.Task[None]]:
        return self._pending

    async def close(self) -> None:
        """Wait briefly for background reads and writes, then close the client."""
        tasks = self._in_flight()
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout * 2)
        close = getattr(self.client, "aclose", None)
        if close is not None:
            await close()


class RemoteCache(SignedEntries):
    """Signed decisions in Redis under `prefix + sha256(key)`, each operation bounded by `timeout`.

    Lookups are batched (`batch`, on except for Redis Cluster, where the keys of one MGET must share a slot):
    with no lookup in flight a lookup goes out at the end of the current event-loop turn; while `_MAX_IN_FLIGHT`
    are in flight, new lookups wait and go out together as one MGET when one returns. An idle sidecar thus adds
    no delay, and a loaded one pays redis-py's per-command cost (pool, stream, timeout) once per batch instead
    of once per Check.
    """

    def __init__(
        self,
        client: RedisLike,
        signer: Signer,
        timeout: float,
        prefix: str = "authz:d:",
        breaker: Breaker | None = None,
        clock: Callable[[], float] = monotonic,
        wall_clock: Callable[[], float] = time.time,
        batch: bool = True,
    ) -> None:
        super().__init__(client, signer, timeout, prefix, breaker, clock)
        self.wall_clock = wall_clock
        self.batch = batch
        self._waiting: dict[str, list[asyncio.Future[Any]]] = {}
        self._reads: set[asyncio.Task[None]] = set()
        self._flush_due = False

    async def get(self, key: object) -> tuple[Decision, float] | None:
        """The decision stored for `key` and its absolute expiry, if Redis answers in time and the entry verifies
        and has not expired (Redis's own TTL is the first line; the sealed expiry guards against clock-skewed or
        stale servers)."""
        payload = await self._read(self.redis_key(key))
        if payload is None:
            return None
        try:
            decision, expires_at = decode_decision(payload)
        except (ValueError, KeyError, TypeError, IndexError):
            self._rejected()
            return None
        if expires_at <= self.wall_clock():
            self._miss()
            return None
        self._hit()
        return decision, expires_at

    def _fetch(self, name: str) -> Awaitable[Any]:
        return self._batched(name) if self.batch else super()._fetch(name)

    def _batched(self, name: str) -> asyncio.Future[Any]:
        """A future for `name`'s value, fetched by the next MGET."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(name, []).append(future)
        self._schedule()
        return future

    def _schedule(self) -> None:
        if self._waiting and not self._flush_due and len(self._reads) < _MAX_IN_FLIGHT:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        waiting, self._waiting = self._waiting, {}
        names = list(waiting)
        for start in range(0, len(names), _MAX_BATCH):
            chunk = names[start : start + _MAX_BATCH]
            task = asyncio.ensure_future(self._mget(chunk, waiting))
            self._reads.add(task)
            task.add_done_callback(self._read_done)

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._reads.discard(task)
        self._schedule()  # lookups that queued behind this one go out now

    async def _mget(self, names: list[str], waiting: dict[str, list[asyncio.Future[Any]]]) -> None:
        values: list[Any] = [_FAILED] * len(names)
        try:
            found = await self._call("get", lambda: self.client.mget(names), timed=self._reads_timed)
            if found is not _FAILED and len(found) == len(names):
                values = found
        finally:  # even when cancelled: every waiter gets an answer ("no answer" is a miss)
            for name, value in zip(names, values, strict=True):
                for future in waiting[name]:
                    if not future.done():
                        future.set_result(value)

    def put(self, key: object, decision: Decision, ttl: float) -> None:
        """Store in the background; the request never waits for Redis to acknowledge."""
        if ttl <= 0 or not self.breaker.allow(self.clock()):
            return
        self._write(self.redis_key(key), encode_decision(decision, self.wall_clock() + ttl), ttl)

    def _in_flight(self) -> set[asyncio.Task[None]]:
        return self._pending | self._reads


_FAILED: Any = object()
_MAX_BATCH = 128
_MAX_IN_FLIGHT = 2
