"""One proxy connection of the HTTP transport (`HttpAuthzProtocol`) and what the connections of one listener share
(`_Shared`): parse requests with httptools, decide them in order, answer them in order."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import weakref
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Final, cast

import httptools

from ... import reasons
from ...inline import Resume
from ...log_throttle import ThrottledWarning
from ...memo import BoundedMemo
from ...request import Decision, Request
from .flavors import DENY_STATUSES, FLAVORS
from .render import (
    _BAD_REQUEST,
    _BUSY,
    _CLOSE,
    _CONTINUE,
    _HEADERS_TOO_LARGE,
    _KEEP_ALIVE,
    _MAX_RENDERED,
    _TIMEOUT,
    _TOO_LARGE,
    INTERNAL,
    _RenderError,
    render,
)

if TYPE_CHECKING:
    from ...settings import HttpModeSettings
    from .. import Checker

log = logging.getLogger(__name__)
refused_connections = ThrottledWarning(log)


def _compile_networks(peers: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(p, strict=False) for p in peers)
    except ValueError as exc:
        raise ValueError(f"http.trusted_peers: {exc}") from None


class _Shared:
    """What every connection of one listener reads: settings in their fast form, the pipeline, live conns."""

    __slots__ = (
        "buffered",
        "build",
        "checked_names",
        "connections",
        "deny_status",
        "max_body_bytes",
        "max_buffered_bytes",
        "max_header_bytes",
        "max_pipelined",
        "networks",
        "pipeline",
        "prefix",
        "refused_connections",
        "rendered",
        "settings",
    )

    def __init__(self, pipeline: Checker, settings: HttpModeSettings) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.build = FLAVORS[settings.flavor]
        """The flavor's `BuildRequest`, chosen once: a request costs one call whatever the flavor."""
        self.deny_status = DENY_STATUSES.get(settings.flavor)
        """How the flavor's proxy is answered on a deny (None: with the decision's own status)."""
        self.prefix = settings.path_prefix
        # The limits read for every request, as slots: reading a field of the (pydantic) settings model costs
        # several times as much as reading a slot.
        self.max_header_bytes = settings.max_header_bytes
        self.max_body_bytes = settings.max_body_bytes
        self.max_buffered_bytes = settings.max_buffered_bytes
        self.max_pipelined = settings.max_pipelined
        self.networks = _compile_networks(settings.trusted_peers)
        self.checked_names: set[str] = set()
        self.connections: set[HttpAuthzProtocol] = set()
        self.buffered = 0
        """Request body bytes every connection holds together (`max_buffered_bytes`)."""
        self.refused_connections = 0
        # Decisions are reused (constant denies, the pipeline's memoized allows): keep their wire form while
        # they live. Weak keys, so a dropped Decision takes its bytes with it.
        self.rendered: weakref.WeakKeyDictionary[Decision, bytes] = weakref.WeakKeyDictionary()

    def is_trusted(self, address: str) -> bool:
        """True if `address` (the TCP peer) may vouch for the client's address and certificate."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


class _Reject(Exception):
    """Raised from a parser callback to stop parsing and answer with a canned, closing response."""

    def __init__(self, response: bytes) -> None:
        super().__init__()
        self.response = response


_NAMES: BoundedMemo[bytes, str] = BoundedMemo(4096)
"""Raw header name -> lower-case str. Proxies send the same few dozen names over and over."""


def _name(raw: bytes) -> str:
    """Decode and remember a header name (the memo stops growing at 4096 distinct spellings)."""
    return _NAMES.put(raw, raw.decode("latin-1").lower())


def _joined(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers with repeated names joined by "," in order of arrival (what Envoy does before a CheckRequest)."""
    headers: dict[str, str] = {}
    for name, value in raw:
        key = _NAMES.get(name) or _name(name)
        text = value.decode("utf-8", "surrogateescape")
        previous = headers.get(key)
        headers[key] = text if previous is None else f"{previous},{text}"
    return headers


