"""The soak's allocation diff (`benchmarks/soak_heap.py`): SIGUSR2 snapshots from a tracing process, compared."""

from __future__ import annotations

import asyncio
import os
import signal
import tracemalloc
from pathlib import Path

import pytest

from benchmarks.soak_heap import HeapTrace
from sidecar.serve.heap import TRACEMALLOC_DIR, trace_allocations_if_asked


async def test_two_snapshots_show_where_memory_grew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heap = HeapTrace(tmp_path / "heap")
    monkeypatch.setenv(TRACEMALLOC_DIR, heap.env[TRACEMALLOC_DIR])
    trace_allocations_if_asked()  # this process plays the worker
    try:
        heap.first = await asyncio.to_thread(heap.snapshot, [os.getpid()])
        grown = [bytearray(4096) for _ in range(500)]
        heap.last = await asyncio.to_thread(heap.snapshot, [os.getpid(), 2**22 + 1])  # a pid that is gone: skipped
        growth = heap.growth()
        del grown
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR2)
        tracemalloc.stop()
    assert list(heap.first) == list(heap.last) == [os.getpid()]
    (lines,) = growth.values()
    assert any("test_soak_heap.py" in line["where"] and line["size_diff_kb"] >= 1900 for line in lines), lines
