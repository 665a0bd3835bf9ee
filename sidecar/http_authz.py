"""HTTP ext_authz adapter: Envoy's `http_service` (and nginx `auth_request`, Traefik ForwardAuth) over HTTP/1.1.

This is the second transport over the same pipeline as `ext_authz.py`: it turns one authorization request into
our immutable `Request`, awaits `pipeline.check(request)` and renders the `Decision` as an HTTP response
(200 = allow, with the headers to add upstream; anything else = deny, with our status, headers and JSON body).

Why a hand-written `asyncio.Protocol` over `httptools` and not a framework: a framework costs several times the
raw server per request (see docs/http-mode.md), and the warm path here is a few hundred bytes in, a few dozen
out. So the per-request work is kept to: the parser callbacks, one dict of headers, one `Request`, one
`pipeline.check`, and one response assembled from pre-encoded parts. Checks that complete without suspending
(cache hits, CPU-only authorizers) are driven inline without creating a Task; only a check that really waits
gets one. Responses always leave in request order, so pipelining is safe.

Trust: `x-authz-source-address` / `x-authz-peer-certificate` (or the forwarded headers of the nginx and Traefik
flavors) are honoured only when the TCP peer is one of `HttpSettings.trusted_peers`; the shipped Envoy config
removes client copies of them before adding its own (deploy/envoy/envoy-http.yaml).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Literal, Protocol, cast

import httptools

from . import reasons
from .inline import Resume
from .log_throttle import ThrottledWarning
from .memo import BoundedMemo
from .request import EMPTY_MAP, Decision, Request, is_canonical_method
from .transports.listener import RunningListener

log = logging.getLogger(__name__)
refused_connections = ThrottledWarning(log)

Flavor = Literal["envoy", "nginx", "traefik"]
FLAVORS: Final = ("envoy", "nginx", "traefik")

SOURCE_ADDRESS_HEADER: Final = "x-authz-source-address"
PEER_CERTIFICATE_HEADER: Final = "x-authz-peer-certificate"
HEADERS_TO_REMOVE_HEADER: Final = "x-envoy-auth-headers-to-remove"
"""Envoy removes the comma-separated headers named here from the upstream request on a 200."""

# Reason codes for failures only this transport can have (the set in reasons.py covers the rest).
PAYLOAD_TOO_LARGE: Final = "PayloadTooLarge"
HEADERS_TOO_LARGE: Final = "RequestHeaderFieldsTooLarge"
REQUEST_TIMEOUT: Final = "RequestTimeout"
SERVER_BUSY: Final = "ServerBusy"


class Checker(Protocol):
    """What the adapter needs from the pipeline (`sidecar.pipeline.Pipeline` satisfies it)."""

    async def check(self, request: Request) -> Decision:
        """Decide one request; expected never to raise (the adapter still turns a raise into a 500 deny)."""
        ...


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Knobs of the HTTP listener (config section `http:`). Defaults suit Envoy on the same host.

    `max_body_bytes` should be at least Envoy's `with_request_body.max_request_bytes`, else bodies Envoy accepts
    are refused here. `request_timeout` bounds how long one request may take to arrive (slow clients);
    `idle_timeout` how long a keep-alive connection may sit unused. Both are enforced with a granularity of
    `min(request_timeout, idle_timeout)`.
    """

    flavor: Flavor = "envoy"
    path_prefix: str = ""
    trusted_peers: tuple[str, ...] = ("127.0.0.1", "::1")
    """Addresses or CIDRs whose forwarded-source/certificate headers are believed."""
    max_header_bytes: int = 32 * 1024
    max_body_bytes: int = 1024 * 1024
    idle_timeout: float = 60.0
    request_timeout: float = 10.0
    max_pipelined: int = 64
    """Requests queued per connection before we stop reading from it (backpressure)."""
    max_connections: int = 256
    """Open connections at once; past it a new connection is closed at once, counted and logged (throttled)."""
    max_buffered_bytes: int = 32 * 1024 * 1024
    """Request body bytes the whole listener holds (still arriving, or queued until answered). Without it each
    connection could hold `max_pipelined` bodies of `max_body_bytes` and connections are unbounded too. A body
    that would pass it is answered 503 `ServerBusy` and its connection closed: the other connections' requests
    are served, and the proxy's failure mode applies to that one."""

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"http.flavor must be one of {', '.join(FLAVORS)}, got {self.flavor!r}")
        if self.path_prefix and (not self.path_prefix.startswith("/") or self.path_prefix.endswith("/")):
            raise ValueError("http.path_prefix must start with '/' and not end with '/' (e.g. /authz)")
        if min(self.max_header_bytes, self.max_body_bytes, self.max_pipelined, self.max_connections) <= 0:
            raise ValueError("http limits must be positive")
        if min(self.idle_timeout, self.request_timeout) <= 0:
            raise ValueError("http timeouts must be positive")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError("http.max_buffered_bytes must be at least http.max_body_bytes")
        _compile_networks(self.trusted_peers)  # fail at config load, not at the first connection


