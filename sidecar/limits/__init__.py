"""Gates: per-request admission that runs whether or not the decision is cached (the `limits/` family).

Two phases, fixed by the pipeline (`pipeline.py`):

- **admit** gates run before authentication (WAF-style rate-based rules): a flood of bad credentials is refused
  before any signature is checked, and costs what the gate costs.
- **meter** gates run after an allow, cached or computed (usage plans: throttle, quota). A denied request never
  reaches them, so it consumes nothing; a meter gate can only turn an allow into a deny.

A gate answers `None` to let the request through or a deny `Decision` (reason code, status, `Retry-After`) to
stop it; it never raises for a request it cannot judge (it decides, fail closed by default). Gates are compiled
once per config and attached to the routes they apply to (`CompiledRoute.admit_gates` / `meter_gates`), so a
route without gates pays one empty-tuple test. Gate types register like authorizer types (`register_gate`).
"""

from __future__ import annotations

from .base import AdmitGate, GateType, MeterGate, gate_types, register_gate

__all__ = ["AdmitGate", "GateType", "MeterGate", "gate_types", "register_gate"]
