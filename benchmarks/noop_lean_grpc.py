"""The lean gRPC floor: `sidecar.transports.grpc_lean` on uvloop answering OK to every Check and doing nothing else.

What the sidecar's own gRPC transport (`server.grpc_engine: lean`) costs before it decides anything: HTTP/2
framing, HPACK, one pre-serialized `CheckResponse`. The request message is not even parsed. Measured beside the
grpc.aio floor, it shows how much of the framework cost the lean listener removes, and the sidecar's rows over
it show how much of what remains is ours.

It answers `grpc.health.v1.Health/Check` with SERVING too: the shipped bootstrap health-checks its endpoints.

Run: `python -m benchmarks.noop_lean_grpc --port 9191 [--reuse-port] [--response FILE] [--spin-us N]
[--delay-us N]`; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import uvloop
from grpc_health.v1 import health_pb2

from sidecar.transports.grpc_lean import start_lean_grpc

from .noop_grpc_authz import CHECK_METHOD, OK_RESPONSE, SERVICE


def _answering(
    response: bytes, spin_us: float = 0.0, delay_us: float = 0.0
) -> Callable[[bytes], Coroutine[Any, Any, bytes]]:
    """The Check handler: `spin_us` of CPU burnt, then `delay_us` of waiting (a timer, no CPU) before answering:
    calibrations telling what the authz server's CPU and its latency each cost Envoy."""
    spin, delay = spin_us / 1e6, delay_us / 1e6

    async def check(request: bytes) -> bytes:
        if spin:
            end = time.perf_counter() + spin
            while time.perf_counter() < end:
                pass
        if delay:
            await asyncio.sleep(delay)
        return response

    return check


SERVING: bytes = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()


async def _health(request: bytes) -> bytes:
    return SERVING


async def serve(
    host: str,
    port: int,
    reuse_port: bool = False,
    response: bytes = OK_RESPONSE,
    spin_us: float = 0.0,
    delay_us: float = 0.0,
) -> None:
    """Serve until SIGTERM/SIGINT, answering every Check with `response` (a serialized CheckResponse)."""
    check = _answering(response, spin_us, delay_us)
    handlers = {f"/{SERVICE}/{CHECK_METHOD}": check, "/grpc.health.v1.Health/Check": _health}
    server = await start_lean_grpc(host, port, handlers, reuse_port=reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"noop lean grpc authz listening on {host}:{port}", flush=True)
    await stop.wait()
    await server.shutdown(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9191)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument(
        "--response", type=Path, help="a file of CheckResponse bytes to answer with (default: a bare OK)"
    )
    parser.add_argument("--spin-us", type=float, default=0.0, help="CPU to burn per Check before answering")
    parser.add_argument("--delay-us", type=float, default=0.0, help="time to wait per Check (no CPU) before answering")
    args = parser.parse_args(argv)
    response = args.response.read_bytes() if args.response else OK_RESPONSE
    uvloop.run(serve(args.host, args.port, args.reuse_port, response, args.spin_us, args.delay_us))


if __name__ == "__main__":
    main()
