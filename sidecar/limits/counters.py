"""The counting engine of usage plans and rate-based rules: the math, the interface, the in-process backend.

Three kinds of limit, each exact:

- **Throttle** (a usage plan's `{rate, burst}`): GCRA, the generic cell rate algorithm. One number per key, the
  theoretical arrival time (TAT); a request at `now` passes when `TAT - now <= T * (burst - 1)` (T = 1/rate, the
  emission interval) and moves the TAT on by T. From a full bucket exactly `burst` requests pass back to back,
  then one per T, with no refill timer and no drift.
- **Quota** (`{limit, period, offset}`): a counter per UTC calendar period (DAY from 00:00, WEEK from Sunday
  00:00 as API Gateway counts, MONTH from the 1st), expiring after the period ends; `offset` requests are
  subtracted from the limit in the initial period, the one in which the key was first metered.
- **Window** (a WAF rate-based rule): the requests of the trailing window, counted in `WINDOW_SLOTS` slots of a
  tenth of it each plus the current slot: never more than the limit in any trailing window (a fixed window lets
  2x through at its edge, and so did the two-bucket estimate `previous * (1 - elapsed/window) + current` this
  replaced), at the price of refusing up to one slot (a tenth of the window) longer than an exact log would.

Time is integer microseconds (windows: milliseconds) so that every comparison is exact: T is rounded *up* to a
whole microsecond (a rate is never exceeded; rates up to 1,000,000/s). The same arithmetic runs in Lua inside
Redis (`redis_counters.py`) for counters every replica shares; this module's functions are the reference both
backends are tested against.

`LocalCounters` keeps the state in this process: exact for one process (one replica, or the fallback while Redis
is away), bounded in memory. Usage-plan state (bounded by the key file: only known keys are metered) is only ever
dropped when it expires, below a generous hard bound; each rate rule's windows (keyed on what a client sends, so
as many as it likes) live in a bounded store of their own, so that a flood through one rule forgets only that
rule's counts, never a quota or another rule's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import islice
from typing import Generic, Literal, Protocol, TypeVar

from ..metrics import LIMIT_EVICTIONS

log = logging.getLogger(__name__)

MICROS = 1_000_000
MAX_RATE = 1_000_000.0
"""Requests per second at most: T is a whole number of microseconds."""
MIN_RATE = 0.001
"""Requests per second at least (as `ThrottleSettings` requires): T fits every expiry Redis takes."""
DAY_SECONDS = 86_400
INITIAL_MARKER_SECONDS = 400 * DAY_SECONDS
"""How long the record of a key's initial quota period outlives the key's last new period (refreshed whenever a
period's counter is created): a key idle for longer is metered as new, its next period initial again."""
QUOTA_MARGIN_SECONDS = 60
"""A quota counter outlives its period by this much (so `usage` at the boundary still reads it)."""
WINDOW_SECONDS = (60, 120, 300, 600)

Period = Literal["DAY", "WEEK", "MONTH"]
Reason = Literal["ok", "throttled", "quota", "blocked"]
REASONS: tuple[Reason, ...] = ("ok", "throttled", "quota", "blocked")
"""Reply codes of the Lua scripts, by index."""


@dataclass(frozen=True, slots=True)
class Throttle:
    """A usage plan's throttle: a GCRA token bucket."""

    rate: float
    """Steady requests per second (> 0)."""
    burst: int
    """Bucket size (>= 1): this many back-to-back requests pass from a full bucket."""
    interval_us: int = field(init=False, repr=False, compare=False)
    """T, the emission interval, in whole microseconds (rounded up: the rate is never exceeded)."""
    tolerance_us: int = field(init=False, repr=False, compare=False)
    """How far the TAT may run ahead of now and still admit: T * (burst - 1)."""
    window_us: int = field(init=False, repr=False, compare=False)
    """The bucket's policy window (burst / rate): the time a full burst takes to come back."""

    def __post_init__(self) -> None:
        if not MIN_RATE <= self.rate <= MAX_RATE:
            raise ValueError(f"throttle rate must be in [{MIN_RATE:g}, {MAX_RATE:g}], not {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"throttle burst must be >= 1, not {self.burst!r}")
        exact = MICROS / self.rate
        nearest = round(exact)
        interval = nearest if abs(exact - nearest) < 1e-6 else math.ceil(exact)
        # fields rather than properties: the in-process meter reads them on every request
        object.__setattr__(self, "interval_us", interval)
        object.__setattr__(self, "tolerance_us", interval * (self.burst - 1))
        object.__setattr__(self, "window_us", interval * self.burst)


@dataclass(frozen=True, slots=True)
class Quota:
    """A usage plan's quota: requests per UTC calendar period."""

    limit: int
    """Requests per period (>= 1)."""
    period: Period
    """DAY from 00:00, WEEK from Sunday 00:00 (API Gateway's), MONTH from the 1st 00:00; all UTC."""
    offset: int = 0
    """API Gateway's QuotaSettings.offset: requests subtracted from the limit in the initial period (the one in
    which this key was first metered)."""
    initial_limit: int = field(init=False, repr=False, compare=False)
    """The limit of the initial period: `limit - offset`, never below 0."""

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"quota limit must be >= 1, not {self.limit!r}")
        if self.period not in ("DAY", "WEEK", "MONTH"):
            raise ValueError(f"quota period must be DAY, WEEK or MONTH, not {self.period!r}")
        if self.offset < 0:
            raise ValueError(f"quota offset must be >= 0, not {self.offset!r}")
        object.__setattr__(self, "initial_limit", max(0, self.limit - self.offset))

    def applies(self, initial: bool) -> int:
        """The limit of a period: less `offset` in the initial one (never below 0)."""
        return self.initial_limit if initial else self.limit


@dataclass(frozen=True, slots=True)
class Window:
    """A WAF rate-based rule: requests per trailing window."""

    seconds: int
    """60 | 120 | 300 | 600 (WAF's evaluation windows)."""
    limit: int
    """>= 10 (WAF's minimum)."""

    def __post_init__(self) -> None:
        if self.seconds not in WINDOW_SECONDS:
            raise ValueError(f"window must be one of {WINDOW_SECONDS}, not {self.seconds!r}")
        if self.limit < 10:
            raise ValueError(f"window limit must be >= 10, not {self.limit!r}")


@dataclass(frozen=True, slots=True)
class Admission:
    """One counted request's verdict, with what the RateLimit headers and Retry-After need."""

    allowed: bool
    reason: Reason
    """Which limit refused ("ok" when allowed)."""
    limit: int
    """The limit that applies: burst for a throttle, the period's quota (less the offset in the initial period),
    a window's limit."""
    remaining: int
    """Requests left right now (>= 0)."""
    reset: float
    """Seconds until `remaining` is back to `limit`: the bucket full again, the period's end, every request a
    window counts now gone from it."""
    retry_after: float
    """Seconds until the next request could pass: 0 when allowed, never 0 when refused."""
    window: float
    """The policy window in seconds (RateLimit-Policy `w`): burst/rate, the period's length, the rule's window."""
    exceeded: bool = False
    """Over the limit: refused, or (a count-only rule) what would have been refused."""


UNLIMITED = Admission(True, "ok", 0, 0, 0.0, 0.0, 0.0)
"""`meter` with neither a throttle nor a quota: nothing to count."""


class Counters(Protocol):
    """The counting engine behind usage plans and rate-based rules (in process, or shared through Redis)."""

    async def meter(self, key: str, throttle: Throttle | None, quota: Quota | None, bucket: str = "") -> Admission:
        """One request of a usage-plan key: throttle then quota, atomically; a request refused by either consumes
        neither (API Gateway: a throttled request does not use quota). `bucket` names the throttle's bucket among
        the key's (a route's override has its own; "" is the plan-wide one); the quota is the key's whatever it is."""
        ...

    async def hit(self, key: str, window: Window, count_only: bool = False) -> Admission:
        """One request of a rate-based rule's aggregation key: always counted (WAF counts every matching
        request), refused when the window's slots hold more than the limit with it (never with `count_only`)."""
        ...

    async def usage(self, key: str, quota: Quota) -> tuple[int, int]:
        """(used, remaining) in the current quota period (API Gateway's GetUsage); no side effect."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


# --- the math (pure; the Lua scripts compute the same) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gcra:
    """One GCRA step: whether it admits, the TAT to store (if it admits, or if refused and it differs from the
    stored one: capped), and the bucket as it is then."""

    allowed: bool
    tat: int
    remaining: int
    reset: int
    retry: int


def gcra(stored_tat: int, now: int, throttle: Throttle) -> Gcra:
    """Admit one request at `now` (µs) against a bucket whose TAT is `stored_tat` (0: never used)?

    `reset` is how long until the bucket is full again (TAT - now); `retry`, when refused, how long until the TAT
    is within tolerance, which is exactly when the next request passes.

    The stored TAT is capped at `now + T * burst` of `throttle`, the furthest ahead this throttle ever puts it: a
    no-op in normal operation, but a TAT stored under an older, slower throttle (a plan changed on reload) would
    otherwise refuse for as long as the old one's whole burst took to come back. A capped TAT is refused (the
    bucket is empty) and must be stored, so that the next request passes one new T later."""
    interval, tolerance = throttle.interval_us, throttle.tolerance_us
    tat = min(max(stored_tat, now), now + throttle.window_us)
    debt = tat - now
    if debt > tolerance:
        return Gcra(False, tat, 0, debt, debt - tolerance)
    debt += interval
    return Gcra(True, tat + interval, (throttle.window_us - debt) // interval, debt, 0)


def period_bounds(period: Period, now_s: int) -> tuple[int, int]:
    """The UTC calendar period holding `now_s` (epoch seconds) as (start, end) epoch seconds."""
    days = now_s // DAY_SECONDS
    if period == "DAY":
        start, end = days, days + 1
    elif period == "WEEK":
        start = days - (days + 4) % 7  # 1970-01-01 was a Thursday: day 0 is 4 days after a Sunday
        end = start + 7
    else:
        first = (_EPOCH + timedelta(days=days)).replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        start, end = (first - _EPOCH).days, (following - _EPOCH).days
    return start * DAY_SECONDS, end * DAY_SECONDS


_EPOCH = date(1970, 1, 1)


WINDOW_SLOTS = 10
"""Whole slots a rate rule's window is counted in, besides the current one: a request is judged against every
request of the last `WINDOW_SLOTS` slots and of the slot it falls in, which cover the trailing window and at most
one slot (a tenth of it) more. Every window (60, 120, 300, 600 s) is a whole number of seconds per slot."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """A window's state after a hit, in milliseconds."""

    exceeded: bool
    remaining: int
    reset: int
    retry: int


