"""The lean gRPC listener: HTTP/2 frames and HPACK from Envoy's side of one connection, in front of the real
Authorization/Check handler (`check_wire`) and the pipeline.

Each input is what follows the connection preface, cut at arbitrary read boundaries, on a fresh connection with
a limit of 4 concurrent streams. Seeds: whole Check calls (HEADERS by a real HPACK encoder, DATA carrying the
check_request target's CheckRequests with this run's credentials), several calls pipelined, SETTINGS, PING,
WINDOW_UPDATE, RST_STREAM, GOAWAY, CONTINUATION, and broken ones. Oracle: nothing escapes `data_received` and
nothing is logged as an unexpected failure; everything written is whole HTTP/2 frames whose header blocks decode
with `hpack` in order; a connection the listener closed said GOAWAY first; the stream limit and the parked-bytes
accounting hold and drop to zero at the end; every CheckResponse on the wire parses, and an OK one only answers
a decision the pipeline allowed, each judged (`World.judge`: a protected route only for a genuine credential).
"""

from __future__ import annotations

import asyncio
import logging
import struct

from envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from hpack import Decoder, Encoder

from sidecar.transports.ext_authz import AuthorizationService
from sidecar.transports.grpc_lean import LeanSettings, wire
from sidecar.transports.grpc_lean.protocol import LeanGrpcProtocol, _Shared
from sidecar.transports.grpc_lean.wire import frame

from ..harness import FakeTransport, OneInput, Target, chunks
from ..world import shared_world
from .check_request import Recording, seed_requests

CHECK = "/envoy.service.auth.v3.Authorization/Check"
LIMIT = 4


