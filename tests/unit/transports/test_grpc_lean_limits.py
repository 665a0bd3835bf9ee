"""What bounds a peer of the lean gRPC listener (`sidecar/transports/grpc_lean/`, `LeanSettings`), with raw HTTP/2
frames over real loopback sockets: the listener-wide budget of parked request bytes, the receive windows we advertise,
the preface, idle and request timeouts, and the connection limit. Every wait is for the event itself (a frame,
or EOF), each bounded by a timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from hpack import Encoder

from sidecar.config import ServerSettings
from sidecar.log_throttle import ThrottledWarning
from sidecar.transports.grpc_lean import (
    LeanGrpcServer,
    LeanSettings,
    protocol,
    settings_from_server,
    start_lean_grpc,
    wire,
)
from sidecar.transports.grpc_lean.protocol import LeanGrpcProtocol, _Shared
from sidecar.transports.grpc_lean.wire import frame
from sidecar.transports.status import GRPC_DEADLINE_EXCEEDED, GRPC_RESOURCE_EXHAUSTED
from tests.fuzz.test_grpc_lean_fuzz import FakeTransport, parse_frames, request_block
from tests.unit.transports.test_grpc_lean import ECHO, WAIT, Handlers, RawClient, message

SIZE = "/test.Echo/Size"
BOUND = 5.0  # seconds any single wait may take before the test fails


@asynccontextmanager
async def serving(settings: LeanSettings) -> AsyncIterator[tuple[LeanGrpcServer, Handlers]]:
    handlers = Handlers()

    async def size(data: bytes) -> bytes:
        return str(len(data)).encode()

    server = await start_lean_grpc("127.0.0.1", 0, {**handlers.table(), SIZE: size}, settings)
    try:
        yield server, handlers
    finally:
        handlers.gate.set()
        await server.shutdown(1)


def headers(client: RawClient, stream: int, path: str = ECHO) -> bytes:
    return frame(wire.HEADERS, wire.END_HEADERS, stream, client.request_block(path))


async def synced(client: RawClient) -> dict[int, int]:
    """Wait until everything sent so far has been handled (the server answers a PING in order with the other
    frames); the grpc-status of each call that ended meanwhile, by stream."""
    ended = {}
    client.send(frame(wire.PING, 0, 0, b"in-order"))
    for _ in range(1000):
        kind, flags, stream, payload = await client.read_frame()
        if kind == wire.HEADERS:
            fields = dict(client.decoder.decode(payload))
            if flags & wire.END_STREAM:
                ended[stream] = int(fields["grpc-status"])
        if kind == wire.PING and flags & wire.ACK and payload == b"in-order":
            return ended
    raise AssertionError("no PING acknowledgement")


async def status_of(client: RawClient, stream: int) -> tuple[int, int]:
    """(grpc-status of the Trailers-Only answer on `stream`, error code of the RST_STREAM that follows it)."""
    _, payload = await client.until(wire.HEADERS, stream)
    status = int(dict(client.decoder.decode(payload))["grpc-status"])
    _, reset = await client.until(wire.RST_STREAM, stream)
    return status, struct.unpack(">L", reset)[0]


async def until_eof(client: RawClient) -> list[tuple[int, int, int, bytes]]:
    """Every frame the server sends until it closes the connection."""
    frames = []
    for _ in range(1000):
        try:
            frames.append(await client.read_frame())
        except asyncio.IncompleteReadError as eof:
            assert eof.partial == b""  # closed between frames
            return frames
    raise AssertionError("the connection stayed open")


def goaways(frames: list[tuple[int, int, int, bytes]]) -> list[tuple[int, int]]:
    return [struct.unpack(">LL", p[:8]) for kind, _, _, p in frames if kind == wire.GOAWAY]


async def one_call(client: RawClient, stream: int, body: bytes = b"ok") -> bytes:
    client.send(headers(client, stream), frame(wire.DATA, wire.END_STREAM, stream, message(body)))
    return await client.answer(stream)


# --------------------------------------------------------------------------------------------------------------
# The parked-bytes budget.


async def test_the_budget_is_shared_by_all_connections() -> None:
    """Three connections park 1,000 bytes each and fill a 3,000-byte listener budget: a fourth connection's
    arriving call fails with RESOURCE_EXHAUSTED + RST_STREAM(NO_ERROR), and so does a second call on a filling
    connection, while each connection's own budget is far from full. A Check that arrives in one frame is still
    served. Finishing or resetting the parked calls frees the budget for everyone."""
    async with serving(LeanSettings(max_parked_bytes=3000)) as (server, _):
        body = message(b"p" * 1995)  # 2,000 bytes: 1,000 parked now, the rest later
        parkers = [await RawClient.connect(server.port) for _ in range(3)]
        for client in parkers:
            client.send(headers(client, 1), frame(wire.DATA, 0, 1, body[:1000]))
            await synced(client)
        assert server.parked_bytes == 3000

        late = await RawClient.connect(server.port)
        late.send(headers(late, 1), frame(wire.DATA, 0, 1, b"\x00"))
        assert await status_of(late, 1) == (GRPC_RESOURCE_EXHAUSTED, wire.NO_ERROR)
        first = parkers[0]
        first.send(headers(first, 3), frame(wire.DATA, 0, 3, body[:1000]))
        assert await status_of(first, 3) == (GRPC_RESOURCE_EXHAUSTED, wire.NO_ERROR)
        assert server.parked_bytes == 3000 and server.refused_calls == 2

        assert await one_call(late, 3, b"one frame") == b"one frame"  # never parked, so never refused

        first.send(frame(wire.DATA, wire.END_STREAM, 1, body[1000:]))
        assert await first.answer(1) == b"p" * 1995
        assert server.parked_bytes == 2000
        second = parkers[1]
        second.send(frame(wire.RST_STREAM, 0, 1, struct.pack(">L", wire.CANCEL)))
        await synced(second)
        assert server.parked_bytes == 1000
        late.send(headers(late, 5), frame(wire.DATA, 0, 5, body[:1000]))  # room again
        await synced(late)
        assert server.parked_bytes == 2000
        late.send(frame(wire.DATA, wire.END_STREAM, 5, body[1000:]))
        assert await late.answer(5) == b"p" * 1995
        parkers[2].send(frame(wire.DATA, wire.END_STREAM, 1, body[1000:]))
        assert await parkers[2].answer(1) == b"p" * 1995
        assert server.parked_bytes == 0
        for client in (*parkers, late):
            await client.close()


async def test_parked_bytes_stay_bounded_whatever_the_peers_send() -> None:
    """Eight connections each try to park 4 calls x 20 KiB (640 KiB in all) against a 100 KiB budget and 48 KiB
    per connection: the listener never holds more than its budget, no connection more than its own, every call
    that could not be parked was answered RESOURCE_EXHAUSTED, and what is held is exactly what was accepted."""
    settings = LeanSettings(max_parked_bytes=100 * 1024, max_buffered_bytes=48 * 1024)
    async with serving(settings) as (server, _):
        chunk = b"\x00" + b"x" * (16 * 1024 - 1)
        clients = [await RawClient.connect(server.port) for _ in range(8)]
        accepted = 0
        for client in clients:
            before = server.parked_bytes
            for stream in (1, 3, 5, 7):
                client.send(
                    headers(client, stream),
                    frame(wire.DATA, 0, stream, chunk),
                    frame(wire.DATA, 0, stream, chunk[: 4 * 1024]),
                )
            ended = await synced(client)
            assert set(ended.values()) <= {GRPC_RESOURCE_EXHAUSTED}
            held = (4 - len(ended)) * 20 * 1024
            assert server.parked_bytes - before == held <= settings.max_buffered_bytes
            assert server.parked_bytes <= settings.max_parked_bytes
            accepted += held
        assert server.parked_bytes == accepted == settings.max_parked_bytes  # 40 + 40 + 20 KiB, then nothing
        assert server.refused_calls == 32 - 5
        for client in clients:  # resetting what is parked releases it all
            client.send(*(frame(wire.RST_STREAM, 0, s, struct.pack(">L", wire.CANCEL)) for s in (1, 3, 5, 7)))
            await synced(client)
        assert server.parked_bytes == 0
        for client in clients:
            await client.close()


# --------------------------------------------------------------------------------------------------------------
# Flow-control windows.


def _settings_of(frames: list[tuple[int, int, int, bytes]]) -> dict[int, int]:
    kind, flags, _, payload = frames[0]
    assert kind == wire.SETTINGS and not flags & wire.ACK
    return dict(struct.unpack_from(">HL", payload, at) for at in range(0, len(payload), 6))


async def test_the_windows_we_advertise_are_small_and_take_an_envoy_check_whole() -> None:
    """By default each stream may send 256 KiB and the connection 1 MiB before we acknowledge (not 16 MiB): a
    Check with Envoy's 64 KiB body limit and its headers is sent at once, without waiting for a WINDOW_UPDATE."""
    async with serving(LeanSettings()) as (server, _):
        client = await RawClient.connect(server.port)
        preamble = [await client.read_frame() for _ in range(2)]
        assert _settings_of(preamble)[wire.S_INITIAL_WINDOW_SIZE] == 256 * 1024
        kind, _, stream, payload = preamble[1]
        assert (kind, stream) == (wire.WINDOW_UPDATE, 0)
        assert struct.unpack(">L", payload)[0] == 1024 * 1024 - wire.DEFAULT_WINDOW
        check = message(b"b" * (64 * 1024 + 4000))  # the body and a CheckRequest's other fields
        client.send(headers(client, 1, SIZE))
        client.send(*(frame(wire.DATA, 0, 1, check[at : at + 16384]) for at in range(0, len(check), 16384)))
        client.send(frame(wire.DATA, wire.END_STREAM, 1, b""))
        assert await client.answer(1) == str(64 * 1024 + 4000).encode()
        await client.close()


