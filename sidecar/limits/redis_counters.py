"""Counters every replica shares through Redis, and the wrapper that decides when Redis does not answer.

`RedisCounters`: each call is one round trip, one Lua script (EVALSHA; EVAL when the server does not have it,
after a restart or a `SCRIPT FLUSH`, which also caches it again). A script runs atomically, so a throttle and a
quota are judged and counted together, and two replicas never both take the last token. The time is Redis's
own (`TIME` inside the script: Redis 7 replicates a script's effects, not the script, so a script may read the
clock before it writes; on Redis 3.2-4 the script asks for effects replication itself), so the clocks of the
replicas do not matter, only the one of the primary holding the key.

Keys: `authz:l:{<key>}:<part>` with the caller's (already namespaced) key as the hash tag, so every key one call
touches is in one Redis Cluster slot; keys whose names depend on the time (a quota period, a window bucket) are
built inside the script from a declared prefix with that same tag:

- `...:tat`: the throttle's theoretical arrival time (integer µs), expiring when the bucket is full again;
- `...:q:<PERIOD>:<period start>`: the requests of one quota period, expiring a minute after the period;
- `...:q0:<PERIOD>`: the start of the key's initial period (for the offset), renewed with every new period;
- `...:w<seconds>`: a rate rule's window, a hash of its slots' counts (a slot is a tenth of the window; a field
  leaves when a later slot begins after it has left the window), expiring when its latest slot has left the window;
  its latest slot is the one counted in (a clock stepped back counts on in it).

`FallbackCounters`: Redis with the shared circuit breaker, and what to do without it (`on_redis_error`): decide
with this process's counters (`local`, API Gateway's failing open made per-replica), admit (`allow`) or refuse
(`deny`). The mode is a property, a gauge and a counter, and is logged once per change, never per request. A
script error (Redis answered, but this call failed: a bug, or arguments the script cannot take) is not Redis
failing: `on_redis_error` decides that call alone, the breaker is not told, and it is logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Literal, TypeVar

from ..inline import in_task
from ..kv import Breaker, LeanReader, redis_client
from ..kv.resp import RespError
from ..kv.resp import is_script_error as is_lean_script_error
from ..log_throttle import ThrottledWarning
from ..metrics import LIMIT_DEGRADED, LIMIT_FALLBACKS, tally
from ..settings import LimitSettings, RedisSettings
from .counters import (
    INITIAL_MARKER_SECONDS,
    MICROS,
    QUOTA_MARGIN_SECONDS,
    UNLIMITED,
    WINDOW_SLOTS,
    Admission,
    LocalCounters,
    Quota,
    Reason,
    Throttle,
    Window,
    meter_admission,
    period_bounds,
    sliding_window,
    window_admission,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
OnError = Literal["local", "allow", "deny"]
DEFAULT_TIMEOUT_MS: int = LimitSettings.model_fields["timeout_ms"].default

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_us()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function int(x) return string.format('%.0f', x) end
"""

_CALENDAR = """
local DAY = 86400
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function month_of(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local y = yoe + era * 400
  if mp < 10 then return y, mp + 3 end
  return y + 1, mp - 9
end
local function period_bounds(period, now_s)
  local days = math.floor(now_s / DAY)
  local first, after
  if period == 'DAY' then
    first, after = days, days + 1
  elseif period == 'WEEK' then
    first = days - (days + 4) % 7
    after = first + 7
  else
    local y, m = month_of(days)
    first = days_from_civil(y, m, 1)
    if m == 12 then after = days_from_civil(y + 1, 1, 1) else after = days_from_civil(y, m + 1, 1) end
  end
  return first * DAY, after * DAY
end
"""