class _Errors(logging.Handler):
    """ERROR records of the listener: its `log.exception` for a failure it did not expect."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def walk_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of each frame; fails on a partial one."""
    frames = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 9, "a partial frame header was written"
        high, low, kind, flags, stream = struct.unpack_from(">HBBBL", data, pos)
        length = (high << 8) | low
        assert len(data) - pos - 9 >= length, "a partial frame was written"
        frames.append((kind, flags, stream & 0x7FFF_FFFF, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return frames


def _answers(frames: list[tuple[int, int, int, bytes]], held: frozenset[int] = frozenset()) -> list[CheckResponse]:
    """Header blocks decoded in order (the HPACK state spans the connection); the CheckResponses in DATA. A stream
    in `held` may end in a message cut short: Envoy's window (a small SETTINGS_INITIAL_WINDOW_SIZE) holds the rest
    back until a WINDOW_UPDATE."""
    decoder = Decoder()
    block = b""
    bodies: dict[int, bytes] = {}
    for kind, flags, stream, payload in frames:
        if kind in (wire.HEADERS, wire.CONTINUATION):
            block += payload
            if flags & wire.END_HEADERS:
                headers = dict(decoder.decode(block))
                block = b""
                status = headers.get(":status") or headers.get("grpc-status")
                assert status is not None, headers
        elif kind == wire.DATA:
            bodies[stream] = bodies.get(stream, b"") + payload
    assert not block, "a header block left open"
    found = []
    for stream, body in bodies.items():
        while len(body) >= 5:
            size = struct.unpack_from(">L", body, 1)[0]
            assert body[0] == 0, "a gRPC message with a bad flag byte"
            if len(body) < 5 + size:
                break
            found.append(CheckResponse.FromString(body[5 : 5 + size]))
            body = body[5 + size :]
        assert not body or stream in held, "a gRPC message cut short"
    return found


class Lean:
    def __init__(self) -> None:
        self.world = shared_world()
        self.recording = Recording(self.world)
        service = AuthorizationService(self.recording.check)
        self.handlers = {CHECK: service.check_wire}
        self.errors = _Errors()
        logging.getLogger("sidecar.transports.grpc_lean").addHandler(self.errors)

    def one_input(self, data: bytes) -> None:
        self.recording.seen.clear()
        self.errors.messages.clear()
        self.world.loop.run(self._connection(data))
        assert not self.errors.messages, self.errors.messages

    async def _connection(self, data: bytes) -> None:
        shared = _Shared(self.handlers, LeanSettings(max_concurrent_streams=LIMIT))
        protocol = LeanGrpcProtocol(shared)
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        held: frozenset[int] = frozenset()
        try:
            for chunk in [wire.PREFACE, *chunks(data, 4)]:
                if transport.closed:
                    break
                protocol.data_received(chunk)
                assert protocol.in_flight <= LIMIT
                assert protocol._held == sum(stream.held for stream in protocol._streams.values()) >= 0
                assert shared.parked == protocol._held
                await asyncio.sleep(0)
            for _ in range(8):
                await asyncio.sleep(0)  # let the calls the input started finish
            held = frozenset(stream for stream, _ in protocol._blocked)
        finally:
            protocol.connection_lost(None)
        assert shared.parked == 0
        frames = walk_frames(bytes(transport.written))
        if transport.closed and not protocol._peer_goaway:  # after Envoy's own GOAWAY, closing is the answer
            assert any(kind == wire.GOAWAY for kind, _, _, _ in frames), "closed without a GOAWAY"
        self._judge(_answers(frames, held))

    def _judge(self, answers: list[CheckResponse]) -> None:
        allowed = sum(decision.allowed for _, decision in self.recording.seen)
        assert sum(answer.status.code == 0 for answer in answers) <= allowed, "an OK the pipeline did not decide"
        for request, decision in self.recording.seen:
            self.world.judge(request, decision)


def _call(encoder: Encoder, stream: int, message: bytes) -> bytes:
    block = encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", CHECK),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    data = b"\x00" + struct.pack(">L", len(message)) + message
    return frame(wire.HEADERS, wire.END_HEADERS, stream, block) + frame(wire.DATA, wire.END_STREAM, stream, data)


def seeds() -> list[bytes]:
    messages = [check.SerializeToString() for check in seed_requests(shared_world())]
    settings = frame(wire.SETTINGS, 0, 0)
    found = [settings + _call(Encoder(), 1, message) for message in messages]
    encoder = Encoder()
    found.append(settings + b"".join(_call(encoder, 1 + 2 * i, m) for i, m in enumerate(messages[:6])))
    block = Encoder().encode([(":method", "POST"), (":path", CHECK), ("content-type", "application/grpc")])
    found += [
        settings + frame(wire.PING, 0, 0, b"12345678") + frame(wire.WINDOW_UPDATE, 0, 0, struct.pack(">L", 100)),
        settings + frame(wire.HEADERS, 0, 1, block[:5]) + frame(wire.CONTINUATION, wire.END_HEADERS, 1, block[5:]),
        settings + frame(wire.HEADERS, wire.END_HEADERS, 1, block) + frame(wire.RST_STREAM, 0, 1, b"\x00\x00\x00\x08"),
        settings + frame(wire.GOAWAY, 0, 0, b"\x00\x00\x00\x00\x00\x00\x00\x00"),
        settings + frame(wire.SETTINGS, 0, 0, struct.pack(">HL", 4, 0)) + _call(Encoder(), 1, messages[0]),
        settings + frame(wire.HEADERS, wire.END_HEADERS, 2, block),
        settings + frame(wire.DATA, 0, 1, b"\x00"),
        b"GET / HTTP/1.1\r\n\r\n",
    ]
    return found


def prepare() -> OneInput:
    return Lean().one_input


TARGET = Target(
    name="grpc_lean",
    summary=(
        "the lean gRPC listener's HTTP/2 frames and HPACK (LeanGrpcProtocol) in front of the real Check handler "
        "and pipeline; oracle: no escaped or logged failure, whole frames whose header blocks decode with hpack, "
        "GOAWAY before any close, stream limit and parked bytes hold (zero at the end), OK CheckResponses only "
        "for judged allows (a protected route only with a genuine credential)"
    ),
    prepare=prepare,
    seeds=seeds,
    max_len=8192,
)
