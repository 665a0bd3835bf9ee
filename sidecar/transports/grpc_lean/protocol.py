"""One HTTP/2 connection of the lean gRPC engine (`LeanGrpcProtocol`), its limits (`LeanSettings`) and what the
connections of one listener share (`_Shared`). See the package docstring for what it supports and what bounds a
peer."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from hpack.exceptions import HPACKError

from ...inline import Resume
from ...log_throttle import ThrottledWarning
from ..status import (
    GRPC_DEADLINE_EXCEEDED,
    GRPC_INTERNAL,
    GRPC_RESOURCE_EXHAUSTED,
    GRPC_UNIMPLEMENTED,
    GrpcError,
)
from .wire import (
    _GOAWAY,
    _HEAD,
    _SETTING,
    _U32,
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_LIMIT,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INTERNAL_ERROR,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RESPONSE_HEAD,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    TRAILERS_OK,
    WINDOW_UPDATE,
    _Headers,
    frame,
    trailers_only,
)

log = logging.getLogger(__name__)
protocol_errors = ThrottledWarning(log)
"""Connection-level protocol errors: one warning per 10 s at most (anything that reaches the port can cause them)."""
refused_connections = ThrottledWarning(log)
"""Connections refused at the connection limit (one warning per 10 s at most, the others counted)."""
full_budget = ThrottledWarning(log)
"""Calls failed because a parked-bytes budget (the listener's or their connection's) was full."""
stalled_requests = ThrottledWarning(log)
"""Calls reset because their request did not arrive within the request timeout."""

_DRAIN_PING = b"drain\x00\x00\x00"
"""The payload of the PING that ends the first step of a graceful drain (see `LeanGrpcProtocol.goaway`)."""
_MAX_CONTINUATIONS = 64
"""CONTINUATION frames one header block may take (each at least a byte): an endless run of them is an attack."""

Handler = Callable[[bytes], Coroutine[Any, Any, bytes]]
"""A unary method: request message bytes in, response message bytes out (raises GrpcError to fail the call)."""


@dataclass(frozen=True, slots=True)
class LeanSettings:
    """Limits of the lean listener. Defaults suit Envoy on the same host (the `server.grpc_*` config settings).

    Parked bytes are the request bytes of calls whose request is still arriving (DATA received, END_STREAM not
    yet): they are the memory a peer can make us hold. A message that arrives in one DATA frame (16 KiB; every
    Check without a large body) is never parked. When a DATA frame would pass either budget, its call alone fails
    with RESOURCE_EXHAUSTED, followed by RST_STREAM(NO_ERROR), and its parked bytes are released at once:

    - the call, not the connection, because Envoy multiplexes all of a worker's Checks onto one connection, and
      the listener-wide budget may be full because of *another* connection: a GOAWAY would fail every innocent
      call on Envoy's connection, a stream error fails one;
    - RESOURCE_EXHAUSTED rather than a bare RST_STREAM(REFUSED_STREAM), because REFUSED_STREAM invites an
      immediate automatic retry into the same full budget, while a gRPC status reaches Envoy's ext_authz filter
      as an error on that one Check, its `failure_mode_allow` / `status_on_error` apply, and the message says
      which limit was hit; it is also what the per-connection budget and the message size limit answer;
    - RST_STREAM(NO_ERROR) after the answer (RFC 9113 8.1) tells the peer to stop sending the rest of the body.

    The windows we advertise bound how much a well-behaved peer sends before we have read and acknowledged it: a
    stream's window is refilled (WINDOW_UPDATE) as its bytes are accepted, so a larger message still arrives,
    one window at a time; the connection's window once half of it is used. DATA past the connection window
    closes the connection (FLOW_CONTROL_ERROR). The windows pace; the budgets are what bound memory.

    Timeouts are kept by one lazy timer per connection, ticking every `min(request_timeout, idle_timeout) / 4`
    (no timer per call: a call only records the tick it began in). A request timeout fires between its value
    and its value plus two ticks, an idle one plus three (at most 15 s and 67.5 s with the defaults).
    """

    max_concurrent_streams: int = 1000
    """Streams one connection may have open; Envoy queues or opens another connection past it."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request message (grpcio's default receive limit); a larger one fails with RESOURCE_EXHAUSTED."""
    max_header_list_bytes: int = 65_536
    """Largest decoded header list of a request (advertised as SETTINGS_MAX_HEADER_LIST_SIZE)."""
    max_buffered_bytes: int = 8 * 1024 * 1024
    """Parked bytes one connection may hold (two of the largest messages): a single connection cannot take the
    whole listener budget. A call that would pass it fails with RESOURCE_EXHAUSTED."""
    max_parked_bytes: int = 32 * 1024 * 1024
    """Parked bytes all connections of the listener may hold together (see the class docstring)."""
    max_connections: int = 256
    """Open connections; one past it is sent SETTINGS and GOAWAY(ENHANCE_YOUR_CALM) and closed at once (counted,
    warned about once per 10 s). Envoy opens one connection per worker thread (more past the stream limit)."""
    stream_window: int = 256 * 1024
    """The receive window of each stream (SETTINGS_INITIAL_WINDOW_SIZE): a Check with Envoy's 64 KiB body limit
    and its headers arrives without waiting for a WINDOW_UPDATE."""
    connection_window: int = 1024 * 1024
    """The receive window of the connection, topped up once half of it has been used."""
    preface_timeout: float = 5.0
    """Seconds a new connection has to send the HTTP/2 connection preface; then it is closed (GOAWAY)."""
    idle_timeout: float = 60.0
    """Seconds a connection may have no stream open (PINGs do not count) before a graceful GOAWAY closes it."""
    request_timeout: float = 10.0
    """Seconds a call's request may take to arrive whole (HEADERS to END_STREAM); then the call fails with
    DEADLINE_EXCEEDED and its stream is reset. An answer the peer's flow-control window holds back that long
    is reset (CANCEL). A method still running is not timed out here (Envoy resets the calls it gave up on)."""

    def __post_init__(self) -> None:
        sizes = (
            self.max_concurrent_streams,
            self.max_message_bytes,
            self.max_header_list_bytes,
            self.max_buffered_bytes,
            self.max_parked_bytes,
            self.max_connections,
        )
        if min(sizes) <= 0:
            raise ValueError("lean gRPC limits must be positive")
        for window in (self.stream_window, self.connection_window):
            if not DEFAULT_WINDOW <= window <= MAX_WINDOW:
                raise ValueError(f"lean gRPC windows must be within {DEFAULT_WINDOW}..{MAX_WINDOW}, got {window}")
        if min(self.preface_timeout, self.idle_timeout, self.request_timeout) <= 0:
            raise ValueError("lean gRPC timeouts must be positive")


