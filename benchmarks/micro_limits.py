"""Micro-benchmark: the usage-plan rows' Check in process, through the real config loader, runtime and pipeline.

Run: `python -m benchmarks.micro_limits [--profile ROW]`. Prints the median microseconds per `Pipeline.check`
(no transport, no Envoy) of the load benchmark's `jwt-warm`, `apikey-plan-local` and `apikey-plan-redis`
requests on their own configs (`benchmarks/scenarios.py`; a `redis-server` on loopback for the Redis row), so
what the API key and the meter add to the warm decision can be read without Envoy or the gRPC listener around
it. `--profile ROW` runs that row under cProfile and prints the top of its profile. No assertions: figures go in
notes and docs.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import tempfile
from pathlib import Path

from sidecar.config import parse_config
from sidecar.harness.envoy import free_port
from sidecar.pipeline import Pipeline
from sidecar.request import Request
from sidecar.runtime import RuntimeHolder, compile_runtime

from . import scenarios
from .harness import redis_server
from .micro_lambda import median_us
from .scenarios import Fixtures, Scenario

ROWS = {
    "jwt-warm": scenarios.jwt_warm,
    "apikey-plan-local": scenarios.apikey_plan_local,
    "apikey-plan-redis": scenarios.apikey_plan_redis,
}


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


async def _run(fx: Fixtures, profile: str | None) -> None:
    names = [profile] if profile is not None else list(ROWS)
    width = max(len(name) for name in names)
    if profile is None:
        print(f"{'row':<{width}}  median us per Check")
    for name in names:
        scenario = ROWS[name](fx)
        pipe = await pipeline_for(fx.directory, scenario)
        request = request_for(scenario)
        try:
            if profile is None:
                print(f"{name:<{width}}  {await median_us(pipe, request):8.2f}", flush=True)
                continue
            await median_us(pipe, request)
            profiler = cProfile.Profile()
            profiler.enable()
            await median_us(pipe, request)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        finally:
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