def sliding_window(counts: Sequence[int], elapsed: int, slot: int, limit: int) -> Estimate:
    """The window's verdict from its slots' counts, oldest first, the current slot's last (including the request
    just counted); `elapsed` is ms into the current slot, `slot` its length (ms).

    Every counted request is within the window and one slot, so the sum never undercounts the trailing window:
    no trailing window ever admits more than `limit`. The oldest slot leaves the count at the next slot
    boundary, the next one a slot later, and so on: `retry` (when over) is the first boundary after which one
    more request would be within the limit, `reset` the one after which nothing counted now is left."""
    counted = sum(counts)
    exceeded = counted > limit
    reset = len(counts) * slot - elapsed
    return Estimate(
        exceeded, max(0, limit - counted), reset, _window_retry(counts, elapsed, slot, limit) if exceeded else 0
    )


def _window_retry(counts: Sequence[int], elapsed: int, slot: int, limit: int) -> int:
    left = sum(counts)
    for index, count in enumerate(counts):  # the oldest slot leaves first, at the next slot boundary
        left -= count
        if left <= limit - 1:
            return max((index + 1) * slot - elapsed, 1)
    return len(counts) * slot - elapsed  # unreachable: with every slot gone nothing is counted


@dataclass(frozen=True, slots=True)
class QuotaPeriod:
    """A key's current quota period: its limit (less the offset if it is the initial one), the requests it has
    used so far, and its bounds (epoch seconds)."""

    limit: int
    used: int
    start: int
    end: int

    def reply(self, now: int, counted: bool) -> tuple[int, int, int, int]:
        """(limit, remaining, reset, length) in µs, after this request if `counted`."""
        remaining = max(0, self.limit - self.used - counted)
        return self.limit, remaining, self.end * MICROS - now, (self.end - self.start) * MICROS


