"""The circuit breaker every user of a remote dependency shares: after repeated failures, stop asking for a while.

Closed, it lets every call through; after `threshold` consecutive failures it opens and callers decide without
the dependency; after `cooldown` one probe goes through (half-open), and the cooldown doubles while the
dependency keeps failing. Trouble thus costs one timeout per cooldown, not one per request, and never turns into
an allow. Redis users (decision cache, replay guard) keep the defaults; a remote custom authorizer names itself
and its own gauge (`name`, `gauge`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..metrics import REDIS_BREAKER_OPEN

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Breaker:
    """Opens after `threshold` consecutive failures; after `cooldown` lets one probe through (half-open)."""

    threshold: int = 5
    cooldown: float = 1.0
    max_cooldown: float = 30.0
    failures: int = 0
    open_until: float = 0.0
    current_cooldown: float = 0.0
    probing: bool = False
    is_open: bool = False
    name: str = "redis"
    """What the breaker guards, in its log lines."""
    while_open: str = "deciding locally until Redis answers"
    """What callers do while it is open, in its log line."""
    gauge: Any = REDIS_BREAKER_OPEN
    """A Prometheus gauge (or labelled child) set to 1 while open, 0 once closed."""

    def allow(self, now: float) -> bool:
        """Whether to try the dependency now."""
        if not self.is_open:
            return True
        if now >= self.open_until and not self.probing:
            self.probing = True  # half-open: exactly one request probes
            return True
        return False

    def success(self) -> None:
        if self.is_open:
            log.warning("%s breaker closed: it answers again", self.name)
            self.gauge.set(0)
        self.failures = 0
        self.is_open = self.probing = False
        self.current_cooldown = 0.0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.is_open:
            if self.probing:  # the probe failed: wait longer; a call let in before the breaker opened does not
                self.probing = False
                self.current_cooldown = min(self.current_cooldown * 2, self.max_cooldown)
                self.open_until = now + self.current_cooldown
        elif self.failures >= self.threshold:
            self.is_open = True
            self.current_cooldown = self.cooldown
            self.open_until = now + self.cooldown
            log.warning("%s breaker open after %d failures: %s", self.name, self.failures, self.while_open)
            self.gauge.set(1)

    def abandon(self) -> None:
        """A call `allow` let through ended without a verdict (cancelled): if it was the probe, the next call
        after the cooldown may probe instead (without this the breaker would stay open for good)."""
        self.probing = False