# --------------------------------------------------------------------------------------------------------------
# Rendering: constant parts are encoded once, at import.

_STATUS_LINES: Final[dict[int, bytes]] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus
}
_ALLOW_HEAD: Final = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
_ALLOW_BARE: Final = _ALLOW_HEAD + b"\r\n"
_CLOSE: Final = b"connection: close\r\n"
_KEEP_ALIVE: Final = b"connection: keep-alive\r\n"
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON: Final = b"content-type: application/json\r\ncontent-length: "
_UNSAFE_VALUE = re.compile("[\x00-\x08\x0a-\x1f\x7f]").search
"""Control characters Envoy refuses in a header value (tab is allowed): answering with them would split the
response (CR/LF) or make Envoy fail the request; the pipeline never lets an identity carry them."""
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z").match

_MAX_RENDERED: Final = 4096

INTERNAL: Final = reasons.INTERNAL  # the same 500 deny the gRPC adapter sends for a pipeline that raised


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} Unknown\r\n".encode("ascii")


def _json_body(reason: str, message: str) -> bytes:
    return json.dumps({"message": message, "reason": reason}, separators=(",", ":")).encode()


def _canned(status: int, reason: str, message: str) -> bytes:
    """A complete, connection-closing error response, built once at import."""
    body = _json_body(reason, message)
    return b"%s%s%d\r\n%s\r\n%s" % (_status_line(status), _JSON, len(body), _CLOSE, body)


_BAD_REQUEST: Final = _canned(400, reasons.MALFORMED_REQUEST, "Malformed HTTP request")
_TOO_LARGE: Final = _canned(413, PAYLOAD_TOO_LARGE, "Request body too large")
_HEADERS_TOO_LARGE: Final = _canned(431, HEADERS_TOO_LARGE, "Request headers too large")
_TIMEOUT: Final = _canned(408, REQUEST_TIMEOUT, "Request not received in time")
_BUSY: Final = _canned(503, SERVER_BUSY, "Too many request bytes held; try again")


class _RenderError(ValueError):
    """A decision header that cannot be put on the wire (CR/LF/NUL, bad name): we answer 500 instead."""


def _header_block(headers: Iterable[tuple[str, str]], checked: set[str]) -> bytes:
    """`name: value\\r\\n` lines; refuses anything that could split the response (header injection)."""
    parts = []
    for name, value in headers:
        if name not in checked:
            if not _TOKEN(name):
                raise _RenderError(name)
            if len(checked) < 4096:  # names come from config and authorizers: a small, stable set
                checked.add(name)
        if _UNSAFE_VALUE(value):
            raise _RenderError(name)
        parts.append(f"{name}: {value}\r\n")
    try:
        return "".join(parts).encode()
    except UnicodeEncodeError:  # a lone surrogate: not text any client or proxy could read
        raise _RenderError("a header value that is not UTF-8 text") from None


def render(decision: Decision, head_only: bool, connection: bytes, checked: set[str]) -> bytes:
    """The HTTP/1.1 response for `decision`. `connection` is b"", `_CLOSE` or `_KEEP_ALIVE`.

    Allowed: 200 with the decision's headers (Envoy copies those in `allowed_upstream_headers`) and the names in
    `headers_to_remove` via `x-envoy-auth-headers-to-remove`. Denied: the decision's status (never 200: that
    would allow), its headers and a JSON body; `head_only` (the original request was HEAD) omits the body, as
    HTTP requires, so the proxy's parser stays in step.
    """
    headers = decision.all_headers()
    if decision.allowed:
        if not headers and not decision.headers_to_remove:
            return _ALLOW_BARE if not connection else _ALLOW_HEAD + connection + b"\r\n"
        block = _header_block(headers, checked)
        if decision.headers_to_remove:
            block += _header_block(((HEADERS_TO_REMOVE_HEADER, ",".join(decision.headers_to_remove)),), checked)
        return b"%s%s%s\r\n" % (_ALLOW_HEAD, block, connection)
    status = decision.status
    if not 300 <= status <= 599:
        status = 500 if status < 100 or status > 599 else 403
    body = _json_body(decision.reason, decision.message)
    block = _header_block(headers, checked) if headers else b""
    return b"%s%s%d\r\n%s%s\r\n%s" % (
        _status_line(status),
        _JSON,
        len(body),
        block,
        connection,
        b"" if head_only else body,
    )


