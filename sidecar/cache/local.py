"""L1: an in-process LRU with a TTL per entry, bounded by entry count, O(1) get and set.

Chosen over `cachetools.TLRUCache` by measurement (benchmarks/micro_cache.py): this hit path is a dict lookup,
an expiry comparison and `move_to_end`; cachetools' per-item-TTL cache does more bookkeeping per access.
Single-threaded by design: one event loop per process touches it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from time import monotonic
from typing import Generic, TypeVar

from ..memo import BoundedMemo

V = TypeVar("V")
_MAX_EXPIRIES = 4096


class LocalCache(Generic[V]):
    """LRU with per-entry expiry on the monotonic clock."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._expiries: BoundedMemo[int, float] = BoundedMemo(_MAX_EXPIRIES)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable, now: float | None = None) -> V | None:
        """The live value for `key`, or None (an expired entry is dropped on sight)."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] <= (monotonic() if now is None else now):
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry[1]

    def set(self, key: Hashable, value: V, ttl: float, now: float | None = None) -> None:
        """Store `value` for `ttl` seconds, evicting the least recently used entry when full."""
        if ttl <= 0 or self.max_entries <= 0:
            return
        data = self._data
        data[key] = (self._expiry((monotonic() if now is None else now) + ttl, ttl), value)
        data.move_to_end(key)
        if len(data) > self.max_entries:
            data.popitem(last=False)

    def clear(self) -> None:
        """Drop everything."""
        self._data.clear()

    def _expiry(self, at: float, ttl: float) -> float:
        """`at`, or for TTLs of a second or more `at` rounded down to a quarter second and shared: the entries
        stored in the same quarter second hold one float instead of one each (entries expire at most a quarter
        second early, never late)."""
        if ttl < 1.0:
            return at
        quarter = int(at * 4)
        shared = self._expiries.get(quarter)
        return shared if shared is not None else self._expiries.put(quarter, quarter / 4)