def meter_reply(code: int, bucket: Gcra | None, period: QuotaPeriod | None, now: int) -> tuple[int, ...]:
    """The reply of one `meter` step in the Lua script's shape: code, the bucket's (remaining, reset, retry) and
    the quota's (limit, remaining, reset, period length), in µs; the parts not reached are 0."""
    head = (code, bucket.remaining, bucket.reset, bucket.retry) if bucket is not None else (code, 0, 0, 0)
    return head + (period.reply(now, code == 0) if period is not None else (0, 0, 0, 0))


def meter_admission(reply: Sequence[int], throttle: Throttle | None, quota: Quota | None) -> Admission:
    """The Admission of a `meter` call from its reply (`meter_reply`'s shape, from either backend).

    Allowed, the Admission describes the limit closer to refusing (fewer requests remaining; on a tie the one
    that stays binding longer), as the RateLimit header draft asks of several policies."""
    code, t_remaining, t_reset, t_retry, q_limit, q_remaining, q_reset, q_length = reply
    reason, refused = REASONS[code], code != 0
    bucket = period = None
    if throttle is not None:
        bucket = Admission(
            not refused, reason, throttle.burst, t_remaining, t_reset / MICROS, t_retry / MICROS,
            throttle.window_us / MICROS, refused,
        )  # fmt: skip
        if code == 1 or quota is None:
            return bucket
    if quota is None:
        return UNLIMITED
    retry = q_reset if refused else 0
    period = Admission(
        not refused, reason, q_limit, q_remaining, q_reset / MICROS, retry / MICROS, q_length / MICROS, refused
    )
    if bucket is None or refused:
        return period
    return min(bucket, period, key=lambda a: (a.remaining, -a.reset))


