"""The admin HTTP listener: `/healthz` (process alive), `/readyz` (config and keys loaded, not draining).

It is deliberately tiny and separate from the authorization listeners: probes and scrapes must keep answering
while the Check path is saturated, and nothing here is on the hot path. Extra endpoints (e.g. `/metrics`) plug
in through `routes`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

_MAX_HEAD = 16 * 1024
_READ_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class AdminResponse:
    """A complete response for one admin request."""

    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[], AdminResponse]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}


def json_response(status: int, payload: dict[str, object]) -> AdminResponse:
    """A JSON admin response."""
    return AdminResponse(status, json.dumps(payload).encode() + b"\n")


class AdminServer:
    """Serves GET/HEAD on a fixed set of paths; everything else is 404/405."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Bind and start serving (raises OSError when the address is taken)."""
        self._server = await asyncio.start_server(self._serve, host.strip("[]"), port, reuse_address=True)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            response, send_body = self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            response, send_body = json_response(400, {"error": "bad request"}), True
        try:
            writer.write(_render(response, send_body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _respond(self, head: bytes) -> tuple[AdminResponse, bool]:
        if len(head) > _MAX_HEAD:
            return json_response(400, {"error": "request head too large"}), True
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3:
            return json_response(400, {"error": "bad request line"}), True
        method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
        handler = self.routes.get(target.split("?", 1)[0])
        if handler is None:
            return json_response(404, {"error": "not found"}), True
        if method not in ("GET", "HEAD"):
            return json_response(405, {"error": "method not allowed"}), True
        try:
            return handler(), method == "GET"
        except Exception:
            log.exception("admin handler for %s failed", target)
            return json_response(503, {"error": "handler failed"}), True


def _render(response: AdminResponse, send_body: bool) -> bytes:
    reason = _REASONS.get(response.status, "Unknown")
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + response.body if send_body else head
