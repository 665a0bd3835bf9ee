"""Micro-benchmark: CPU per Redis read, the sidecar's lean reader against redis-py's asyncio client.

Run: `python -m benchmarks.micro_redis`. Starts its own `redis-server` on 127.0.0.1 (stopped at the end), reads
one key sequentially under uvloop, and prints the process's CPU microseconds (user + system, from getrusage) and
wall microseconds per read. No assertions: figures go in notes. On the 2-vCPU VM the first few thousand round
trips of a run are markedly cheaper than the rest (both clients; the scheduler, not the code), so a first
round is run and discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import redis.asyncio as aioredis
import uvloop

from benchmarks.harness import redis_server
from sidecar.harness.envoy import free_port
from sidecar.kv.resp import LeanReader

READS = 5000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(read: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    for _ in range(200):
        await read()
    cpu, wall = _cpu(), time.perf_counter()
    for _ in range(READS):
        await read()
    return (_cpu() - cpu) / READS * 1e6, (time.perf_counter() - wall) / READS * 1e6


async def _run(port: int) -> list[tuple[str, float, float]]:
    url = f"redis://127.0.0.1:{port}/0"
    lean = LeanReader.from_url(url, 0.05)
    assert lean is not None
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=32, timeout=0.05, socket_timeout=0.05)
    client = aioredis.Redis(connection_pool=pool)
    await client.set("bench", b"x" * 300)

    async def timed_redis_py() -> Any:
        async with asyncio.timeout(0.05):
            return await client.get("bench")

    async def timed_lean() -> Any:
        async with asyncio.timeout(0.05):
            return await lean.get("bench")

    await _measure(lambda: lean.get("bench"))  # the first few thousand round trips run faster on this VM
    rows = [
        ("lean reader GET (its own connection timer)", *await _measure(lambda: lean.get("bench"))),
        ("lean reader GET inside asyncio.timeout", *await _measure(timed_lean)),
        ("redis-py GET", *await _measure(lambda: client.get("bench"))),
        ("redis-py GET inside asyncio.timeout (as before)", *await _measure(timed_redis_py)),
    ]
    await lean.aclose()
    await client.aclose()
    return rows


def main() -> None:
    port = free_port()
    with TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(redis_server(port, Path(tmp)))
        rows = uvloop.run(_run(port))
    width = max(len(name) for name, _, _ in rows)
    print(f"{'read':<{width}}  CPU us  wall us")
    for name, cpu, wall in rows:
        print(f"{name:<{width}}  {cpu:6.1f}  {wall:7.1f}")


if __name__ == "__main__":
    main()
