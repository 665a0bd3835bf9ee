"""The position-keeping JSON reader: same values as `json.loads`, positions for every value, strict errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.policy.jsonpos import JsonSyntaxError, _Reader, parse_located

TEXT = '{\n  "a": [1, {"b": "x\\u00e9"}],\n  "é": true,\n  "c": null\n}'


def test_positions_of_nested_values() -> None:
    located = parse_located(TEXT)
    assert located.value == json.loads(TEXT)
    assert located.position(("a",)) == (2, 8)
    assert located.position(("a", 0)) == (2, 9)
    assert located.position(("a", 1, "b")) == (2, 18)
    assert located.position(("é",)) == (3, 8)
    assert located.position(("c",)) == (4, 8)
    assert located.position(("a", 1, "missing", 3)) == (2, 12)  # nearest located ancestor
    assert located.position(()) == (1, 1)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)


# 100 examples in the suite (was 200): tests/fuzz/targets/policy.py drives this code at scale.
@settings(max_examples=100, deadline=None)
@given(JSON_VALUES, st.sampled_from([None, 1, 2]))
def test_reader_agrees_with_json_loads(value: object, indent: int | None) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    reader = _Reader(text)
    assert reader.read() == json.loads(text)
    for path, offset in reader.offsets.items():
        assert text[offset] in '{["-0123456789tfn', (path, text[offset:])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{'a': 1}", "expected a quoted key"),
        ('{"a" 1}', "expected ':'"),
        ('{"a": 1,}', "expected a quoted key"),
        ("[1,]", "unexpected character"),
        ("[1 2]", "expected ',' or ']'"),
        ("01", "after the end"),
        ("tru", "unexpected character"),
        ('"\\q"', "bad string"),
        ('"unterminated', "bad string"),
        ('{"Sid": "a\\ud800"}', "unpaired surrogate"),
        ('{"a\\udfff": 1}', "unpaired surrogate"),
    ],
)
def test_reader_errors(text: str, fragment: str) -> None:
    with pytest.raises(JsonSyntaxError, match=fragment):
        parse_located(text)


def test_unpaired_surrogate_is_located_and_pairs_are_fine() -> None:
    text = '{\n  "Version": "2012-10-17",\n  "Sid": "x\\udc80"\n}'
    with pytest.raises(JsonSyntaxError) as info:
        parse_located(text)
    assert text[info.value.offset :].startswith('"x\\udc80"')  # the string's own position (line 3)
    assert parse_located('{"Sid": "\\ud83d\\ude00"}').value == {"Sid": "\U0001f600"}
