"""A tiny raw-socket HTTP/1.1 client for protocol tests: we want to control every byte we send."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httptools


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Collector:
    done: list[Response] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)
    parser: Any = None

    def on_message_begin(self) -> None:
        self.headers = {}
        self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done.append(Response(self.parser.get_status_code(), self.headers, b"".join(self.body)))


class Conn:
    """One client connection to the server under test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._collector = _Collector()
        self._collector.parser = httptools.HttpResponseParser(self._collector)
        self._taken = 0

    opened: ClassVar[list[Conn]] = []
    """Every connection opened; `close_all()` closes them at the end of a test."""

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        conn = cls(reader, writer)
        cls.opened.append(conn)
        return conn

    @classmethod
    async def close_all(cls) -> None:
        while cls.opened:
            await cls.opened.pop().close()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def responses(self, count: int, timeout: float = 5.0) -> list[Response]:
        """The next `count` responses (raises if the server closes or stalls first)."""
        async with asyncio.timeout(timeout):
            while len(self._collector.done) - self._taken < count:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError(f"closed after {len(self._collector.done) - self._taken} responses")
                self._collector.parser.feed_data(data)
        out = self._collector.done[self._taken : self._taken + count]
        self._taken += count
        return out

    async def response(self, timeout: float = 5.0) -> Response:
        return (await self.responses(1, timeout))[0]

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the server closes the connection (any bytes before that are discarded)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    return True
                if not data:
                    return True

    async def raw_until_closed(self, timeout: float = 5.0) -> bytes:
        """Every byte the server sends until it closes."""
        chunks = []
        async with asyncio.timeout(timeout):
            while data := await self.reader.read(65536):
                chunks.append(data)
        return b"".join(chunks)

    async def close(self) -> None:
        if self.writer.is_closing():
            return
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def get(path: str = "/", *headers: str, method: str = "GET", version: str = "1.1", body: bytes = b"") -> bytes:
    """A request's bytes; `headers` are 'Name: value' strings (Host is added unless given)."""
    lines = [f"{method} {path} HTTP/{version}"]
    if not any(h.lower().startswith("host:") for h in headers):
        lines.append("Host: api.example.com")
    lines.extend(headers)
    if body and not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
