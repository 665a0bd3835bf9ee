"""The shared value types: `CompactMap`, the read-only mapping cached principals and decisions are built from."""

from __future__ import annotations

import pytest

from sidecar import request as requestmod
from sidecar.request import CompactMap


def test_compact_map_is_a_read_only_mapping() -> None:
    items = {"iss": "https://idp", "sub": "u-1", "aud": ["a", "b"], "exp": 10}
    compact = CompactMap(items)
    assert compact == items and dict(compact) == items and list(compact) == list(items)
    assert len(compact) == 4 and "sub" in compact and "nope" not in compact
    assert compact["aud"] == ["a", "b"] and compact.get("nope", 7) == 7 and compact.get("exp") == 10
    assert dict(compact.items()) == items and list(compact.values()) == list(items.values())
    with pytest.raises(KeyError):
        compact["nope"]
    with pytest.raises(TypeError):
        compact["sub"] = "u-2"  # type: ignore[index]
    assert "u-1" in repr(compact)


def test_compact_maps_share_one_index_per_key_sequence_and_the_table_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sidecar.memo import BoundedMemo

    # A fresh process-wide table: filling the real one would change other tests.
    monkeypatch.setattr(requestmod, "_SHAPES", BoundedMemo(requestmod._MAX_SHAPES))
    one, two = CompactMap({"a": 1, "b": 2}), CompactMap({"a": 3, "b": 4})
    assert one._index is two._index
    assert CompactMap({"b": 2, "a": 1})._index is not one._index  # another order is another shape
    assert CompactMap({"b": 2, "a": 1}) == one
    for i in range(requestmod._MAX_SHAPES + 5):
        assert CompactMap({f"k{i}": i})[f"k{i}"] == i
    assert len(requestmod._SHAPES) <= requestmod._MAX_SHAPES
