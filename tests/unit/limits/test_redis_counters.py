"""The counters shared through a real redis-server (and a real three-node Redis Cluster): the Lua scripts give the
in-process verdicts, time comes from Redis, every key of a call shares one hash tag, NOSCRIPT is survived, and
FallbackCounters decides (local, allow, deny) while Redis is down, then counts in Redis again."""

from __future__ import annotations

import logging
import random
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.crc import key_slot
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from sidecar.config import parse_config
from sidecar.harness.envoy import free_port
from sidecar.kv import Breaker, SplitClient, redis_client
from sidecar.limits import build
from sidecar.limits.counters import DAY_SECONDS, MICROS, LocalCounters, Period, Quota, Throttle, Window
from sidecar.limits.redis_counters import (
    METER,
    SCRIPTS,
    CountersUnavailable,
    FallbackCounters,
    RedisCounters,
    is_script_error,
    shared_counters,
)
from sidecar.metrics import REGISTRY, flush
from sidecar.settings import RedisSettings
from tests.conftest import RedisServer
from tests.unit.limits.cluster_testkit import RedisClusterServers


def settings(url: str, cluster: bool = False, lean_reads: bool = False) -> RedisSettings:
    # a first command opens the connection, which can take longer than the 5 ms default on a loaded machine
    return RedisSettings(url=SecretStr(url), timeout_ms=1000, cluster=cluster, lean_reads=lean_reads)


def shared(
    url: str, cluster: bool = False, lean: bool = False, clock: Callable[[], float] | None = None
) -> RedisCounters:
    """Counters on `url`; `lean`: the scripts run through the lean client (a `SplitClient`, whose redis-py side
    the tests still use for their own commands: SCRIPT FLUSH, TIME, SCAN)."""
    return RedisCounters(redis_client(settings(url, cluster, lean_reads=lean)), timeout=1.0, clock=clock)


Backend = tuple[str, bool, bool]
"""(url, cluster, lean): what `shared` takes."""