# --------------------------------------------------------------------------------------------------------------
# Shared, per-listener state: everything derived from the settings once.


def _compile_networks(peers: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(p, strict=False) for p in peers)
    except ValueError as exc:
        raise ValueError(f"http.trusted_peers: {exc}") from None


class _Shared:
    """What every connection of one listener reads: settings in their fast form, the pipeline, live conns."""

    __slots__ = (
        "buffered",
        "checked_names",
        "connections",
        "networks",
        "pipeline",
        "prefix",
        "refused_connections",
        "rendered",
        "settings",
    )

    def __init__(self, pipeline: Checker, settings: HttpSettings) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.prefix = settings.path_prefix
        self.networks = _compile_networks(settings.trusted_peers)
        self.checked_names: set[str] = set()
        self.connections: set[HttpAuthzProtocol] = set()
        self.buffered = 0
        """Request body bytes every connection holds together (`HttpSettings.max_buffered_bytes`)."""
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


# --------------------------------------------------------------------------------------------------------------
# Building the Request from what the proxy sent.


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


def _strip_prefix(url: str, prefix: str) -> str | None:
    """`url` without the configured prefix; None if it does not carry it (the proxy is misconfigured)."""
    if not url.startswith(prefix):
        return None
    rest = url[len(prefix) :]
    if not rest:
        return "/"
    if rest[0] == "/":
        return rest
    return "/" + rest if rest[0] == "?" else None


PARTIAL_BODY_HEADER: Final = "x-envoy-auth-partial-body"


def _mark_unseen_body(headers: dict[str, str]) -> None:
    """nginx's `auth_request` never carries the body; the shipped config passes its length and transfer coding
    instead. A request that has a body is marked as Envoy marks a body it cut short, so SigV4 denies it
    (`PartialBody`) rather than verifying the signature over an empty body while the upstream gets another."""
    length = headers.pop("x-original-content-length", "").strip()
    coding = headers.pop("x-original-transfer-encoding", "").strip()
    headers.pop(PARTIAL_BODY_HEADER, None)  # a client's own copy never counts
    if coding or (length and length != "0"):
        headers[PARTIAL_BODY_HEADER] = "true"


def _last_hop(forwarded_for: str) -> str:
    """The address the proxy itself saw: the last entry of X-Forwarded-For."""
    return forwarded_for.rpartition(",")[2].strip()


def build_request(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    peer: str,
    trusted: bool,
    shared: _Shared,
) -> Request | None:
    """The `Request` one authorization call describes; None if it lacks what the flavor requires."""
    flavor = shared.settings.flavor
    scheme = "http"
    source = ""
    cert = ""
    if flavor == "envoy":
        raw_path: str | None = _strip_prefix(url, shared.prefix) if shared.prefix else url
        if trusted:
            source = headers.get(SOURCE_ADDRESS_HEADER, "")
            cert = headers.get(PEER_CERTIFICATE_HEADER, "")
            scheme = headers.get("x-forwarded-proto", "http")
    elif flavor == "nginx":
        raw_path = headers.get("x-original-uri")
        method = headers.get("x-original-method", method)
        _mark_unseen_body(headers)
        if trusted:
            source = headers.get(SOURCE_ADDRESS_HEADER, "")
            cert = headers.get(PEER_CERTIFICATE_HEADER, "")
            scheme = headers.get("x-forwarded-proto", "http")
    else:  # traefik
        raw_path = headers.get("x-forwarded-uri")
        method = headers.get("x-forwarded-method", method)
        forwarded_host = headers.get("x-forwarded-host")
        if forwarded_host:
            headers["host"] = forwarded_host
        if trusted:
            source = _last_hop(headers.get("x-forwarded-for", ""))
            scheme = headers.get("x-forwarded-proto", "http")
    if not raw_path or raw_path[0] != "/" or not is_canonical_method(method):
        return None
    if not trusted:
        source = peer  # nobody vouches for a client: the connection's own peer is the only truth we have
    # Positional, in field order (sidecar/request.py): keywords cost five times as much, once per request.
    return Request(
        method,
        raw_path,
        raw_path.partition("?")[0],
        headers,
        headers.get("host", ""),
        scheme,
        "",
        source,
        0,
        cert,
        body,
        EMPTY_MAP,
        headers.get("x-request-id", ""),
        time.time(),
    )


