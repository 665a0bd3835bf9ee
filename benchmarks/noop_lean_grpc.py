"""The lean gRPC floor: `sidecar.transports.grpc_lean` on uvloop answering OK to every Check and doing nothing else.

What the sidecar's own gRPC transport (`server.grpc_engine: lean`) costs before it decides anything: HTTP/2
framing, HPACK, one pre-serialized `CheckResponse`. The request message is not even parsed. Measured beside the
grpc.aio floor, it shows how much of the framework cost the lean listener removes, and the sidecar's rows over
it show how much of what remains is ours.

It answers `grpc.health.v1.Health/Check` with SERVING too: the shipped bootstrap health-checks its endpoints.

Run: `python -m benchmarks.noop_lean_grpc --port 9191 [--reuse-port]`; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import uvloop
from grpc_health.v1 import health_pb2

from sidecar.transports.grpc_lean import start_lean_grpc

from .noop_grpc_authz import CHECK_METHOD, OK_RESPONSE, SERVICE


async def _check(request: bytes) -> bytes:
    return OK_RESPONSE


SERVING: bytes = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()


async def _health(request: bytes) -> bytes:
    return SERVING


async def serve(host: str, port: int, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT."""
    handlers = {f"/{SERVICE}/{CHECK_METHOD}": _check, "/grpc.health.v1.Health/Check": _health}
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
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.reuse_port))


if __name__ == "__main__":
    main()
