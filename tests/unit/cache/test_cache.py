"""The decision cache: L1 semantics, keys, what may be cached and for how long, and L2 against a real Redis
(sharing, forged and moved entries, outages and the circuit breaker)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from sidecar.cache import DecisionCache, KeyPlan, LocalCache
from sidecar.cache.remote import RemoteCache, Signer, decode_decision, encode_decision
from sidecar.kv import Breaker
from sidecar.reasons import Denied
from sidecar.request import Decision, Principal, Request
from tests.conftest import RedisServer

ALICE = Principal(kind="jwt", id="alice", authorizer="corp", expires_at=None)
ALLOW = Decision(
    allowed=True, status=200, reason="Allowed", headers=(("x-authz-principal", "alice"),), principal=ALICE, route="r"
)
PLAN = KeyPlan(version="v1", route="GET /a", with_resource=False, request_keys=(), ttl=300, deny_ttl=30)
REQUEST = Request(method="GET", raw_path="/a", path="/a", headers={})


def test_local_hit_miss_expiry_and_lru() -> None:
    cache: LocalCache[str] = LocalCache(2)
    cache.set("a", "A", ttl=10, now=100)
    assert cache.get("a", now=105) == "A"
    assert cache.get("a", now=110) is None  # expired and dropped
    assert len(cache) == 0
    cache.set("a", "A", 10, now=0)
    cache.set("b", "B", 10, now=0)
    cache.get("a", now=1)  # a is now most recent
    cache.set("c", "C", 10, now=1)
    assert (cache.get("a", now=2), cache.get("b", now=2), cache.get("c", now=2)) == ("A", None, "C")
    cache.set("z", "Z", ttl=0)
    assert cache.get("z") is None


def test_keys_depend_on_everything_the_decision_reads() -> None:
    base = PLAN.key(REQUEST, b"t1")
    assert base == PLAN.key(REQUEST, b"t1")
    assert base != KeyPlan("v1", "GET /b", False, (), 300, 30).key(REQUEST, b"t1")
    assert base != PLAN.key(REQUEST, b"t2")
    assert base != KeyPlan("v2", "GET /a", False, (), 300, 30).key(REQUEST, b"t1")
    with_policy = KeyPlan("v1", "GET /a", True, ("aws:sourceip",), 300, 30)

    class Ctx:
        def __init__(self, ip: str) -> None:
            self.ip = ip

        def get(self, key: str) -> str:
            return self.ip

    other_path = REQUEST._replace(path="/b", raw_path="/b")
    assert with_policy.key(REQUEST, b"t1", Ctx("1.1.1.1")) != with_policy.key(other_path, b"t1", Ctx("1.1.1.1"))
    assert with_policy.key(REQUEST, b"t1", Ctx("1.1.1.1")) != with_policy.key(REQUEST, b"t1", Ctx("2.2.2.2"))


def test_what_is_cached_and_for_how_long() -> None:
    local: LocalCache[Decision] = LocalCache(100)
    cache = DecisionCache(local, None)
    cache.put("allow", ALLOW, PLAN)
    assert cache.get_local("allow") is ALLOW
    policy_deny = Denied("AccessDenied", "no", 403).decision()
    cache.put("deny", policy_deny, PLAN)
    assert cache.get_local("deny") is policy_deny
    for reason in ("TokenExpired", "InvalidSignature", "InternalError", "NotReady"):
        cache.put(reason, Denied(reason, "x").decision(), PLAN)
        assert cache.get_local(reason) is None, reason
    now = time.time()
    short = Decision(True, 200, "Allowed", principal=Principal(kind="jwt", id="b", expires_at=now + 2))
    cache.put("short", short, PLAN, now=now)
    expires_at = local._data["short"][0]
    assert expires_at - time.monotonic() <= 2.01  # capped by the credential, not the 300 s TTL
    expired = Decision(True, 200, "Allowed", principal=Principal(kind="jwt", id="c", expires_at=now - 1))
    cache.put("expired", expired, PLAN, now=now)
    assert cache.get_local("expired") is None


def test_local_expiry_is_shared_and_never_late() -> None:
    """Entries stored in the same quarter second share one expiry float; rounding only ever shortens a TTL."""
    cache: LocalCache[str] = LocalCache(10)
    cache.set("a", "A", ttl=300, now=1000.05)
    cache.set("b", "B", ttl=300, now=1000.2)
    cache.set("short", "S", ttl=0.5, now=1000.2)
    a, b, short = (cache._data[k][0] for k in ("a", "b", "short"))
    assert a is b and 1299.75 < a <= 1300.05
    assert short == 1000.7  # under a second: exact
    assert cache.get("a", now=1300.0) is None and cache.get("b", now=1299.7) == "B"


def test_codec_round_trip() -> None:
    back, expires_at = decode_decision(encode_decision(ALLOW, 1234.5))
    assert (back.allowed, back.status, back.headers, back.principal and back.principal.id) == (
        True,
        200,
        ALLOW.headers,
        "alice",
    )
    assert expires_at == 1234.5
    assert back.principal is not None and back.principal.expires_at == 1234.5


def test_codec_keeps_the_identity_header() -> None:
    """A pipeline allow names its principal header apart from `headers`; from Redis it comes back among them."""
    allow = Decision(True, 200, "Allowed", headers=(("x-r", "r"),), principal=ALICE, identity_header="x-who")
    back, _ = decode_decision(encode_decision(allow, 1234.5))
    assert back.all_headers() == allow.all_headers() == (("x-r", "r"), ("x-who", "alice"))


def test_signer_rejects_forged_and_moved_entries() -> None:
    signer = Signer(b"k" * 32)
    sealed = signer.seal("key-1", b"payload")
    assert signer.open("key-1", sealed) == b"payload"
    assert signer.open("key-2", sealed) is None  # moved under another key
    assert signer.open("key-1", sealed[:-1] + b"X") is None  # tampered payload
    assert Signer(b"other").open("key-1", sealed) is None  # another cluster's key
    assert signer.open("key-1", b"\x01short") is None


def test_breaker_opens_probes_and_closes() -> None:
    breaker = Breaker(threshold=3, cooldown=1.0)
    for t in range(3):
        assert breaker.allow(t)
        breaker.failure(t)
    assert breaker.is_open
    assert not breaker.allow(2.5)  # cooling down: no per-request attempt
    assert breaker.allow(3.1)  # one probe
    assert not breaker.allow(3.1)  # and only one
    breaker.failure(3.1)  # probe failed: cooldown doubles
    assert not breaker.allow(4.5)
    assert breaker.allow(5.2)
    breaker.success()
    assert not breaker.is_open
    assert breaker.allow(5.3)


def remote(url: str, key: bytes = b"shared-key", timeout: float = 0.05) -> RemoteCache:
    client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return RemoteCache(client, Signer(key), timeout=timeout, breaker=Breaker(threshold=2, cooldown=0.05))


async def settle(cache: RemoteCache) -> None:
    while cache._pending:
        await asyncio.wait(set(cache._pending))


async def test_replicas_share_through_redis(redis_server: RedisServer) -> None:
    writer, reader = remote(redis_server.url), remote(redis_server.url)
    assert await reader.get(("v", "r", b"t")) is None
    writer.put(("v", "r", b"t"), ALLOW, ttl=30)
    await settle(writer)
    found = await reader.get(("v", "r", b"t"))
    assert found is not None and found[0].principal is not None and found[0].principal.id == "alice"
    stranger = remote(redis_server.url, key=b"another-cluster")
    assert await stranger.get(("v", "r", b"t")) is None  # signed with a key it does not share
    await writer.close()
    await reader.close()
    await stranger.close()


async def test_lookups_of_one_loop_turn_share_one_mget(redis_server: RedisServer) -> None:
    """Concurrent lookups cost one round trip; each gets its own answer (hits, misses, a duplicate key), and a
    waiter that gives up does not disturb the others."""
    writer, reader = remote(redis_server.url), remote(redis_server.url)
    for i in range(0, 10, 2):
        writer.put(("v", "r", b"t%d" % i), ALLOW, ttl=30)
    await settle(writer)
    calls: list[int] = []
    real_mget = reader.client.mget

    def counting_mget(names: list[str]) -> object:
        calls.append(len(names))
        return real_mget(names)

    reader.client.mget = counting_mget  # type: ignore[method-assign]
    keys = [("v", "r", b"t%d" % i) for i in range(10)] + [("v", "r", b"t0")]
    abandoned = asyncio.ensure_future(reader.get(("v", "r", b"t2")))
    results = asyncio.gather(*(reader.get(k) for k in keys))
    await asyncio.sleep(0)  # one loop turn (not a timed wait): every lookup is now waiting on the batch
    abandoned.cancel()
    found = await results
    assert calls == [10]  # eleven lookups of ten distinct keys (plus the abandoned one): one MGET
    assert [r is not None for r in found] == [i % 2 == 0 for i in range(10)] + [True]
    assert abandoned.cancelled()
    await writer.close()
    await reader.close()


async def test_unbatched_lookup_started_inline_reaches_redis(redis_server: RedisServer) -> None:
    """The asyncio listeners start a Check with `coro.send(None)`, outside any Task; an unbatched redis-py read
    (Redis Cluster) is timed with `asyncio.timeout`, which needs one: it must still reach Redis, not count as a
    Redis failure."""
    from sidecar.inline import Resume

    writer, reader = remote(redis_server.url), remote(redis_server.url)
    reader.batch = False
    writer.put(("v", "r", b"inline"), ALLOW, ttl=30)
    await settle(writer)
    coro = reader.get(("v", "r", b"inline"))
    loop = asyncio.get_running_loop()
    started: asyncio.Future[object] = loop.create_future()

    def start_inline() -> None:  # what HttpAuthzProtocol and LeanGrpcProtocol do, from a loop callback
        try:
            started.set_result(coro.send(None))
        except StopIteration as done:
            started.set_exception(AssertionError(f"finished without reading Redis: {done.value!r}"))

    loop.call_soon(start_inline)
    found = await Resume(coro, await started)
    assert found is not None and found[0].principal is not None and found[0].principal.id == "alice"
    assert not reader.breaker.is_open and reader.breaker.failures == 0
    await writer.close()
    await reader.close()


async def test_forged_entry_in_redis_is_ignored(redis_server: RedisServer) -> None:
    cache = remote(redis_server.url)
    key = ("v", "r", b"token")
    raw = aioredis.Redis.from_url(redis_server.url)
    await raw.set(cache.redis_key(key), b"\x01" + b"0" * 32 + encode_decision(ALLOW, time.time() + 60))
    assert await cache.get(key) is None
    cache.put(("v", "r", b"other"), ALLOW, ttl=30)
    await settle(cache)
    moved = await raw.get(cache.redis_key(("v", "r", b"other")))
    await raw.set(cache.redis_key(key), moved)  # a genuine entry moved under another key
    assert await cache.get(key) is None
    await raw.aclose()
    await cache.close()


async def test_redis_down_degrades_without_waiting(redis_server: RedisServer) -> None:
    cache = remote(redis_server.url)
    cache.put(("k",), ALLOW, ttl=30)
    await settle(cache)
    assert await cache.get(("k",)) is not None
    redis_server.stop()
    for _ in range(2):
        assert await cache.get(("k",)) is None  # errors are misses, never exceptions
    assert cache.breaker.is_open
    attempts = 0
    real_mget = cache.client.mget

    def counting_mget(names: list[str]) -> object:
        nonlocal attempts
        attempts += 1
        return real_mget(names)

    cache.client.mget = counting_mget  # type: ignore[method-assign]
    cache.breaker.open_until = time.monotonic() + 60  # hold the breaker open for this part
    for _ in range(100):
        assert await cache.get(("k",)) is None
    assert attempts == 0  # open breaker: no Redis attempt, so no per-request wait
    cache.breaker.open_until = 0.0
    redis_server.start()
    deadline = time.monotonic() + 10
    while cache.breaker.is_open:
        assert time.monotonic() < deadline, "breaker never closed"
        await cache.get(("k",))
        await asyncio.sleep(0.02)
    cache.put(("k2",), ALLOW, ttl=30)
    await settle(cache)
    assert await cache.get(("k2",)) is not None
    await cache.close()


@pytest.mark.parametrize("ttl", [0, -1])
def test_non_positive_ttl_is_not_stored(ttl: float) -> None:
    cache: LocalCache[str] = LocalCache(10)
    cache.set("a", "A", ttl)
    assert cache.get("a") is None


async def test_a_redis_hit_never_outlives_the_credential(redis_server: RedisServer) -> None:
    now = time.time()
    expiring = Decision(True, 200, "Allowed", principal=Principal(kind="jwt", id="eve", expires_at=now + 1.0))
    writer = DecisionCache(None, remote(redis_server.url))
    writer.put(("k",), expiring, PLAN, now=now)  # 300 s TTL capped to the token's 1 s
    assert writer.remote is not None
    await settle(writer.remote)
    reader_local: LocalCache[Decision] = LocalCache(10)
    reader = DecisionCache(reader_local, remote(redis_server.url))
    assert await reader.get_remote(("k",), PLAN) is not None
    assert reader_local._data[("k",)][0] - time.monotonic() <= 1.0  # promoted to L1 for what is left, not 300 s
    late = remote(redis_server.url)
    late.wall_clock = lambda: now + 2.0  # a replica asking after the token expired
    assert await late.get(("k",)) is None
    for cache in (writer.remote, reader.remote, late):
        await cache.close()