_METER = """
-- KEYS: tat, initial-period marker, quota counter prefix
-- ARGV: now ('' = TIME), interval us (0: no throttle), burst, limit (0: no quota), offset, period, margin s, marker s
local now = now_us()
local interval, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local limit, offset, period = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local t_remaining, t_reset, tat = 0, 0, 0
if interval > 0 then
  tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local debt, tolerance = tat - now, interval * (burst - 1)
  if debt > interval * burst then -- stored under a slower throttle: capped, and the cap kept (counters.gcra)
    tat, debt = now + interval * burst, interval * burst
    redis.call('SET', KEYS[1], int(tat), 'PX', math.ceil(debt / 1000))
  end
  if debt > tolerance then return {1, 0, debt, debt - tolerance, 0, 0, 0, 0} end
  t_reset = debt + interval
  t_remaining = math.floor((interval * burst - t_reset) / interval)
  tat = tat + interval
end
local q_limit, q_remaining, q_reset, q_length = 0, 0, 0, 0
local counter
if limit > 0 then
  local first, after = period_bounds(period, math.floor(now / 1000000))
  local initial = redis.call('GET', KEYS[2])
  if not initial then
    initial = first
    redis.call('SET', KEYS[2], int(first), 'EX', ARGV[8])
  end
  q_limit = limit
  if tonumber(initial) == first then q_limit = math.max(0, limit - offset) end
  counter = KEYS[3] .. int(first)
  local used = tonumber(redis.call('GET', counter) or '0')
  q_reset, q_length = after * 1000000 - now, (after - first) * 1000000
  if used >= q_limit then return {2, 0, 0, 0, q_limit, 0, q_reset, q_length} end
  q_remaining = q_limit - used - 1
end
if interval > 0 then redis.call('SET', KEYS[1], int(tat), 'PX', math.ceil(t_reset / 1000)) end
if counter then
  if redis.call('INCR', counter) == 1 then
    redis.call('PEXPIRE', counter, math.ceil(q_reset / 1000) + tonumber(ARGV[7]) * 1000)
    redis.call('EXPIRE', KEYS[2], ARGV[8])
  end
end
return {0, t_remaining, t_reset, 0, q_limit, q_remaining, q_reset, q_length}
"""

_HIT = """
-- KEYS: the window's hash (a field per slot: its start, epoch ms // the slot length; the value, its count).
-- ARGV: now ('' = TIME), slot length ms, whole slots counted before the current one.
-- Reply: each slot's count, oldest first, the current one (this hit included) last, then ms into the current slot.
-- One hash read whole costs Redis less CPU than a key per slot read by MGET (docs/performance.md).
local now_ms = math.floor(now_us() / 1000)
local slot = tonumber(ARGV[2])
local slots = tonumber(ARGV[3])
local bucket = math.floor(now_ms / slot)
local flat = redis.call('HGETALL', KEYS[1])
local counts = {}
for i = 1, #flat, 2 do
  local start = tonumber(flat[i])
  counts[start] = tonumber(flat[i + 1])
  -- A clock stepped back (a failover to a replica behind) keeps counting in the latest slot, as in process: never
  -- in an earlier one, whose window would leave out what the later slots counted.
  if start > bucket then bucket = start end
end
local current = redis.call('HINCRBY', KEYS[1], int(bucket), 1)
if current == 1 then
  local stale = {}
  for start in pairs(counts) do
    if start < bucket - slots then stale[#stale + 1] = int(start) end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
  redis.call('PEXPIRE', KEYS[1], math.max(1, (bucket + slots + 1) * slot - now_ms))
end
local reply = {}
for back = slots, 1, -1 do reply[#reply + 1] = counts[bucket - back] or 0 end
reply[slots + 1] = current
reply[slots + 2] = math.max(0, now_ms - bucket * slot)
return reply
"""

