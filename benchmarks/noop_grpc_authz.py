"""The gRPC floor: a grpc.aio ext_authz server on uvloop that answers OK to every Check and does nothing else.

It is what any Python grpc.aio ext_authz server costs before it decides anything: HTTP/2 framing, the grpc.aio
call machinery and one event-loop round per call. The request bytes are not even parsed and the response is one
pre-serialized `CheckResponse`, so every microsecond the real sidecar spends above this floor is ours.

With `--spin-us N` it also busy-waits N microseconds of pure Python per Check: a calibration floor that shows
what N microseconds of in-process work cost once they run inside grpc.aio under load.

It serves `grpc.health.v1.Health` (SERVING) too: the shipped bootstrap health-checks its authz endpoints.

Run: `python -m benchmarks.noop_grpc_authz --port 9191 [--reuse-port] [--spin-us N]`; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine, Sequence
from time import perf_counter
from typing import Any

import grpc
import uvloop
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

OK_RESPONSE: bytes = CheckResponse(status={"code": 0}).SerializeToString()
CHECK_METHOD = "Check"
SERVICE = "envoy.service.auth.v3.Authorization"


async def _check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return OK_RESPONSE


def _spinning(spin_us: float) -> Callable[[bytes, grpc.aio.ServicerContext], Coroutine[Any, Any, bytes]]:
    """A Check that burns `spin_us` microseconds of CPU in Python before answering."""
    spin = spin_us / 1e6

    async def check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        end = perf_counter() + spin
        while perf_counter() < end:
            pass
        return OK_RESPONSE

    return check


def _handler(spin_us: float = 0.0) -> grpc.GenericRpcHandler:
    method = grpc.unary_unary_rpc_method_handler(
        _spinning(spin_us) if spin_us > 0 else _check
    )  # no (de)serializers: raw bytes in and out
    return grpc.method_handlers_generic_handler(SERVICE, {CHECK_METHOD: method})


async def serve(host: str, port: int, reuse_port: bool = False, spin_us: float = 0.0) -> None:
    """Serve until SIGTERM/SIGINT."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    server.add_generic_rpc_handlers((_handler(spin_us),))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise SystemExit(f"cannot listen on {host}:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"noop grpc authz listening on {host}:{port}", flush=True)
    await stop.wait()
    await server.stop(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9191)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--spin-us", type=float, default=0.0, help="busy-wait this long per Check (calibration)")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.reuse_port, args.spin_us))


if __name__ == "__main__":
    main()