class _Stream:
    """One call: its method, the request bytes so far, the windows both ways, and the tick it began in."""

    __slots__ = ("born", "chunks", "handler", "held", "send_window", "size", "task", "unacked")

    def __init__(self, handler: Handler | None, send_window: int, born: int) -> None:
        self.handler = handler
        self.chunks: list[bytes] = []
        self.size = 0
        self.held = 0  # bytes in `chunks`, counted in the connection's and the listener's parked totals
        self.unacked = 0  # DATA bytes (padding too) received since we last refilled this stream's window
        self.send_window = send_window
        self.born = born  # the connection's tick count when the call began (for the request timeout)
        self.task: asyncio.Task[None] | None = None  # a method that suspended, finishing in a Task


class _ConnectionError(Exception):
    """A connection error: GOAWAY with `code`, then close."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


class _Shared:
    """What every connection of one listener shares: settings, the open connections, the parked-bytes total."""

    def __init__(self, handlers: Mapping[str, Handler], settings: LeanSettings) -> None:
        self.handlers = {path.encode("ascii"): handler for path, handler in handlers.items()}
        self.settings = settings
        self.connections: set[LeanGrpcProtocol] = set()
        self.draining = False
        self.preamble = _preamble(settings)
        self.parked = 0
        """Request bytes parked by all connections (bounded by `settings.max_parked_bytes`)."""
        self.refused_connections = 0
        self.refused_calls = 0  # failed because a parked-bytes budget (the listener's or a connection's) was full
        self.timed_out_calls = 0
        self.stream_window = settings.stream_window
        self.stream_refill = settings.stream_window // 2
        self.connection_window = settings.connection_window
        self.connection_refill = settings.connection_window // 2
        tick = min(settings.request_timeout, settings.idle_timeout) / 4
        self.tick = tick
        # Ticks a call or an idle spell must last (the first tick after it began does not count in full).
        self.request_ticks = math.ceil(settings.request_timeout / tick - 1e-9) + 1
        self.idle_ticks = math.ceil(settings.idle_timeout / tick - 1e-9) + 1


def _preamble(settings: LeanSettings) -> bytes:
    """Our connection preface: SETTINGS, then the connection window raised to `connection_window`."""
    values = (
        (S_MAX_CONCURRENT_STREAMS, settings.max_concurrent_streams),
        (S_INITIAL_WINDOW_SIZE, settings.stream_window),
        (S_MAX_HEADER_LIST_SIZE, settings.max_header_list_bytes),
    )
    payload = b"".join(_SETTING.pack(key, value) for key, value in values)
    raise_by = settings.connection_window - DEFAULT_WINDOW
    update = frame(WINDOW_UPDATE, 0, 0, _U32.pack(raise_by)) if raise_by else b""
    return frame(SETTINGS, 0, 0, payload) + update


class LeanGrpcProtocol(asyncio.Protocol):
    """One HTTP/2 connection from Envoy."""

    __slots__ = (
        "_blocked",
        "_buffer",
        "_consumed",
        "_continuation",
        "_drain_tick",
        "_draining",
        "_goaway_sent",
        "_headers",
        "_held",
        "_idle",
        "_last_stream",
        "_loop",
        "_opened",
        "_out",
        "_peer_frame",
        "_peer_goaway",
        "_peer_window",
        "_preface",
        "_seen_stream",
        "_send_window",
        "_shared",
        "_streams",
        "_tasks",
        "_tick",
        "_timer",
        "_transport",
    )

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._preface = False
        self._headers = _Headers(shared.settings.max_header_list_bytes)
        self._streams: dict[int, _Stream] = {}
        self._last_stream = 0
        self._continuation: tuple[int, int, list[bytes]] | None = None  # (stream, flags, fragments so far)
        self._held = 0  # request bytes parked for calls still arriving (bounded by max_buffered_bytes)
        self._out: list[bytes] = []
        self._consumed = 0  # DATA bytes received since we last topped up the connection window
        self._send_window = DEFAULT_WINDOW  # the connection window Envoy gives us
        self._peer_window = DEFAULT_WINDOW  # Envoy's SETTINGS_INITIAL_WINDOW_SIZE: each new stream's window
        self._peer_frame = FRAME_LIMIT  # Envoy's SETTINGS_MAX_FRAME_SIZE
        self._blocked: deque[tuple[int, bytes]] = deque()  # (stream, DATA + trailers) waiting for window
        self._tasks: set[asyncio.Task[None]] = set()
        self._goaway_sent = False  # the final GOAWAY: streams past its last id are refused
        self._draining = False  # the first GOAWAY of a graceful drain went out; the final one follows the PING ACK
        self._peer_goaway = False
        # the lazy timer (see `_on_timer`)
        self._timer: asyncio.TimerHandle | None = None
        self._opened = 0.0  # loop time of connection_made (for the preface timeout)
        self._tick = 0  # timer ticks since the preface arrived; a stream records the one it began in
        self._idle = 0  # ticks in a row that saw no stream open and no new stream
        self._seen_stream = 0  # `_last_stream` at the last tick: a new stream since then is activity
        self._drain_tick = 0  # the tick a graceful drain began in

    # -- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        shared = self._shared
        settings = shared.settings
        if len(shared.connections) >= settings.max_connections:
            shared.refused_connections += 1
            refused_connections.warning(
                "refusing an ext_authz HTTP/2 connection: %d already open, the limit (server.grpc_max_connections)",
                len(shared.connections),
            )
            self._goaway_sent = True
            self._out.append(shared.preamble)
            self._out.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(0, ENHANCE_YOUR_CALM) + b"too many connections"))
            self.close()
            return
        shared.connections.add(self)
        self._out.append(shared.preamble)
        self._opened = self._loop.time()
        self._arm_timer(min(settings.preface_timeout, shared.tick))
        if shared.draining:
            self.goaway()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._shared.connections.discard(self)
        self._cancel_timer()
        self._shared.parked -= self._held
        self._streams.clear()
        self._blocked.clear()
        self._held = 0
        for task in self._tasks:
            task.cancel()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()  # Envoy is not reading our answers: stop reading its questions

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        try:
            if not self._preface:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self._buffer = buffer
                    return
                if not buffer.startswith(PREFACE):
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                buffer = buffer[len(PREFACE) :]
                self._preface = True
            self._buffer = buffer[self._frames(buffer) :]
        except _ConnectionError as exc:
            self._fail(exc.code, str(exc))
        except HPACKError as exc:
            self._fail(COMPRESSION_ERROR, f"bad header block ({type(exc).__name__})")
        except Exception:  # a bug of ours: this connection ends, the listener and the other connections go on
            log.exception("unexpected failure reading an ext_authz HTTP/2 connection")
            self._fail(INTERNAL_ERROR, "internal error")
        if self._consumed >= self._shared.connection_refill:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._consumed)))
            self._consumed = 0
        self._flush()
        self._close_if_done()

    # -- frames --------------------------------------------------------------------------------------------

    def _frames(self, buffer: bytes) -> int:
        """Handle every whole frame in `buffer`; the number of bytes used."""
        pos = 0
        end = len(buffer)
        unpack = _HEAD.unpack_from
        while end - pos >= 9 and self._transport is not None:
            high, low, kind, flags, stream_id = unpack(buffer, pos)
            length = (high << 8) | low
            if length > FRAME_LIMIT:
                raise _ConnectionError(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            if end - pos - 9 < length:
                break
            payload = buffer[pos + 9 : pos + 9 + length]
            pos += 9 + length
            stream_id &= 0x7FFFFFFF
            if self._continuation is not None and kind != CONTINUATION:
                raise _ConnectionError(PROTOCOL_ERROR, "a header block was interrupted")
            if kind == HEADERS:
                self._on_headers(flags, stream_id, payload)
            elif kind == DATA:
                self._on_data(flags, stream_id, payload)
            elif kind == CONTINUATION:
                self._on_continuation(flags, stream_id, payload)
            else:
                self._on_control(kind, flags, stream_id, payload)
        return pos

    def _on_control(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == PING:
            if stream_id != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self._out.append(frame(PING, ACK, 0, payload))
            elif payload == _DRAIN_PING and self._draining:
                self._final_goaway()
        elif kind == RST_STREAM:
            if stream_id == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
            self._forget(stream_id)  # Envoy gave up on this call (its timeout): stop working on it, as grpcio does
        elif kind == GOAWAY:
            if stream_id != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "GOAWAY payload shorter than 8 bytes")
            self._peer_goaway = True
            self._close_if_done()
        elif kind == PRIORITY:
            if stream_id == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PRIORITY payload is not 5 bytes")
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "a client may not push")
        # Unknown frame types are ignored (section 5.5).

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 bytes")
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise _ConnectionError(FLOW_CONTROL_ERROR, "a stream window passed 2^31-1")
            elif key == S_MAX_FRAME_SIZE:
                if not FRAME_LIMIT <= value <= 2**24 - 1:
                    raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self._peer_frame = value
            elif key == S_ENABLE_PUSH and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH is not 0 or 1")
            # The header table size only bounds an encoder's dynamic table, and ours has none.
        self._out.append(frame(SETTINGS, ACK, 0))
        self._send_blocked()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "a zero WINDOW_UPDATE")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "the connection window passed 2^31-1")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                return  # a stream we already answered: WINDOW_UPDATE may still arrive for it
            if increment == 0:
                self._reset(stream_id, PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._reset(stream_id, FLOW_CONTROL_ERROR)
                return
        self._send_blocked()

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            payload = payload[5:]
        if not flags & END_HEADERS:
            if len(payload) > 2 * self._shared.settings.max_header_list_bytes:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "a header block larger than the header list limit")
            self._continuation = (stream_id, flags, [payload])
            return
        self._header_block(stream_id, flags, payload)

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        pending = self._continuation
        if pending is None or pending[0] != stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without the HEADERS it continues")
        parts = pending[2]
        parts.append(payload)
        if len(parts) > _MAX_CONTINUATIONS or (not payload and not flags & END_HEADERS):
            raise _ConnectionError(ENHANCE_YOUR_CALM, "a header block in too many CONTINUATION frames")
        if sum(len(part) for part in parts) > 2 * self._shared.settings.max_header_list_bytes:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "a header block larger than the header list limit")
        if flags & END_HEADERS:
            self._continuation = None
            self._header_block(stream_id, pending[1], b"".join(pending[2]))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        """A complete header block: a new call's request headers, or trailers of one we are reading."""
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers: they must end the stream
            self._headers.skip(block)
            if not flags & END_STREAM:
                self._reset(stream_id, PROTOCOL_ERROR)
                return
            self._complete(stream_id, stream)
            return
        if stream_id % 2 == 0:
            raise _ConnectionError(PROTOCOL_ERROR, f"HEADERS on server stream {stream_id}")
        if stream_id <= self._last_stream:
            # A stream we answered early or refused, whose client side is still open (request trailers): ignored
            # (RFC 9113 5.1), but decoded, so the dynamic table stays in step with Envoy's.
            self._headers.skip(block)
            return
        self._last_stream = stream_id
        path, grpc_post = self._headers.request(block)
        if self._goaway_sent:
            self._reset(stream_id, REFUSED_STREAM)
            return
        if len(self._streams) >= self._shared.settings.max_concurrent_streams:
            self._reset(stream_id, REFUSED_STREAM)
            return
        if not path:
            self._reset(stream_id, PROTOCOL_ERROR)
            return
        stream = _Stream(self._shared.handlers.get(path), self._peer_window, self._tick)
        self._streams[stream_id] = stream
        if not grpc_post:
            self._fail_call(stream_id, GRPC_INTERNAL, "not a gRPC request (POST with content-type application/grpc)")
        elif stream.handler is None:
            self._fail_call(stream_id, GRPC_UNIMPLEMENTED, f"Method not found: {path.decode('ascii', 'replace')}")
        elif flags & END_STREAM:
            self._complete(stream_id, stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)  # padding counts against the windows too
        shared = self._shared
        self._consumed += length
        if self._consumed > shared.connection_window:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA past the connection window")
        if flags & PADDED:
            payload = _unpad(payload)
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA on a stream that was never opened")
            return  # a stream we answered or reset: its remaining DATA is dropped
        if stream.handler is None:
            return  # answered already (an error), or its request already ended: ignore
        # A stream cannot pass its window: a frame (16 KiB at most) fits in half of it and we refill at half.
        # What a peer that ignores flow control runs into is the connection window above, and the budgets below.
        unacked = stream.unacked + length
        settings = shared.settings
        size = stream.size + len(payload)
        if size > settings.max_message_bytes + 5:
            self._fail_call(stream_id, GRPC_RESOURCE_EXHAUSTED, "the request message is larger than allowed")
            self._reset(stream_id, NO_ERROR)
            return
        if flags & END_STREAM:
            self._complete(stream_id, stream, payload)  # the last bytes are used at once, never parked
            return
        stream.size = size
        if payload:
            more = len(payload)
            if self._held + more > settings.max_buffered_bytes:
                self._refuse_parking(stream_id, "too many request bytes in flight on this connection")
                return
            if shared.parked + more > settings.max_parked_bytes:
                self._refuse_parking(stream_id, "the listener's buffer for arriving requests is full")
                return
            stream.chunks.append(payload)
            stream.held += more
            self._held += more
            shared.parked += more
        if unacked >= shared.stream_refill:  # let the rest of the message come, one window at a time
            self._out.append(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(unacked)))
            unacked = 0
        stream.unacked = unacked

    def _refuse_parking(self, stream_id: int, why: str) -> None:
        """A parked-bytes budget is full: this call fails and its bytes are released (see `LeanSettings`)."""
        self._shared.refused_calls += 1
        full_budget.warning("failing an ext_authz call: %s", why)
        self._fail_call(stream_id, GRPC_RESOURCE_EXHAUSTED, why)
        self._reset(stream_id, NO_ERROR)

    # -- calls ---------------------------------------------------------------------------------------------

    def _complete(self, stream_id: int, stream: _Stream, last: bytes = b"") -> None:
        """The request is whole (`last`: the bytes of its final DATA frame): run its method inline; a method that
        suspends finishes in a Task."""
        handler = stream.handler
        if handler is None:
            return
        stream.handler = None
        chunks = stream.chunks
        if chunks:
            if last:
                chunks.append(last)
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            stream.chunks = []
            self._held -= stream.held
            self._shared.parked -= stream.held
            stream.held = 0
        else:
            data = last  # the whole message came in one frame
        if len(data) < 5 or data[0] != 0 or _U32.unpack_from(data, 1)[0] != len(data) - 5:
            code = GRPC_UNIMPLEMENTED if data[:1] == b"\x01" else GRPC_INTERNAL
            why = "compressed messages are not supported" if code == GRPC_UNIMPLEMENTED else "not one whole message"
            self._fail_call(stream_id, code, why)
            return
        coro = handler(data[5:])
        try:
            first = coro.send(None)
        except StopIteration as done:
            self._answer(stream_id, done.value)
        except GrpcError as exc:
            self._fail_call(stream_id, exc.code, exc.message)
        except (Exception, asyncio.CancelledError):
            log.exception("a gRPC method failed")
            self._fail_call(stream_id, GRPC_INTERNAL, "internal error")
        else:
            task = self._loop.create_task(self._finish(stream_id, coro, first))
            stream.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(partial(_abandon_if_cancelled, coro, first))

    async def _finish(self, stream_id: int, coro: Coroutine[Any, Any, bytes], first: Any) -> None:
        """Complete a call whose method suspended, and answer it."""
        try:
            message = await Resume(coro, first)
        except GrpcError as exc:
            self._fail_call(stream_id, exc.code, exc.message)
        except Exception:
            log.exception("a gRPC method failed")
            self._fail_call(stream_id, GRPC_INTERNAL, "internal error")
        else:
            self._answer(stream_id, message)
        self._flush()
        self._close_if_done()

    def _answer(self, stream_id: int, message: bytes) -> None:
        """Send a successful call's response: headers, the message, trailers."""
        stream = self._streams.get(stream_id)
        if stream is None or self._transport is None:
            return  # reset by Envoy meanwhile
        if type(message) is not bytes:
            log.error("a gRPC method returned %s instead of bytes; failing the call", type(message).__name__)
            self._fail_call(stream_id, GRPC_INTERNAL, "internal error")
            return
        length = len(message)
        data_len = length + 5
        out = self._out
        out.append(frame(HEADERS, END_HEADERS, stream_id, RESPONSE_HEAD))
        if data_len <= self._send_window and data_len <= stream.send_window and data_len <= self._peer_frame:
            self._send_window -= data_len
            del self._streams[stream_id]
            head = _HEAD.pack(data_len >> 8, data_len & 0xFF, DATA, 0, stream_id)
            out.append(head + b"\x00" + _U32.pack(length) + message)
            out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, TRAILERS_OK))
            return
        self._blocked.append((stream_id, b"\x00" + _U32.pack(length) + message))
        self._send_blocked()

    def _send_blocked(self) -> None:
        """Send what flow control held back, as far as the windows allow. A stream whose own window is empty
        waits without holding up the streams queued behind it; the order among the waiting ones is kept."""
        blocked = self._blocked
        stalled: list[tuple[int, bytes]] = []
        while blocked and self._send_window > 0:
            stream_id, data = blocked.popleft()
            stream = self._streams.get(stream_id)
            if stream is None:
                continue  # reset meanwhile
            room = min(self._send_window, stream.send_window, self._peer_frame)
            if room <= 0:
                stalled.append((stream_id, data))
                continue
            chunk, rest = data[:room], data[room:]
            self._send_window -= len(chunk)
            stream.send_window -= len(chunk)
            self._out.append(frame(DATA, 0, stream_id, chunk))
            if rest:
                blocked.appendleft((stream_id, rest))
                continue
            self._forget(stream_id, cancel=False)
            self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, TRAILERS_OK))
        blocked.extendleft(reversed(stalled))

    def _fail_call(self, stream_id: int, code: int, message: str) -> None:
        """End a call with a gRPC error (a Trailers-Only response)."""
        if stream_id not in self._streams or self._transport is None:
            return
        self._forget(stream_id, cancel=False)
        self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, trailers_only(code, message)))

    def _reset(self, stream_id: int, code: int) -> None:
        self._forget(stream_id)
        self._out.append(frame(RST_STREAM, 0, stream_id, _U32.pack(code)))

    def _forget(self, stream_id: int, cancel: bool = True) -> None:
        """Drop a stream: release the request bytes it held and (`cancel`) stop its method if it is running."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.held:
            self._held -= stream.held
            self._shared.parked -= stream.held
            stream.held = 0
        if cancel and stream.task is not None and not stream.task.done():
            stream.task.cancel()

    # -- the connection ------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Calls opened and not yet answered."""
        return len(self._streams)

    @property
    def drained(self) -> bool:
        """The drain finished: the final GOAWAY went out (Envoy acknowledged the drain PING) and every call was
        answered, or the connection is closed."""
        return self._transport is None or (self._goaway_sent and not self._streams)

    def goaway(self) -> None:
        """Start a graceful drain, in two steps as RFC 9113 (6.8) suggests: a GOAWAY naming the largest stream id,
        so Envoy opens no more streams here, and a PING. When its ACK comes back every stream Envoy opened before
        it has arrived, so the final GOAWAY (`_final_goaway`) names the real last stream and nothing Envoy sent in
        the meantime is refused. Open calls still get their answers; the connection closes after the last."""
        if self._draining or self._goaway_sent or self._transport is None:
            return
        self._draining = True
        self._drain_tick = self._tick
        self._out.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(MAX_WINDOW, NO_ERROR)))
        self._out.append(frame(PING, 0, 0, _DRAIN_PING))
        self._flush()

    def _final_goaway(self) -> None:
        if self._goaway_sent or self._transport is None:
            return
        self._goaway_sent = True
        self._out.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(self._last_stream, NO_ERROR)))
        self._flush()

    def close(self, abort: bool = False) -> None:
        """Close now: queued bytes are sent first, unless `abort` (a peer that stopped reading would otherwise
        keep the socket open until its buffer drains). Unanswered calls are abandoned."""
        transport = self._transport
        if transport is not None:
            self._flush()
            self._cancel_timer()
            self._transport = None  # nothing more is read or written; connection_lost cleans up
            if abort:
                transport.abort()
            else:
                transport.close()

    def _close_if_done(self) -> None:
        if (self._goaway_sent or self._peer_goaway) and not self._streams and self._transport is not None:
            self.close()

    def _fail(self, code: int, why: str) -> None:
        """A connection error: GOAWAY naming the last stream we saw, then close."""
        protocol_errors.warning("closing an ext_authz HTTP/2 connection: %s", why)
        if self._transport is None:
            return
        self._goaway_sent = True
        self._out.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(self._last_stream, code) + why.encode("ascii", "replace")))
        for stream_id in list(self._streams):
            self._forget(stream_id)
        self.close()

    def _flush(self) -> None:
        out = self._out
        if out and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    # -- timeouts ------------------------------------------------------------------------------------------

    def _arm_timer(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        """The lazy timer: one per connection, every `_Shared.tick` seconds. A call costs nothing but the tick
        number it records; here the preface, the calls still arriving and idleness are looked at."""
        self._timer = None
        if self._transport is None:
            return
        shared = self._shared
        settings = shared.settings
        if not self._preface:
            left = self._opened + settings.preface_timeout - self._loop.time()
            if left <= 0:
                self._fail(PROTOCOL_ERROR, f"no HTTP/2 connection preface within {settings.preface_timeout:g} s")
                return
            self._arm_timer(min(left, shared.tick))
            return
        self._tick += 1
        tick = self._tick
        streams = self._streams
        if streams:
            begun_by = tick - shared.request_ticks
            for stream_id, stream in list(streams.items()):
                if stream.born > begun_by:
                    continue
                if stream.handler is not None:  # its request is still arriving
                    shared.timed_out_calls += 1
                    stalled_requests.warning(
                        "failing an ext_authz call whose request did not arrive within %g s "
                        "(server.grpc_request_timeout)",
                        settings.request_timeout,
                    )
                    self._fail_call(stream_id, GRPC_DEADLINE_EXCEEDED, "the request did not arrive in time")
                    self._reset(stream_id, NO_ERROR)
                elif stream.task is None or stream.task.done():  # its answer waits for the peer's window
                    shared.timed_out_calls += 1
                    self._reset(stream_id, CANCEL)
        if streams or self._last_stream != self._seen_stream:
            self._seen_stream = self._last_stream
            self._idle = 0
        else:
            self._idle += 1
            if self._idle == shared.idle_ticks:
                self.goaway()  # graceful: a Check Envoy sends meanwhile is still served
        if self._draining and not self._goaway_sent and tick - self._drain_tick >= 2:
            self._final_goaway()  # the drain PING was not acknowledged in time
        self._flush()
        self._close_if_done()
        if self._transport is not None:
            self._arm_timer(shared.tick)


def _abandon_if_cancelled(coro: Coroutine[Any, Any, bytes], first: Any, task: asyncio.Task[None]) -> None:
    """A call's Task was cancelled (Envoy reset the stream, or the connection ended), possibly before it first
    ran, when the method has not yet seen the cancellation: close the method, so its `finally` blocks run now,
    and cancel what it was waiting for."""
    if not task.cancelled():
        return
    coro.close()
    if isinstance(first, asyncio.Future) and not first.done():
        first.cancel()


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise _ConnectionError(PROTOCOL_ERROR, "a padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]
