"""Transports: the only code that knows a wire format. Each turns bytes into our immutable `Request` and a
`Decision` back into bytes, and sees the pipeline only as a `Checker`. No transport imports another; the gRPC
engines share the ext_authz adapter (`ext_authz.py`) and the status leaf (`status.py`), the asyncio listeners
`listener.py`.

`TRANSPORTS` is the table the server starts them from: `listen.grpc` is served by the entry `server.grpc_engine`
names, `listen.http` by `http`. Entries are import strings, resolved once when a transport starts (`load`), so
importing one transport never imports the others.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Awaitable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Protocol, cast

if TYPE_CHECKING:
    from ..request import Decision, Request
    from ..settings import Config


class Checker(Protocol):
    """What a transport needs from the pipeline (`sidecar.pipeline.Pipeline` satisfies it)."""

    async def check(self, request: Request) -> Decision:
        """Decide one request; expected never to raise (transports still turn a raise into a deny)."""
        ...


class Transport(Protocol):
    """A running transport, as the server sees it."""

    @property
    def port(self) -> int:
        """The bound port (useful with port 0; 0 on a Unix domain socket)."""
        ...

    async def set_serving(self, serving: bool) -> None:
        """What its health service answers from now on (a transport without one ignores it)."""
        ...

    async def enter_graceful_shutdown(self) -> None:
        """Answer NOT_SERVING from now on, whatever `set_serving` says later: the drain has begun."""
        ...

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let calls in flight finish for up to `grace` seconds, then close everything."""
        ...


class Start(Protocol):
    """How a transport starts: listen on `address` (HOST:PORT or unix:/path, validated) in front of `checker`,
    configured by `config`. Raises `OSError` when the address cannot be bound. `sock`: a listening socket the
    server bound for `address` (`listener.bind_listener`, or the supervisor's shared one) to serve instead;
    a transport that cannot serve a given socket (grpcio) is only ever started without one."""

    def __call__(
        self,
        address: str,
        checker: Checker,
        config: Config,
        *,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
    ) -> Awaitable[Transport]: ...


TRANSPORTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "lean": "sidecar.transports.grpc_lean.server:start",
        "grpcio": "sidecar.transports.grpcio:start",
        "http": "sidecar.transports.http.server:start",
    }
)
"""Name -> the `Start` of that transport: `lean` and `grpcio` (the values of `server.grpc_engine`) serve
`listen.grpc`, `http` serves `listen.http`."""


def load(name: str) -> Start:
    """The `Start` of the transport `TRANSPORTS` names `name`."""
    module, _, attribute = TRANSPORTS[name].partition(":")
    return cast(Start, getattr(importlib.import_module(module), attribute))
