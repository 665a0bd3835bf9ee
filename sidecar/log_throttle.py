"""Warnings that a peer can cause at will, written at most once per interval.

A listener's protocol errors are worth a warning: a misconfigured proxy shows up in the log at once. But anything
that can reach the port (a scanner, a health checker speaking the wrong protocol, a client in a retry loop) can
cause them as fast as it can connect, and a warning per connection would then flood the log and cost each one a
formatted line. So the first is written, the rest within `interval` seconds are counted, and the next line that
is written says how many were left out since the one before it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledWarning:
    """`warning(msg, *args)` that writes at most one line per `interval` seconds, counting the others."""

    __slots__ = ("_clock", "_logger", "_next", "_suppressed", "interval", "noun")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        noun: str = "connection errors",
    ) -> None:
        self._logger = logger
        self.interval = interval
        self._clock = clock
        self.noun = noun
        """What the lines are about, for the count of those left out."""
        self._next = float("-inf")
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        """Log now, or count this one if a line went out less than `interval` seconds ago."""
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (and %d more %s since the previous line, not logged)"
            args = (*args, self._suppressed, self.noun)
        self._logger.warning(msg, *args)
        self._next = now + self.interval
        self._suppressed = 0

    @property
    def suppressed(self) -> int:
        """Warnings counted but not written since the last line."""
        return self._suppressed
