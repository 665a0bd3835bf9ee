"""Over-admission with two sidecars sharing one Redis: offered twice a usage plan's throttle, how many requests
did they admit together against what one exact token bucket allows (`burst + rate * elapsed`)?

Two `authz-sidecar serve` processes count one API key's throttle in one `redis-server` (all started here, on
loopback). An open-loop client sends Checks straight at their gRPC ports, alternating between them, at twice the
throttle's rate for `seconds` (request i is due at start + i / (2 * rate), whatever the answers; a smooth
schedule, since a bursty one would leave the bucket full and idle between bursts and under-admit). Elapsed is
read as Redis `TIME` just before the first request and just after the last reply (the clock the Lua script
counts by), so the allowance is an upper bound on what an exact bucket could admit: a ratio above 1 is
over-admission. Each sidecar's own count of decisions taken without Redis (`authz_limit_fallbacks_total`) is
reported beside it: a fallback counts in that process alone and would over-admit.

`python -m benchmarks.limits_admission [--seconds 10] [--rate 200] [--burst 50]` prints one JSON object; the
harness runs the same (`Harness.admission`, with the profile's `admission_seconds`) and reports it in results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import redis
import yaml
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse

from sidecar.harness.envoy import free_port

from .harness import ADMISSION, CHECK_PATH, check_request, gate_tallies, redis_server, sidecar, tally_delta
from .scenarios import Fixtures, Scenario

RATE = 200.0
BURST = 100
"""Half a second of the rate: demand that reaches Redis with a gap (a stalled loop on a busy machine) loses no
tokens to the bucket's cap unless the gap is longer than that."""
PLAN = "admission"
BENCH_KEY = "bench-admission-key-0123456789abcdefgh"
WARM_KEY = "bench-admission-warm-0123456789abcdefg"
"""Sent before the measurement, so gRPC channels, Redis connections and the loaded script are ready, in a bucket
of its own."""
WARM_REQUESTS = 20
PATH = "/admission/item"


@dataclass(frozen=True, slots=True)
class Admission:
    """What the two sidecars admitted of one key's requests, against the exact allowance."""

    sidecars: int
    rate: float
    burst: int
    seconds: float
    """Redis time from just before the first request to just after the last reply."""
    offered_rate: float
    """Requests per second sent (twice `rate`), on a fixed schedule."""
    offered: int
    admitted: int
    throttled: int
    errors: int
    fallbacks: int
    """Usage-plan decisions the sidecars took without Redis during the measurement (0: all counted in Redis)."""
    counted: int
    """Requests the sidecars' own metrics say the plan admitted (`authz_gate_decisions_total`, outcome ok)."""

    @property
    def allowance(self) -> float:
        """What one exact GCRA bucket admits over `seconds` when asked more often: its burst, then `rate`/s."""
        return self.burst + self.rate * self.seconds

    @property
    def ratio(self) -> float:
        return self.admitted / self.allowance if self.allowance else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "allowance": round(self.allowance, 1), "ratio": round(self.ratio, 4)}


@dataclass
class Tally:
    """Answers of the Checks sent: OK, 429 (throttled), anything else."""

    admitted: int = 0
    throttled: int = 0
    errors: int = 0

    def add(self, response: CheckResponse | None) -> None:
        if response is None:
            self.errors += 1
        elif response.status.code == 0:
            self.admitted += 1
        elif response.denied_response.status.code == 429:
            self.throttled += 1
        else:
            self.errors += 1


def request_scenario(key: str) -> Scenario:
    """The Check every request sends (`harness.check_request` encodes it): the admission route with `key`."""
    return Scenario(ADMISSION, "two sidecars, one Redis", "sidecar", path=PATH, headers=lambda: (("x-api-key", key),))


def sidecar_config(fx: Fixtures, redis_port: int, rate: float, burst: int) -> str:
    """An anonymous route requiring an API key, under a plan with only a throttle, counted in the Redis at
    `redis_port`. The gates get 1 s per command (`limits.timeout_ms`, not the shipped 50 ms; the connection's
    own `timeout_ms` is the decision cache's): this measures the counting, and a slow command on a busy machine
    would be decided by the fallback, which is reported but not what is asked."""
    keys = fx.api_key_file(PLAN, {"bench": BENCH_KEY, "warm": WARM_KEY})
    config = {
        "listen": {"grpc": "127.0.0.1:9191", "admin": "127.0.0.1:9190"},
        "server": {"watch_config": False, "grace_period": 2},
        "decision_log": {"enabled": False},
        "redis": {"default": {"url": f"redis://127.0.0.1:{redis_port}/0", "timeout_ms": 1000}},
        "limits": {"timeout_ms": 1000},
        "api_keys": {"file": str(keys)},
        "usage_plans": {PLAN: {"throttle": {"rate": rate, "burst": burst}}},
        "authorizers": {"open": {"type": "none"}},
        "routes": [{"match": "ANY /admission/{proxy+}", "authorizer": "open", "api_key_required": True}],
    }
    return yaml.safe_dump(config, sort_keys=False)


