"""The counting engine's math and its in-process backend, on a fake clock: GCRA throttles, UTC calendar quotas with
their offset, WAF sliding windows, bounded memory."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta

import pytest

from sidecar.limits.counters import (
    MICROS,
    RULE_ENTRIES,
    UNLIMITED,
    WINDOW_SLOTS,
    Admission,
    ExpiringStore,
    Gcra,
    LocalCounters,
    Period,
    Quota,
    QuotaPeriod,
    Throttle,
    Window,
    gcra,
    meter_admission,
    meter_reply,
    period_bounds,
    sliding_window,
)
from sidecar.metrics import REGISTRY, flush


class Clock:
    """A settable wall clock (seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self, when: datetime) -> None:
        self.now = when.timestamp()


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type,misc]


T0 = utc(2024, 5, 15, 12).timestamp()


def test_intervals_round_up_to_whole_microseconds_and_bad_limits_are_refused() -> None:
    assert Throttle(200, 1).interval_us == 5000
    assert Throttle(3, 1).interval_us == 333_334  # never faster than the rate
    assert Throttle(0.1, 1).interval_us == 10_000_000
    assert Throttle(0.001, 1).interval_us == 1_000_000_000  # the slowest rate settings take
    bad_limits = (lambda: Throttle(0, 1), lambda: Throttle(0.0009, 1), lambda: Throttle(1, 0), lambda: Quota(0, "DAY"))
    for bad in (*bad_limits, lambda: Window(30, 10)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError):
        Window(60, 9)


async def test_a_full_bucket_passes_its_burst_then_refuses_until_the_tat_allows() -> None:
    clock = Clock(T0)
    counters, throttle = LocalCounters(clock), Throttle(rate=10, burst=5)
    seen = [await counters.meter("k", throttle, None) for _ in range(5)]
    assert all(a.allowed for a in seen) and [a.remaining for a in seen] == [4, 3, 2, 1, 0]
    assert seen[-1].reset == pytest.approx(0.5) and seen[-1].window == pytest.approx(0.5) and seen[-1].limit == 5
    refused = await counters.meter("k", throttle, None)
    assert (refused.allowed, refused.reason, refused.remaining, refused.exceeded) == (False, "throttled", 0, True)
    assert refused.retry_after == pytest.approx(0.1) and refused.reset == pytest.approx(0.5)
    clock.now += 0.1 - 1e-6
    assert (await counters.meter("k", throttle, None)).retry_after == pytest.approx(1e-6)  # refused, never 0
    clock.now += 1e-6
    assert (await counters.meter("k", throttle, None)).allowed  # exactly when retry_after said
    assert not (await counters.meter("k", throttle, None)).allowed


async def test_the_steady_rate_holds_after_the_burst() -> None:
    clock = Clock(T0)
    counters, throttle = LocalCounters(clock), Throttle(rate=7, burst=3)  # T = 142,858 us
    admitted = 0
    for _ in range(10_000):  # 10 s in 1 ms steps
        admitted += (await counters.meter("k", throttle, None)).allowed
        clock.now += 0.001
    assert admitted == 3 + int(9.999 / 0.142858)  # the burst, then one per T, not one more


async def test_a_throttled_request_uses_no_quota_and_a_quota_refusal_takes_no_token() -> None:
    clock = Clock(T0)
    counters = LocalCounters(clock)
    throttle, quota = Throttle(rate=1, burst=2), Quota(100, "DAY")
    verdicts = [await counters.meter("k", throttle, quota) for _ in range(10)]
    assert [v.reason for v in verdicts] == ["ok", "ok"] + ["throttled"] * 8
    assert await counters.usage("k", quota) == (2, 98)

    small = Quota(2, "DAY")
    burst = Throttle(rate=1, burst=5)
    assert [(await counters.meter("q", burst, small)).reason for _ in range(4)] == ["ok", "ok", "quota", "quota"]
    after = await counters.meter("q", burst, None)
    assert after.remaining == 2  # 5 - the two admitted - this one: the refused ones took nothing


