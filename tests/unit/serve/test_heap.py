"""The GC settings applied after start-up and reloads (sidecar/serve/heap.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import ConfigError, ServerSettings, parse_config
from sidecar.serve.heap import settle


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_freezes_what_is_alive_and_sets_thresholds() -> None:
    gc.unfreeze()
    settle(ServerSettings(gc_threshold=(5000, 20, 30)))
    assert gc.get_freeze_count() > 1000
    assert gc.get_threshold() == (5000, 20, 30)


def test_a_reload_unfreezes_so_a_replaced_runtime_can_be_collected() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the cyclic collector can free it

    gc.unfreeze()
    old = Node()
    alive = weakref.ref(old)
    settle(ServerSettings())
    del old
    gc.collect()
    assert alive() is not None  # frozen: the collector no longer looks at it
    settle(ServerSettings(), reloading=True)
    assert alive() is None  # unfrozen, collected, and not frozen again
    assert gc.get_freeze_count() > 0


def test_freeze_can_be_switched_off_and_thresholds_are_validated() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    settle(ServerSettings(gc_freeze=False))
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
    with pytest.raises(ConfigError, match="gc_threshold"):
        parse_config("server:\n  gc_threshold: [10, 10, 10]\n")


async def test_sigusr2_writes_a_snapshot_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With AUTHZ_SIDECAR_TRACEMALLOC_DIR set, allocations are traced and each SIGUSR2 writes a whole snapshot
    that `tracemalloc` reads back and compares (the soak's leak diff); without it nothing is traced."""
    import asyncio
    import os
    import signal
    import tracemalloc

    from sidecar.serve.heap import TRACEMALLOC_DIR, trace_allocations_if_asked

    monkeypatch.delenv(TRACEMALLOC_DIR, raising=False)
    trace_allocations_if_asked()
    assert not tracemalloc.is_tracing()
    monkeypatch.setenv(TRACEMALLOC_DIR, str(tmp_path))
    loop = asyncio.get_running_loop()
    trace_allocations_if_asked()
    try:
        assert tracemalloc.is_tracing()
        snapshots = []
        for n in (1, 2):
            kept = [bytearray(1000) for _ in range(200 * n)]  # grows between the two snapshots
            os.kill(os.getpid(), signal.SIGUSR2)
            path = tmp_path / f"{os.getpid()}-{n}.tracemalloc"
            for _ in range(500):  # the handler runs on the loop: give it turns, bounded
                if path.exists():
                    break
                await asyncio.sleep(0.01)
            snapshots.append(tracemalloc.Snapshot.load(str(path)))
            del kept
        grown = snapshots[1].compare_to(snapshots[0], "lineno")
        assert any("test_heap.py" in str(stat.traceback) and stat.size_diff > 0 for stat in grown[:20])
        assert not list(tmp_path.glob("*.partial"))
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
        tracemalloc.stop()