@pytest.fixture(params=["redis", "lean", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """A single redis-server (scripts through redis-py, or through the lean client) or the session's Redis
    Cluster."""
    if request.param in ("redis", "lean"):
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url, False, request.param == "lean"
    nodes: RedisClusterServers = request.getfixturevalue("redis_cluster")
    return nodes.url, True, False


def fresh(name: str) -> str:
    """A key no other test (or earlier run against the session's cluster) has used."""
    return f"{name}:{uuid.uuid4().hex[:12]}"


PERIODS: tuple[Period, ...] = ("DAY", "WEEK", "MONTH")


async def redis_now(counters: RedisCounters) -> float:
    seconds, micros = await counters.redis.time()
    return float(seconds) + float(micros) / 1e6


async def test_the_scripts_give_the_in_process_verdicts(backend: Backend) -> None:
    """The same requests at the same (sent) times: the same Admissions, period bounds in every calendar case."""
    now = [1_709_164_800.0 - 3600]  # 2024-02-29 (leap day) 23:00 UTC
    redis, local = shared(*backend, clock=lambda: now[0]), LocalCounters(lambda: now[0])
    throttle, quota, window = Throttle(3, 5), Quota(20, "MONTH", offset=3), Window(60, 10)
    key, ip = fresh("plan:p:key:k"), fresh("rule:r:ip")
    rnd = random.Random(21)
    try:
        for _ in range(300):
            now[0] += rnd.choice([0, 0, 0.01, 0.2, 0.5, 3, 5000])
            assert await redis.meter(key, throttle, quota) == await local.meter(key, throttle, quota)
            assert await redis.meter(key + ":t", throttle, None) == await local.meter(key + ":t", throttle, None)
            route = Throttle(1, 2)  # a route's own bucket beside the plan's, with the key's one quota
            assert await redis.meter(key, route, quota, "GET /x") == await local.meter(key, route, quota, "GET /x")
            assert await redis.hit(ip, window) == await local.hit(ip, window)
            assert await redis.hit(ip + ":c", window, True) == await local.hit(ip + ":c", window, True)
            assert await redis.usage(key, quota) == await local.usage(key, quota)
        for _ in range(150):  # the Lua calendar against Python's: resets and period lengths at random times
            now[0] = rnd.uniform(946_684_800, 4_102_444_800)  # 2000 to 2100
            for period in PERIODS:
                name, q = fresh("cal"), Quota(5, period, offset=2)
                assert await redis.meter(name, None, q) == await local.meter(name, None, q)
    finally:
        await redis.close()


async def test_a_window_counts_on_in_its_latest_slot_when_the_clock_steps_back(backend: Backend) -> None:
    """Redis's clock stepping back (a failover to a replica a few seconds behind) across a slot boundary: the
    script counts on in the latest slot as the in-process store does, never in an earlier one whose window would
    leave out what was counted (a review found 10 + 10 admitted against a limit of 10)."""
    start = 1_800_000_000.0 - 1_800_000_000.0 % 60 + 30
    now = [start]
    redis, local = shared(*backend, clock=lambda: now[0]), LocalCounters(lambda: now[0])
    ip, window = fresh("rule:r:ip"), Window(60, 10)
    try:
        verdicts = []
        for at in [start] * 10 + [start - 7] * 10 + [start + 1] * 2:
            now[0] = at
            verdict = await redis.hit(ip, window)
            assert verdict == await local.hit(ip, window)
            verdicts.append(verdict.allowed)
        assert verdicts == [True] * 10 + [False] * 12
    finally:
        await redis.close()


async def test_a_window_is_one_hash_that_keeps_only_the_slots_it_still_counts(backend: Backend) -> None:
    """A rule's window is one hash of its slots' counts: fields that have left the window go when a later slot
    begins, so it holds at most the window's slots plus the current one, and the hash expires when its latest
    slot has left the window."""
    now = [1_800_000_000.0]
    counters, local = shared(*backend, clock=lambda: now[0]), LocalCounters(lambda: now[0])
    ip, window = fresh("rule:r:ip"), Window(60, 1000)
    name = f"{counters.base(ip)}:w60"
    try:
        sizes = []
        for _ in range(40):  # one hit in each of 40 slots of 6 s
            now[0] += 6
            verdict = await counters.hit(ip, window)
            assert verdict.allowed and verdict == await local.hit(ip, window)
            sizes.append(await counters.redis.hlen(name))
        assert sizes[:11] == list(range(1, 12)) and set(sizes[11:]) == {11}
        # the hits land at slot starts: the hash lives until its latest slot has left the window, 66 s on (less
        # the test's own real time); a shorter life would forget requests the window still counts
        assert 65_000 < await counters.redis.pttl(name) <= 66_000
        now[0] += 600  # a long gap: the next slot's hit drops every field the window has left
        assert await counters.hit(ip, window) == await local.hit(ip, window)
        assert await counters.redis.hlen(name) == 1 and 65_000 < await counters.redis.pttl(name) <= 66_000
    finally:
        await counters.close()


async def test_a_burst_passes_then_retry_after_is_timed_by_redis(backend: Backend) -> None:
    counters, throttle = shared(*backend), Throttle(rate=1, burst=20)
    key = fresh("plan:p:key:burst")
    try:
        before = await redis_now(counters)
        verdicts = [await counters.meter(key, throttle, None) for _ in range(21)]
        spent = await redis_now(counters) - before
        assert [v.remaining for v in verdicts[:20]] == list(range(19, -1, -1))
        refused = verdicts[20]
        assert (refused.allowed, refused.reason, refused.limit) == (False, "throttled", 20)
        # TAT = first + 20 s; refused at `at`: retry = first + 1 - at, with before <= first <= at <= before + spent
        assert 1 - spent <= refused.retry_after <= 1 and 20 - spent <= refused.reset <= 20
    finally:
        await counters.close()


async def test_the_steady_rate_holds_in_redis_time(redis_server: RedisServer) -> None:
    """The burst, then one per T (10 ms), in Redis's clock, whatever this process's stalls.

    Redis TIME is read between calls, so call i ran in Redis between reads[i] and reads[i + 1]. GCRA admits
    exactly `A * T = (m_last - m_first) + debt - lost`: the first and last call's Redis times, the last reply's
    debt (its `reset`) and the time the bucket sat full, which happens only in a gap between two calls longer
    than the debt then (never under T): a stall here. That is the one slack the lower bound gets; the upper
    bound (never more than the burst and one per T) has none but a request for rounding."""
    counters, throttle = shared(redis_server.url), Throttle(rate=100, burst=20)
    interval, key, admitted = throttle.interval_us / MICROS, fresh("plan:p:key:steady"), 0
    try:
        reads = [await redis_now(counters)]
        while reads[-1] - reads[0] < 0.6:
            last = await counters.meter(key, throttle, None)
            admitted += last.allowed
            reads.append(await redis_now(counters))
        calls = len(reads) - 1
        assert interval - 1e-6 <= last.reset <= throttle.burst * interval + 1e-6
        lost = sum(max(0.0, reads[i + 2] - reads[i] - interval) for i in range(calls - 1))
        lower = (reads[calls - 1] - reads[1] - lost + last.reset) / interval
        upper = throttle.burst + (reads[calls] - reads[0]) / interval
        assert lower - 1 <= admitted <= upper + 1, (admitted, lower, upper, lost)
    finally:
        await counters.close()


async def test_a_throttle_made_faster_caps_the_old_tat_in_redis_too(backend: Backend) -> None:
    """A plan's burst spent at 1/s burst 100, then reloaded at 100/s burst 10: the script caps the stored TAT as
    `gcra` does (the same verdicts at the same sent times), so the key waits one new T, not ~99 s."""
    now = [1_800_000_000.0]
    redis, local = shared(*backend, clock=lambda: now[0]), LocalCounters(lambda: now[0])
    key, old, new = fresh("gold:k1"), Throttle(rate=1, burst=100), Throttle(rate=100, burst=10)
    try:
        for _ in range(101):
            assert await redis.meter(key, old, None) == await local.meter(key, old, None)
        now[0] += 1.0
        verdicts = []
        for step in (0, 0.005, 0.005, 0.001, 0.01, 0.01):
            now[0] += step
            verdict = await redis.meter(key, new, Quota(1000, "DAY"))
            assert verdict == await local.meter(key, new, Quota(1000, "DAY"))
            verdicts.append((verdict.allowed, round(verdict.retry_after, 6)))
        assert verdicts == [(False, 0.01), (False, 0.005), (True, 0), (False, 0.009), (True, 0), (True, 0)]
    finally:
        await redis.close()


async def test_quota_and_throttle_consume_nothing_when_the_other_refuses(redis_server: RedisServer) -> None:
    counters = shared(redis_server.url)
    key, other = fresh("plan:p:key:a"), fresh("plan:p:key:b")
    try:
        throttle, quota = Throttle(rate=1, burst=2), Quota(100, "DAY")
        verdicts = [await counters.meter(key, throttle, quota) for _ in range(10)]
        assert [v.reason for v in verdicts] == ["ok", "ok"] + ["throttled"] * 8
        assert await counters.usage(key, quota) == (2, 98)
        burst, small = Throttle(rate=1, burst=5), Quota(5, "DAY")
        before = await redis_now(counters)
        reasons = [(await counters.meter(other, burst, small)).reason for _ in range(5)]
        assert reasons == ["ok"] * 5
        refused = await counters.meter(other, None, small)
        midnight = (int(before) // DAY_SECONDS + 1) * DAY_SECONDS
        assert refused.reason == "quota" and 0 < refused.retry_after <= midnight - before
        assert refused.retry_after >= midnight - before - 5  # Redis's clock, read just before
        assert (await counters.meter(other, burst, small)).reason == "throttled"  # the burst was spent, not more
    finally:
        await counters.close()


async def test_windows_block_over_the_limit_and_count_only_counts(redis_server: RedisServer) -> None:
    counters, window = shared(redis_server.url), Window(60, 10)
    ip, dry = fresh("rule:r:ip"), fresh("rule:d:ip")
    try:
        verdicts = [await counters.hit(ip, window) for _ in range(11)]
        assert all(v.allowed for v in verdicts[:10])
        assert (verdicts[10].allowed, verdicts[10].reason, verdicts[10].exceeded) == (False, "blocked", True)
        assert 0 < verdicts[10].retry_after <= 120
        counted = [await counters.hit(dry, window, count_only=True) for _ in range(15)]
        assert all(v.allowed for v in counted) and [v.exceeded for v in counted] == [False] * 10 + [True] * 5
    finally:
        await counters.close()


async def test_evalsha_survives_script_flush(backend: Backend) -> None:
    counters, throttle = shared(*backend), Throttle(rate=1, burst=3)
    key = fresh("plan:p:key:flush")
    try:
        await counters.load()
        assert all(await counters.redis.script_exists(*[s.sha for s in SCRIPTS]))
        assert (await counters.meter(key, throttle, None)).remaining == 2
        await counters.redis.script_flush()
        assert not any(await counters.redis.script_exists(METER.sha))
        assert (await counters.meter(key, throttle, None)).remaining == 1  # NOSCRIPT, then EVAL: same state
        # and EVAL cached it again, on the node of the key (on a cluster, the others still have none)
        if backend[1]:
            node = counters.redis.get_node_from_key(counters.base(key))
            assert await counters.redis.execute_command("SCRIPT EXISTS", METER.sha, target_nodes=node) == [True]
        else:
            assert all(await counters.redis.script_exists(METER.sha))
    finally:
        await counters.close()


async def test_every_key_of_a_call_carries_one_hash_tag(backend: Backend) -> None:
    """A route key with braces in it still gives one tag per call; on the cluster, a script touching another slot
    would fail, so these calls succeeding says the same."""
    counters = shared(*backend)
    key = fresh("plan:gold:key:k1") + ":route:GET /pets/{id}"
    try:
        assert (await counters.meter(key, Throttle(10, 5), Quota(100, "DAY", offset=1))).allowed
        assert (await counters.hit(key, Window(120, 10))).allowed
        assert await counters.usage(key, Quota(100, "DAY", offset=1)) == (1, 98)
        if not backend[1]:
            names = [n.decode() async for n in counters.redis.scan_iter(match="authz:l:*")]
            ours = [n for n in names if n.startswith(counters.base(key))]
            assert sorted(n.rsplit("}", 1)[1].split(":")[1] for n in ours) == [
                "q",
                "q0",
                "tat",
                "w120",
            ]  # the window's hash of slots
            assert len({key_slot(n.encode()) for n in ours}) == 1
            assert all(n.startswith("authz:l:{" + key + "}:") for n in ours)
    finally:
        await counters.close()


async def test_the_gates_run_their_scripts_through_the_lean_client_where_the_connection_allows(
    redis_server: RedisServer, redis_cluster: RedisClusterServers
) -> None:
    plain = shared_counters(settings(redis_server.url, lean_reads=True))
    off = shared_counters(settings(redis_server.url, lean_reads=False))
    cluster = shared_counters(settings(redis_cluster.url, cluster=True, lean_reads=True))
    try:
        assert isinstance(plain.redis.client, SplitClient) and plain.redis.lean is plain.redis.client.reader
        assert (await plain.meter(fresh("k"), Throttle(1, 2), None)).remaining == 1
        assert off.redis.lean is None and cluster.redis.lean is None
    finally:
        for counters in (plain, off, cluster):
            await counters.close()


def fallback_count(mode: str) -> float:
    flush()
    return REGISTRY.get_sample_value("authz_limit_fallbacks_total", {"mode": mode}) or 0.0


def degraded_gauge() -> float | None:
    return REGISTRY.get_sample_value("authz_limit_degraded")


async def test_redis_killed_mid_stream_decides_locally_then_counts_in_redis_again(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = Breaker(threshold=2, cooldown=0.05)
    counters = FallbackCounters(
        RedisCounters(redis_client(settings(redis_server.url)), timeout=0.2), LocalCounters(), "local", breaker
    )
    throttle, quota, key = Throttle(rate=1, burst=5), Quota(1000, "DAY"), fresh("plan:p:key:kill")
    before = fallback_count("local")
    try:
        with caplog.at_level(logging.WARNING, logger="sidecar.limits.redis_counters"):
            assert [(await counters.meter(key, throttle, quota)).allowed for _ in range(3)] == [True] * 3
            assert not counters.degraded and await counters.usage(key, quota) == (3, 997)
            redis_server.stop()
            verdicts = [await counters.meter(key, throttle, quota) for _ in range(6)]
            # no exception: the in-process counters decide, from nothing (burst 5 again, then throttled)
            assert [v.reason for v in verdicts] == ["ok"] * 5 + ["throttled"]
            assert counters.degraded and breaker.is_open and degraded_gauge() == 1
            assert await counters.local.usage(key, quota) == (5, 995)
            assert (await counters.hit(fresh("ip"), Window(60, 10))).allowed
            assert fallback_count("local") - before == 7
            with pytest.raises(CountersUnavailable):
                await counters.usage(key, quota)  # GetUsage has no local answer
            redis_server.start()  # same port, empty
            breaker.open_until = 0.0  # the cooldown is over: the next call probes
            assert (await counters.meter(key, throttle, quota)).allowed
            assert not counters.degraded and not breaker.is_open and degraded_gauge() == 0
            assert await counters.usage(key, quota) == (1, 999)  # counted in Redis again
        changes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rate limits")]
        assert len(changes) == 2 and "this process's counters" in changes[0]  # once per change, not per request
    finally:
        await counters.close()


@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_allow_and_deny_decide_without_redis(redis_server: RedisServer, mode: str) -> None:
    connection = settings(redis_server.url).model_copy(update={"breaker_threshold": 1, "breaker_cooldown": 0.5})
    counters = shared_counters(connection, mode)  # type: ignore[arg-type]
    redis_server.stop()
    try:
        throttled = await counters.meter("k", Throttle(rate=1, burst=3), Quota(10, "DAY"))
        quota = await counters.meter("k", None, Quota(10, "WEEK"))
        blocked = await counters.hit("ip", Window(60, 10))
        dry = await counters.hit("ip", Window(60, 10), count_only=True)
        assert counters.degraded and counters.local.entries == 0
        assert dry.allowed  # a count-only rule never refuses
        if mode == "allow":
            assert throttled.allowed and quota.allowed and blocked.allowed
        else:
            assert [(v.allowed, v.reason, v.limit) for v in (throttled, quota, blocked)] == [
                (False, "throttled", 3),
                (False, "quota", 10),
                (False, "blocked", 10),
            ]
            assert throttled.retry_after == quota.retry_after == blocked.retry_after == 0.5  # the breaker's cooldown
            assert quota.window == 7 * DAY_SECONDS
    finally:
        await counters.close()


def test_script_errors_are_told_from_redis_being_unable_to_serve() -> None:
    """redis-py's own classes and messages, as Redis 7 sends them (the real ones: test below)."""
    assert is_script_error(
        ResponseError("user_script:54: attempt to compare nil with number script: ab"), ResponseError
    )
    assert is_script_error(ResponseError("Error running script (call to f_ab): @user_script:1: x"), ResponseError)
    assert is_script_error(ResponseError("invalid expire time in 'set' command script: ab"), ResponseError)
    for outage in (
        ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."),
        ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist"),
        ReadOnlyError("You can't write against a read only replica."),
        RedisTimeout("Timeout reading from socket"),
        ConnectionRefusedError(),
    ):
        assert not is_script_error(outage, ResponseError), outage


@pytest.mark.parametrize("mode", ["local", "deny"])
async def test_a_script_error_is_decided_for_that_call_alone_and_leaves_the_breaker_closed(
    redis_server: RedisServer, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A key whose stored state the script cannot read (here: a TAT that is not a number) fails in Lua on every
    call: on_redis_error decides each of those calls, but Redis answered, so the breaker stays closed, the
    counters are not degraded and every other plan and rule keeps counting in Redis; one warning, not ten."""
    breaker = Breaker(threshold=2, cooldown=30)
    redis = RedisCounters(redis_client(settings(redis_server.url)), timeout=1.0)
    counters = FallbackCounters(redis, LocalCounters(), mode, breaker, clock=lambda: 1000.0)  # type: ignore[arg-type]
    broken, other, throttle, quota = fresh("slow:k1"), fresh("gold:k2"), Throttle(rate=1, burst=3), Quota(100, "DAY")
    before = fallback_count(mode)
    try:
        await redis.redis.set(redis.base(broken) + ":tat", "not-a-number")
        with caplog.at_level(logging.WARNING, logger="sidecar.limits.redis_counters"):
            verdicts = [await counters.meter(broken, throttle, None) for _ in range(10)]
            assert [v.allowed for v in verdicts] == ([True] * 3 + [False] * 7 if mode == "local" else [False] * 10)
            assert not breaker.is_open and breaker.failures == 0 and not counters.degraded
            assert degraded_gauge() == 0 and fallback_count(mode) - before == 10
            assert (await counters.meter(other, None, quota)).allowed
            assert await redis.usage(other, quota) == (1, 99)  # counted in Redis, not here
            assert await counters.local.usage(other, quota) == (0, 100)
        lines = [r for r in caplog.records if r.name == "sidecar.limits.redis_counters"]
        assert len(lines) == 1 and "user_script" in lines[0].getMessage()
        assert broken not in lines[0].getMessage() and "not-a-number" not in lines[0].getMessage()
    finally:
        await counters.close()


async def test_a_count_waits_for_limits_timeout_not_the_connection_s(redis_server: RedisServer) -> None:
    """Redis paused for 150 ms (CLIENT PAUSE WRITE holds every script) behind a connection whose timeout is the
    shipped 5 ms: with `limits.timeout_ms` of 2 s the count waits and lands once, in Redis, instead of timing out
    (deny: refused, yet counted once Redis resumes)."""
    connection = settings(redis_server.url).model_copy(update={"timeout_ms": 5.0})
    counters, quota, key = shared_counters(connection, "deny", timeout_ms=2000), Quota(10, "DAY"), fresh("gold:k")
    before = fallback_count("deny")
    try:
        assert counters.redis.timeout == 2.0
        assert (await counters.meter(key, None, quota)).allowed  # opens the connection, which may take long too
        await counters.redis.redis.execute_command("CLIENT", "PAUSE", 150, "WRITE")
        started = time.monotonic()
        verdict = await counters.meter(key, None, quota)
        waited = time.monotonic() - started
        assert verdict.allowed and not counters.degraded and fallback_count("deny") == before, waited
        assert await counters.usage(key, quota) == (2, 8)
    finally:
        await counters.close()


def test_a_config_s_counters_take_limits_timeout_ms(tmp_path: Path, redis_server: RedisServer) -> None:
    text = textwrap.dedent(f"""\
        api: {{id: a1b2c3d4e5, stage: prod, account: '123456789012', region: us-east-1}}
        redis: {{default: {{url: "{redis_server.url}", timeout_ms: 5}}}}
        limits: {{timeout_ms: 250, on_redis_error: deny}}
        """)
    counters = build._counters(parse_config(text, str(tmp_path / "config.yaml")), time.time)
    assert isinstance(counters, FallbackCounters)
    assert (counters.redis.timeout, counters.on_error) == (0.25, "deny")


async def test_counters_built_after_an_outage_start_with_the_degraded_gauge_at_0(redis_server: RedisServer) -> None:
    """A reload while degraded: the old config's counters set the gauge to 1; the new config's, counting in a
    Redis that answers, set it to 0 when they are built, not only on a change of their own."""
    dead = settings(f"redis://127.0.0.1:{free_port()}/0").model_copy(update={"breaker_threshold": 1})
    old = shared_counters(dead, "local", timeout_ms=200)
    try:
        await old.meter(fresh("gold:k1"), None, Quota(100, "DAY"))
        assert old.degraded and degraded_gauge() == 1
        new = shared_counters(settings(redis_server.url), "local", timeout_ms=1000)
        assert not new.degraded and degraded_gauge() == 0
        try:
            assert (await new.meter(fresh("gold:k1"), None, Quota(100, "DAY"))).allowed
            assert not new.degraded and degraded_gauge() == 0
        finally:
            await new.close()
    finally:
        await old.close()
