"""The lean gRPC floor: `sidecar.transports.grpc_lean` on uvloop answering OK to every Check and doing nothing else.

What the sidecar's own gRPC transport (`server.grpc_engine: lean`) costs before it decides anything: HTTP/2
framing, HPACK, one pre-serialized `CheckResponse`. The request message is not even parsed. Measured beside the
grpc.aio floor, it shows how much of the framework cost the lean listener removes, and the sidecar's rows over
it show how much of what remains is ours.

It answers `grpc.health.v1.Health/Check` with SERVING too: the shipped bootstrap health-checks its endpoints.

Run: `python -m benchmarks.noop_lean_grpc --port 9191 [--reuse-port] [--response FILE]`; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import uvloop
from grpc_health.v1 import health_pb2

from sidecar.transports.grpc_lean import start_lean_grpc

from .noop_grpc_authz import CHECK_METHOD, OK_RESPONSE, SERVICE


def _answering(response: bytes) -> Callable[[bytes], Coroutine[Any, Any, bytes]]:
    async def check(request: bytes) -> bytes:
        return response

    return check


SERVING: bytes = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()


async def _health(request: bytes) -> bytes:
    return SERVING


async def serve(host: str, port: int, reuse_port: bool = False, response: bytes = OK_RESPONSE) -> None:
    """Serve until SIGTERM/SIGINT, answering every Check with `response` (a serialized CheckResponse)."""
    handlers = {f"/{SERVICE}/{CHECK_METHOD}": _answering(response), "/grpc.health.v1.Health/Check": _health}
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
    args = parser.parse_args(argv)
    response = args.response.read_bytes() if args.response else OK_RESPONSE
    uvloop.run(serve(args.host, args.port, args.reuse_port, response))


if __name__ == "__main__":
    main()
