"""The running lean gRPC listener (`start_lean_grpc`, `LeanGrpcServer`), its limits from the config, and the
lean engine as the server starts it (`start`: ext_authz Check and `grpc.health.v1.Health/Check`)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

from grpc_health.v1 import health_pb2

from ..ext_authz import SERVICE_NAME, AuthorizationService
from ..listener import RunningListener, bind_listener, create_server
from ..status import GRPC_INTERNAL, GRPC_NOT_FOUND, GrpcError
from .protocol import Handler, LeanGrpcProtocol, LeanSettings, _Shared

if TYPE_CHECKING:
    from ...settings import Config, ServerSettings
    from .. import Checker

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def settings_from_server(server: ServerSettings) -> LeanSettings:
    """`LeanSettings` from the validated `server:` config section (its `grpc_*` knobs)."""
    return LeanSettings(
        max_connections=server.grpc_max_connections,
        max_parked_bytes=server.grpc_max_parked_bytes,
        max_buffered_bytes=server.grpc_max_connection_parked_bytes,
        stream_window=server.grpc_stream_window,
        connection_window=server.grpc_connection_window,
        preface_timeout=server.grpc_preface_timeout,
        idle_timeout=server.grpc_idle_timeout,
        request_timeout=server.grpc_request_timeout,
    )


class LeanGrpcServer(RunningListener):
    """A running lean gRPC listener."""

    _shared: _Shared

    @property
    def parked_bytes(self) -> int:
        """Request bytes parked right now by all connections (calls whose request is still arriving)."""
        return self._shared.parked

    @property
    def refused_connections(self) -> int:
        """Connections refused at the connection limit since the listener started."""
        return self._shared.refused_connections

    @property
    def refused_calls(self) -> int:
        """Calls failed because a parked-bytes budget was full, since the listener started."""
        return self._shared.refused_calls

    @property
    def timed_out_calls(self) -> int:
        """Calls reset by the request timeout since the listener started."""
        return self._shared.timed_out_calls

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, drain every connection (`LeanGrpcProtocol.goaway`), let open calls finish for up to
        `grace` seconds, then close everything. Envoy takes a GOAWAY as "open a new connection", which fails once
        we stopped listening: it then applies its ext_authz failure mode."""
        self.server.close()
        self._shared.draining = True
        for conn in list(self._shared.connections):
            conn.goaway()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            if all(conn.drained for conn in self._shared.connections) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)  # polling a handful of connections during shutdown only
        for conn in list(self._shared.connections):
            conn.close(abort=conn.in_flight > 0)  # past the grace period: abandoned, not waited for
        await self.server.wait_closed()


async def start_lean_grpc(
    host: str,
    port: int,
    handlers: Mapping[str, Handler],
    settings: LeanSettings | None = None,
    *,
    reuse_port: bool = False,
    backlog: int = 1024,
    sock: socket.socket | None = None,
) -> LeanGrpcServer:
    """Listen on `host:port` (or serve the listening `sock`) with `handlers` ({"/package.Service/Method": handler}).
    Port 0 picks one."""
    shared = _Shared(handlers, settings or LeanSettings())
    server = await create_server(
        lambda: LeanGrpcProtocol(shared), host, port, reuse_port=reuse_port, backlog=backlog, sock=sock
    )
    return LeanGrpcServer(server, shared)


class _Health:
    """`grpc.health.v1.Health/Check` on the lean listener, answering what grpc.aio's HealthServicer would."""

    __slots__ = ("draining", "serving")

    def __init__(self) -> None:
        self.serving = False
        self.draining = False

    async def check(self, data: bytes) -> bytes:
        try:
            service = health_pb2.HealthCheckRequest.FromString(data).service
        except Exception:
            raise GrpcError(GRPC_INTERNAL, "the request is not a HealthCheckRequest") from None
        if service not in ("", SERVICE_NAME):
            raise GrpcError(GRPC_NOT_FOUND, f"unknown service {service!r}")
        serving = self.serving and not self.draining
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        wire: bytes = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        return wire


class LeanTransport:
    """The lean engine serving ext_authz: its listener and what its Health/Check answers."""

    def __init__(self, listener: LeanGrpcServer, health: _Health) -> None:
        self.listener = listener
        self._health = health

    @property
    def port(self) -> int:
        """The bound port."""
        return self.listener.port

    async def set_serving(self, serving: bool) -> None:
        """What Health/Check answers from now on."""
        self._health.serving = serving

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING from now on, whatever `set_serving` says later."""
        self._health.draining = True

    async def shutdown(self, grace: float) -> None:
        """Drain (`LeanGrpcServer.shutdown`)."""
        await self.listener.shutdown(grace)


async def start(
    address: str, checker: Checker, config: Config, *, reuse_port: bool = False, sock: socket.socket | None = None
) -> LeanTransport:
    """Serve ext_authz Check over `checker` and Health/Check on `address` (or the listening `sock` the server bound
    for it), with the `server.grpc_*` limits; raises `OSError` when it cannot be bound. Health answers
    NOT_SERVING until `set_serving(True)`."""
    if sock is None:
        sock = bind_listener(address, reuse_port=reuse_port, mode=config.listen.socket_mode).sock
    service = AuthorizationService(checker.check)
    health = _Health()
    handlers: dict[str, Handler] = {
        f"/{SERVICE_NAME}/Check": service.check_wire,
        f"/{HEALTH_SERVICE}/Check": health.check,
    }
    listener = await start_lean_grpc("", 0, handlers, settings_from_server(config.server), sock=sock)
    return LeanTransport(listener, health)