_USAGE = """
-- KEYS: initial-period marker, quota counter prefix.  ARGV: now ('' = TIME), period.  Reads only.
local first = period_bounds(ARGV[2], math.floor(now_us() / 1000000))
local initial = redis.call('GET', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[2] .. int(first)) or '0')
local is_initial = 0
if (not initial) or tonumber(initial) == first then is_initial = 1 end
return {used, is_initial}
"""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA-1 (what EVALSHA names it by), also encoded as the lean client sends them."""

    name: str
    text: str
    sha: str = field(init=False)
    encoded: bytes = field(init=False, repr=False)
    sha_encoded: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoded", self.text.encode())
        object.__setattr__(self, "sha", hashlib.sha1(self.encoded, usedforsecurity=False).hexdigest())
        object.__setattr__(self, "sha_encoded", self.sha.encode())


METER = Script("meter", _PRELUDE + _CALENDAR + _METER)
HIT = Script("hit", _PRELUDE + _HIT)
USAGE = Script("usage", _PRELUDE + _CALENDAR + _USAGE)
SCRIPTS = (METER, HIT, USAGE)


class CountersUnavailable(Exception):
    """Redis gave no usable answer: an error, a timeout, or a reply of the wrong shape."""


class ScriptFailed(CountersUnavailable):
    """Redis answered this call with a script error (a bug, or arguments the script cannot take): this call's
    trouble, not Redis's."""


def is_script_error(exc: BaseException, response_error: type[Exception]) -> bool:
    """Whether `exc` (from redis-py) is a script error rather than Redis unable to serve: a plain `ResponseError`
    whose message starts with no error code. redis-py strips the `ERR` a script's errors carry and gives the
    server's own states their classes (READONLY, OOM, CLUSTERDOWN, TRYAGAIN, MASTERDOWN, NOSCRIPT; LOADING is a
    connection error); a code it does not know (BUSY: another script runs too long; MISCONF; NOREPLICAS) stays at
    the front of the message, and is Redis's trouble."""
    if type(exc) is not response_error:
        return False
    head = str(exc).split(" ", 1)[0]
    return not (head.isalpha() and head.isupper())


