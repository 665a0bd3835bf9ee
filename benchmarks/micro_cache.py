"""Micro-benchmark: the L1 decision cache hit, our LocalCache against cachetools' per-item-TTL cache.

Run: `python -m benchmarks.micro_cache`. Prints medians in microseconds per get (batches of 1,000 calls over a
cache holding 10,000 entries). No assertions: figures go in notes and docs/performance.md. cachetools is only
needed for the comparison row; without it that row is left out.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from sidecar.cache.local import LocalCache

ENTRIES = 10_000
BATCH = 1000
ROUNDS = 30


def median_us(fn: Callable[[int], object]) -> float:
    """Median microseconds per call of `fn(i)`."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for i in range(BATCH):
            fn(i)
        samples.append((time.perf_counter_ns() - start) / BATCH / 1000)
    return statistics.median(samples)


def main() -> None:
    keys = [("v1", "GET /jwt/{proxy+}", i.to_bytes(32, "big")) for i in range(ENTRIES)]
    ours: LocalCache[str] = LocalCache(ENTRIES)
    for key in keys:
        ours.set(key, "decision", 300)
    rows = [
        ("LocalCache.get, hit", median_us(lambda i: ours.get(keys[i]))),
        ("LocalCache.set, replace", median_us(lambda i: ours.set(keys[i], "decision", 300))),
    ]
    try:
        from cachetools import TLRUCache
    except ImportError:
        TLRUCache = None
    if TLRUCache is not None:
        theirs: TLRUCache[object, str] = TLRUCache(ENTRIES, lambda _k, _v, now: now + 300, timer=time.monotonic)
        for key in keys:
            theirs[key] = "decision"
        rows.append(("cachetools.TLRUCache get, hit", median_us(lambda i: theirs.get(keys[i]))))
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  median us")
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.2f}")


if __name__ == "__main__":
    main()
