"""The running lean gRPC listener (`start_lean_grpc`, `LeanGrpcServer`) and its limits from the config."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..listener import RunningListener
from .protocol import Handler, LeanGrpcProtocol, LeanSettings, _Shared

if TYPE_CHECKING:
    from ...settings import ServerSettings


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
) -> LeanGrpcServer:
    """Listen on `host:port` serving `handlers` ({"/package.Service/Method": handler}). Port 0 picks one."""
    shared = _Shared(handlers, settings or LeanSettings())
    server = await asyncio.get_running_loop().create_server(
        lambda: LeanGrpcProtocol(shared), host, port, reuse_port=reuse_port or None, backlog=backlog
    )
    return LeanGrpcServer(server, shared)