def window_admission(estimate: Estimate, window: Window, count_only: bool) -> Admission:
    """The Admission of a `hit` from its window's verdict (`sliding_window`, ms)."""
    refused = estimate.exceeded and not count_only
    return Admission(
        not refused,
        "blocked" if refused else "ok",
        window.limit,
        estimate.remaining,
        estimate.reset / 1000,
        estimate.retry / 1000 if refused else 0.0,
        float(window.seconds),
        estimate.exceeded,
    )


# --- in process -----------------------------------------------------------------------------------------------


PLAN_ENTRIES = 1_000_000
"""The hard bound on in-process usage-plan state, in keys (each key's buckets, quota periods and initial-period
records are one `KeyState`). That state is bounded by the key file (only known keys are metered), so this is
never reached by any plausible file; if it is, the least recently metered keys go and are counted
(`authz_limit_evictions_total{store="usage_plan"}`) with a warning."""
RULE_ENTRIES = 100_000
"""The bound on each rate rule's window buckets in process: a rule keyed on what a client chooses (a header, an
API key value) has as many keys as the client likes, so its store forgets its own least recently written counts
(`authz_limit_evictions_total{store="rate_limit:RULE"}`) and nothing else."""
SWEEP_FLOOR = 1024
"""A store first sweeps out expired entries at this size (or at its bound, if smaller)."""


class Slots:
    """One key's counts in a rule's window (`WINDOW_SLOTS` + 1 slots, the current last), mutated in place: one
    store entry per key and window, however many slots."""

    __slots__ = ("bucket", "counts")

    def __init__(self, bucket: int) -> None:
        self.bucket = bucket
        """The current slot's number (epoch ms // slot length)."""
        self.counts = [0] * (WINDOW_SLOTS + 1)

    def move_to(self, bucket: int) -> None:
        """Make `bucket` the current slot, dropping the slots that left the window. A clock stepped back keeps
        counting in the latest slot (nothing counted is forgotten early)."""
        gap = bucket - self.bucket
        if gap <= 0:
            return
        counts = self.counts
        if gap > WINDOW_SLOTS:
            counts[:] = [0] * (WINDOW_SLOTS + 1)
        else:
            del counts[:gap]
            counts.extend([0] * gap)
        self.bucket = bucket


V = TypeVar("V")


