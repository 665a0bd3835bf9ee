"""The grpc.aio engine (`server.grpc_engine: grpcio`): `Authorization/Check` through grpc.aio, with the standard
health service (Check and Watch) and server reflection.

It spends more CPU per Check than the lean engine (`grpc_lean/`, the default; docs/performance.md) and is kept
for what only it serves: `Health/Watch` and reflection.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from .ext_authz import SERVICE_NAME, AuthorizationService
from .listener import is_unix, remove_stale_socket, unix_path

if TYPE_CHECKING:
    from ..settings import Config
    from . import Checker

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class GrpcioTransport:
    """A running grpc.aio server and its health servicer (both "" and the Authorization service report)."""

    def __init__(self, server: grpc.aio.Server, port: int, health: HealthServicer) -> None:
        self.server = server
        self.port = port
        self.health = health

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING (to Check and to every Watch)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING from now on; the servicer ignores later `set`s."""
        await self.health.enter_graceful_shutdown()

    async def shutdown(self, grace: float) -> None:
        """grpc.aio's own graceful stop: no new calls, calls in flight get `grace` seconds."""
        await self.server.stop(grace)


async def start(
    address: str, checker: Checker, config: Config, *, reuse_port: bool = False, sock: socket.socket | None = None
) -> GrpcioTransport:
    """Serve Check, health and reflection on `address` (`unix:/path` too: gRPC's own syntax); raises `OSError`
    when it cannot be bound. Health reports NOT_SERVING until `set_serving(True)`.

    grpc.aio binds its own sockets: it cannot serve a socket bound elsewhere (`sock`, the supervisor's shared
    Unix socket), so `check_workers` refuses that setup. A Unix path's stale file is removed as the other
    listeners do (gRPC would unlink whatever is there, a live socket included); its mode is set once bound."""
    if sock is not None:
        raise OSError("the grpcio engine binds its own sockets; it cannot serve one bound by the supervisor")
    if is_unix(address):
        remove_stale_socket(unix_path(address))
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    service = AuthorizationService(checker.check)
    server.add_generic_rpc_handlers((service.handler(),))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"address in use or unavailable ({exc})") from None
    if port == 0:
        raise OSError("address in use or unavailable")
    await server.start()
    if is_unix(address):
        os.chmod(unix_path(address), config.listen.socket_mode)
        port = 0
    transport = GrpcioTransport(server, port, health)
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    return transport