def build_request(
    method: str, url: str, headers: dict[str, str], body: bytes, peer: str, trusted: bool, shared: _Shared
) -> Request | None:
    """The `Request` one authorization call describes, read as the listener's flavor reads it; None if it lacks
    what the flavor requires. (The protocol calls `shared.build` itself.)"""
    return shared.build(method, url, headers, body, peer, trusted, shared.prefix)


class _Pending:
    """One parsed request waiting for its turn (responses leave in request order)."""

    __slots__ = ("connection", "head_only", "keep_alive", "request", "response")

    def __init__(
        self, request: Request | None, keep_alive: bool, connection: bytes, head_only: bool, response: bytes = b""
    ) -> None:
        self.request = request
        self.keep_alive = keep_alive
        self.connection = connection  # the `connection:` line this answer needs (b"" for HTTP/1.1 keep-alive)
        self.head_only = head_only
        self.response = response  # set: a ready answer (bad request, limits), sent instead of a check


class HttpAuthzProtocol(asyncio.Protocol):
    """One proxy connection: parse requests, decide them in order, answer them in order."""

    __slots__ = (
        "_body",
        "_body_len",
        "_busy",
        "_chunk_fits",
        "_close_after_flush",
        "_head_in_chunk",
        "_head_len",
        "_head_raw",
        "_headers",
        "_held",
        "_in_head",
        "_in_message",
        "_last_activity",
        "_loop",
        "_msg_seq",
        "_msg_start",
        "_out",
        "_parser",
        "_peer",
        "_queue",
        "_raw_headers",
        "_reading_paused",
        "_settings",
        "_shared",
        "_stop_reading",
        "_task",
        "_timer",
        "_transport",
        "_trusted",
        "_url",
        "_writing_paused",
    )

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._settings = shared.settings
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._trusted = False
        # the message being parsed
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_len = 0
        self._head_len = 0  # exact: what the callbacks saw
        self._head_raw = 0  # lower bound: whole chunks that arrived inside one unfinished head
        self._chunk_fits = False  # the chunk being parsed is no longer than max_header_bytes
        self._head_in_chunk = False  # ... and the current message began in it: its head cannot be too large
        self._in_message = False
        self._in_head = False
        self._msg_seq = 0
        self._msg_start = 0.0
        # ordering and output
        self._queue: deque[_Pending] = deque()
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        self._stop_reading = False  # a closing response is queued: ignore whatever else arrives
        self._close_after_flush = False
        self._reading_paused = False
        self._writing_paused = False
        self._last_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._held = 0  # body bytes counted in `_Shared.buffered` for this connection, released when answered

    # -- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        shared = self._shared
        if len(shared.connections) >= self._settings.max_connections:
            shared.refused_connections += 1
            refused_connections.warning(
                "refusing an HTTP connection: %d open (http.max_connections)", len(shared.connections)
            )
            self._stop_reading = True
            transport.close()
            return
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._trusted = self._shared.is_trusted(self._peer) if self._peer else False
        self._shared.connections.add(self)
        self._last_activity = self._loop.time()
        self._arm_timer(self._tick())

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._shared.connections.discard(self)
        self._shared.buffered -= self._held
        self._held = 0
        self._queue.clear()
        self._out.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def data_received(self, data: bytes) -> None:
        if self._stop_reading:
            return
        in_head, seq = self._in_head, self._msg_seq
        self._chunk_fits = len(data) <= self._shared.max_header_bytes
        self._head_in_chunk = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._after_upgrade(data, int(upgrade.args[0]))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause.response if isinstance(cause, _Reject) else _BAD_REQUEST)
        except httptools.HttpParserError:
            self._fail(_BAD_REQUEST)
        else:
            # A header that keeps arriving without ever completing is buffered inside the parser, where the
            # callbacks cannot see it: count whole chunks that start and end inside the same message head.
            if in_head and self._in_head and self._msg_seq == seq:
                self._head_raw += len(data)
                if self._head_raw > self._shared.max_header_bytes:
                    self._fail(_HEADERS_TOO_LARGE)
        if not self._busy:
            self._drain()
        self._flush()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # -- httptools callbacks -------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_head = True
        self._msg_seq += 1
        self._msg_start = self._loop.time()
        self._url = b""
        self._raw_headers = []
        self._body = []
        self._body_len = 0
        self._head_len = 0
        self._head_raw = 0
        self._head_in_chunk = self._chunk_fits

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_len += len(url)
        if self._head_len > self._shared.max_header_bytes:
            raise _Reject(_HEADERS_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called once per header, so it only collects; on_headers_complete decodes them all in one loop.
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False  # body phase: on_body counts the body exactly
        raw = self._raw_headers
        if not self._head_in_chunk:  # else the whole head is inside one chunk that fits: nothing to count
            size = self._head_len
            for name, value in raw:
                size += len(name) + len(value)
            if size > self._shared.max_header_bytes:
                raise _Reject(_HEADERS_TOO_LARGE)
        # Raw values decode as the gRPC adapter decodes them (UTF-8, undecodable bytes kept as surrogates).
        names = _NAMES
        headers = {names.get(name) or _name(name): value.decode("utf-8", "surrogateescape") for name, value in raw}
        if len(headers) != len(raw):
            headers = _joined(raw)
        self._headers = headers
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._shared.max_body_bytes:
            raise _Reject(_TOO_LARGE)
        if (
            self._headers.get("expect", "").lower() == "100-continue"
            and not self._queue
            and not self._busy
            and self._transport is not None
        ):
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        size = len(body)
        self._body_len += size
        shared = self._shared
        if self._body_len > shared.max_body_bytes:
            raise _Reject(_TOO_LARGE)
        if shared.buffered + size > shared.max_buffered_bytes:
            raise _Reject(_BUSY)
        shared.buffered += size
        self._held += size
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._stop_reading:
            return
        parser = self._parser
        keep_alive = bool(parser.should_keep_alive())
        method = parser.get_method().decode("ascii", "replace")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        shared = self._shared
        request = shared.build(
            method,
            self._url.decode("utf-8", "surrogateescape"),  # as headers and the gRPC adapter decode a path
            self._headers,
            body,
            self._peer,
            self._trusted,
            shared.prefix,
        )
        head_only = method == "HEAD"
        if not keep_alive:
            connection = _CLOSE
        elif parser.get_http_version() == "1.0":
            connection = _KEEP_ALIVE  # an HTTP/1.0 client keeps the connection only if we say so
        else:
            connection = b""
        if request is None:
            response = render(_MALFORMED, head_only, connection, shared.checked_names, shared.deny_status)
            self._enqueue(_Pending(None, keep_alive, connection, head_only, response))
        else:
            self._enqueue(_Pending(request, keep_alive, connection, head_only))
        if not keep_alive:
            self._stop_reading = True

    # -- ordering, checking, answering ---------------------------------------------------------------------

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        if len(self._queue) >= self._shared.max_pipelined:
            self._update_reading()

    def _drain(self) -> None:
        """Answer queued requests in order until one has to wait for its check (or the queue is empty)."""
        queue = self._queue
        while queue and self._transport is not None and not self._close_after_flush:
            pending = queue.popleft()
            if pending.request is None:
                self._respond_bytes(pending.response, pending.keep_alive)
                continue
            coro = self._shared.pipeline.check(pending.request)
            try:
                first = coro.send(None)
            except StopIteration as done:
                self._respond(done.value, pending)
            except Exception:
                log.exception("pipeline.check raised; answering 500")
                self._respond(INTERNAL, pending)
            else:
                self._busy = True
                self._task = self._loop.create_task(self._finish(coro, first, pending))
                return
        if self._reading_paused:
            self._update_reading()

    async def _finish(self, coro: Coroutine[Any, Any, Decision], first: Any, pending: _Pending) -> None:
        """Complete a check that suspended, answer it, then carry on with the queue."""
        try:
            decision = await Resume(coro, first)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pipeline.check raised; answering 500")
            decision = INTERNAL
        self._busy = False
        self._task = None
        if self._transport is None:
            return
        self._respond(decision, pending)
        self._drain()
        self._flush()

    def _respond(self, decision: Decision, pending: _Pending) -> None:
        request = pending.request
        if request is not None and request.body:
            size = len(request.body)
            self._held -= size
            self._shared.buffered -= size
        connection = pending.connection
        common = not connection and not pending.head_only  # HTTP/1.1 keep-alive: the case worth remembering
        shared = self._shared
        memo = shared.rendered
        data = memo.get(decision) if common else None
        if data is None:
            try:
                data = render(decision, pending.head_only, connection, shared.checked_names, shared.deny_status)
            except _RenderError as bad:
                log.error("decision header %r cannot be sent; answering 500 instead", str(bad))
                data = render(INTERNAL, pending.head_only, connection, shared.checked_names, shared.deny_status)
            else:
                if common and len(memo) < _MAX_RENDERED:
                    memo[decision] = data
        self._respond_bytes(data, pending.keep_alive)

    def _respond_bytes(self, data: bytes, keep_alive: bool) -> None:
        self._out.append(data)
        if not keep_alive:
            self._close_after_flush = True
            self._queue.clear()
        self._last_activity = self._loop.time()

    def _flush(self) -> None:
        out = self._out
        transport = self._transport
        if transport is None:
            return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self._close_after_flush:
            transport.close()

    def _fail(self, response: bytes) -> None:
        """Stop reading; answer `response` (after the answers already owed) and close."""
        self._stop_reading = True
        self._in_message = self._in_head = False
        self._enqueue(_Pending(None, False, _CLOSE, False, response))

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        """The proxy forwarded `Upgrade`/`Connection: upgrade` (or sent CONNECT): llhttp stops there.

        The message itself is complete (we never upgrade), so parse whatever follows with a fresh parser. A body
        would have been left unparsed by llhttp, so an upgrade request with a body is refused.
        """
        length = self._headers.get("content-length", "0")
        if length not in ("", "0") or self._headers.get("transfer-encoding"):
            queue = self._queue
            if queue and queue[-1].request is not None:
                queue.pop()  # llhttp completed it without its body: never decide on a truncated request
            self._fail(_BAD_REQUEST)
            return
        self._parser = httptools.HttpRequestParser(self)
        rest = data[offset:]
        if rest and not self._stop_reading:
            self.data_received(rest)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None:
            return
        should_pause = self._writing_paused or len(self._queue) >= self._shared.max_pipelined
        if should_pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not should_pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    # -- timeouts ------------------------------------------------------------------------------------------

    def _tick(self) -> float:
        settings = self._settings
        return min(settings.idle_timeout, settings.request_timeout)

    def _arm_timer(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        """Lazy timer: per request we only store timestamps; this wakes up now and then and compares."""
        self._timer = None
        transport = self._transport
        if transport is None or self._close_after_flush:
            return
        settings = self._settings
        now = self._loop.time()
        if self._busy or self._queue:
            self._arm_timer(self._tick())
        elif self._in_message:
            elapsed = now - self._msg_start
            if elapsed >= settings.request_timeout:
                self._fail(_TIMEOUT)
                self._drain()
                self._flush()
                return
            self._arm_timer(max(settings.request_timeout - elapsed, 0.001))
        else:
            elapsed = now - self._last_activity
            if elapsed >= settings.idle_timeout:
                transport.close()
                return
            self._arm_timer(max(min(settings.idle_timeout - elapsed, self._tick()), 0.001))

    # -- shutdown ------------------------------------------------------------------------------------------

    @property
    def is_idle(self) -> bool:
        """True between requests: closing now loses nothing."""
        return not self._busy and not self._queue and not self._in_message

    def close(self) -> None:
        """Close the connection (after flushing whatever has been written)."""
        if self._transport is not None:
            self._transport.close()


_MALFORMED: Final = Decision(
    allowed=False,
    status=400,
    reason=reasons.MALFORMED_REQUEST,
    message="The authorization request does not say which request to authorize",
)
