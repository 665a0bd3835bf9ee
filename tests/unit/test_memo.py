"""The one bounded memo the hot path uses (sidecar/memo.py)."""

from __future__ import annotations

import pytest

from sidecar.memo import BoundedMemo


def test_put_remembers_and_returns_the_value() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(3)
    assert memo.put("a", 1) == 1
    assert memo.get("a") == 1 and memo.get("b") is None


def test_a_full_memo_starts_over_and_never_passes_its_limit() -> None:
    memo: BoundedMemo[int, int] = BoundedMemo(4)
    for i in range(4):
        memo.put(i, i)
    assert len(memo) == 4
    memo.put(99, 99)
    assert dict(memo) == {99: 99}
    for i in range(1000):
        memo.put(i, i)
        assert len(memo) <= 4


def test_a_memo_needs_room() -> None:
    with pytest.raises(ValueError):
        BoundedMemo(0)