async def test_allowed_with_both_the_admission_is_the_limit_closer_to_refusing() -> None:
    counters = LocalCounters(Clock(T0))
    first = await counters.meter("k", Throttle(rate=10, burst=100), Quota(3, "DAY"))
    assert (first.limit, first.remaining) == (3, 2) and first.window == 86_400
    other = await counters.meter("j", Throttle(rate=10, burst=2), Quota(1000, "DAY"))
    assert (other.limit, other.remaining) == (2, 1)
    assert await counters.meter("k", None, None) is UNLIMITED


PERIODS: tuple[Period, ...] = ("DAY", "WEEK", "MONTH")


def _reference_bounds(period: Period, when: datetime) -> tuple[datetime, datetime]:
    """Period bounds by another route: datetime arithmetic on the calendar."""
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "DAY":
        return day, day + timedelta(days=1)
    if period == "WEEK":
        start = day - timedelta(days=(day.weekday() + 1) % 7)  # Monday is 0: Sunday starts the week
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    return start, (
        start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    )


def test_period_bounds_follow_the_utc_calendar() -> None:
    rnd = random.Random(21)
    for _ in range(3000):
        when = datetime.fromtimestamp(rnd.randrange(0, 4_102_444_800), UTC)
        for period in PERIODS:
            start, end = _reference_bounds(period, when)
            assert period_bounds(period, int(when.timestamp())) == (start.timestamp(), end.timestamp())
    assert period_bounds("WEEK", int(utc(2024, 6, 1, 23, 59, 59).timestamp()))[0] == utc(2024, 5, 26).timestamp()
    assert period_bounds("WEEK", int(utc(2024, 6, 2).timestamp()))[0] == utc(2024, 6, 2).timestamp()  # a Sunday


@pytest.mark.parametrize(
    ("period", "last", "first", "length_days"),
    [
        ("DAY", utc(2024, 3, 9, 23, 59, 59), utc(2024, 3, 10), 1),
        ("WEEK", utc(2024, 3, 9, 23, 59, 59), utc(2024, 3, 10), 7),  # Saturday night, then Sunday
        ("MONTH", utc(2024, 2, 29, 23, 59, 59), utc(2024, 3, 1), 29),  # leap February
        ("MONTH", utc(2023, 2, 28, 23, 59, 59), utc(2023, 3, 1), 28),
        ("MONTH", utc(2024, 4, 30, 23, 59, 59), utc(2024, 5, 1), 30),
        ("MONTH", utc(2024, 12, 31, 23, 59, 59), utc(2025, 1, 1), 31),  # and a new year
    ],
)
async def test_quotas_roll_over_at_the_utc_period_boundary(
    period: str, last: datetime, first: datetime, length_days: int
) -> None:
    clock = Clock(last.timestamp() - 10)
    counters, quota = LocalCounters(clock), Quota(3, period)  # type: ignore[arg-type]
    for _ in range(3):
        assert (await counters.meter("k", None, quota)).allowed
    clock.at(last + timedelta(microseconds=999_999))  # the period's last microsecond
    refused = await counters.meter("k", None, quota)
    assert (refused.allowed, refused.reason, refused.limit, refused.remaining) == (False, "quota", 3, 0)
    assert refused.retry_after == pytest.approx(1e-6) and refused.reset == pytest.approx(1e-6)
    assert refused.window == length_days * 86_400
    clock.at(first)
    fresh = await counters.meter("k", None, quota)
    assert fresh.allowed and fresh.remaining == 2
    assert await counters.usage("k", quota) == (1, 2)


