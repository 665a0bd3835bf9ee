"""Micro-benchmark: mTLS Checks in process, through the real config loader, runtime and pipeline.

Run: `python -m benchmarks.micro_mtls [--profile ROW]`. Prints the median microseconds per `Pipeline.check` (no
transport, no Envoy) of:

- `mtls-warm`: the load benchmark's `mtls-warm` request (`benchmarks/scenarios.py`): one client certificate,
  presented again and again (parse memo, verify cache and Principal memo hits);
- `mtls-cold`: a new client certificate every Check, all made before the clock starts (the same config, CA and
  CRL: an RSA 2048 intermediate, so a cold Check verifies one RSA signature and looks the CRL up);
  `mtls-cold-ec`: the same under an EC P-256 CA (one ECDSA verification instead). Issue 22 reads the cold
  Check against the cold RS256 JWT one: h2load sends one body, so the load benchmark cannot present a new
  certificate each request;
- `jwt-warm-client-cert`: the warm JWT request on a route with `require_client_cert` (mTLS and JWT);
- `jwt-warm` and `jwt-cold-rs256` (a new token each Check, token and decision caches off) for reference.

Beside each figure: the cores' worth of CPU other processes used while it was measured (as the load benchmark's
`other work` column). `--profile ROW` runs that row under cProfile (after one unprofiled pass) and prints the top
of its profile. No assertions: figures go in notes and docs/performance.md.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sidecar.pipeline import Pipeline
from sidecar.request import Request

from . import procs, scenarios
from .certs import BenchPki
from .micro_limits import pipeline_for, request_for
from .scenarios import Fixtures, Scenario

WARM_BATCH = 5000
COLD_BATCH = 100
ROUNDS = 15
"""Timed batches per row (after one untimed batch); a cold row needs (ROUNDS + 1) x COLD_BATCH new credentials.
Each row runs for half a second or more, so its `other work` spans many of /proc/stat's 10 ms ticks."""
COLD_COUNT = (ROUNDS + 1) * COLD_BATCH

Batches = list[Sequence[Request]]
Row = tuple[Scenario, Callable[[], Batches]]
"""A row: the scenario whose config serves it, and what makes its batches of requests (called once per pass, so
a cold row gets new credentials each time)."""


def _warm(scenario: Scenario) -> Row:
    request = request_for(scenario)
    return scenario, lambda: [(request,) * WARM_BATCH] * (ROUNDS + 1)


def _batched(requests: list[Request]) -> Batches:
    return [requests[i : i + COLD_BATCH] for i in range(0, len(requests), COLD_BATCH)]


def _cold_mtls(pki: BenchPki, name: str) -> Row:
    scenario = scenarios.mtls_scenario(pki, name, f"mTLS, a new client certificate each Check ({name})")
    base = request_for(scenario)

    def batches() -> Batches:
        return _batched([base._replace(peer_certificate=cert) for cert in pki.leaves(COLD_COUNT, prefix=name)])

    return scenario, batches


def _cold_jwt(fx: Fixtures) -> Row:
    scenario = scenarios.jwt_cold_rs256(fx)
    base = request_for(scenario)
    passes = itertools.count()

    def batches() -> Batches:
        tokens = (fx.token("RS256", f"cold-{next(passes)}-{i}") for i in range(COLD_COUNT))
        return _batched([base._replace(headers={**base.headers, "authorization": f"Bearer {t}"}) for t in tokens])

    return scenario, batches


def rows(fx: Fixtures) -> dict[str, Row]:
    """Every row by name (the CAs and credentials of the cold rows are made when their batches are)."""
    return {
        "mtls-warm": _warm(scenarios.mtls_warm(fx)),
        "mtls-cold": _cold_mtls(fx.pki, "mtls-cold"),
        "mtls-cold-ec": _cold_mtls(BenchPki(fx.directory, "ec"), "mtls-cold-ec"),
        "jwt-warm-client-cert": _warm(scenarios.jwt_warm_client_cert(fx)),
        "jwt-warm": _warm(scenarios.jwt_warm(fx)),
        "jwt-cold-rs256": _cold_jwt(fx),
    }


async def median_us(pipe: Pipeline, batches: Batches) -> float:
    """Median microseconds per Check over the batches but the first (a warm-up); every Check must allow, so no
    figure is of refusals."""
    samples = []
    for i, batch in enumerate(batches):
        start = time.perf_counter_ns()
        refused = 0
        for request in batch:
            refused += not (await pipe.check(request)).allowed
        elapsed = (time.perf_counter_ns() - start) / len(batch) / 1000
        if refused:
            raise RuntimeError(f"{refused} of {len(batch)} Checks were refused")
        if i:
            samples.append(elapsed)
    return statistics.median(samples)


async def _quietly(pipe: Pipeline, batches: Batches) -> tuple[float, float]:
    """`median_us`, and the cores' worth of CPU other processes used meanwhile (`procs.machine_busy_seconds` less
    ours): this figure is one process's on a machine that may be shared, and is only as steady as that is quiet."""
    busy, ours, wall = procs.machine_busy_seconds(), procs.own_and_children_seconds(), time.monotonic()
    micros = await median_us(pipe, batches)
    elapsed = max(time.monotonic() - wall, 1e-3)
    spent = procs.machine_busy_seconds() - busy - (procs.own_and_children_seconds() - ours)
    return micros, max(0.0, spent) / elapsed


async def _measure(fx: Fixtures, name: str, row: Row, profile: bool) -> tuple[float, float]:
    scenario, batches = row
    pipe = await pipeline_for(fx.directory, scenario)
    try:
        if not profile:
            return await _quietly(pipe, batches())
        await median_us(pipe, batches())
        ready = batches()
        profiler = cProfile.Profile()
        profiler.enable()
        micros = await median_us(pipe, ready)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return micros, 0.0
    finally:
        await pipe.holder.current.stop()


async def _run(fx: Fixtures, profile: str | None) -> None:
    found = rows(fx)
    names = [profile] if profile is not None else list(found)
    width = max(len(name) for name in names)
    print(f"{'row':<{width}}  median us per Check  other work (cores)")
    for name in names:
        micros, others = await _measure(fx, name, found[name], profile is not None)
        print(f"{name:<{width}}  {micros:19.2f}  {others:18.2f}", flush=True)


def main(profile: str | None) -> None:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="authz-micro-mtls-") as tmp:
        uvloop.run(_run(Fixtures(Path(tmp), "api.bench", 0), profile))


ROW_NAMES = ("mtls-warm", "mtls-cold", "mtls-cold-ec", "jwt-warm-client-cert", "jwt-warm", "jwt-cold-rs256")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_mtls")
    parser.add_argument("--profile", choices=ROW_NAMES, help="run this row under cProfile")
    main(parser.parse_args().profile)
