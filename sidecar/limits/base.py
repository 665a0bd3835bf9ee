"""The gate interfaces and their registry (see the package docstring for the phases)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..request import Decision, Request


class AdmitGate(abc.ABC):
    """Runs before authentication on every request of its routes."""

    name: str = ""

    @abc.abstractmethod
    async def admit(self, request: Request, route: str) -> Decision | None:
        """None to let `request` on to authentication, or the deny to answer instead."""


class MeterGate(abc.ABC):
    """Runs after an allow (cached or computed) on its routes; never sees a denied request."""

    name: str = ""

    synchronous: bool = False
    """True when `meter_now` answers what `meter` would, without waiting (in-process counters): the pipeline then
    meters without a coroutine."""

    @abc.abstractmethod
    async def meter(self, request: Request, route: str, allowed: Decision) -> Decision | None:
        """None to keep the allow, or the deny that replaces it (the request is then not counted as served)."""

    def meter_now(self, request: Request, route: str, allowed: Decision) -> Decision | None:
        """`meter`, for a gate that is `synchronous`."""
        raise NotImplementedError(f"meter gate {self.name} waits: call meter")


@dataclass(frozen=True, slots=True)
class GateType:
    """A registry entry: a config section's name and how to build its gates from the validated config."""

    name: str
    build: Callable[[Any], Any]


_GATES: dict[str, GateType] = {}


def register_gate(name: str, build: Callable[[Any], Any]) -> None:
    """Make a gate family buildable (the built-in ones register when their module is imported)."""
    _GATES[name] = GateType(name, build)


def gate_types() -> dict[str, GateType]:
    """Every registered gate family (none yet: usage plans and rate-based rules are the next issue)."""
    return _GATES