async def test_a_clock_stepped_back_across_a_period_boundary_refunds_no_quota() -> None:
    """An NTP step or a restored VM moving the wall clock into the previous day keeps counting in the day already
    counted: starting that earlier day at 0, then this one again at 0, would hand out the quota twice (the Redis
    backend keys each period by its start, so it cannot)."""
    clock = Clock(utc(2024, 5, 15, 0, 0, 30).timestamp())
    counters, quota = LocalCounters(clock), Quota(3, "DAY")
    assert sum([(await counters.meter("k", None, quota)).allowed for _ in range(5)]) == 3
    clock.at(utc(2024, 5, 14, 23, 59, 50))  # stepped back across midnight
    assert sum([(await counters.meter("k", None, quota)).allowed for _ in range(5)]) == 0
    assert await counters.usage("k", quota) == (3, 0)
    clock.at(utc(2024, 5, 15, 0, 1))  # and forward again
    assert sum([(await counters.meter("k", None, quota)).allowed for _ in range(5)]) == 0
    clock.at(utc(2024, 5, 16))  # the next day is a new period, as always
    assert sum([(await counters.meter("k", None, quota)).allowed for _ in range(5)]) == 3


async def test_the_offset_applies_only_in_the_period_the_key_was_first_metered() -> None:
    clock = Clock(utc(2024, 5, 15, 8).timestamp())
    counters, quota = LocalCounters(clock), Quota(10, "DAY", offset=4)
    assert await counters.usage("k", quota) == (0, 6)  # not metered yet: this period would be its initial one
    assert sum([(await counters.meter("k", None, quota)).allowed for _ in range(10)]) == 6
    clock.at(utc(2024, 5, 16, 8))
    assert await counters.usage("k", quota) == (0, 10)
    assert sum([(await counters.meter("k", None, quota)).allowed for _ in range(12)]) == 10
    # another key first metered days later: its initial period is that day
    clock.at(utc(2024, 5, 20, 8))
    assert sum([(await counters.meter("late", None, quota)).allowed for _ in range(10)]) == 6
    assert sum([(await counters.meter("all-used", None, Quota(3, "DAY", offset=5))).allowed for _ in range(3)]) == 0


async def test_the_window_counts_its_slots_and_lets_them_go_one_by_one() -> None:
    clock = Clock(1_800_000_000.0 - 1_800_000_000.0 % 60)  # a slot start (6 s slots of a 60 s window)
    counters, window = LocalCounters(clock), Window(60, 10)
    verdicts = [await counters.hit("ip", window) for _ in range(11)]
    assert all(v.allowed for v in verdicts[:10]) and verdicts[9].remaining == 0
    blocked = verdicts[10]
    assert (blocked.allowed, blocked.reason, blocked.limit, blocked.exceeded) == (False, "blocked", 10, True)
    assert blocked.retry_after == 66 and blocked.reset == 66 and blocked.window == 60  # the window and its slot
    clock.now += 65.999  # the 11 are still within the window and its slot: refused (and counted)
    assert not (await counters.hit("ip", window)).allowed
    clock.now += 0.002  # their slot has left; the one just refused is still counted
    fresh = await counters.hit("ip", window)
    assert fresh.allowed and fresh.remaining == 8 and fresh.reset == pytest.approx(66 - 0.001)


async def test_no_trailing_window_admits_more_than_the_limit_at_a_slot_edge() -> None:
    """A review's case against the two-bucket estimate it replaced: a burst at the very end of one bucket and
    another at the end of the next admitted 199 in 60 s against a limit of 100. Now both bursts are in one count."""
    boundary = 1_800_000_000.0 - 1_800_000_000.0 % 60 + 60
    clock = Clock(boundary - 0.001)
    counters, window = LocalCounters(clock), Window(60, 100)
    first = sum([(await counters.hit("ip", window)).allowed for _ in range(150)])
    clock.now = boundary + 59.99
    second = sum([(await counters.hit("ip", window)).allowed for _ in range(150)])
    assert (first, second) == (100, 0)


