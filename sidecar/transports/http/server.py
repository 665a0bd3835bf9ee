"""The running HTTP listener: `start_http_server` and `HttpAuthzServer`."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from ...settings import HttpModeSettings
from ..listener import RunningListener, bind_listener, create_server
from .protocol import HttpAuthzProtocol, _Shared

if TYPE_CHECKING:
    from ...settings import Config
    from .. import Checker


class HttpAuthzServer(RunningListener):
    """A running HTTP listener. Same surface as `asyncio.Server` plus `shutdown(grace)` for SIGTERM."""

    _shared: _Shared

    async def set_serving(self, serving: bool) -> None:
        """No health service here: probes ask the admin listener's /readyz."""

    async def enter_graceful_shutdown(self) -> None:
        """No health service here (see `set_serving`)."""

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; let in-flight checks answer for up to `grace` seconds; then close everything."""
        self.server.close()
        deadline = asyncio.get_running_loop().time() + grace
        while True:
            busy = [c for c in self._shared.connections if not c.is_idle]
            for conn in list(self._shared.connections):
                if conn.is_idle:
                    conn.close()
            if not busy or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.01)  # polling a handful of connections during shutdown only
        self.close()
        await self.server.wait_closed()


async def start_http_server(
    host: str,
    port: int,
    pipeline: Checker,
    settings: HttpModeSettings | None = None,
    *,
    reuse_port: bool = False,
    backlog: int = 1024,
    sock: socket.socket | None = None,
) -> HttpAuthzServer:
    """Listen on `host:port` (or serve the listening `sock`) and answer authorization requests with `pipeline`.
    Port 0 picks a free port."""
    shared = _Shared(pipeline, settings if settings is not None else HttpModeSettings())
    server = await create_server(
        lambda: HttpAuthzProtocol(shared), host, port, reuse_port=reuse_port, backlog=backlog, sock=sock
    )
    return HttpAuthzServer(server, shared)


async def start(
    address: str, checker: Checker, config: Config, *, reuse_port: bool = False, sock: socket.socket | None = None
) -> HttpAuthzServer:
    """Serve `listen.http` (or the listening `sock` the server bound for it) over `checker` with the `http:`
    settings; raises `OSError` when it cannot be bound."""
    if sock is None:
        sock = bind_listener(address, reuse_port=reuse_port, mode=config.listen.socket_mode).sock
    return await start_http_server("", 0, checker, config.http, sock=sock)
