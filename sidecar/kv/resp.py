"""A lean Redis client for the hot path: GET, MGET and Lua scripts (EVALSHA) over one pipelined connection.

Why by hand: redis-py's asyncio client costs several times this reader's CPU per GET (pool checkout, stream
reader, a timeout per call; measured side by side in docs/performance.md, `python -m benchmarks.micro_redis`),
and a Redis lookup sits on every cache-missing Check, a usage plan's script on every metered one. Here a command
is one `transport.write`, and its reply is parsed in `data_received`: Redis answers in order, so one connection
carries any number of commands at once, each bounded by its own deadline on the connection's one timer (no
`asyncio.timeout`, so no Task, per call).

Scope: the decision cache's reads and the gates' scripts (`evalsha`), on plain `redis://host:port/db` URLs with
an optional user and password (RESP2: no HELLO is sent). TLS (`rediss://`), unix sockets, URL options, Cluster
and Sentinel, and the cache's writes stay on redis-py (`kv.redis_client` decides). A connection on which a
command times out takes no more commands, and one that breaks or returns something unparsable is dropped; the
next command opens a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

_INCOMPLETE: Any = object()
_MAX_REPLY = 64 * 1024 * 1024
_MAX_DEPTH = 8
"""Arrays nest at most this deep (our replies nest two levels at most): a hostile server's `*1\r\n*1\r\n...` would
otherwise recurse once per level until Python's RecursionError escaped `data_received`."""


class RespError(Exception):
    """An error reply from Redis (`-ERR ...`)."""


class SetupRefused(RespError, ConnectionError):
    """Redis refused a new connection's AUTH or SELECT: an error reply, but to no caller's command."""


class ProtocolError(ConnectionError):
    """Bytes that are not RESP2: the connection is dropped."""


def encode_command(args: tuple[bytes, ...]) -> bytes:
    """A command as a RESP array of bulk strings."""
    return b"*%d\r\n%b" % (len(args), b"".join(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args))


def parse_reply(buffer: bytes | bytearray, pos: int = 0, depth: int = 0) -> tuple[Any, int]:
    """One RESP2 reply starting at `pos`: (value, position after it), or (`_INCOMPLETE`, pos) when more bytes are
    needed. Bulk strings are bytes, nulls None, integers int, simple strings bytes, errors `RespError`; arrays
    nested deeper than `_MAX_DEPTH` are a `ProtocolError`."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        if len(buffer) - pos > 65536:
            raise ProtocolError("a RESP line longer than 64 KiB")
        return _INCOMPLETE, pos
    kind = buffer[pos]
    line = bytes(buffer[pos + 1 : end])
    after = end + 2
    if kind == 0x24:  # $ bulk string
        size = _integer(line)
        if size == -1:
            return None, after
        if not 0 <= size <= _MAX_REPLY:
            raise ProtocolError("a bulk string of impossible size")
        if len(buffer) < after + size + 2:
            return _INCOMPLETE, pos
        if buffer[after + size : after + size + 2] != b"\r\n":
            raise ProtocolError("a bulk string without its CRLF")
        return bytes(buffer[after : after + size]), after + size + 2
    if kind == 0x2A:  # * array
        count = _integer(line)
        if count == -1:
            return None, after
        if not 0 <= count <= 1_000_000:
            raise ProtocolError("an array of impossible size")
        if depth >= _MAX_DEPTH:
            raise ProtocolError("arrays nested too deep")
        items = []
        for _ in range(count):
            item, after = parse_reply(buffer, after, depth + 1)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, after
    if kind == 0x2B:  # + simple string
        return line, after
    if kind == 0x2D:  # - error
        return RespError(line.decode("utf-8", "replace")), after
    if kind == 0x3A:  # : integer
        return _integer(line), after
    raise ProtocolError(f"unexpected RESP type byte {kind!r}")


def _argument(value: str | int) -> bytes:
    return b"%d" % value if isinstance(value, int) else value.encode("utf-8", "surrogatepass")


def is_script_error(message: str) -> bool:
    """Whether an error reply to EVAL/EVALSHA is the script's own failure (a bug, arguments it cannot take:
    `ERR user_script:1: ...`, `ERR value is not an integer ...` from a `redis.call`) rather than Redis unable to
    serve (`BUSY`, `NOSCRIPT`, `READONLY`, `OOM`, `LOADING`, `MISCONF`, `CLUSTERDOWN`, `MOVED`, ...): after an
    `ERR` prefix, no upper-case error code leads the message. redis-py's own classification says the same."""
    body = message[4:] if message.startswith("ERR ") else message
    head = body.split(" ", 1)[0]
    return not (head.isalpha() and head.isupper())


