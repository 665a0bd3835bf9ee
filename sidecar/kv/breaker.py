"""The circuit breaker every Redis user shares: after repeated failures, stop asking for a while.

Closed, it lets every call through; after `threshold` consecutive failures it opens and callers decide without
Redis; after `cooldown` one probe goes through (half-open), and the cooldown doubles while Redis keeps failing.
Redis trouble thus costs one timeout per cooldown, not one per request, and never turns into an allow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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

    def allow(self, now: float) -> bool:
        """Whether to try Redis now."""
        if not self.is_open:
            return True
        if now >= self.open_until and not self.probing:
            self.probing = True  # half-open: exactly one request probes
            return True
        return False

    def success(self) -> None:
        if self.is_open:
            log.warning("redis breaker closed: Redis answers again")
            REDIS_BREAKER_OPEN.set(0)
        self.failures = 0
        self.is_open = self.probing = False
        self.current_cooldown = 0.0

    def failure(self, now: float) -> None:
        self.failures += 1
        self.probing = False
        if self.is_open:
            self.current_cooldown = min(self.current_cooldown * 2, self.max_cooldown)
            self.open_until = now + self.current_cooldown
        elif self.failures >= self.threshold:
            self.is_open = True
            self.current_cooldown = self.cooldown
            self.open_until = now + self.cooldown
            log.warning("redis breaker open after %d failures: deciding locally until Redis answers", self.failures)
            REDIS_BREAKER_OPEN.set(1)
