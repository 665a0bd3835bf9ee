"""The shared circuit breaker: opens after `threshold` failures, one probe per cooldown, and with tickets only the
probe's own verdict settles the half-open state."""

from __future__ import annotations

from sidecar.kv.breaker import CLOSED_CALL, Breaker
from sidecar.metrics import AUTHORIZER_BREAKER_OPEN


def breaker(threshold: int = 2, cooldown: float = 1.0) -> Breaker:
    return Breaker(threshold=threshold, cooldown=cooldown, name="test", gauge=AUTHORIZER_BREAKER_OPEN.labels("kv"))


def test_closed_calls_get_the_closed_ticket_and_failures_open_it() -> None:
    b = breaker()
    assert b.admit(0.0) == CLOSED_CALL
    b.failure(0.0, CLOSED_CALL)
    assert not b.is_open
    b.failure(0.0, CLOSED_CALL)
    assert b.is_open and b.admit(0.5) is None  # cooling down: nobody goes through


def test_only_the_probes_own_failure_stretches_the_cooldown() -> None:
    b = breaker(threshold=1)
    old = b.admit(0.0)  # in flight while still closed
    assert old is not None
    b.failure(0.0, b.admit(0.0))  # another call fails: open
    probe = b.admit(1.0)
    assert probe is not None and probe != CLOSED_CALL
    assert b.admit(1.0) is None  # one probe at a time
    b.failure(1.1, old)  # the old call fails late
    assert b.probing and b.current_cooldown == 1.0 and b.admit(1.2) is None  # still the probe's to settle
    b.abandon(old)  # ... and nothing the old call says frees the probe's slot
    assert b.probing
    b.failure(1.2, probe)
    assert not b.probing and b.current_cooldown == 2.0 and b.open_until == 3.2


def test_a_probe_abandoned_lets_the_next_call_probe_and_abandoning_after_a_verdict_changes_nothing() -> None:
    b = breaker(threshold=1)
    b.failure(0.0, b.admit(0.0))
    first = b.admit(1.0)
    b.abandon(first)
    second = b.admit(1.0)
    assert second is not None and second != first  # a new probe, with a ticket of its own
    b.abandon(first)  # the first probe's late settlement does not touch the second's
    assert b.probing
    b.success(second)
    b.abandon(second)  # a `finally` after the verdict
    assert not b.is_open and not b.probing and b.admit(1.0) == CLOSED_CALL


def test_callers_without_tickets_keep_the_old_rules() -> None:
    """Redis users call `allow` and settle without a ticket: a failure while half-open is the probe's."""
    b = breaker(threshold=1)
    assert b.allow(0.0)
    b.failure(0.0)
    assert b.is_open and not b.allow(0.5)
    assert b.allow(1.0) and not b.allow(1.0)
    b.failure(1.0)
    assert not b.probing and b.current_cooldown == 2.0
    assert b.allow(3.0)
    b.success()
    assert not b.is_open
