"""The fuzz targets, one module per parser family that sees attacker bytes (each defines `TARGET`).

Importing this package imports no sidecar code: the engine must import a target's module inside its coverage hook
(`tests/fuzz/engine.py`), so nothing of the sidecar may be loaded before it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..harness import Target

NAMES: tuple[str, ...] = (
    "http1",
    "grpc_lean",
    "check_request",
    "jwt",
    "sigv4",
    "policy",
    "config_yaml",
    "mtls",
    "custom_response",
    "resp",
)
"""Every target, in the order `make fuzz` runs them."""

INSTRUMENTED: dict[str, tuple[str, ...]] = {"config_yaml": ("sidecar",)}
"""Targets whose coverage counters stay in the sidecar's own code (instrumented PyYAML made the config fuzzer run
~20 inputs a second). Every other target also instruments the pure-Python parsers the sidecar relies on, PyYAML and
hpack; the rest (the standard library, cryptography, protobuf, httptools) runs uninstrumented. Kept by name here:
the hook must be installed before the target's module is imported."""


def instrumented(name: str) -> tuple[str, ...]:
    """The packages the engine instruments for `name`."""
    return INSTRUMENTED.get(name, ("sidecar", "yaml", "hpack"))


def load(name: str) -> Target:
    """The `TARGET` of `tests/fuzz/targets/<name>.py`."""
    if name not in NAMES:
        raise KeyError(f"no fuzz target {name!r} (known: {', '.join(NAMES)})")
    target: Target = importlib.import_module(f"{__name__}.{name}").TARGET
    return target
