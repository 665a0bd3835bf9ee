"""What the two asyncio listeners (`http/`, `grpc_lean/`) share once they are running: the server, the
open connections, and closing them. Each listener adds its own `shutdown(grace)`, since what "drained" means
differs (HTTP/1.1: no request in progress; HTTP/2: the GOAWAY exchange finished). Also the addresses of the
config (`listen.*`: `HOST:PORT` or `unix:/path`) and the listening sockets the server binds for them
(`bind_listener`), Unix domain sockets' stale files included."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

UNIX_PREFIX = "unix:"
WORKER_FIELD = "{worker}"
"""In a per-worker Unix socket path (`listen.grpc_per_worker`): the worker's index (0 for a single process)."""


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
        """The bound port (useful with port 0; 0 on a Unix domain socket)."""
        return socket_port(self.server.sockets[0])

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


async def create_server(
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    backlog: int = 1024,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """An asyncio server of `factory`'s protocols on the listening `sock`, or bound to `host:port` here."""
    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(factory, sock=sock, backlog=backlog)
    return await loop.create_server(factory, host, port, reuse_port=reuse_port or None, backlog=backlog)


def socket_port(sock: Any) -> int:
    """The TCP port `sock` is bound to; 0 for a Unix domain socket (its name is a path)."""
    name = sock.getsockname()
    return int(name[1]) if isinstance(name, tuple) else 0


def is_unix(address: str) -> bool:
    """Whether a `listen.*` address names a Unix domain socket (`unix:/path`)."""
    return address.startswith(UNIX_PREFIX)


def unix_path(address: str) -> str:
    """The path of a `unix:/path` address."""
    return address[len(UNIX_PREFIX) :]


def worker_address(address: str, worker: int) -> str:
    """Worker `worker`'s own address under `listen.grpc_per_worker`: TCP `HOST:PORT` -> `HOST:PORT+worker`; a Unix
    path has its `{worker}` replaced. Worker 0 (a single process too) keeps a TCP address unchanged."""
    if is_unix(address):
        return address.replace(WORKER_FIELD, str(worker))
    host, port = split_hostport(address)
    return f"[{host}]:{port + worker}" if ":" in host else f"{host}:{port + worker}"


@dataclass(frozen=True, slots=True)
class SocketFile:
    """A Unix socket file a process made (`path` None: a TCP socket, no file), with the inode and change time it
    had: removed at shutdown only if it is still that file (one another process has since put there, even on a
    reused inode number, is left alone)."""

    path: str | None = None
    identity: tuple[int, int, int] = (0, 0, 0)

    def remove(self) -> None:
        """Delete the socket file, unless it was replaced."""
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            if _identity(os.lstat(self.path)) == self.identity:
                os.unlink(self.path)


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_dev, info.st_ino, info.st_ctime_ns)


def socket_file(path: str) -> SocketFile:
    """The socket file at `path` as it is now."""
    return SocketFile(path, _identity(os.lstat(path)))


@dataclass(frozen=True, slots=True)
class BoundSocket:
    """A listening socket the server bound, and its file if it is a Unix one."""

    sock: socket.socket
    file: SocketFile = SocketFile()


class SocketInUse(OSError):
    """A Unix socket path is taken: something listens there, or it is not a socket."""


def bind_listener(address: str, *, reuse_port: bool = False, mode: int = 0o660, backlog: int = 1024) -> BoundSocket:
    """A listening, non-blocking socket on `address` (raises `OSError`).

    TCP: SO_REUSEADDR, and SO_REUSEPORT when `reuse_port` (each `serve --workers` worker binds the port; the
    kernel spreads connections). Unix: a stale file (a socket nobody accepts on, left by a crash) is removed
    first; a live socket or a file that is not a socket is an error, never deleted. The socket gets `mode`
    (`listen.socket_mode`) before it listens, so no peer connects under the umask's mode in between."""
    if is_unix(address):
        return _bind_unix(unix_path(address), mode, backlog)
    host, port = split_hostport(address)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(info[4])
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return BoundSocket(sock)


def _bind_unix(path: str, mode: int, backlog: int) -> BoundSocket:
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        file = socket_file(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # bound, then failed: the file is ours
        raise
    return BoundSocket(sock, file)


def remove_stale_socket(path: str) -> None:
    """Remove `path` if it is a Unix socket nobody listens on; raise `SocketInUse` if it is a live one or not a
    socket at all (a regular file named by mistake is never deleted). Nothing there: nothing to do."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketInUse(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # a socket file left by a process that is gone
        return
    except OSError as exc:
        raise SocketInUse(exc.errno or errno.EADDRINUSE, f"{path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise SocketInUse(errno.EADDRINUSE, f"{path} is in use (something accepts connections on it)")
