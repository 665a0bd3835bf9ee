"""The admin HTTP listener: `/healthz` (process alive), `/readyz` (config and keys loaded, not draining), and
`/usage?key=ID` (an API key's quota in the current period, API Gateway's GetUsage: `usage_handler`).

It is deliberately tiny and separate from the authorization listeners: probes and scrapes must keep answering
while the Check path is saturated, and nothing here is on the hot path. Extra endpoints (e.g. `/metrics`) plug
in through `routes`; one that reads the query string or waits (for Redis) through `queries`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..limits.gates import GateSet
from ..limits.usage_cli import UsageError, gate_usage

log = logging.getLogger(__name__)

_MAX_HEAD = 16 * 1024
_READ_TIMEOUT = 5.0
_HANDLER_TIMEOUT = 5.0
"""Seconds a query handler may take (a Redis read is bounded far below this by its own timeout)."""
_MAX_QUERY_FIELDS = 16


@dataclass(frozen=True, slots=True)
class AdminResponse:
    """A complete response for one admin request."""

    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[], AdminResponse]
QueryHandler = Callable[[Mapping[str, str]], Awaitable[AdminResponse]]
"""A handler given the query string's fields (each name at most once) that may wait, within `_HANDLER_TIMEOUT`."""
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}


def json_response(status: int, payload: dict[str, object]) -> AdminResponse:
    """A JSON admin response."""
    return AdminResponse(status, json.dumps(payload).encode() + b"\n")


class AdminServer:
    """Serves GET/HEAD on a fixed set of paths; everything else is 404/405."""

    def __init__(self, routes: dict[str, Handler], queries: Mapping[str, QueryHandler] | None = None) -> None:
        self.routes = routes
        self.queries: Mapping[str, QueryHandler] = queries or {}
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
            response, send_body = await self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            response, send_body = json_response(400, {"error": "bad request"}), True
        try:
            writer.write(_render(response, send_body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _respond(self, head: bytes) -> tuple[AdminResponse, bool]:
        if len(head) > _MAX_HEAD:
            return json_response(400, {"error": "request head too large"}), True
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3:
            return json_response(400, {"error": "bad request line"}), True
        method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
        path, _, query = target.partition("?")
        handler, waits = self.routes.get(path), self.queries.get(path)
        if handler is None and waits is None:
            return json_response(404, {"error": "not found"}), True
        if method not in ("GET", "HEAD"):
            return json_response(405, {"error": "method not allowed"}), True
        try:
            if waits is None:
                assert handler is not None
                return handler(), method == "GET"
            fields = _query_fields(query)
            if fields is None:
                return json_response(400, {"error": "bad query string (each name at most once)"}), True
            async with asyncio.timeout(_HANDLER_TIMEOUT):
                return await waits(fields), method == "GET"
        except Exception:
            log.exception("admin handler for %s failed", path)  # the path only: a query may hold anything
            return json_response(503, {"error": "handler failed"}), True


def _query_fields(query: str) -> dict[str, str] | None:
    """The query string's fields, or None when it is malformed, too long or names a field twice."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:
        return None
    fields = dict(pairs)
    return fields if len(fields) == len(pairs) else None


def usage_handler(gates: Callable[[], GateSet | None]) -> QueryHandler:
    """`GET /usage?key=ID`: the key's quota in the current period as JSON (`Usage.as_json`), read from the serving
    config's counters (`gates()`: the runtime's, at each request, so a reload is followed). In-process counters
    answer here with this process's counts (`"shared": false`); Redis, every replica's. 400 without a key id,
    404 for an unknown key, one in no plan or a plan without a quota, 503 while Redis does not answer. The
    body never holds a key's value or digest: keys are named by id, and an unknown id is not repeated (it may
    be a value pasted by mistake)."""

    async def handle(fields: Mapping[str, str]) -> AdminResponse:
        key = fields.get("key", "")
        if not key:
            return json_response(400, {"error": "name the api key by its id: /usage?key=ID"})
        try:
            usage = await gate_usage(gates(), key)
        except UsageError as exc:
            body: dict[str, object] = {"error": str(exc)}
            if exc.key is not None:
                body["key"] = exc.key
            return json_response(exc.status, body)
        return json_response(200, usage.as_json())

    return handle


def _render(response: AdminResponse, send_body: bool) -> bytes:
    reason = _REASONS.get(response.status, "Unknown")
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + response.body if send_body else head
