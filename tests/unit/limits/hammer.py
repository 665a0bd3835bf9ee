"""One of the replicas of the two-process test (test_shared_counting.py): a process of its own with its own asyncio
loop and Redis connections, driving one key through RedisCounters as hard as it can.

`python -m tests.unit.limits.hammer URL CLUSTER KEY SECONDS ATTEMPTS`: connects (scripts loaded, one connection
per task open), says `ready`, waits for a line on stdin (the start, given to both processes at once), then for
SECONDS meters KEY's throttle (rate 200/s, burst 50) from 16 tasks, reading Redis TIME just before and after; then
it makes ATTEMPTS quota requests on `KEY:quota` (limit ATTEMPTS: two processes make twice the limit) and prints
one JSON line: what it admitted, and when it started and stopped in Redis time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from pydantic import SecretStr

from sidecar.kv import redis_client
from sidecar.limits.counters import Quota, Throttle
from sidecar.limits.redis_counters import RedisCounters
from sidecar.settings import RedisSettings

THROTTLE = Throttle(rate=200, burst=50)
TASKS = 16


async def throttle_phase(counters: RedisCounters, key: str, seconds: float) -> tuple[int, int]:
    """(admitted, attempts) from TASKS tasks metering `key` until `seconds` have passed."""
    deadline = time.monotonic() + seconds
    admitted = attempts = 0

    async def drive() -> None:
        nonlocal admitted, attempts
        while time.monotonic() < deadline:
            verdict = await counters.meter(key, THROTTLE, None)  # awaited first: `x += await` loses updates
            admitted += verdict.allowed
            attempts += 1

    await asyncio.gather(*(drive() for _ in range(TASKS)))
    return admitted, attempts


async def quota_phase(counters: RedisCounters, key: str, attempts: int) -> int:
    """How many of `attempts` requests (limit `attempts`) this process got admitted, TASKS at a time."""
    quota, left = Quota(attempts, "DAY"), [attempts]
    admitted = 0

    async def drive() -> None:
        nonlocal admitted
        while left[0] > 0:
            left[0] -= 1
            verdict = await counters.meter(key, None, quota)
            admitted += verdict.allowed

    await asyncio.gather(*(drive() for _ in range(TASKS)))
    return admitted


async def redis_time(counters: RedisCounters) -> float:
    seconds, micros = await counters.redis.time()
    return float(seconds) + float(micros) / 1e6


async def main(url: str, cluster: bool, key: str, seconds: float, attempts: int) -> None:
    settings = RedisSettings(url=SecretStr(url), timeout_ms=1000, cluster=cluster, lean_reads=False)
    counters = RedisCounters(redis_client(settings), timeout=2.0)
    await counters.load()
    await asyncio.gather(*(counters.redis.ping() for _ in range(TASKS)))  # every task's connection open before
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start = await redis_time(counters)  # one round trip before this process's first request
    admitted, tried = await throttle_phase(counters, key, seconds)
    end = await redis_time(counters)  # one round trip after its last
    quota_admitted = await quota_phase(counters, key + ":quota", attempts)
    report = {"admitted": admitted, "attempts": tried, "start": start, "end": end, "quota": quota_admitted}
    print(json.dumps(report))
    await counters.close()


if __name__ == "__main__":
    url, cluster, key, seconds, attempts = sys.argv[1:6]
    asyncio.run(main(url, cluster == "1", key, float(seconds), int(attempts)))