def _integer(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError("a RESP length or integer that is not a number") from None


class _Connection(asyncio.Protocol):
    """One connection: commands written in order, replies matched to waiters in order.

    Each command has its own deadline, `timeout` after it was sent, kept by a single timer armed while commands
    wait, instead of an `asyncio.timeout` around each command (a timer created and cancelled per lookup). A
    command past its deadline fails alone (its reply, if it ever comes, is read and dropped, so the ones after it
    stay in step), and the connection is then `stalled`: it takes no new commands (the client opens a fresh
    connection for them), its other commands keep their own deadlines, and it closes once none is waited for.
    So a stall fails only what waited through it, as with a connection per command.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.deadlines: deque[float] = deque()
        self.buffer = bytearray()
        self.lost = False
        self.stalled = False
        """A command timed out on it: new commands go to another connection."""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        pos = 0
        try:
            while self.waiters and pos < len(self.buffer):
                value, end = parse_reply(self.buffer, pos)
                if value is _INCOMPLETE:
                    break
                pos = end
                waiter = self.waiters.popleft()
                self.deadlines.popleft()
                if not waiter.done():
                    if isinstance(value, RespError):
                        waiter.set_exception(value)
                    else:
                        waiter.set_result(value)
        except ProtocolError as exc:
            self._fail(exc)
            return
        del self.buffer[:pos]
        if self.buffer and not self.waiters:
            self._fail(ProtocolError("a reply nobody asked for"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = exc if isinstance(exc, TimeoutError) else ConnectionError("redis connection lost")
        self.deadlines.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails every waiter
        self.connection_lost(exc)

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        if self.lost or self.transport is None:
            raise ConnectionError("redis connection lost")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self.waiters.append(waiter)
        self.deadlines.append(loop.time() + self.timeout)
        if self._timer is None:
            self._timer = loop.call_later(self.timeout, self._on_timer)
        self.transport.write(payload)
        return waiter

    def _on_timer(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now, waited = loop.time(), False
        for waiter, deadline in zip(self.waiters, self.deadlines, strict=True):
            if waiter.done():
                continue
            if deadline > now:  # the first command still in time (deadlines are in sending order)
                self._timer = loop.call_later(deadline - now, self._on_timer)
                waited = True
                break
            self.stalled = True
            waiter.set_exception(TimeoutError(f"redis did not answer within {self.timeout * 1000:g} ms"))
        if self.stalled and not waited:
            self._fail(ConnectionError("redis connection stalled"))  # nobody waits on it any more

    def close(self) -> None:
        self._fail(ConnectionError("redis connection closed"))


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a connect's failure as seen: its waiters may all have timed out already."""
    if not future.cancelled():
        future.exception()


class LeanReader:
    """GET, MGET and scripts against one Redis server over a single pipelined connection, reconnecting on
    demand."""

    times_reads = True
    """Each read fails after `timeout` by itself: callers need no `asyncio.timeout` of their own."""

    def __init__(
        self, host: str, port: int, username: str | None, password: str | None, db: int, timeout: float
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._login: tuple[bytes, ...] = ()
        if password is not None:
            user = (username.encode(),) if username else ()
            self._login = (b"AUTH", *user, password.encode())
        self.db = db
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    @classmethod
    def from_url(cls, url: str, timeout: float) -> LeanReader | None:
        """A reader for a plain `redis://` URL, or None for anything it does not handle (redis-py does)."""
        try:
            parts = urlsplit(url)
            port = parts.port or 6379
        except ValueError:
            return None
        if parts.scheme != "redis" or parts.query or parts.fragment or not parts.hostname:
            return None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            return None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(parts.hostname, port, username, password, int(path or 0), timeout)

    async def get(self, name: str) -> Any:
        return await self.execute(b"GET", name.encode())

    async def mget(self, names: list[str]) -> list[Any]:
        found = await self.execute(b"MGET", *(name.encode() for name in names))
        if not isinstance(found, list):
            raise ProtocolError("MGET did not answer with an array")
        return found

    async def evalsha(self, sha: bytes, script: bytes, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run a Lua script by its SHA-1 (`EVALSHA`); when the server has not got it (`NOSCRIPT`: restarted, or
        `SCRIPT FLUSH`) by its text (`EVAL`, which caches it again). The script's reply as `parse_reply` gives it,
        unchecked (the caller knows its shape); an error reply raises `RespError`."""
        tail = (b"%d" % len(keys), *(key.encode("utf-8", "surrogatepass") for key in keys), *map(_argument, args))
        try:
            return await self.execute(b"EVALSHA", sha, *tail)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT "):
                raise
        return await self.execute(b"EVAL", script, *tail)

    async def execute(self, *args: bytes) -> Any:
        """Send one command and wait for its reply (or its deadline, `timeout` after sending). A caller that stops
        waiting leaves its place in the queue: the reply is read and dropped, so the ones after it stay in step."""
        connection = await self._open()
        return await connection.send(encode_command(args))

    async def _open(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.lost and not connection.stalled:
            return connection
        if self._connecting is None or self._connecting.done():  # one connect however many reads wait for it
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            _, connection = await loop.create_connection(lambda: _Connection(self.timeout), self.host, self.port)
        try:
            if self._login:
                await connection.send(encode_command(self._login))
            if self.db:
                await connection.send(encode_command((b"SELECT", str(self.db).encode())))
        except RespError as exc:  # refused (a wrong password, too many clients): Redis unusable, not a reply
            connection.close()
            raise SetupRefused(str(exc)) from None
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