async def test_a_message_larger_than_the_window_arrives_one_window_at_a_time() -> None:
    """With 64 KiB windows, a 300 KB message from a peer that honours flow control arrives whole: each stream's
    window is refilled as its bytes are accepted, the connection's once half of it is used."""
    async with serving(LeanSettings(stream_window=65_535, connection_window=65_535)) as (server, _):
        client = await RawClient.connect(server.port)
        data = message(b"m" * 300_000)
        stream_room = connection_room = wire.DEFAULT_WINDOW
        refills = 0
        client.send(headers(client, 1, SIZE))
        sent = 0
        while sent < len(data):
            room = min(stream_room, connection_room, 16384, len(data) - sent)
            if room <= 0:
                kind, _, on, payload = await client.read_frame()
                if kind == wire.WINDOW_UPDATE:
                    increment = struct.unpack(">L", payload)[0]
                    if on == 0:
                        connection_room += increment
                    else:
                        stream_room += increment
                        refills += 1
                continue
            end = wire.END_STREAM if sent + room == len(data) else 0
            client.send(frame(wire.DATA, end, 1, data[sent : sent + room]))
            sent += room
            stream_room -= room
            connection_room -= room
        assert await client.answer(1) == b"300000"
        assert refills >= 4
        await client.close()


def test_data_past_the_connection_window_is_a_flow_control_error() -> None:
    """A peer that ignores our connection window: 80 KiB of DATA in one read against a 64 KiB window."""

    async def drive() -> bytes:
        protocol = LeanGrpcProtocol(_Shared({ECHO: Handlers().echo}, LeanSettings(connection_window=65_535)))
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        chunk = b"\x00" * 16384
        protocol.data_received(
            wire.PREFACE
            + frame(wire.SETTINGS, 0, 0)
            + frame(wire.HEADERS, wire.END_HEADERS, 1, request_block(Encoder(), ECHO))
            + b"".join(frame(wire.DATA, 0, 1, chunk) for _ in range(5))
        )
        assert transport.closed and protocol._shared.parked == 0
        protocol.connection_lost(None)
        return bytes(transport.written)

    written = asyncio.run(drive())
    (code,) = [code for _, code in goaways(parse_frames(written))]
    assert code == wire.FLOW_CONTROL_ERROR


