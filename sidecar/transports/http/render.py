"""Rendering: a `Decision` as an HTTP/1.1 response, and the canned answers to requests we refuse. Constant parts
are encoded once, at import."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

from ... import reasons
from ...request import Decision
from .flavors import DenyStatus

HEADERS_TO_REMOVE_HEADER: Final = "x-envoy-auth-headers-to-remove"
"""Envoy removes the comma-separated headers named here from the upstream request on a 200."""
STATUS_HEADER: Final = "x-authz-status"
"""A deny's real status, when the flavor's proxy is answered with another (`flavors.DENY_STATUSES`)."""

# Reason codes for failures only this transport can have (the set in reasons.py covers the rest).
PAYLOAD_TOO_LARGE: Final = "PayloadTooLarge"
HEADERS_TOO_LARGE: Final = "RequestHeaderFieldsTooLarge"
REQUEST_TIMEOUT: Final = "RequestTimeout"
SERVER_BUSY: Final = "ServerBusy"

_STATUS_LINES: Final[dict[int, bytes]] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus
}
_ALLOW_HEAD: Final = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
_ALLOW_BARE: Final = _ALLOW_HEAD + b"\r\n"
_CLOSE: Final = b"connection: close\r\n"
_KEEP_ALIVE: Final = b"connection: keep-alive\r\n"
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINE: Final = STATUS_HEADER.encode("ascii") + b": %d\r\n"
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


def render(
    decision: Decision, head_only: bool, connection: bytes, checked: set[str], deny_status: DenyStatus | None = None
) -> bytes:
    """The HTTP/1.1 response for `decision`. `connection` is b"", `_CLOSE` or `_KEEP_ALIVE`.

    Allowed: 200 with the decision's headers (Envoy copies those in `allowed_upstream_headers`) and the names in
    `headers_to_remove` via `x-envoy-auth-headers-to-remove`. Denied: the decision's status (never 200: that
    would allow), its headers and a JSON body; `head_only` (the original request was HEAD) omits the body, as
    HTTP requires, so the proxy's parser stays in step. `deny_status` (the flavor's, for a proxy that relays only
    some statuses) may answer with another status: the real one is then sent in `x-authz-status`.
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
    if deny_status is not None and (sent := deny_status(status)) != status:
        block += _STATUS_LINE % status
        status = sent
    return b"%s%s%d\r\n%s%s\r\n%s" % (
        _status_line(status),
        _JSON,
        len(body),
        block,
        connection,
        b"" if head_only else body,
    )
