"""What the two asyncio listeners (`http/`, `grpc_lean/`) share once they are running: the server, the
open connections, and closing them. Each listener adds its own `shutdown(grace)`, since what "drained" means
differs (HTTP/1.1: no request in progress; HTTP/2: the GOAWAY exchange finished). Also `split_hostport`, for
the addresses of the config (`listen.*`)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class HasConnections(Protocol):
    """The state a listener's connections share: at least the set of open ones."""

    @property
    def connections(self) -> set[Any]: ...


class RunningListener:
    """An `asyncio.Server` whose protocols register themselves in `shared.connections`."""

    def __init__(self, server: asyncio.Server, shared: HasConnections) -> None:
        self.server = server
        self._shared = shared

    @property
    def sockets(self) -> tuple[Any, ...]:
        """The listening sockets."""
        return tuple(self.server.sockets)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """How many connections are open."""
        return len(self._shared.connections)

    def is_serving(self) -> bool:
        """True while accepting connections."""
        return self.server.is_serving()

    def close(self) -> None:
        """Stop accepting and close every connection now (calls in flight are abandoned)."""
        self.server.close()
        for conn in list(self._shared.connections):
            conn.close()

    async def wait_closed(self) -> None:
        """Wait until the listener is closed."""
        await self.server.wait_closed()


def split_hostport(value: str) -> tuple[str, int]:
    """`127.0.0.1:9191` / `[::1]:9191` -> host and port."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)