# --------------------------------------------------------------------------------------------------------------
# Timeouts.


async def test_a_connection_without_a_preface_is_closed() -> None:
    """Silent, or stuck halfway through the preface: closed after preface_timeout with GOAWAY. A connection that
    sent its preface in time is not touched and still serves calls."""
    async with serving(LeanSettings(preface_timeout=0.1)) as (server, _):
        good = await RawClient.connect(server.port)
        assert await one_call(good, 1) == b"ok"
        loop = asyncio.get_running_loop()
        for preface in (b"", wire.PREFACE[:10]):
            began = loop.time()
            silent = RawClient(*await asyncio.open_connection("127.0.0.1", server.port))
            silent.send(preface)
            frames = await asyncio.wait_for(until_eof(silent), BOUND)
            assert loop.time() - began >= 0.1
            assert goaways(frames) == [(0, wire.PROTOCOL_ERROR)]
            await silent.close()
        assert await one_call(good, 3, b"still") == b"still"
        await good.close()


async def test_an_idle_connection_is_drained_and_closed() -> None:
    """No call open for idle_timeout: the two-step graceful GOAWAY (so a Check sent meanwhile would still be
    served), then close, whether or not the peer acknowledges the drain PING. A connection whose call is still
    running is not idle, and a running method is not timed out as a request."""
    async with serving(LeanSettings(idle_timeout=0.2, request_timeout=0.2)) as (server, handlers):
        busy = await RawClient.connect(server.port)
        busy.send(headers(busy, 1, WAIT), frame(wire.DATA, wire.END_STREAM, 1, message(b"w")))
        await asyncio.wait_for(handlers.waiting.wait(), BOUND)
        loop = asyncio.get_running_loop()
        for acknowledges in (True, False):
            client = await RawClient.connect(server.port)
            began = loop.time()
            assert await one_call(client, 1) == b"ok"
            _, first = await client.until(wire.GOAWAY)
            assert struct.unpack(">LL", first[:8]) == (2**31 - 1, wire.NO_ERROR)
            assert loop.time() - began >= 0.2
            _, ping = await client.until(wire.PING)
            if acknowledges:
                client.send(frame(wire.PING, wire.ACK, 0, ping))
            frames = await asyncio.wait_for(until_eof(client), BOUND)
            assert goaways(frames) == [(1, wire.NO_ERROR)]  # the final GOAWAY names the last call
            await client.close()
        handlers.gate.set()
        assert await busy.answer(1) == b"after:w"
        assert server.timed_out_calls == 0
        await busy.close()