class RedisCounters:
    """Counters shared through Redis (`Counters`); each method is one EVALSHA. Raises `CountersUnavailable`.

    `client` is a redis-py asyncio client (plain, Cluster or Sentinel master), a `kv.LeanReader`, or a
    `kv.SplitClient`, whose lean side then runs the scripts. Through the lean client a call is one write on its
    pipelined connection, bounded by that connection's one timer: no pool, no Task and no `asyncio.timeout` per
    call, a fraction of redis-py's CPU (docs/performance.md). Through redis-py each call runs in a Task under
    `asyncio.timeout(timeout)`. `clock` is for tests only: it sends the time (seconds) instead of letting the
    script read Redis's."""

    def __init__(
        self,
        client: Any,
        timeout: float = 0.005,
        prefix: str = "authz:l:",
        clock: Callable[[], float] | None = None,
    ) -> None:
        from redis.exceptions import NoScriptError, ResponseError  # deferred like kv.client's redis imports

        self.client = client
        self.lean: LeanReader | None = client if isinstance(client, LeanReader) else getattr(client, "reader", None)
        """The lean client that runs the scripts, when there is one."""
        self.redis: Any = getattr(client, "writer", client)
        self.timeout = timeout
        self.prefix = prefix
        self.clock = clock
        self._no_script = NoScriptError
        self._response_error = ResponseError

    def base(self, key: str) -> str:
        """The hash-tagged stem of every Redis key of `key` (a `}` inside `key` still leaves one tag per call:
        Redis takes the tag up to the first `}`, the same for every suffix)."""
        return f"{self.prefix}{{{key}}}"

    async def load(self) -> None:
        """SCRIPT LOAD every script (optional: a first EVALSHA that finds none falls back to EVAL)."""
        lean = self.lean
        for script in SCRIPTS:
            text, encoded = script.text, script.encoded
            if lean is not None:
                await self._lean(script, lambda: lean.execute(b"SCRIPT", b"LOAD", encoded))  # noqa: B023  # awaited at once
            else:
                await self._guarded(lambda: self.redis.script_load(text), script)  # noqa: B023  # awaited at once

    async def meter(self, key: str, throttle: Throttle | None, quota: Quota | None, bucket: str = "") -> Admission:
        if throttle is None and quota is None:
            return UNLIMITED
        base, period = self.base(key), quota.period if quota is not None else ""
        # A route's own bucket: named by a digest (route keys hold spaces and braces), in the key's hash slot.
        tat = f"{base}:tat:{hashlib.sha256(bucket.encode()).hexdigest()[:16]}" if bucket else f"{base}:tat"
        keys = (tat, f"{base}:q0:{period}", f"{base}:q:{period}:")
        args = (
            throttle.interval_us if throttle is not None else 0,
            throttle.burst if throttle is not None else 0,
            quota.limit if quota is not None else 0,
            quota.offset if quota is not None else 0,
            period,
            QUOTA_MARGIN_SECONDS,
            INITIAL_MARKER_SECONDS,
        )
        reply = await self._run(METER, keys, args, 8)
        if reply[0] > 2:
            raise CountersUnavailable("redis meter: malformed reply")
        return meter_admission(reply, throttle, quota)

    async def hit(self, key: str, window: Window, count_only: bool = False) -> Admission:
        slot = window.seconds * 1000 // WINDOW_SLOTS
        reply = await self._run(HIT, (f"{self.base(key)}:w{window.seconds}",), (slot, WINDOW_SLOTS), WINDOW_SLOTS + 2)
        counts, elapsed = reply[:-1], reply[-1]
        return window_admission(sliding_window(counts, elapsed, slot, window.limit), window, count_only)

    async def usage(self, key: str, quota: Quota) -> tuple[int, int]:
        base = self.base(key)
        keys = (f"{base}:q0:{quota.period}", f"{base}:q:{quota.period}:")
        used, initial = await self._run(USAGE, keys, (quota.period,), 2)
        return used, max(0, quota.applies(bool(initial)) - used)

    async def _run(self, script: Script, keys: Sequence[str], args: Sequence[str | int], size: int) -> list[int]:
        """One script call, within the timeout, as `size` integers (each >= 0, as every script answers): any
        other reply (a string, a nested array, a float, a negative number) is `CountersUnavailable`."""
        now = "" if self.clock is None else str(round(self.clock() * MICROS))
        lean = self.lean
        if lean is not None:
            call = (now, *args)
            reply = await self._lean(script, lambda: lean.evalsha(script.sha_encoded, script.encoded, keys, call))
        else:
            reply = await self._guarded(lambda: self._evalsha(script, keys, (now, *args)), script)
        if type(reply) is not list or len(reply) != size or not all(type(v) is int and v >= 0 for v in reply):
            raise CountersUnavailable(f"redis {script.name}: malformed reply")
        return reply

    async def _lean(self, script: Script, command: Callable[[], Awaitable[T]]) -> T:
        """`command` on the lean client, which bounds it by its connection's timer; any failure is
        `CountersUnavailable`, a script error `ScriptFailed`."""
        try:
            return await command()
        except RespError as exc:
            if not isinstance(exc, ConnectionError) and is_lean_script_error(str(exc)):
                raise ScriptFailed(f"redis {script.name}: {str(exc)[:200]}") from exc
            raise CountersUnavailable(f"redis {script.name}: {str(exc).split(' ', 1)[0][:40]}") from exc
        except Exception as exc:  # connection errors, timeouts, protocol errors: all mean "no answer"
            raise CountersUnavailable(f"redis {script.name}: {exc.__class__.__name__}") from exc

    async def _evalsha(self, script: Script, keys: Sequence[str], args: Sequence[object]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except self._no_script:  # restarted or flushed: EVAL runs it and caches it again
            return await self.redis.eval(script.text, len(keys), *keys, *args)

    async def _guarded(self, command: Callable[[], Awaitable[T]], script: Script) -> T:
        """`command` within the timeout (in a Task: `asyncio.timeout` needs one, and a Check may start inline,
        see sidecar/inline.py); any failure is `CountersUnavailable`, a script error `ScriptFailed`."""
        try:
            return await in_task(self._timed(command))
        except Exception as exc:  # connection errors, timeouts, script errors: all mean "no answer"
            if is_script_error(exc, self._response_error):
                raise ScriptFailed(f"redis {script.name}: {str(exc)[:200]}") from exc
            raise CountersUnavailable(f"redis {script.name}: {exc.__class__.__name__}") from exc

    async def _timed(self, command: Callable[[], Awaitable[T]]) -> T:
        async with asyncio.timeout(self.timeout):
            return await command()

    async def close(self) -> None:
        close = getattr(self.client, "aclose", None)
        if close is not None:
            await close()


class FallbackCounters:
    """`RedisCounters` behind the circuit breaker, with `on_error` deciding while Redis does not answer: `local`
    (this process's counters: exact per replica, starting from nothing), `allow` or `deny` (refused as by the
    limit that applies, retry after the breaker's cooldown). Back to Redis as soon as it answers again.

    Nothing escapes: a Redis failure is a decision in the fallback mode. `usage` alone has no fallback (GetUsage
    reads the shared counts): it raises `CountersUnavailable`. A script error (`ScriptFailed`) is decided the
    same way, for that call only: Redis answered, so the breaker counts it as an answer and the mode does not
    change (one plan's bad call must not send every plan and rule of the config off Redis).

    `authz_limit_degraded` is one gauge per process and a reload builds new counters: each starts at 0 (its
    state) until its own first failure, so a config built while Redis is back does not inherit a stale 1."""

    def __init__(
        self,
        redis: RedisCounters,
        local: LocalCounters,
        on_error: OnError = "local",
        breaker: Breaker | None = None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.redis = redis
        self.local = local
        self.on_error = on_error
        self.breaker = breaker or Breaker()
        self.clock = clock
        self._degraded = False
        self._fallback = tally(LIMIT_FALLBACKS, on_error).inc
        self._script_errors = ThrottledWarning(log, 60.0, clock, "script errors")
        LIMIT_DEGRADED.set(0)

    @property
    def degraded(self) -> bool:
        """Whether the latest decision was taken without Redis (until Redis answers again)."""
        return self._degraded

    async def meter(self, key: str, throttle: Throttle | None, quota: Quota | None, bucket: str = "") -> Admission:
        if throttle is None and quota is None:
            return UNLIMITED
        shared = await self._shared(lambda: self.redis.meter(key, throttle, quota, bucket))
        if not isinstance(shared, NoAnswer):
            return shared
        self._without_redis(shared)
        if self.on_error == "local":
            return self.local.meter_now(key, throttle, quota, bucket)
        if throttle is not None:
            return self._unshared("throttled", throttle.burst, throttle.window_us / MICROS)
        assert quota is not None  # one of the two is set (checked above)
        start, end = period_bounds(quota.period, int(self.local.clock()))
        return self._unshared("quota", quota.limit, float(end - start))

    async def hit(self, key: str, window: Window, count_only: bool = False) -> Admission:
        shared = await self._shared(lambda: self.redis.hit(key, window, count_only))
        if not isinstance(shared, NoAnswer):
            return shared
        self._without_redis(shared)
        if self.on_error == "local":
            return self.local.hit_now(key, window, count_only)
        return self._unshared("blocked", window.limit, float(window.seconds), admit=count_only)

    async def usage(self, key: str, quota: Quota) -> tuple[int, int]:
        shared = await self._shared(lambda: self.redis.usage(key, quota))
        if isinstance(shared, NoAnswer):
            raise CountersUnavailable("redis usage: no answer (breaker open or Redis failing)")
        return shared

    def _unshared(self, reason: Reason, limit: int, window: float, admit: bool = False) -> Admission:
        """The `allow` or `deny` verdict without Redis (`admit` forces an allow: a count-only rule never refuses)."""
        if admit or self.on_error == "allow":
            return Admission(True, "ok", limit, limit, 0.0, 0.0, window)
        wait = self.breaker.current_cooldown or self.breaker.cooldown
        return Admission(False, reason, limit, 0, wait, wait, window, True)

    async def _shared(self, call: Callable[[], Awaitable[T]]) -> T | NoAnswer:
        """Redis's answer, or why there is none: the breaker holds it back or the call fails (the breaker is told),
        or Redis answered with a script error (the breaker is told it answered)."""
        ticket = self.breaker.admit(self.clock())
        if ticket is None:
            return NoAnswer.UNAVAILABLE
        try:
            answer = await call()
        except ScriptFailed as exc:
            self.breaker.success(ticket)
            self._script_errors.warning(
                "rate limits: %s; on_redis_error (%s) decides that call, the breaker is not told", exc, self.on_error
            )
            return NoAnswer.SCRIPT_FAILED
        except Exception as exc:  # CountersUnavailable, or anything else: no answer, never an escape
            self.breaker.failure(self.clock(), ticket)
            log.debug(
                "rate limits: redis failed: %s", exc if isinstance(exc, CountersUnavailable) else type(exc).__name__
            )
            return NoAnswer.UNAVAILABLE
        else:
            self.breaker.success(ticket)
            self._recovered()
            return answer
        finally:
            self.breaker.abandon(ticket)

    def _without_redis(self, why: NoAnswer) -> None:
        """Count a decision taken without Redis; Redis unavailable (not a script error) makes this degraded."""
        self._fallback()
        if why is NoAnswer.UNAVAILABLE and not self._degraded:
            self._degraded = True
            LIMIT_DEGRADED.set(1)
            log.warning("rate limits: Redis unavailable; %s until it answers", _WHILE_DEGRADED[self.on_error])

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            LIMIT_DEGRADED.set(0)
            log.warning("rate limits: Redis answers again; counting there")

    async def close(self) -> None:
        await self.redis.close()
        await self.local.close()


class NoAnswer(enum.Enum):
    """Why `FallbackCounters` decides a call without Redis."""

    UNAVAILABLE = "unavailable"
    """The breaker holds calls back, or this one failed (an error, a timeout, a malformed reply)."""
    SCRIPT_FAILED = "script_failed"
    """Redis answered with a script error: about this call, not Redis."""


_WHILE_DEGRADED: dict[str, str] = {
    "local": "deciding with this process's counters (on_redis_error: local)",
    "allow": "admitting every request (on_redis_error: allow)",
    "deny": "refusing every request (on_redis_error: deny)",
}


def shared_counters(
    connection: RedisSettings,
    on_error: OnError = "local",
    local: LocalCounters | None = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> FallbackCounters:
    """The counters of one of the config's Redis connections, with its breaker settings and `timeout_ms`
    (`limits.timeout_ms`), not the connection's own timeout: the decision cache gives up on Redis sooner than a
    count should. The scripts run through the lean client where the connection allows it (`lean_reads`, a plain
    `redis://` URL), else through redis-py.

    A call that times out may still have counted in Redis: the script was sent and runs when Redis gets to it.
    That request is then counted there as well as decided by `on_error`: refused and counted with `deny`, counted
    twice (in Redis and in process) with `local`, admitted and counted with `allow`. A timeout longer than
    Redis's usual stalls keeps this rare."""
    # the socket and pool timeouts too: redis-py's own would otherwise give up at the connection's timeout
    client = redis_client(connection.model_copy(update={"timeout_ms": timeout_ms}))
    breaker = Breaker(
        threshold=connection.breaker_threshold,
        cooldown=connection.breaker_cooldown,
        while_open=_WHILE_DEGRADED[on_error],
    )
    redis = RedisCounters(client, timeout=timeout_ms / 1000)
    return FallbackCounters(redis, local or LocalCounters(), on_error, breaker)