class ExpiringStore(Generic[V]):
    """A dict whose values carry an expiry (µs), bounded to `max_entries`: what the Redis backend keeps in Redis.

    Expired entries are swept out whenever the store has doubled since the last sweep (amortized O(1) a write,
    memory at most twice the live state). Only at `max_entries` do live entries go: the least recently written,
    down to nine tenths of the bound (so that a sweep freeing a handful does not recur on every write), each
    counted by `evicted`. Eviction can only forget (a bucket refills early, a count restarts): it is bounded
    memory, not a decision."""

    def __init__(self, max_entries: int, evicted: Callable[[int], None] | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.evicted = evicted
        self.latest = 0
        """The latest expiry written (µs): once it has passed, every entry has expired."""
        self._items: dict[Hashable, tuple[int, V]] = {}
        self._sweep_at = min(max_entries, SWEEP_FLOOR)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, now: int) -> V | None:
        item = self._items.get(key)
        if item is None or item[0] <= now:
            return None
        return item[1]

    def put(self, key: Hashable, value: V, expires: int, now: int) -> None:
        items = self._items
        if items.pop(key, None) is None and len(items) >= self._sweep_at:
            self._make_room(now)
        items[key] = (expires, value)  # last written last: eviction takes the front
        if expires > self.latest:
            self.latest = expires

    def idle(self, now: int) -> bool:
        """Whether every entry has expired: dropping the store would forget nothing."""
        return self.latest <= now

    def _make_room(self, now: int) -> None:
        items = self._items
        full = len(items) >= self.max_entries
        for key in [k for k, (expires, _) in items.items() if expires <= now]:
            del items[key]
        keep = self.max_entries - max(1, self.max_entries // 10)
        if full and len(items) > keep:
            evict = len(items) - keep
            for key in list(islice(items, evict)):
                del items[key]
            if self.evicted is not None:
                self.evicted(evict)
        self._sweep_at = min(self.max_entries, max(SWEEP_FLOOR, 2 * len(items)))


def _evictions(store: str, warn: bool = False) -> Callable[[int], None]:
    """The `evicted` callback of one store: counted under its name (and, for usage plans, a warning)."""
    child = LIMIT_EVICTIONS.labels(store)

    def evicted(count: int) -> None:
        child.inc(count)
        if warn:
            log.warning(
                "rate limits: in-process %s state at its bound: forgot the %d least recently written entries"
                " (their buckets refill, their quota counts restart)",
                store,
                count,
            )

    return evicted


class QuotaCount:
    """One key's count in its current quota period of one kind, updated in place: the period's bounds are
    worked out when a period begins, not on every request."""

    __slots__ = ("end", "end_us", "initial", "marker_until", "start", "start_us", "used")

    def __init__(self) -> None:
        self.start = self.end = self.start_us = self.end_us = 0
        """The current period's bounds (epoch seconds, and µs); 0: none yet."""
        self.used = 0
        """Requests counted in the current period."""
        self.initial = -1
        """The start of the key's initial period (the offset's), while `marker_until` has not passed."""
        self.marker_until = 0
        """When the initial-period record expires (µs): `INITIAL_MARKER_SECONDS` after the key's latest new
        period; a key idle for longer is metered as new."""

    def roll(self, kind: Period, now: int) -> None:
        """Move to the period holding `now` (µs), its count at 0; a key without a live initial-period record
        makes this period its initial one."""
        self.start, self.end = period_bounds(kind, now // MICROS)
        self.start_us, self.end_us, self.used = self.start * MICROS, self.end * MICROS, 0
        if self.marker_until <= now:
            self.initial, self.marker_until = self.start, now + INITIAL_MARKER_SECONDS * MICROS


class KeyState:
    """Everything one usage-plan key holds in process, mutated in place: one dict lookup finds it, and the common
    allow writes a few integers and allocates nothing."""

    __slots__ = ("expires", "quotas", "tats", "written")

    def __init__(self) -> None:
        self.tats: dict[str, int] = {}
        """Each bucket's TAT (µs), by bucket name ("" the plan-wide one); one in the past is a full bucket."""
        self.quotas: dict[str, QuotaCount] = {}
        """The quota counts, by period kind (a reload may change a plan's period: each kind keeps its own)."""
        self.expires = 0
        """When everything here has expired (µs): the latest TAT, initial-period record."""
        self.written = 0
        """When it was last metered (µs): eviction at the bound takes the least recently metered."""

    def count(self, kind: Period) -> QuotaCount:
        """The quota count of `kind`, made on its first use (it has no period yet)."""
        count = self.quotas[kind] = QuotaCount()
        return count


class PlanStore:
    """The usage-plan state of every key (`KeyState`), bounded to `max_entries` keys.

    A key's state is never removed on the hot path: expired state reads as a full bucket and a fresh period.
    Expired keys are swept out whenever the store has doubled since the last sweep (amortized O(1) a new key).
    Only at `max_entries` do live keys go: the least recently metered, down to nine tenths of the bound, each
    counted by `evicted` (a sort of the store, once per tenth of the bound's new keys: a bound no key file
    reaches)."""

    def __init__(self, max_entries: int, evicted: Callable[[int], None] | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.evicted = evicted
        self.keys: dict[str, KeyState] = {}
        self._sweep_at = min(max_entries, SWEEP_FLOOR)

    def __len__(self) -> int:
        return len(self.keys)

    def state(self, key: str, now: int) -> KeyState:
        """`key`'s state, made on its first use."""
        state = self.keys.get(key)
        if state is None:
            if len(self.keys) >= self._sweep_at:
                self._make_room(now)
            state = self.keys[key] = KeyState()
        return state

    def _make_room(self, now: int) -> None:
        keys = self.keys
        full = len(keys) >= self.max_entries
        for key in [k for k, state in keys.items() if state.expires <= now]:
            del keys[key]
        keep = self.max_entries - max(1, self.max_entries // 10)
        if full and len(keys) > keep:
            evict = len(keys) - keep
            for key in sorted(keys, key=lambda k: keys[k].written)[:evict]:
                del keys[key]
            if self.evicted is not None:
                self.evicted(evict)
        self._sweep_at = min(self.max_entries, max(SWEEP_FLOOR, 2 * len(keys)))


class LocalCounters:
    """Counters in this process: exact for one process, bounded in memory (the module docstring says how).

    Usage-plan state lives in `plans` (at most `max_plan_entries`); a rate rule's window buckets in a store of
    the rule's own (`rules`, at most `max_rule_entries` each), named by the key's first `:`-separated part (the
    gates count `RULE:DIGEST`; a rule's name holds no `:`). Rule stores whose entries have all expired are dropped
    whenever another rule's store is made, so a rule renamed or removed on reload leaves at most its own bounded
    store behind, and only until the next new one.

    `clock` is wall time in seconds (quotas follow the UTC calendar); tests pass a fake one."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        max_plan_entries: int = PLAN_ENTRIES,
        max_rule_entries: int = RULE_ENTRIES,
    ) -> None:
        self.clock = clock
        self.plans = PlanStore(max_plan_entries, _evictions("usage_plan", warn=True))
        self.max_rule_entries = max_rule_entries
        self.rules: dict[str, ExpiringStore[Slots]] = {}

    @property
    def entries(self) -> int:
        """Pieces of state held, in every store (a usage-plan key's state, a window bucket; expired ones not yet
        swept out included)."""
        return len(self.plans) + sum(len(store) for store in self.rules.values())

    def now_us(self) -> int:
        return round(self.clock() * MICROS)

    def rule_store(self, key: str, now: int) -> ExpiringStore[Slots]:
        """The store of the rule counting `key` (made on its first hit)."""
        rule = key.partition(":")[0]
        store = self.rules.get(rule)
        if store is None:
            for name in [name for name, other in self.rules.items() if other.idle(now)]:
                del self.rules[name]
            store = self.rules[rule] = ExpiringStore(self.max_rule_entries, _evictions(f"rate_limit:{rule}"))
        return store

    async def meter(self, key: str, throttle: Throttle | None, quota: Quota | None, bucket: str = "") -> Admission:
        return self.meter_now(key, throttle, quota, bucket)

    def meter_now(self, key: str, throttle: Throttle | None, quota: Quota | None, bucket: str = "") -> Admission:
        """`meter`, synchronously (nothing here waits)."""
        if throttle is None and quota is None:
            return UNLIMITED
        now = self.now_us()
        refused = self.refusal(key, throttle, quota, bucket, now)
        return refused if refused is not None else self._admitted(self.plans.keys[key], throttle, quota, bucket, now)

    def refusal(
        self, key: str, throttle: Throttle | None, quota: Quota | None, bucket: str = "", now: int | None = None
    ) -> Admission | None:
        """`meter_now` for a caller that needs only refusals (the usage-plan gate: an allow carries no headers):
        None when the request is admitted, and counted, without building the allowed `Admission`.

        One request of `key` at `now` (µs, default the clock's) against a throttle, a quota or both (not neither:
        callers answer `UNLIMITED` first): `gcra` and the quota fused on the key's mutable state (the pure
        functions above remain the reference, and build every refusal)."""
        if now is None:
            now = round(self.clock() * MICROS)
        state = self.plans.keys.get(key) or self.plans.state(key, now)
        state.written = now
        tats, tat, count = state.tats, 0, None
        if throttle is not None:
            stored = tats.get(bucket, 0)
            tat, cap = (stored if stored > now else now), now + throttle.window_us
            if tat > cap:  # capped: see gcra
                tat = cap
            if tat - now > throttle.tolerance_us:
                if tat != stored:
                    tats[bucket] = tat
                    state.expires = max(state.expires, tat)
                return meter_admission(meter_reply(1, gcra(stored, now, throttle), None, now), throttle, quota)
        if quota is not None:
            count = state.quotas.get(quota.period) or state.count(quota.period)
            # Only forward: a clock stepped back (an NTP step, a restored VM) keeps counting in the period already
            # counted, never starts an earlier one at 0 (that would refund the quota; Redis keys periods by start).
            if now >= count.end_us:  # a new period: its bounds worked out once
                count.roll(quota.period, now)
                state.expires = max(state.expires, count.marker_until)
            limit = quota.initial_limit if count.initial == count.start else quota.limit
            if count.used >= limit:
                period = QuotaPeriod(limit, count.used, count.start, count.end)
                return meter_admission(meter_reply(2, None, period, now), throttle, quota)
        if throttle is not None:
            tat += throttle.interval_us
            tats[bucket] = tat
            if tat > state.expires:
                state.expires = tat
        if count is not None:
            if not count.used:  # a period's first request renews the initial-period record
                count.marker_until = now + INITIAL_MARKER_SECONDS * MICROS
                if count.marker_until > state.expires:
                    state.expires = count.marker_until
            count.used += 1
        return None

    @staticmethod
    def _admitted(state: KeyState, throttle: Throttle | None, quota: Quota | None, bucket: str, now: int) -> Admission:
        """The Admission of a request `_judge` just admitted, from the state it left."""
        step = period = None
        if throttle is not None:
            debt = state.tats[bucket] - now
            step = Gcra(True, state.tats[bucket], (throttle.window_us - debt) // throttle.interval_us, debt, 0)
        if quota is not None:
            count = state.quotas[quota.period]
            limit = quota.initial_limit if count.initial == count.start else quota.limit
            period = QuotaPeriod(limit, count.used - 1, count.start, count.end)
        return meter_admission(meter_reply(0, step, period, now), throttle, quota)

    async def hit(self, key: str, window: Window, count_only: bool = False) -> Admission:
        return self.hit_now(key, window, count_only)

    def hit_now(self, key: str, window: Window, count_only: bool = False) -> Admission:
        """`hit`, synchronously."""
        now = self.now_us()
        now_ms, slot = now // 1000, window.seconds * 1000 // WINDOW_SLOTS
        bucket, store = now_ms // slot, self.rule_store(key, now)
        name = (key, window.seconds)
        slots = store.get(name, now)
        if slots is None:
            slots = Slots(bucket)
        else:
            slots.move_to(bucket)
        slots.counts[-1] += 1
        store.put(name, slots, (slots.bucket + WINDOW_SLOTS + 1) * slot * 1000, now)
        # 0 while a clock stepped back is behind the latest slot (Retry-After then errs early: a retry is refused)
        elapsed = max(0, now_ms - slots.bucket * slot)
        estimate = sliding_window(slots.counts, elapsed, slot, window.limit)
        return window_admission(estimate, window, count_only)

    async def usage(self, key: str, quota: Quota) -> tuple[int, int]:
        now = self.now_us()
        state = self.plans.keys.get(key)
        count = state.quotas.get(quota.period) if state is not None else None
        if count is None:
            return 0, quota.initial_limit  # never metered: this period would be its initial one
        current = now < count.end_us  # the counted period (or a clock stepped back into it: see `_judge`)
        start = count.start if current else period_bounds(quota.period, now // MICROS)[0]
        used = count.used if current else 0
        initial = count.initial if count.marker_until > now else start  # no live record: as if never metered
        return used, max(0, quota.applies(initial == start) - used)

    async def close(self) -> None:
        """Nothing to release."""