async def test_a_burst_mid_way_through_the_next_window_finds_the_late_one_still_counted() -> None:
    """A review's second case: ten requests late in one window, ten more 35 s later. The two-bucket estimate
    weighed the first ten down and admitted five of the second while the trailing 60 s already held ten."""
    start = 1_800_000_000.0 - 1_800_000_000.0 % 60
    clock = Clock(start)
    counters, window = LocalCounters(clock), Window(60, 10)
    admitted = []
    for at in [start + 55 + 0.4 * i for i in range(10)] + [start + 90 + 0.1 * i for i in range(10)]:
        clock.now = at
        admitted.append((await counters.hit("ip", window)).allowed)
    assert admitted == [True] * 10 + [False] * 10


@pytest.mark.parametrize("seed", range(4))
async def test_any_trailing_window_admits_at_most_the_limit_and_refuses_only_within_a_slot_more(seed: int) -> None:
    """Random arrivals over several windows: every trailing 60 s holds at most `limit` admitted requests, and a
    request is refused only when the window and one slot before it already hold `limit` counted ones."""
    rnd = random.Random(seed)
    start = 1_800_000_000.0 - 1_800_000_000.0 % 60
    clock = Clock(start)
    counters, window, limit = LocalCounters(clock), Window(60, 10), 10
    # A burst late in one window and another mid-way through the next (the two-bucket estimate admitted 15 of
    # these 20 against a limit of 10), bursts just before slot and window edges, and random arrivals; sparse
    # enough that the window drains between them (refused requests count too).
    shift = 120 * rnd.randint(0, 2)
    late = [start + shift + 55 + 0.4 * i for i in range(10)] + [start + shift + 90 + 0.1 * i for i in range(10)]
    edges = [start + 60 * rnd.randint(1, 5) - rnd.choice([0.001, 0.5, 3, 30]) for _ in range(15)]
    times = sorted(late + edges + [start + rnd.uniform(0, 360) for _ in range(25)])
    admitted: list[float] = []
    counted: list[float] = []
    for at in times:
        clock.now = at
        verdict = await counters.hit("ip", window)
        if verdict.allowed:
            admitted.append(at)
        else:  # refused: the window plus the slot before it held `limit` counted requests
            assert sum(1 for c in counted if c > at - 66) >= limit
        counted.append(at)
    for index, at in enumerate(admitted):
        assert sum(1 for other in admitted[: index + 1] if other > at - 60) <= limit


