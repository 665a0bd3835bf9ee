"""One bounded memo for every hot-path lookup that remembers answers: a dict that starts over when full.

Hits are plain `dict.get` (C speed, no wrapper call); only a miss calls `put`. Starting over is crude but O(1),
and a memo that clients can fill (paths, methods, header names they choose) must not keep growing; an LRU would
cost a linked-list update on every hit. The decision cache proper (`cache/local.py`) is an LRU with TTLs: that
one is worth it, these are not.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(dict[K, V]):
    """A dict of at most `limit` entries: `put` on a full memo clears it first."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit <= 0:
            raise ValueError("a memo needs room for at least one entry")
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Remember `value` for `key` and return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