async def test_a_request_that_does_not_arrive_in_time_is_reset() -> None:
    """A call whose request stops halfway (or after its HEADERS) fails with DEADLINE_EXCEEDED and its stream is
    reset after request_timeout, releasing what it parked; an answer the peer's window holds back that long is
    reset (CANCEL). The connections go on serving calls."""
    async with serving(LeanSettings(request_timeout=0.1)) as (server, _):
        loop = asyncio.get_running_loop()
        client = await RawClient.connect(server.port)
        began = loop.time()
        client.send(headers(client, 1), frame(wire.DATA, 0, 1, message(b"slow")[:4]), headers(client, 3))
        assert await status_of(client, 1) == (GRPC_DEADLINE_EXCEEDED, wire.NO_ERROR)
        assert await status_of(client, 3) == (GRPC_DEADLINE_EXCEEDED, wire.NO_ERROR)
        assert loop.time() - began >= 0.1
        assert server.parked_bytes == 0 and server.timed_out_calls == 2
        assert await one_call(client, 5, b"next") == b"next"

        stingy = await RawClient.connect(server.port)
        stingy.send(frame(wire.SETTINGS, 0, 0, struct.pack(">HL", wire.S_INITIAL_WINDOW_SIZE, 0)))
        stingy.send(headers(stingy, 1), frame(wire.DATA, wire.END_STREAM, 1, message(b"held")))
        flags, _ = await stingy.until(wire.HEADERS, 1)
        assert not flags & wire.END_STREAM  # the response headers; the message waits for window
        _, reset = await stingy.until(wire.RST_STREAM, 1)
        assert struct.unpack(">L", reset)[0] == wire.CANCEL
        assert server.timed_out_calls == 3
        stingy.send(frame(wire.SETTINGS, 0, 0, struct.pack(">HL", wire.S_INITIAL_WINDOW_SIZE, 65_535)))
        assert await one_call(stingy, 3, b"now") == b"now"
        await client.close()
        await stingy.close()


