"""The GC settings applied after start-up and reloads (sidecar/serve/heap.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

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
