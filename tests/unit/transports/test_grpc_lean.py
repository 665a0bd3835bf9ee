"""The lean gRPC listener (`sidecar/transports/grpc_lean/`) against real HTTP/2 peers on loopback.

A grpcio client (C-core's HTTP/2 and gRPC stack) drives the calls; raw frames written by hand drive what a
well-behaved client never sends (padding, CONTINUATION, bad prefaces, flow-control stalls, protocol errors).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import grpc
import pytest
from hpack import Decoder, Encoder
from hpack.exceptions import HPACKError

from sidecar.log_throttle import ThrottledWarning
from sidecar.transports.grpc_lean import LeanGrpcServer, LeanSettings, protocol, start_lean_grpc, wire
from sidecar.transports.grpc_lean.wire import _Headers, frame
from sidecar.transports.status import GRPC_INTERNAL, GrpcError

ECHO = "/test.Echo/Echo"
BIG = "/test.Echo/Big"
FAIL = "/test.Echo/Fail"
CRASH = "/test.Echo/Crash"
WAIT = "/test.Echo/Wait"
WRONG = "/test.Echo/Wrong"
SPAWN = "/test.Echo/Spawn"
LONG = "/test.Echo/Long"


class Handlers:
    """Test methods: echo, a large answer, a gRPC error, a crash, and one that waits for a gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()  # the wait method's finally block ran
        self.inner: asyncio.Future[object] | None = None

    async def echo(self, data: bytes) -> bytes:
        return data

    async def big(self, data: bytes) -> bytes:
        return bytes(range(256)) * (int(data or b"1") // 256 + 1)

    async def fail(self, data: bytes) -> bytes:
        raise GrpcError(9, "failed precondition: ünïcode, 100% sure")

    async def crash(self, data: bytes) -> bytes:
        raise ValueError("a bug")

    async def wait(self, data: bytes) -> bytes:
        self.waiting.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.finished.set()
        return b"after:" + data

    async def spawn(self, data: bytes) -> bytes:
        self.inner = asyncio.ensure_future(self.gate.wait())  # work the method starts and then waits for
        await self.inner
        return data

    async def wrong(self, data: bytes) -> bytes:
        return "not bytes"  # type: ignore[return-value]

    async def long(self, data: bytes) -> bytes:
        raise GrpcError(9, "x" * 40_000)

    def table(self) -> dict[str, protocol.Handler]:
        return {
            ECHO: self.echo,
            BIG: self.big,
            FAIL: self.fail,
            CRASH: self.crash,
            WAIT: self.wait,
            WRONG: self.wrong,
            SPAWN: self.spawn,
            LONG: self.long,
        }


@pytest.fixture
async def served() -> AsyncIterator[tuple[LeanGrpcServer, Handlers]]:
    handlers = Handlers()
    server = await start_lean_grpc("127.0.0.1", 0, handlers.table(), LeanSettings(max_message_bytes=2_000_000))
    try:
        yield server, handlers
    finally:
        handlers.gate.set()
        await server.shutdown(1)


def _call(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(method)  # raw bytes in and out


async def test_unary_calls_through_grpcio(served: tuple[LeanGrpcServer, Handlers]) -> None:
    server, _ = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await _call(channel, ECHO)(b"hello", timeout=5) == b"hello"
        assert await _call(channel, ECHO)(b"", timeout=5) == b""
        # 1.5 MB each way: many DATA frames in, and an answer held back and released by flow control out
        payload = bytes(range(256)) * 6000
        assert await _call(channel, ECHO)(payload, timeout=5) == payload
        assert len(await _call(channel, BIG)(b"1500000", timeout=5)) >= 1_500_000
        # many calls in flight on one connection, each answered with its own bytes
        replies = await asyncio.gather(*(_call(channel, ECHO)(str(i).encode(), timeout=5) for i in range(300)))
        assert replies == [str(i).encode() for i in range(300)]


async def test_errors_are_grpc_statuses(served: tuple[LeanGrpcServer, Handlers]) -> None:
    server, _ = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await _call(channel, "/test.Echo/Nope")(b"x", timeout=5)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _call(channel, FAIL)(b"x", timeout=5)
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert failed.value.details() == "failed precondition: ünïcode, 100% sure"
        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            await _call(channel, CRASH)(b"x", timeout=5)
        assert crashed.value.code() == grpc.StatusCode.INTERNAL
        assert "bug" not in (crashed.value.details() or "")  # internals stay in our log
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await _call(channel, WRONG)(b"x", timeout=5)
        assert wrong.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as long:
            await _call(channel, LONG)(b"x", timeout=5)
        assert long.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # one frame, cut to 512 characters
        assert long.value.details() == "x" * 512
        with pytest.raises(grpc.aio.AioRpcError) as too_big:
            await _call(channel, ECHO)(b"x" * 2_100_000, timeout=5)
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _call(channel, ECHO)(b"still fine", timeout=5) == b"still fine"


async def test_suspended_call_and_graceful_shutdown(served: tuple[LeanGrpcServer, Handlers]) -> None:
    server, handlers = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        waiting = asyncio.ensure_future(_call(channel, WAIT)(b"w", timeout=5))
        await handlers.waiting.wait()
        stopping = asyncio.ensure_future(server.shutdown(5))
        assert not stopping.done()
        handlers.gate.set()  # the in-flight call finishes during the drain and gets its answer
        assert await waiting == b"after:w"
        await stopping
    assert server.connections == 0


# --------------------------------------------------------------------------------------------------------------
# Raw frames.

_HEAD = struct.Struct(">HBBBL")


class RawClient:
    """An HTTP/2 client that writes exactly the frames it is told to and reads frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.decoder = Decoder()

    @classmethod
    async def connect(cls, port: int, preface: bytes = wire.PREFACE) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        writer.write(preface + frame(wire.SETTINGS, 0, 0))
        return client

    def request_block(self, path: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "x"),
                ("content-type", "application/grpc"),
                *extra,
            ]
        )

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    async def read_frame(self) -> tuple[int, int, int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(9), 5)
        high, low, kind, flags, stream = _HEAD.unpack(head)
        payload = await asyncio.wait_for(self.reader.readexactly((high << 8) | low), 5)
        return kind, flags, stream & 0x7FFFFFFF, payload

    async def until(self, kind: int, stream: int | None = None) -> tuple[int, bytes]:
        """Read frames until one of `kind` (on `stream`, if given); its flags and payload."""
        for _ in range(100):
            got, flags, on, payload = await self.read_frame()
            if got == wire.HEADERS:
                self.decoder.decode(payload)
            if got == kind and (stream is None or on == stream):
                return flags, payload
        raise AssertionError(f"no frame of type {kind}")

    async def answer(self, stream: int, framed: bool = False) -> bytes:
        """The response message of a call on `stream` (headers, DATA, trailers); with `framed`, all the DATA
        bytes (the gRPC length prefix too)."""
        data = b""
        for _ in range(100):
            kind, flags, on, payload = await self.read_frame()
            if on != stream:
                continue
            if kind == wire.DATA:
                data += payload
            elif kind == wire.HEADERS:
                fields = dict(self.decoder.decode(payload))
                if flags & wire.END_STREAM:
                    assert fields.get("grpc-status") == "0", fields
                    return data if framed else data[5:]
        raise AssertionError("no answer")

    async def closed_with(self) -> int:
        """The error code of the GOAWAY the server sends before closing."""
        _, payload = await self.until(wire.GOAWAY)
        code: int = struct.unpack(">LL", payload[:8])[1]
        return code

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def message(data: bytes) -> bytes:
    return b"\x00" + struct.pack(">L", len(data)) + data


async def test_padding_priority_and_continuation(served: tuple[LeanGrpcServer, Handlers]) -> None:
    server, _ = served
    client = await RawClient.connect(server.port)
    block = client.request_block(ECHO, (("x-filler", "f" * 3000),))
    padded = bytes([7]) + struct.pack(">LB", 0, 15) + block[:1000] + b"\0" * 7
    client.send(
        frame(wire.HEADERS, wire.PADDED | wire.PRIORITY_FLAG, 1, padded),
        frame(wire.CONTINUATION, 0, 1, block[1000:2000]),
        frame(wire.CONTINUATION, wire.END_HEADERS, 1, block[2000:]),
        frame(wire.DATA, wire.PADDED, 1, bytes([3]) + message(b"pad")[:4] + b"\0\0\0"),
        frame(wire.DATA, wire.END_STREAM, 1, message(b"pad")[4:]),
    )
    assert await client.answer(1) == b"pad"
    client.send(frame(wire.PING, 0, 0, b"12345678"))
    flags, payload = await client.until(wire.PING)
    assert flags == wire.ACK and payload == b"12345678"
    await client.close()


async def test_flow_control_holds_and_releases_an_answer(served: tuple[LeanGrpcServer, Handlers]) -> None:
    server, _ = served
    client = await RawClient.connect(server.port)
    # a 10-byte window for every stream: the 1,000-byte answer waits for WINDOW_UPDATEs
    client.send(frame(wire.SETTINGS, 0, 0, struct.pack(">HL", wire.S_INITIAL_WINDOW_SIZE, 10)))
    client.send(
        frame(wire.HEADERS, wire.END_HEADERS, 1, client.request_block(ECHO)),
        frame(wire.DATA, wire.END_STREAM, 1, message(b"z" * 1000)),
    )
    received = b""
    while len(received) < 10:
        kind, _, _, payload = await client.read_frame()
        if kind == wire.DATA:
            received += payload
        elif kind == wire.HEADERS:
            client.decoder.decode(payload)
    assert received == (b"\x00" + struct.pack(">L", 1000) + b"z" * 1000)[:10]
    client.send(frame(wire.WINDOW_UPDATE, 0, 1, struct.pack(">L", 2000)))
    rest = await client.answer(1, framed=True)
    assert received[5:] + rest == b"z" * 1000
    await client.close()


async def test_a_stalled_stream_does_not_hold_up_the_others(served: tuple[LeanGrpcServer, Handlers]) -> None:
    """Two answers wait for window; Envoy opens only the second stream's: it completes, the first still waits."""
    server, _ = served
    client = await RawClient.connect(server.port)
    client.send(frame(wire.SETTINGS, 0, 0, struct.pack(">HL", wire.S_INITIAL_WINDOW_SIZE, 0)))
    for stream in (1, 3):
        client.send(
            frame(wire.HEADERS, wire.END_HEADERS, stream, client.request_block(ECHO)),
            frame(wire.DATA, wire.END_STREAM, stream, message(b"s%d" % stream)),
        )
    client.send(frame(wire.WINDOW_UPDATE, 0, 3, struct.pack(">L", 100)))
    assert await client.answer(3) == b"s3"
    client.send(frame(wire.WINDOW_UPDATE, 0, 1, struct.pack(">L", 100)))
    assert await client.answer(1) == b"s1"
    await client.close()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (frame(wire.DATA, 0, 0, b"x"), wire.PROTOCOL_ERROR),
        (frame(wire.PING, 0, 0, b"short"), wire.FRAME_SIZE_ERROR),
        (frame(wire.SETTINGS, 0, 0, b"12345"), wire.FRAME_SIZE_ERROR),
        (frame(wire.SETTINGS, 0, 0, struct.pack(">HL", 4, 2**31)), wire.FLOW_CONTROL_ERROR),
        (frame(wire.WINDOW_UPDATE, 0, 0, struct.pack(">L", 0)), wire.PROTOCOL_ERROR),
        (frame(wire.WINDOW_UPDATE, 0, 0, struct.pack(">L", 2**31 - 1)), wire.FLOW_CONTROL_ERROR),
        (frame(wire.HEADERS, wire.END_HEADERS, 2, b"\x82"), wire.PROTOCOL_ERROR),
        (frame(wire.HEADERS, wire.END_HEADERS, 1, b"\xff\xff\xff\x7f"), wire.COMPRESSION_ERROR),
        (frame(wire.HEADERS, 0, 1, b"\x82") + frame(wire.PING, 0, 0, b"8 bytes!"), wire.PROTOCOL_ERROR),
        (frame(wire.CONTINUATION, wire.END_HEADERS, 1, b"\x82"), wire.PROTOCOL_ERROR),
        (
            frame(wire.HEADERS, 0, 1, b"\x82") + frame(wire.CONTINUATION, 0, 1, b"") * 3,
            wire.ENHANCE_YOUR_CALM,
        ),
        (
            frame(wire.HEADERS, 0, 1, b"\x82") + frame(wire.CONTINUATION, 0, 1, b"\x82") * 70,
            wire.ENHANCE_YOUR_CALM,
        ),
        (frame(wire.GOAWAY, 0, 0, b"\0\0\0\1"), wire.FRAME_SIZE_ERROR),
        (frame(wire.PRIORITY, 0, 1, b"\0\0\0"), wire.FRAME_SIZE_ERROR),
        (frame(wire.PUSH_PROMISE, wire.END_HEADERS, 1, b"\0\0\0\2"), wire.PROTOCOL_ERROR),
        (struct.pack(">HBBBL", 0x40, 0x01, wire.DATA, 0, 1), wire.FRAME_SIZE_ERROR),
        (frame(wire.HEADERS, wire.PADDED | wire.END_HEADERS, 1, b"\x09abc"), wire.PROTOCOL_ERROR),
    ],
    ids=[
        "data-on-stream-0",
        "short-ping",
        "settings-not-multiple-of-6",
        "window-size-too-large",
        "zero-window-update",
        "connection-window-overflow",
        "even-stream",
        "bad-hpack",
        "interrupted-header-block",
        "stray-continuation",
        "empty-continuations",
        "continuation-flood",
        "short-goaway",
        "short-priority",
        "push-promise",
        "oversized-frame",
        "padding-longer-than-frame",
    ],
)
async def test_protocol_errors_close_with_goaway(
    served: tuple[LeanGrpcServer, Handlers], frames: bytes, code: int
) -> None:
    server, _ = served
    client = await RawClient.connect(server.port)
    client.send(frames)
    assert await client.closed_with() == code
    assert await client.reader.read() == b""  # and the connection is closed
    await client.close()
    # the listener itself is unharmed
    healthy = await RawClient.connect(server.port)
    healthy.send(
        frame(wire.HEADERS, wire.END_HEADERS, 1, healthy.request_block(ECHO)),
        frame(wire.DATA, wire.END_STREAM, 1, message(b"ok")),
    )
    assert await healthy.answer(1) == b"ok"
    await healthy.close()


