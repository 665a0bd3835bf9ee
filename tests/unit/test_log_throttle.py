"""ThrottledWarning: the first warning is written, the rest within the interval are counted and reported."""

from __future__ import annotations

import logging

import pytest

from sidecar.log_throttle import ThrottledWarning


def test_one_line_per_interval_with_the_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = logging.getLogger("test.throttle")
    throttle = ThrottledWarning(log, interval=5.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger=log.name):
        throttle.warning("bad peer %s", "a")
        for second in (1.0, 2.0, 4.9):
            now[0] = second
            throttle.warning("bad peer %s", "b")
        assert throttle.suppressed == 3
        now[0] = 5.0
        throttle.warning("bad peer %s", "c")
        now[0] = 20.0
        throttle.warning("bad peer %s", "d")
    assert [r.getMessage() for r in caplog.records] == [
        "bad peer a",
        "bad peer c (and 3 more connection errors since the previous line, not logged)",
        "bad peer d",
    ]
    assert throttle.suppressed == 0
