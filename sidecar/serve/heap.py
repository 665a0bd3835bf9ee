"""Garbage-collector settings for a long-running decision server.

CPython's cyclic collector periodically walks every tracked object in the oldest generation. In a sidecar that
is the whole import graph (grpc, protobuf, pydantic, cryptography: ~100,000 objects) plus the compiled runtime,
so each full collection stalled the event loop under load, and those stalls were the p99 of the fixed-rate
benchmark. After start-up, and after each reload, we collect once and `gc.freeze()` what is alive: those
objects are immortal for practical purposes, so the collector stops walking them (the measured pauses and p99
before and after are in docs/performance.md). The thresholds stay Python's unless configured.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import signal
import time
import tracemalloc
from pathlib import Path

from ..settings import ServerSettings

log = logging.getLogger(__name__)


def settle(settings: ServerSettings, reloading: bool = False) -> None:
    """Apply the GC settings and freeze what is alive now (the runtime just compiled, the imports).

    On a reload, what was frozen before is unfrozen first, so the replaced runtime can be collected: frozen
    objects are never examined again, and cyclic garbage among them would leak.
    """
    if settings.gc_threshold is not None:
        gc.set_threshold(*settings.gc_threshold)
    if not settings.gc_freeze:
        return
    start = time.perf_counter()
    if reloading:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.debug("froze %d objects in %.1f ms", gc.get_freeze_count(), (time.perf_counter() - start) * 1e3)


TRACEMALLOC_DIR = "AUTHZ_SIDECAR_TRACEMALLOC_DIR"
"""An environment variable: when set (a directory), each server process traces its allocations from start-up
and writes a `tracemalloc` snapshot there on every SIGUSR2 (`<pid>-<n>.tracemalloc`), for a leak hunt: two
snapshots, then `Snapshot.compare_to` (what `benchmarks/soak.py` does when a worker's RSS grows). Tracing costs
CPU and memory, so it is off unless asked for."""
TRACEMALLOC_FRAMES = 10


def trace_allocations_if_asked() -> None:
    """Start tracing and install the SIGUSR2 dump when `TRACEMALLOC_DIR` is set (call once, on the loop)."""
    directory = os.environ.get(TRACEMALLOC_DIR)
    if not directory:
        return
    tracemalloc.start(TRACEMALLOC_FRAMES)
    taken = itertools.count(1)

    def dump() -> None:
        path = Path(directory) / f"{os.getpid()}-{next(taken)}.tracemalloc"
        partial = path.with_suffix(".partial")
        tracemalloc.take_snapshot().dump(str(partial))
        partial.rename(path)  # whole or absent: a reader polling for the file never sees half of it
        log.info("tracemalloc snapshot written to %s", path)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump)
    log.info("tracing allocations (%s): SIGUSR2 writes a snapshot to %s", TRACEMALLOC_DIR, directory)
