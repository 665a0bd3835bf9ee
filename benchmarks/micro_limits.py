"""Micro-benchmark: the usage-plan rows' Check in process, through the real config loader, runtime and pipeline.

Run: `python -m benchmarks.micro_limits [--profile ROW]`. Prints the median microseconds per `Pipeline.check`,
wall and CPU (no transport, no Envoy) of the load benchmark's `jwt-warm`, `apikey-plan-local`, `redis-l2-hit` and
`apikey-plan-redis` requests on their own configs (`benchmarks/scenarios.py`; a `redis-server` on loopback for
the Redis rows), so what the API key and the meter add to the warm decision can be read without Envoy or the gRPC
listener around it. The rows take turns, a batch each per round, so a burst of other work on the machine weighs on
all of them alike; each is printed with its CPU's ratio to the row it is held against (the load benchmark's targets
compare sidecar CPU through Envoy, where the transport's fixed cost dilutes these ratios) and the cores' worth of
other work meanwhile (`redis-server` included). `--profile ROW` runs that row under cProfile and prints the top of
its profile. No assertions: figures go in notes and docs.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

from sidecar.config import parse_config
from sidecar.harness.envoy import free_port
from sidecar.pipeline import Pipeline
from sidecar.request import Request
from sidecar.runtime import RuntimeHolder, compile_runtime

from . import procs, scenarios
from .harness import redis_server
from .micro_lambda import median_us
from .scenarios import Fixtures, Scenario

ROWS = {
    "jwt-warm": scenarios.jwt_warm,
    "apikey-plan-local": scenarios.apikey_plan_local,
    "redis-l2-hit": scenarios.redis_l2_hit,
    "apikey-plan-redis": scenarios.apikey_plan_redis,
}
AGAINST = {"apikey-plan-local": "jwt-warm", "apikey-plan-redis": "redis-l2-hit"}
"""Each usage-plan row's reference row (`RELATIVE_CPU_TARGETS`' pairs)."""
ROUNDS = 15
BATCH = 500


def request_for(scenario: Scenario) -> Request:
    """The Request the transport would build from the scenario's CheckRequest (its headers and certificate)."""
    headers = {"host": "api.bench", "user-agent": "bench", **dict(scenario.headers())}
    return Request(
        method="GET",
        raw_path=scenario.path,
        path=scenario.path,
        headers=headers,
        host="api.bench",
        source_address="203.0.113.9",
        protocol="HTTP/1.1",
        request_id="00000000-0000-4000-8000-000000000001",
        peer_certificate=scenario.peer_certificate,
    )


async def pipeline_for(directory: Path, scenario: Scenario) -> Pipeline:
    """A started pipeline over the scenario's own sidecar config (the real loader and runtime)."""
    text = scenarios.sidecar_config([scenario])
    runtime = compile_runtime(parse_config(text, str(directory / "config.yaml")))
    await runtime.start()
    return Pipeline(RuntimeHolder(runtime))


async def _batch_us(pipe: Pipeline, request: Request) -> tuple[float, float]:
    """Microseconds per Check over one batch: wall time, and this process's CPU time (what the load benchmark's
    targets compare; a Redis row's wall time also holds Redis's own work and the round trip)."""
    wall, cpu = time.perf_counter_ns(), time.process_time_ns()
    for _ in range(BATCH):
        decision = await pipe.check(request)
    assert decision.allowed, decision
    return (time.perf_counter_ns() - wall) / BATCH / 1000, (time.process_time_ns() - cpu) / BATCH / 1000


async def _side_by_side(pipes: dict[str, tuple[Pipeline, Request]]) -> tuple[dict[str, tuple[float, float]], float]:
    """Each row's median (wall, CPU) over ROUNDS rounds (a warm-up round first), the rows taking turns; and the
    cores' worth of other work on the machine meanwhile."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pipes}
    busy, ours, wall = procs.machine_busy_seconds(), procs.own_and_children_seconds(), time.monotonic()
    for index in range(ROUNDS + 1):
        for name, (pipe, request) in pipes.items():
            measured = await _batch_us(pipe, request)
            if index:
                samples[name].append(measured)
    spent = procs.machine_busy_seconds() - busy - (procs.own_and_children_seconds() - ours)
    medians = {
        name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for name, values in samples.items()
    }
    return medians, max(0.0, spent) / (time.monotonic() - wall)


async def _run(fx: Fixtures, profile: str | None) -> None:
    names = [profile] if profile is not None else list(ROWS)
    pipes: dict[str, tuple[Pipeline, Request]] = {}
    try:
        for name in names:
            scenario = ROWS[name](fx)
            pipes[name] = (await pipeline_for(fx.directory, scenario), request_for(scenario))
        if profile is None:
            medians, others = await _side_by_side(pipes)
            width = max(len(name) for name in names)
            print(f"{'row':<{width}}  wall us/Check  CPU us/Check  CPU against")
            for name, (wall, cpu) in medians.items():
                against = AGAINST.get(name)
                ratio = f"{cpu / medians[against][1]:.2f}x {against}" if against in medians else ""
                print(f"{name:<{width}}  {wall:13.2f}  {cpu:12.2f}  {ratio}")
            print(f"other work meanwhile: {others:.2f} cores (redis-server's included)")
            return
        pipe, request = pipes[profile]
        await median_us(pipe, request)
        profiler = cProfile.Profile()
        profiler.enable()
        await median_us(pipe, request)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        for pipe, _ in pipes.values():
            await pipe.holder.current.stop()


def main(profile: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="authz-micro-limits-") as tmp, contextlib.ExitStack() as stack:
        fx = Fixtures(Path(tmp), "api.bench", 0, redis_port=free_port())
        if profile is None or ROWS[profile](fx).redis:
            stack.enter_context(redis_server(fx.redis_port, Path(tmp)))
        import uvloop

        uvloop.run(_run(fx, profile))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_limits")
    parser.add_argument("--profile", choices=sorted(ROWS), help="run this row under cProfile")
    main(parser.parse_args().profile)
