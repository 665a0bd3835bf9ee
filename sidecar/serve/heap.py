"""Garbage-collector settings for a long-running decision server.

CPython's cyclic collector periodically walks every tracked object in the oldest generation. In a sidecar that
is the whole import graph (grpc, protobuf, pydantic, cryptography: ~100,000 objects) plus the compiled runtime,
so each full collection stalled the event loop under load, and those stalls were the p99 of the fixed-rate
benchmark. After start-up, and after each reload, we collect once and `gc.freeze()` what is alive: those
objects are immortal for practical purposes, so the collector stops walking them (the measured pauses and p99
before and after are in docs/performance.md). The thresholds stay Python's unless configured.
"""

from __future__ import annotations

import gc
import logging
import time

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
