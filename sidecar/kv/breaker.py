"""The circuit breaker every user of a remote dependency shares: after repeated failures, stop asking for a while.

Closed, it lets every call through; after `threshold` consecutive failures it opens and callers decide without
the dependency; after `cooldown` one probe goes through (half-open), and the cooldown doubles while the
dependency keeps failing. Trouble thus costs one timeout per cooldown, not one per request, and never turns into
an allow. Redis users (decision cache, replay guard) keep the defaults; a remote custom authorizer names itself
and its own gauge (`name`, `gauge`).

Callers whose calls overlap (a remote custom authorizer: many in flight at once) take a ticket with `admit` and
settle the call with it, so that only the probe's own verdict settles the half-open state: a call let in before
the breaker opened that fails late is not the probe failing. `allow` and the ticketless forms are for callers
that do not tell calls apart.
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

    probe: int = 0
    """The ticket of the latest probe (`admit`)."""

    def admit(self, now: float) -> int | None:
        """Whether to try the dependency now, as the ticket to settle the call with (`success`, `failure`,
        `abandon`): `CLOSED_CALL` while closed, the probe's own number for the one half-open call, None: not now."""
        if not self.is_open:
            return CLOSED_CALL
        if now >= self.open_until and not self.probing:
            self.probing = True  # half-open: exactly one request probes
            self.probe += 1
            return self.probe
        return None

    def allow(self, now: float) -> bool:
        """Whether to try the dependency now (`admit` without a ticket)."""
        return self.admit(now) is not None

    def success(self, ticket: int | None = None) -> None:
        """The dependency answered: closed, whichever call it answered (an answer is an answer)."""
        if self.is_open:
            log.warning("%s breaker closed: it answers again", self.name)
            self.gauge.set(0)
        self.failures = 0
        self.is_open = self.probing = False
        self.current_cooldown = 0.0

    def failure(self, now: float, ticket: int | None = None) -> None:
        """A call failed. While open, only the probe's failure counts (it waits longer); without a ticket a failure
        while probing is taken as the probe's."""
        self.failures += 1
        if self.is_open:
            if self._is_probe(ticket):
                self.probing = False
                self.current_cooldown = min(self.current_cooldown * 2, self.max_cooldown)
                self.open_until = now + self.current_cooldown
        elif self.failures >= self.threshold:
            self.is_open = True
            self.current_cooldown = self.cooldown
            self.open_until = now + self.cooldown
            log.warning("%s breaker open after %d failures: %s", self.name, self.failures, self.while_open)
            self.gauge.set(1)

    def abandon(self, ticket: int | None = None) -> None:
        """A call let through ended without a verdict (cancelled, or its answer could not be judged): if it was the
        probe, not yet settled, the next call after the cooldown may probe instead (without this the breaker would
        stay open for good). Harmless after `success` or `failure`: callers may call it in a `finally`."""
        if self._is_probe(ticket):
            self.probing = False

    def _is_probe(self, ticket: int | None) -> bool:
        """Whether the call holding `ticket` is the probe still in flight."""
        return self.probing and (ticket is None or ticket == self.probe)


CLOSED_CALL = 0
"""The ticket of a call let through while the breaker was closed (probes are numbered from 1)."""