Call = Callable[..., Any]


async def _one(call: Call, message: bytes, tally: Tally) -> None:
    try:
        tally.add(await call(message, timeout=5))
    except grpc.RpcError:
        tally.add(None)


async def offer(calls: Sequence[Call], message: bytes, rate: float, seconds: float) -> Tally:
    """Send `rate * seconds` Checks on a fixed schedule (open loop), alternating over `calls`; wait for every
    answer."""
    tally = Tally()
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    start = loop.time()  # the first request now: Redis time was read just before
    for i in range(int(rate * seconds)):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(_one(calls[i % len(calls)], message, tally))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    return tally


@dataclass(frozen=True, slots=True)
class Stack:
    """The running pieces: each sidecar's gRPC and admin ports, and Redis's clock."""

    grpc_ports: Sequence[int]
    admin_ports: Sequence[int]
    redis_time: Callable[[], float]


async def _drive(stack: Stack, rate: float, seconds: float) -> tuple[Tally, float, dict[str, float]]:
    """Warm every sidecar with the warm key, then offer `rate` for `seconds` with the measured key; returns the
    tally, the Redis time it took and what the sidecars' gate metrics grew by meanwhile (summed)."""
    host = "api.bench.local"
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in stack.grpc_ports]
    try:
        calls = [
            channel.unary_unary(CHECK_PATH, request_serializer=None, response_deserializer=CheckResponse.FromString)
            for channel in channels
        ]
        warm = check_request(request_scenario(WARM_KEY), host)
        warmed = Tally()
        for _ in range(WARM_REQUESTS):
            await asyncio.gather(*(_one(call, warm, warmed) for call in calls))
        if warmed.admitted != WARM_REQUESTS * len(calls):
            raise RuntimeError(f"warm-up Checks were not all admitted: {warmed}")
        before = [gate_tallies(port) for port in stack.admin_ports]
        began = stack.redis_time()
        tally = await offer(calls, check_request(request_scenario(BENCH_KEY), host), rate, seconds)
        elapsed = stack.redis_time() - began
        spent: dict[str, float] = {}
        for port, earlier in zip(stack.admin_ports, before, strict=True):
            for name, grew in tally_delta(earlier, gate_tallies(port)).items():
                spent[name] = spent.get(name, 0.0) + grew
        return tally, elapsed, spent
    finally:
        for channel in channels:
            await channel.close()


def measure(seconds: float, rate: float = RATE, burst: int = BURST, log: Callable[[str], None] = print) -> Admission:
    """Start Redis and two sidecars, offer 2 x `rate` for `seconds` through them, and stop everything."""
    with tempfile.TemporaryDirectory(prefix="authz-admission-") as tmp, contextlib.ExitStack() as started:
        fx = Fixtures(Path(tmp), "127.0.0.1:1", 0)
        redis_port = free_port()
        started.enter_context(redis_server(redis_port, Path(tmp)))
        client = started.enter_context(contextlib.closing(redis.Redis(host="127.0.0.1", port=redis_port)))

        def redis_time() -> float:
            whole, micros = client.time()
            return float(whole) + float(micros) / 1e6

        config, ports = sidecar_config(fx, redis_port, rate, burst), [free_port(), free_port()]
        admins = [started.enter_context(sidecar(config, port)).admin_port for port in ports]
        log(
            f"  admission: two sidecars, one Redis; offering {2 * rate:g} rps for {seconds:g} s to a throttle of"
            f" {rate:g}/s, burst {burst} ..."
        )
        tally, elapsed, spent = asyncio.run(_drive(Stack(ports, admins, redis_time), 2 * rate, seconds))
    return Admission(
        sidecars=len(ports),
        rate=rate,
        burst=burst,
        seconds=round(elapsed, 4),
        offered_rate=2 * rate,
        offered=tally.admitted + tally.throttled + tally.errors,
        admitted=tally.admitted,
        throttled=tally.throttled,
        errors=tally.errors,
        fallbacks=round(spent["fallbacks"]),
        counted=round(spent.get("ok", 0.0)),
    )


def describe(result: Admission) -> str:
    """One line for the log."""
    return (
        f"  admission: {result.offered} offered over {result.seconds:.3f} s of Redis time, admitted"
        f" {result.admitted} against an allowance of {result.allowance:.1f} ({result.ratio:.4f}x,"
        f" {result.ratio - 1:+.2%}); throttled {result.throttled}, errors {result.errors}, fallbacks {result.fallbacks}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.limits_admission", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=RATE, help="the throttle's rate (twice it is offered)")
    parser.add_argument("--burst", type=int, default=BURST)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = measure(args.seconds, args.rate, args.burst, log=lambda line: print(line, flush=True))
    print(describe(result), f"({time.monotonic() - started:.0f} s)", flush=True)
    print(json.dumps(result.as_dict()))


if __name__ == "__main__":
    main()
