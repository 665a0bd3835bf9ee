"""The HTTP/1.1 listener's head and body handling (`HttpAuthzProtocol` over httptools), through the pipeline.

The first byte picks the flavor (Envoy's `http_service`, nginx `auth_request`, Traefik ForwardAuth) and whether the
TCP peer is a trusted proxy; the rest arrives on one connection cut at arbitrary points (`chunks`): pipelined
requests, bodies (length or chunked), `Expect: 100-continue`, upgrades, HTTP/1.0, limits. The flavors stamp
requests with the world's signing time (their clock, replaced), so botocore-signed requests verify.
Oracle: everything written is a sequence of whole HTTP/1.1 responses (status line, header lines, a body of exactly
its content-length, or none for a HEAD), each with a documented status; every deny's JSON body names a documented
reason; the 200s on the wire are exactly the pipeline's allows, each judged by `World.judge` (a protected route
only for a genuine credential); nothing is written after close; the connection releases every buffered body byte.
"""

from __future__ import annotations

import asyncio
import json

from sidecar.settings import HttpModeSettings
from sidecar.transports.http import flavors, render
from sidecar.transports.http.protocol import HttpAuthzProtocol, _Shared

from ..harness import FakeTransport, OneInput, Target, chunks
from ..world import HOST, SIGNED_AT, shared_world
from .check_request import Recording

FLAVORS = ("envoy", "nginx", "traefik")
STATUSES = frozenset({100, 200, 400, 401, 403, 404, 408, 413, 429, 431, 500, 503})
TRANSPORT_REASONS = frozenset(
    {render.PAYLOAD_TOO_LARGE, render.HEADERS_TOO_LARGE, render.REQUEST_TIMEOUT, render.SERVER_BUSY}
)


class _SigningClock:
    """The flavors' clock for the duration of one input: the world's signing time."""

    @staticmethod
    def time() -> float:
        return SIGNED_AT


def parse_responses(wire: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses on the wire: (status, headers, body). Fails on anything that is not whole HTTP/1.1."""
    found = []
    pos = 0
    while pos < len(wire):
        end = wire.find(b"\r\n\r\n", pos)
        assert end >= 0, "a response head without its end"
        lines = wire[pos:end].decode("utf-8").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1" and status.isdigit() and len(status) == 3, lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(": ")
            assert sep and name and name == name.strip() and name.lower() not in headers, line
            headers[name.lower()] = value
        pos = end + 4
        length = int(headers.get("content-length", "0"))
        body = b""
        if length and wire[pos : pos + 1] == b"{":  # a deny's JSON body (absent for a HEAD)
            body = wire[pos : pos + length]
            assert len(body) == length, "a body shorter than its content-length"
            pos += length
        else:
            assert wire[pos:].startswith(b"HTTP/1.1 ") or pos == len(wire), "bytes after a response"
        found.append((int(status), headers, body))
    return found


class Http1:
    """The three flavors' listeners (each trusting loopback), and the loop every input runs on."""

    def __init__(self) -> None:
        self.world = shared_world()
        self.recording = Recording(self.world)
        self.shared = [
            _Shared(self.recording, HttpModeSettings(flavor=flavor, max_body_bytes=2048, max_header_bytes=4096))  # type: ignore[arg-type]
            for flavor in FLAVORS
        ]
        self.reasons = self.world.reasons | TRANSPORT_REASONS

    def one_input(self, data: bytes) -> None:
        if not data:
            return
        self.recording.seen.clear()
        shared = self.shared[data[0] % 3]
        peer = "127.0.0.1" if data[0] & 0x80 == 0 else "10.9.8.7"
        real, flavors.time = flavors.time, _SigningClock  # type: ignore[assignment]
        try:
            transport = self.world.loop.run(self._connection(shared, data[1:], peer))
        finally:
            flavors.time = real
        self._judge(shared, transport)

    async def _connection(self, shared: _Shared, data: bytes, peer: str) -> FakeTransport:
        protocol = HttpAuthzProtocol(shared)
        transport = FakeTransport(peer=(peer, 40000))
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks(data, 4):
            if transport.closed:
                break
            protocol.data_received(chunk)
            await asyncio.sleep(0)
        for _ in range(16):
            if protocol.is_idle or transport.closed:
                break
            await asyncio.sleep(0)
        protocol.connection_lost(None)
        assert shared.buffered == 0 and not shared.connections, "body bytes or a connection outlived it"
        return transport

    def _judge(self, shared: _Shared, transport: FakeTransport) -> None:
        responses = parse_responses(bytes(transport.written))
        nginx = shared.deny_status is not None
        allowed = 0
        for status, headers, body in responses:
            assert status in STATUSES, status
            if status == 200:
                allowed += 1
            elif status >= 300 and body:
                reason = json.loads(body)["reason"]
                assert reason in self.reasons and reason != "InternalError", reason
                if nginx and status not in (401, 403) and status < 500:
                    # only the transport's own refusals of a broken exchange, which close the connection
                    assert reason in TRANSPORT_REASONS | {"MalformedRequest"}, (status, reason)
                    assert headers.get("connection") == "close", headers
        decisions = [decision for _, decision in self.recording.seen]
        assert allowed <= sum(d.allowed for d in decisions), "a 200 the pipeline did not decide"
        for request, decision in self.recording.seen:
            self.world.judge(request, decision)


def _http(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def seeds() -> list[bytes]:
    world = shared_world()
    host = {"host": HOST}
    requests = [_http("GET", "/jwt/orders", {**host, "authorization": "Bearer " + t}) for t in world.tokens[:2]]
    requests += [_http(s.method, s.path, dict(s.headers), s.body) for s in world.signed]
    requests += [_http("GET", path, host) for path in world.presigned]
    requests += [
        _http("HEAD", "/open/x", host),
        _http("POST", "/open/private/x", {**host, "x-authz-source-address": "10.1.2.3"}, b"hello"),
        _http("GET", "/jwt/x", {**host, "authorization": "Bearer " + world.unscoped, "connection": "close"}),
        b"POST /open/y HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /open/y HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\nabc",
        b"GET /open/z HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
        b"GET /open/u HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nGET /open/v HTTP/1.1\r\n\r\n",
        b"GET /open/x HTTP/1.1\r\ncontent-length: 99999\r\n\r\n",
        b"GET /open/x HTTP/1.1\r\nx-original-uri: /jwt/a\r\nx-forwarded-uri: /iam/b\r\nx-forwarded-method: PUT\r\n\r\n",
        b"get /open HTTP/1.1\r\n\r\n",
        b"GET /open HTTP/1.1\r\nbad header\r\n\r\n",
    ]
    flavored = [bytes([index % 3]) + request for index, request in enumerate(requests)]
    return [*flavored, b"\x00" + requests[0] + requests[4] + requests[5], b"\x81" + requests[2]]


def prepare() -> OneInput:
    return Http1().one_input


TARGET = Target(
    name="http1",
    summary=(
        "the HTTP/1.1 listener (HttpAuthzProtocol over httptools: heads, bodies, pipelining, limits, upgrades) in "
        "its three flavors through the pipeline; oracle: the wire is whole HTTP/1.1 responses with documented "
        "statuses and reasons, 200s only for the pipeline's allows, each judged (genuine credential on a "
        "protected route), nothing after close, every buffered body byte released"
    ),
    prepare=prepare,
    seeds=seeds,
    max_len=8192,
)