# --------------------------------------------------------------------------------------------------------------
# The connection.


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
        self._chunk_fits = len(data) <= self._settings.max_header_bytes
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
                if self._head_raw > self._settings.max_header_bytes:
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
        if self._head_len > self._settings.max_header_bytes:
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
            if size > self._settings.max_header_bytes:
                raise _Reject(_HEADERS_TOO_LARGE)
        # Raw values decode as the gRPC adapter decodes them (UTF-8, undecodable bytes kept as surrogates).
        names = _NAMES
        headers = {names.get(name) or _name(name): value.decode("utf-8", "surrogateescape") for name, value in raw}
        if len(headers) != len(raw):
            headers = _joined(raw)
        self._headers = headers
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._settings.max_body_bytes:
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
        if self._body_len > self._settings.max_body_bytes:
            raise _Reject(_TOO_LARGE)
        shared = self._shared
        if shared.buffered + size > self._settings.max_buffered_bytes:
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
        request = build_request(
            method,
            self._url.decode("latin-1"),
            self._headers,
            body,
            self._peer,
            self._trusted,
            self._shared,
        )
        head_only = method == "HEAD"
        if not keep_alive:
            connection = _CLOSE
        elif parser.get_http_version() == "1.0":
            connection = _KEEP_ALIVE  # an HTTP/1.0 client keeps the connection only if we say so
        else:
            connection = b""
        if request is None:
            response = render(_MALFORMED, head_only, connection, self._shared.checked_names)
            self._enqueue(_Pending(None, keep_alive, connection, head_only, response))
        else:
            self._enqueue(_Pending(request, keep_alive, connection, head_only))
        if not keep_alive:
            self._stop_reading = True

    # -- ordering, checking, answering ---------------------------------------------------------------------

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        if len(self._queue) >= self._settings.max_pipelined:
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
        memo = self._shared.rendered
        data = memo.get(decision) if common else None
        if data is None:
            try:
                data = render(decision, pending.head_only, connection, self._shared.checked_names)
            except _RenderError as bad:
                log.error("decision header %r cannot be sent; answering 500 instead", str(bad))
                data = render(INTERNAL, pending.head_only, connection, self._shared.checked_names)
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
        should_pause = self._writing_paused or len(self._queue) >= self._settings.max_pipelined
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


# --------------------------------------------------------------------------------------------------------------
# The listener.


class HttpAuthzServer(RunningListener):
    """A running HTTP listener. Same surface as `asyncio.Server` plus `shutdown(grace)` for SIGTERM."""

    _shared: _Shared

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; let in-flight checks answer for up to `grace` seconds; then close everything."""
        self.server.close()
        deadline = asyncio.get_running_loop().time() + grace
        while True:
            busy = [c for c in self._shared.connections if not c.is_idle]
            for conn in list(self._shared.connections):
                if conn.is_idle:
                    conn.close()
            if not busy or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.01)  # polling a handful of connections during shutdown only
        self.close()
        await self.server.wait_closed()


async def start_http_server(
    host: str,
    port: int,
    pipeline: Checker,
    settings: HttpSettings | None = None,
    *,
    reuse_port: bool = False,
    backlog: int = 1024,
) -> HttpAuthzServer:
    """Listen on `host:port` and answer authorization requests with `pipeline`. Port 0 picks a free port."""
    shared = _Shared(pipeline, settings or HttpSettings())
    server = await asyncio.get_running_loop().create_server(
        lambda: HttpAuthzProtocol(shared),
        host,
        port,
        reuse_port=reuse_port or None,
        backlog=backlog,
    )
    return HttpAuthzServer(server, shared)


def settings_from_mapping(raw: Mapping[str, Any]) -> HttpSettings:
    """`HttpSettings` from a plain mapping (e.g. a validated `http:` config section); raises ValueError."""
    known = set(HttpSettings.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown http setting(s): {', '.join(sorted(unknown))}")
    values = dict(raw)
    if "trusted_peers" in values:
        values["trusted_peers"] = tuple(values["trusted_peers"])
    return HttpSettings(**values)
