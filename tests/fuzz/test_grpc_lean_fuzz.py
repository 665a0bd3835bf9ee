"""Arbitrary HTTP/2 frame sequences into the lean gRPC listener's protocol, cut at arbitrary read boundaries.

Properties: nothing escapes `data_received` and nothing is logged as an unexpected failure; everything written
back parses as whole HTTP/2 frames; the open-stream limit holds and the connection's count of buffered request
bytes matches its streams and the listener's parked total, which drops to zero when the connection ends; a
connection that is still open after the sequence answers a fresh, valid call (or holds its answer back only
because the sequence shrank a window).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hpack import Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.transports.grpc_lean import LeanSettings, wire
from sidecar.transports.grpc_lean.protocol import LeanGrpcProtocol, _Shared
from sidecar.transports.grpc_lean.wire import frame

from .targets.grpc_lean import walk_frames as parse_frames

ECHO = "/test.Echo/Echo"
SUSPEND = "/test.Echo/Suspend"
LIMIT = 4


async def _echo(data: bytes) -> bytes:
    return data


async def _suspend(data: bytes) -> bytes:
    await asyncio.sleep(0)
    return data


class FakeTransport:
    """Collects what the protocol writes."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def request_block(encoder: Encoder, path: str) -> bytes:
    return encoder.encode(
        [(":method", "POST"), (":scheme", "http"), (":path", path), ("content-type", "application/grpc")]
    )


def message(data: bytes) -> bytes:
    return b"\x00" + struct.pack(">L", len(data)) + data


CONTROL = (wire.SETTINGS, wire.PING, wire.GOAWAY, wire.WINDOW_UPDATE)


@st.composite
def payloads(draw: st.DrawFn, kind: int, encoder: Encoder) -> bytes:
    """Mostly the payload this kind of frame carries, sometimes another kind's, sometimes garbage."""
    plausible = draw(st.integers(0, 9))
    if plausible == 0:
        return draw(st.binary(max_size=40))
    if kind in (wire.HEADERS, wire.CONTINUATION) or plausible == 1:
        block = request_block(encoder, draw(st.sampled_from([ECHO, ECHO, SUSPEND, "/nope", ""])))
        cut = draw(st.integers(0, len(block)))
        return block if draw(st.booleans()) else block[:cut]
    if kind == wire.DATA:
        return message(draw(st.binary(max_size=20)))
    if kind == wire.SETTINGS:
        pairs = draw(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2**32 - 1)), max_size=4))
        return b"".join(struct.pack(">HL", key, value) for key, value in pairs)
    if kind in (wire.WINDOW_UPDATE, wire.RST_STREAM):
        return struct.pack(">L", draw(st.sampled_from([0, 1, 10, 65_535, 2**31 - 1, 2**32 - 1])))
    if kind == wire.GOAWAY:
        return struct.pack(">LL", draw(st.integers(0, 9)), draw(st.integers(0, 13)))
    return draw(st.binary(min_size=5, max_size=8))


@st.composite
def sessions(draw: st.DrawFn) -> tuple[list[bytes], int]:
    """A frame sequence (mostly plausible frames, some garbage) split into reads; the largest stream id used."""
    encoder = Encoder()
    frames: list[bytes] = []
    top = 0
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3, 4, 4, 4, 6, 7, 8, 8, 9, 5, 42]))
        flags = draw(st.sampled_from([0, 0, 1, 4, 5, 5, 8, 0x20, 0x24, 0x25, 0x2D, 0xFF]))
        fitting = [0] if kind in CONTROL else [1, 3, 5, 7, 9]
        stream = draw(st.sampled_from(fitting * 4 + [0, 2, 1, 2**31 - 1]))
        top = max(top, stream)
        frames.append(frame(kind, flags, stream, draw(payloads(kind, encoder))))
    raw = wire.PREFACE + frame(wire.SETTINGS, 0, 0) + b"".join(frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    return [c for c in chunks if c], top


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],  # caplog is cleared per input
)
@given(session=sessions())
def test_arbitrary_frames(
    loop: asyncio.AbstractEventLoop, session: tuple[list[bytes], int], caplog: pytest.LogCaptureFixture
) -> None:
    chunks, top = session
    caplog.clear()
    loop.run_until_complete(_drive(chunks, top))
    unexpected = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not unexpected, [r.getMessage() for r in unexpected]


async def _drive(chunks: list[bytes], top: int) -> None:
    shared = _Shared({ECHO: _echo, SUSPEND: _suspend}, LeanSettings(max_concurrent_streams=LIMIT))
    protocol = LeanGrpcProtocol(shared)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    try:
        await _exercise(protocol, transport, chunks, top)
    finally:
        protocol.connection_lost(None)
    assert shared.parked == 0


async def _exercise(protocol: LeanGrpcProtocol, transport: FakeTransport, chunks: list[bytes], top: int) -> None:
    shared = protocol._shared
    for chunk in chunks:
        if transport.closed:
            break  # a closed transport delivers nothing more
        protocol.data_received(chunk)
        assert protocol.in_flight <= LIMIT
        assert protocol._held == sum(stream.held for stream in protocol._streams.values()) >= 0
        assert shared.parked == protocol._held
    for _ in range(3):
        await asyncio.sleep(0)  # let suspended calls finish
    parse_frames(bytes(transport.written))
    if transport.closed:
        return
    # still open: a fresh valid call is answered (unless a shrunken window holds the answer back)
    before = len(transport.written)
    stream = max(top, 1) + 2 if max(top, 1) % 2 else max(top, 1) + 1
    if stream >= 2**31:
        return
    protocol.data_received(
        frame(wire.HEADERS, wire.END_HEADERS, stream, request_block(Encoder(), ECHO))
        + frame(wire.DATA, wire.END_STREAM, stream, message(b"fresh"))
    )
    answered = parse_frames(bytes(transport.written[before:]))
    if transport.closed:
        return  # e.g. the sequence left a header block open, or the fresh encoder's block broke HPACK state
    ends = [f for f in answered if f[2] == stream and f[0] == wire.HEADERS and f[1] & wire.END_STREAM]
    refused = [f for f in answered if f[2] == stream and f[0] == wire.RST_STREAM]
    held = protocol._blocked and any(s == stream for s, _ in protocol._blocked)
    assert ends or refused or held, answered
