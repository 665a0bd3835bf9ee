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
    "resp",
)
"""Every target, in the order `make fuzz` runs them."""

INSTRUMENTED: tuple[str, ...] = ("sidecar", "yaml", "hpack")
"""The packages whose Python code carries coverage counters (the sidecar, and the pure-Python parsers it relies
on for YAML and HPACK); the rest (the standard library, cryptography, protobuf, httptools) runs uninstrumented."""


def load(name: str) -> Target:
    """The `TARGET` of `tests/fuzz/targets/<name>.py`."""
    if name not in NAMES:
        raise KeyError(f"no fuzz target {name!r} (known: {', '.join(NAMES)})")
    target: Target = importlib.import_module(f"{__name__}.{name}").TARGET
    return target