# --------------------------------------------------------------------------------------------------------------
# The connection limit.


async def test_connections_past_the_limit_are_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With two connections open, a third and a fourth get SETTINGS and GOAWAY(ENHANCE_YOUR_CALM) and are closed
    at once; both are counted, one warning line is written (the other counted by the throttle). The open
    connections go on, and once one of them leaves a new one is served."""
    now = [100.0]
    throttle = ThrottledWarning(protocol.log, interval=10.0, clock=lambda: now[0])
    monkeypatch.setattr(protocol, "refused_connections", throttle)
    async with serving(LeanSettings(max_connections=2)) as (server, _):
        first = await RawClient.connect(server.port)
        second = await RawClient.connect(server.port)
        assert await one_call(first, 1) == b"ok"
        assert await one_call(second, 1) == b"ok"  # both accepted
        with caplog.at_level("WARNING", logger=protocol.log.name):
            for _ in range(2):
                extra = RawClient(*await asyncio.open_connection("127.0.0.1", server.port))
                frames = await asyncio.wait_for(until_eof(extra), BOUND)
                assert frames[0][0] == wire.SETTINGS
                assert goaways(frames) == [(0, wire.ENHANCE_YOUR_CALM)]
                await extra.close()
        assert server.refused_connections == 2 and server.connections == 2
        assert [r.getMessage() for r in caplog.records] == [
            "refusing an ext_authz HTTP/2 connection: 2 already open, the limit (server.grpc_max_connections)"
        ]
        assert throttle.suppressed == 1
        assert await one_call(first, 3, b"still") == b"still"
        second.send(frame(wire.GOAWAY, 0, 0, struct.pack(">LL", 0, wire.NO_ERROR)))
        await asyncio.wait_for(until_eof(second), BOUND)  # closed by the server, which forgot it before its FIN
        assert server.connections == 1
        third = await RawClient.connect(server.port)
        assert await one_call(third, 1, b"again") == b"again"
        await first.close()
        await second.close()
        await third.close()


# --------------------------------------------------------------------------------------------------------------
# Configuration.


def test_server_settings_reach_the_listener() -> None:
    """The `server.grpc_*` defaults are the listener's defaults, each knob maps to its field, and the config
    refuses a window the protocol would refuse."""
    assert settings_from_server(ServerSettings()) == LeanSettings()
    custom = ServerSettings(
        grpc_max_connections=3,
        grpc_max_parked_bytes=2 * 1024 * 1024,
        grpc_max_connection_parked_bytes=128 * 1024,
        grpc_stream_window=70_000,
        grpc_connection_window=80_000,
        grpc_preface_timeout=1.5,
        grpc_idle_timeout=30,
        grpc_request_timeout=2,
    )
    assert settings_from_server(custom) == LeanSettings(
        max_connections=3,
        max_parked_bytes=2 * 1024 * 1024,
        max_buffered_bytes=128 * 1024,
        stream_window=70_000,
        connection_window=80_000,
        preface_timeout=1.5,
        idle_timeout=30,
        request_timeout=2,
    )
    with pytest.raises(ValueError, match="grpc_stream_window"):
        ServerSettings(grpc_stream_window=1000)
    with pytest.raises(ValueError, match="windows"):
        LeanSettings(connection_window=2**31)
