"""Wildcard matching: the regex path and the direct matcher for long patterns agree, ARN parts included."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.policy.arn import LONG_PATTERN, glob_match, glob_regex, rendered_matches

PIECES = st.lists(st.tuples(st.text(alphabet="ab:/*?", max_size=6), st.booleans()), max_size=6)
VALUES = st.text(alphabet="ab:/*?", max_size=16)


# 200 examples in the suite (was 500): tests/fuzz/targets/policy.py drives this code at scale.
@settings(max_examples=200, deadline=None)
@given(PIECES, VALUES, st.booleans())
def test_direct_matcher_agrees_with_regex(pieces: list[tuple[str, bool]], value: str, arn: bool) -> None:
    regex = re.compile(glob_regex(pieces, arn), re.DOTALL)
    assert glob_match(pieces, value, arn) == (regex.fullmatch(value) is not None)


def test_long_rendered_patterns_are_matched_without_regex_caches() -> None:
    long_value = "x" * (LONG_PATTERN + 10)
    pattern = (("arn:aws:execute-api:*:*:api/prod/GET/", False), (long_value, True), ("/*", False))
    assert rendered_matches(pattern, f"arn:aws:execute-api:us-east-1:123456789012:api/prod/GET/{long_value}/a", True)
    assert not rendered_matches(pattern, f"arn:aws:execute-api:us-east-1:123456789012:api/prod/GET/{long_value}", True)
    assert not rendered_matches(((long_value, True),), long_value[:-1] + "*", False)  # exact text stays literal
    assert rendered_matches(((long_value, True), ("*", False)), long_value + "tail", False)


def test_many_stars_against_a_long_hostile_value_stay_linear() -> None:
    # A naive `.*` translation backtracks polynomially here (seconds at 800 chars); this must finish at once.
    value = "a" * 50_000
    assert not re.fullmatch(glob_regex([("*a*a*a*a*b", False)], False), value, re.DOTALL)
    assert re.fullmatch(glob_regex([("*a*a*a*a*", False)], False), value, re.DOTALL)
    arn = "arn:aws:execute-api:us-east-1:123456789012:api/prod/GET/" + "/x" * 20_000
    assert not re.fullmatch(glob_regex([("arn:aws:execute-api:*:*:*/*/*/x/*/x/*/y", False)], True), arn, re.DOTALL)


def test_direct_matcher_with_a_long_substituted_chunk_stays_linear() -> None:
    # A variable filled from a header can make one chunk as long as the value; a naive two-pointer scan is
    # quadratic here (billions of steps), the chunked matcher is one `str.find`.
    chunk = "a" * 30_000 + "b"
    pattern = (("*", False), (chunk, True), ("*", False))
    assert not glob_match(pattern, "a" * 60_000, False)
    assert glob_match(pattern, "a" * 40_000 + "b" + "tail", False)
    assert rendered_matches(pattern, "x" + chunk, False)