async def test_not_http2_is_refused(served: tuple[LeanGrpcServer, Handlers]) -> None:
    server, _ = served
    client = await RawClient.connect(server.port, preface=b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert await client.closed_with() == wire.PROTOCOL_ERROR
    await client.close()


async def test_protocol_error_warnings_are_throttled(
    served: tuple[LeanGrpcServer, Handlers], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Anything that reaches the port can cause protocol errors: one warning line per interval, the rest counted."""
    server, _ = served
    now = [100.0]
    throttle = ThrottledWarning(protocol.log, interval=10.0, clock=lambda: now[0])
    monkeypatch.setattr(protocol, "protocol_errors", throttle)

    async def scan() -> None:
        client = await RawClient.connect(server.port, preface=b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert await client.closed_with() == wire.PROTOCOL_ERROR
        await client.close()

    with caplog.at_level("WARNING", logger=protocol.log.name):
        for _ in range(3):
            await scan()
        assert [r.getMessage() for r in caplog.records] == [
            "closing an ext_authz HTTP/2 connection: not an HTTP/2 connection preface"
        ]
        assert throttle.suppressed == 2
        now[0] += 10.0
        await scan()
    assert caplog.records[-1].getMessage() == (
        "closing an ext_authz HTTP/2 connection: not an HTTP/2 connection preface"
        " (and 2 more connection errors since the previous line, not logged)"
    )
    assert len(caplog.records) == 2 and throttle.suppressed == 0


async def test_a_call_that_is_not_grpc_fails(served: tuple[LeanGrpcServer, Handlers]) -> None:
    server, _ = served
    client = await RawClient.connect(server.port)
    block = client.encoder.encode([(":method", "GET"), (":scheme", "http"), (":path", ECHO), (":authority", "x")])
    client.send(frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, 1, block))
    flags, payload = await client.until(wire.HEADERS, 1)
    fields = dict(client.decoder.decode(payload))
    assert flags & wire.END_STREAM and fields["grpc-status"] == str(GRPC_INTERNAL)
    # a compressed message is refused, and so is a message whose length prefix lies
    client.send(
        frame(wire.HEADERS, wire.END_HEADERS, 3, client.request_block(ECHO)),
        frame(wire.DATA, wire.END_STREAM, 3, b"\x01" + message(b"zz")[1:]),
        frame(wire.HEADERS, wire.END_HEADERS, 5, client.request_block(ECHO)),
        frame(wire.DATA, wire.END_STREAM, 5, message(b"zz") + b"more"),
    )
    _, payload = await client.until(wire.HEADERS, 3)
    assert dict(client.decoder.decode(payload))["grpc-status"] == "12"
    _, payload = await client.until(wire.HEADERS, 5)
    assert dict(client.decoder.decode(payload))["grpc-status"] == str(GRPC_INTERNAL)
    await client.close()


async def test_stream_limit_refuses_streams_past_it() -> None:
    handlers = Handlers()
    server = await start_lean_grpc("127.0.0.1", 0, handlers.table(), LeanSettings(max_concurrent_streams=1))
    try:
        client = await RawClient.connect(server.port)
        client.send(
            frame(wire.HEADERS, wire.END_HEADERS, 1, client.request_block(WAIT)),
            frame(wire.DATA, wire.END_STREAM, 1, message(b"1")),
            frame(wire.HEADERS, wire.END_HEADERS, 3, client.request_block(ECHO)),
        )
        _, payload = await client.until(wire.RST_STREAM, 3)
        assert struct.unpack(">L", payload)[0] == wire.REFUSED_STREAM
        handlers.gate.set()
        assert await client.answer(1) == b"after:1"
        await client.close()
    finally:
        await server.shutdown(1)


async def test_a_reset_call_is_cancelled(served: tuple[LeanGrpcServer, Handlers]) -> None:
    """Envoy resets a call it gave up on (its timeout): the method's Task is cancelled, nothing is answered on
    the stream, and the connection goes on."""
    server, handlers = served
    client = await RawClient.connect(server.port)
    client.send(
        frame(wire.HEADERS, wire.END_HEADERS, 1, client.request_block(WAIT)),
        frame(wire.DATA, wire.END_STREAM, 1, message(b"late")),
    )
    await handlers.waiting.wait()
    client.send(frame(wire.RST_STREAM, 0, 1, struct.pack(">L", wire.CANCEL)))
    await asyncio.wait_for(handlers.cancelled.wait(), 5)
    client.send(
        frame(wire.HEADERS, wire.END_HEADERS, 3, client.request_block(ECHO)),
        frame(wire.DATA, wire.END_STREAM, 3, message(b"next")),
    )
    for _ in range(20):  # everything up to stream 3's answer: nothing may be on stream 1 but its response headers
        kind, flags, stream, payload = await client.read_frame()
        if kind == wire.HEADERS:
            client.decoder.decode(payload)
        assert stream != 1 or (kind == wire.HEADERS and not flags & wire.END_STREAM)
        if stream == 3 and kind == wire.HEADERS and flags & wire.END_STREAM:
            break
    else:
        raise AssertionError("stream 3 was not answered")
    await client.close()


async def test_frames_on_an_answered_stream_are_ignored(served: tuple[LeanGrpcServer, Handlers]) -> None:
    """A call answered before its request ended (here: an unknown method) may still get request trailers and
    DATA from the client; they are ignored (RFC 9113 5.1), not a connection error."""
    server, _ = served
    client = await RawClient.connect(server.port)
    client.send(frame(wire.HEADERS, wire.END_HEADERS, 1, client.request_block("/test.Echo/Nope")))
    _, payload = await client.until(wire.HEADERS, 1)
    assert dict(client.decoder.decode(payload))["grpc-status"] == "12"
    trailers = client.encoder.encode([("x-trailer", "t")])
    client.send(
        frame(wire.DATA, 0, 1, message(b"late")),
        frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, 1, trailers),
        frame(wire.HEADERS, wire.END_HEADERS, 3, client.request_block(ECHO)),
        frame(wire.DATA, wire.END_STREAM, 3, message(b"still")),
    )
    assert await client.answer(3) == b"still"
    await client.close()


async def test_two_step_drain(served: tuple[LeanGrpcServer, Handlers]) -> None:
    """Shutdown first sends GOAWAY(2^31-1) and a PING: streams Envoy opens before it acknowledges the PING are
    still served; the final GOAWAY names the last of them, and the connection closes after its answers."""
    server, _ = served
    client = await RawClient.connect(server.port)
    client.send(
        frame(wire.HEADERS, wire.END_HEADERS, 1, client.request_block(ECHO)),
        frame(wire.DATA, wire.END_STREAM, 1, message(b"one")),
    )
    assert await client.answer(1) == b"one"
    stopping = asyncio.ensure_future(server.shutdown(5))
    _, first = await client.until(wire.GOAWAY)
    assert struct.unpack(">LL", first[:8]) == (2**31 - 1, wire.NO_ERROR)
    _, ping = await client.until(wire.PING)
    client.send(  # a call already on its way when the GOAWAY arrived
        frame(wire.HEADERS, wire.END_HEADERS, 3, client.request_block(ECHO)),
        frame(wire.DATA, wire.END_STREAM, 3, message(b"in flight")),
        frame(wire.PING, wire.ACK, 0, ping),
    )
    assert await client.answer(3) == b"in flight"
    _, final = await client.until(wire.GOAWAY)
    assert struct.unpack(">LL", final[:8]) == (3, wire.NO_ERROR)
    assert await asyncio.wait_for(client.reader.read(), 5) == b""  # closed once nothing is open
    await stopping
    await client.close()


async def test_a_call_reset_before_its_task_runs_still_cleans_up(served: tuple[LeanGrpcServer, Handlers]) -> None:
    """The request and Envoy's RST_STREAM in one read: the method started inline and suspended on work of its
    own, and its Task is cancelled before its first step. That work is cancelled too, not left running."""
    server, handlers = served
    client = await RawClient.connect(server.port)
    client.send(
        frame(wire.HEADERS, wire.END_HEADERS, 1, client.request_block(SPAWN)),
        frame(wire.DATA, wire.END_STREAM, 1, message(b"x")),
        frame(wire.RST_STREAM, 0, 1, struct.pack(">L", wire.CANCEL)),
    )
    client.send(  # an answered call after it: the reset was processed by then
        frame(wire.HEADERS, wire.END_HEADERS, 3, client.request_block(ECHO)),
        frame(wire.DATA, wire.END_STREAM, 3, message(b"after")),
    )
    assert await client.answer(3) == b"after"
    inner = handlers.inner
    assert inner is not None
    await asyncio.wait([inner], timeout=5)
    assert inner.cancelled()
    await client.close()


async def test_buffered_request_bytes_are_bounded() -> None:
    """Calls still arriving may hold at most max_buffered_bytes per connection; the one that would pass it fails
    with RESOURCE_EXHAUSTED and the others go on."""
    handlers = Handlers()
    server = await start_lean_grpc("127.0.0.1", 0, handlers.table(), LeanSettings(max_buffered_bytes=1000))
    try:
        client = await RawClient.connect(server.port)
        body = message(b"a" * 595)  # 600 bytes
        client.send(
            frame(wire.HEADERS, wire.END_HEADERS, 1, client.request_block(ECHO)),
            frame(wire.DATA, 0, 1, body[:300]),
            frame(wire.HEADERS, wire.END_HEADERS, 3, client.request_block(ECHO)),
            frame(wire.DATA, 0, 3, body[:300]),
            frame(wire.DATA, 0, 1, body[300:]),  # 900 held
            frame(wire.DATA, 0, 3, body[300:]),  # would be 1,200
        )
        _, payload = await client.until(wire.HEADERS, 3)
        assert dict(client.decoder.decode(payload))["grpc-status"] == "8"
        client.send(frame(wire.DATA, wire.END_STREAM, 1, b""))
        assert await client.answer(1) == b"a" * 595
        await client.close()
    finally:
        await server.shutdown(1)


def test_header_memo_forgets_blocks_when_entries_are_evicted() -> None:
    """A size update that shrinks the table and restores it evicts the older entries while the newest stays:
    a remembered block naming an evicted entry must be decoded again (and fail), not served from the memo."""
    encoder = Encoder()
    headers = _Headers(65_536)
    headers.request(encoder.encode([(":method", "POST"), (":path", "/a")]))  # inserts (:path /a)
    headers.request(encoder.encode([(":method", "POST"), (":path", "/b")]))  # inserts (:path /b): /a is 63
    older = b"\x83\xbf"  # :method POST, index 63
    assert headers.request(older) == (b"/a", False)
    assert headers.request(older) == (b"/a", False)  # remembered
    entry = 32 + len(":path") + len("/b")
    shrink_restore = b"\x3f" + bytes([entry - 31]) + b"\x3f\xe1\x1f"  # size updates: `entry`, then 4096
    assert headers.request(shrink_restore) == (b"", False)
    with pytest.raises(HPACKError):
        headers.request(older)


def test_header_memo_follows_the_dynamic_table() -> None:
    """A remembered block is forgotten when the table changes: the same bytes may then name another path."""
    encoder = Encoder()
    headers = _Headers(65_536)
    grpc_fields = [(":method", "POST"), ("content-type", "application/grpc")]
    first = encoder.encode([*grpc_fields, (":path", "/a")])
    assert headers.request(first) == (b"/a", True)
    again = encoder.encode([*grpc_fields, (":path", "/a")])  # all indexed now
    assert headers.request(again) == (b"/a", True)
    assert headers.request(again) == (b"/a", True)  # from the memo
    assert headers.request(encoder.encode([*grpc_fields, (":path", "/b")])) == (b"/b", True)
    # `again` names table positions 63 and 62, which now hold (:path /a) and (:path /b): no content-type left
    assert headers.request(again) == (b"/b", False)