def test_retry_after_is_the_first_millisecond_one_more_request_passes() -> None:
    def passes(counts: list[int], elapsed: int, slot: int, limit: int, wait: int) -> bool:
        gone = (elapsed + wait) // slot  # slots that have left, oldest first
        return sum(counts[gone:]) + 1 <= limit

    rnd = random.Random(7)
    slot = 6_000
    checked = 0
    for _ in range(3000):
        limit = rnd.randint(10, 50)
        counts = [rnd.randint(0, limit // 3) for _ in range(WINDOW_SLOTS)] + [rnd.randint(1, 2 * limit)]
        elapsed = rnd.randrange(slot)
        estimate = sliding_window(counts, elapsed, slot, limit)
        assert estimate.exceeded == (sum(counts) > limit)
        assert estimate.reset == (WINDOW_SLOTS + 1) * slot - elapsed
        if not estimate.exceeded:
            assert estimate.remaining == limit - sum(counts)
            continue
        checked += 1
        assert estimate.retry >= 1 and estimate.remaining == 0
        assert passes(counts, elapsed, slot, limit, estimate.retry), (counts, elapsed, limit)
        assert not passes(counts, elapsed, slot, limit, estimate.retry - 1), (counts, elapsed, limit)
    assert checked > 1000


async def test_count_only_never_refuses_but_counts() -> None:
    clock = Clock(1_800_000_000.0 - 1_800_000_000.0 % 300)
    counters, window = LocalCounters(clock), Window(300, 10)
    verdicts = [await counters.hit("ip", window, count_only=True) for _ in range(20)]
    assert all(v.allowed and v.reason == "ok" and v.retry_after == 0 for v in verdicts)
    assert [v.exceeded for v in verdicts] == [False] * 10 + [True] * 10
    enforced = await counters.hit("ip", window)
    assert not enforced.allowed and enforced.reason == "blocked"  # the counted-only requests were counted


def _uncapped(stored_tat: int, now: int, throttle: Throttle) -> Gcra:
    """GCRA as it was before the TAT cap (the textbook step), to show the cap changes nothing in normal operation."""
    interval, tolerance = throttle.interval_us, throttle.tolerance_us
    tat = max(stored_tat, now)
    if tat - now > tolerance:
        return Gcra(False, tat, 0, tat - now, tat - now - tolerance)
    debt = tat - now + interval
    return Gcra(True, tat + interval, (throttle.window_us - debt) // interval, debt, 0)


def test_the_tat_cap_changes_nothing_while_the_throttle_stays_the_same() -> None:
    rnd = random.Random(11)
    for _ in range(200):
        throttle, tat, now = Throttle(rnd.choice([0.5, 3, 7, 100, 5000]), rnd.randint(1, 50)), 0, 10**15
        for _ in range(200):
            now += rnd.choice([0, 1, 10, 1000, 100_000, 1_000_000, 30_000_000])
            step = gcra(tat, now, throttle)
            assert step == _uncapped(tat, now, throttle)
            tat = step.tat if step.allowed else tat


async def test_a_throttle_made_faster_on_reload_is_not_held_back_by_the_old_tat() -> None:
    """A plan at 1/s burst 100, its burst spent; reloaded at 100/s burst 10: refused for one new interval at most,
    not for the ~99 s the old bucket took to refill."""
    clock = Clock(T0)
    counters, old, new = LocalCounters(clock), Throttle(rate=1, burst=100), Throttle(rate=100, burst=10)
    assert sum([(await counters.meter("gold:k1", old, None)).allowed for _ in range(101)]) == 100
    clock.now += 1.0
    first = await counters.meter("gold:k1", new, None)  # the TAT is capped at now + 100 ms: full, not 99 s ahead
    assert (first.allowed, first.reset, first.window) == (False, pytest.approx(0.1), pytest.approx(0.1))
    assert first.retry_after == pytest.approx(0.01)
    clock.now += 0.01
    admitted = 0
    for _ in range(1000):  # one second in 1 ms steps: the new rate from there on, the old TAT forgotten
        admitted += (await counters.meter("gold:k1", new, None)).allowed
        clock.now += 0.001
    assert admitted == 100
    # and slower on reload: the stored TAT (under 100 ms ahead) is within the new bucket, so it simply applies
    slow = Throttle(rate=0.5, burst=2)
    assert (await counters.meter("gold:k1", slow, None)).allowed
    refused = await counters.meter("gold:k1", slow, None)  # 2 s of tolerance, 2 s + the old debt ahead
    assert not refused.allowed and 0 < refused.retry_after <= 0.1


def test_the_store_evicts_expired_state_first_then_the_least_recently_written() -> None:
    evicted: list[int] = []
    store = ExpiringStore(10, evicted.append)
    for i in range(5):
        store.put(("short", i), i, expires=100, now=0)
    for i in range(5):
        store.put(("long", i), i, expires=10_000, now=0)
    store.put(("long", 0), 0, expires=10_000, now=0)  # rewritten: now the most recent
    store.put("new", 1, expires=10_000, now=200)
    assert len(store) == 6 and all(store.get(("long", i), 200) == i for i in range(5)) and evicted == []
    for i in range(4):
        store.put(("more", i), i, expires=10_000, now=200)
    store.put("over", 1, expires=10_000, now=200)  # full of live state: the oldest tenth goes
    assert len(store) == 10 and store.get(("long", 1), 200) is None and store.get(("long", 0), 200) == 0
    assert evicted == [1]
    assert not store.idle(9_999) and store.idle(10_000)


def test_below_its_bound_a_store_only_drops_what_expired_and_sweeps_in_amortized_time() -> None:
    """Short-lived entries (buckets refilled) by the hundred thousand in a store bounded at a million: the sweeps
    keep it within twice the live state, and nothing live is ever evicted below the bound."""
    evicted: list[int] = []
    store, now = ExpiringStore(1_000_000, evicted.append), 0
    for i in range(1000):
        store.put(("quota", i), i, expires=10**12, now=now)  # long-lived: a day's counts
    largest = 0
    for i in range(200_000):
        now += 10
        store.put(("tat", i), i, expires=now + 1000, now=now)  # a bucket full again 1 ms later
        largest = max(largest, len(store))
    assert evicted == [] and largest <= 2 * (1000 + 100) + 1024
    assert all(store.get(("quota", i), now) == i for i in range(1000))


def evictions(store: str) -> float:
    flush()
    return REGISTRY.get_sample_value("authz_limit_evictions_total", {"store": store}) or 0.0


async def test_a_flood_through_one_rule_forgets_no_quota_and_no_other_rule_s_counts() -> None:
    """A WAF rule keyed on a value the client picks (a header, an API key value) sprayed with more distinct values
    than a rule store holds: the exhausted quota stays exhausted and another rule still blocks its caller; the
    sprayed rule forgets its own oldest counts, counted by store."""
    clock = Clock(T0 - T0 % 60)
    counters, quota, window = LocalCounters(clock), Quota(3, "DAY"), Window(60, 10)
    assert [(await counters.meter("gold:k1", Throttle(100, 100), quota)).allowed for _ in range(4)] == [True] * 3 + [
        False
    ]
    assert not [(await counters.hit("per-ip:203.0.113.9", window)) for _ in range(11)][-1].allowed
    before = evictions("rate_limit:per-key")
    flood = RULE_ENTRIES + RULE_ENTRIES // 5
    for i in range(flood):
        counters.hit_now(f"per-key:{i:032x}", window, count_only=True)
    refused = await counters.meter("gold:k1", Throttle(100, 100), quota)
    assert (refused.allowed, refused.reason) == (False, "quota")
    assert await counters.usage("gold:k1", quota) == (3, 0)
    assert not (await counters.hit("per-ip:203.0.113.9", window)).allowed
    sprayed = counters.rules["per-key"]
    assert len(sprayed) <= RULE_ENTRIES and evictions("rate_limit:per-key") - before == flood - len(sprayed)
    assert (await counters.hit(f"per-key:{flood - 1:032x}", window, count_only=True)).remaining == 8  # recent kept


async def test_many_keys_metered_once_do_not_push_out_a_spent_quota() -> None:
    """60,000 keys of a plan (throttle and quota: three pieces of state each) are usage-plan state, bounded by
    the key file: far below the plan store's bound, so the key that spent its quota first is not forgotten."""
    clock = Clock(T0)
    counters, throttle, quota = LocalCounters(clock), Throttle(100, 100), Quota(3, "DAY")
    assert [counters.meter_now("gold:heavy", throttle, quota).allowed for _ in range(4)] == [True] * 3 + [False]
    before = evictions("usage_plan")
    for i in range(60_000):
        clock.now += 0.001
        counters.meter_now(f"gold:k{i}", throttle, quota)
    assert [counters.meter_now("gold:heavy", throttle, quota).allowed for _ in range(4)] == [False] * 4
    assert evictions("usage_plan") == before


async def test_memory_stays_bounded_by_each_store_s_bound(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0)
    counters = LocalCounters(clock, max_plan_entries=500, max_rule_entries=300)
    before = evictions("usage_plan")
    with caplog.at_level(logging.WARNING, logger="sidecar.limits.counters"):
        for i in range(5000):
            await counters.meter(f"p:k{i}", Throttle(1, 5), Quota(10, "DAY"))
            await counters.hit(f"a:ip{i}", Window(60, 10))
            await counters.hit(f"b:ip{i}", Window(60, 10))
            clock.now += 0.001
    assert len(counters.plans) <= 500 and len(counters.rules["a"]) <= 300 and len(counters.rules["b"]) <= 300
    assert counters.entries == len(counters.plans) + len(counters.rules["a"]) + len(counters.rules["b"])
    assert (await counters.meter("p:k4999", Throttle(1, 5), None)).remaining == 3  # recent state is kept
    # past the hard bound, usage-plan state is forgotten too, but never silently
    assert evictions("usage_plan") > before
    warned = [r.getMessage() for r in caplog.records if "usage_plan state at its bound" in r.getMessage()]
    assert warned and all("p:k" not in line for line in warned)


async def test_a_rule_store_left_idle_is_dropped_when_another_rule_s_is_made() -> None:
    """A rule removed or renamed on reload: its store goes once everything in it has expired."""
    clock = Clock(T0)
    counters = LocalCounters(clock)
    await counters.hit("old-name:ip", Window(60, 10))
    clock.now += 60
    await counters.hit("new-name:ip", Window(60, 10))
    assert set(counters.rules) == {"old-name", "new-name"}  # old-name's count still weighs in the next minute
    clock.now += 120
    await counters.hit("third:ip", Window(60, 10))
    assert set(counters.rules) == {"third"}  # both idle: nothing they held was still counting


class _Reference:
    """The in-process meter as the pure functions state it (`gcra`, `period_bounds`, `meter_admission`), on plain
    dicts with no expiry and no bound: what the fused in-place path must answer, request for request."""

    def __init__(self) -> None:
        self.tats: dict[tuple[str, str], int] = {}
        self.counts: dict[tuple[str, str, int], int] = {}
        self.initial: dict[tuple[str, str], int] = {}

    def meter(self, key: str, throttle: Throttle | None, quota: Quota | None, bucket: str, now: int) -> Admission:
        step = period = None
        if throttle is not None:
            stored = self.tats.get((key, bucket), 0)
            step = gcra(stored, now, throttle)
            if not step.allowed:
                self.tats[(key, bucket)] = step.tat
                return meter_admission(meter_reply(1, step, None, now), throttle, quota)
        if quota is not None:
            start, end = period_bounds(quota.period, now // MICROS)
            initial = self.initial.setdefault((key, quota.period), start)
            used = self.counts.get((key, quota.period, start), 0)
            period = QuotaPeriod(quota.applies(initial == start), used, start, end)
            if used >= period.limit:
                return meter_admission(meter_reply(2, step, period, now), throttle, quota)
            self.counts[(key, quota.period, start)] = used + 1
        if step is not None:
            self.tats[(key, bucket)] = step.tat
        return meter_admission(meter_reply(0, step, period, now), throttle, quota)


def test_the_fused_in_process_meter_answers_as_the_reference_functions_do() -> None:
    """Random keys, buckets, throttles (changed as a reload would), quotas with offsets and periods, and time steps
    from 0 to two days: every Admission equals the reference's, and `refusal` is None exactly for the allows."""
    rnd = random.Random(2121)
    clock = Clock(T0)
    counters, reference = LocalCounters(clock), _Reference()
    throttles = [None, Throttle(1, 1), Throttle(5, 3), Throttle(0.5, 2), Throttle(1000, 50)]
    quotas = [None, Quota(5, "DAY"), Quota(20, "WEEK", offset=7), Quota(3, "MONTH", offset=1)]
    refused = 0
    for index in range(20_000):
        clock.now += rnd.choice([0, 0, 1e-6, 0.001, 0.2, 1.0, 3600.0, 86_400.0, 2 * 86_400.0])
        key, bucket = rnd.choice(["gold:a", "gold:b", "silver:c"]), rnd.choice(["", "GET /pets/{id}"])
        throttle, quota = rnd.choice(throttles), rnd.choice(quotas)
        if throttle is None and quota is None:
            continue
        now = counters.now_us()
        expected = reference.meter(key, throttle, quota, bucket, now)
        if index % 2:
            assert counters.meter_now(key, throttle, quota, bucket) == expected, (index, key, throttle, quota)
        else:
            assert counters.refusal(key, throttle, quota, bucket) == (None if expected.allowed else expected), index
        refused += not expected.allowed
    assert refused > 1000
