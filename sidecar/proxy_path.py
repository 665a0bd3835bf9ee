"""What the shipped Envoy makes of a request before it asks, for `check --http`: the path it forwards and the body
it sends.

deploy/envoy/*.yaml turn on `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action:
REJECT_REQUEST`, so the sidecar (and the upstream) never see `/public/../admin` but `/admin`. `check` must judge
the same path or it would refuse, offline, a request Envoy turns into an allowed one (and the other way round).

The rules below are Envoy 1.40's observed behaviour, not a copy of its code: tests/e2e/test_check_parity_e2e.py
sends every case of a corpus (hand-picked and generated) through a real Envoy and compares the path the upstream
receives, or Envoy's own 400, with `envoy_path`'s answer, and compares the CheckRequests a real Envoy sends
(bodies: sized, chunked, over the limit) with the ones `check` builds.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
"""Escapes of these characters are decoded (`%7E` -> `~`, `%2e` -> `.`); every other escape is kept as written."""
_ESCAPED = frozenset('"<>`{}|^')
"""Raw characters Envoy escapes (upper-case hex) on the way."""
_HEX = frozenset(string.hexdigits)
_DIGITS = re.compile(r"[0-9]+").fullmatch
"""ASCII digits only: `str.isdigit` admits `²`, which `int` then refuses."""
_HEX_BYTES = re.compile(rb"[0-9A-Fa-f]+").fullmatch
_DOT_THEN_PARAMETER = re.compile(r"\.\.?;")
"""A segment of raw dots followed by `;` (`..;x`) counts as a dot segment, its `;...` dropped."""


class ProxyRejects(ValueError):
    """The shipped Envoy answers this request itself (`status`, 400 unless said): the sidecar is never asked.
    `reason` is what `check` calls it: `MalformedRequest` for a 400 (as the sidecar names its own), and for
    Envoy's other answers names the sidecar never gives (`RequestTooLarge` 413, `NotImplemented` 501)."""

    def __init__(self, why: str, status: int = 400, reason: str = "MalformedRequest") -> None:
        super().__init__(why)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """What the shipped Envoy does with a request body before it asks (`with_request_body`)."""

    max_bytes: int
    partial: bool
    """`allow_partial_message`: send the first `max_bytes` and say so (`x-envoy-auth-partial-body: true`), rather
    than answer 413 itself."""


GRPC_MODE = BodyLimit(65536, partial=True)
"""deploy/envoy/envoy.yaml."""
HTTP_MODE = BodyLimit(1048576, partial=False)
"""deploy/envoy/envoy-http.yaml."""


def envoy_framing(headers: dict[str, str], repeated: set[str]) -> None:
    """Refuse what Envoy's HTTP/1 codec refuses before anything is asked (`ProxyRejects`): no Host, a repeated or
    non-numeric Content-Length, Content-Length beside Transfer-Encoding (400), a transfer coding other than
    chunked (501). A request smuggled past these would be framed differently by the next hop."""
    if not headers.get("host"):
        raise ProxyRejects("the request has no Host header")
    length = headers.get("content-length")
    if length is not None and ("content-length" in repeated or _DIGITS(length) is None):
        raise ProxyRejects("Content-Length is repeated or not a number")
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if length is not None:
            raise ProxyRejects("Content-Length and Transfer-Encoding are both present")
        if coding.lower() != "chunked":
            raise ProxyRejects(f"transfer coding {coding!r} is not implemented (only chunked)", 501, "NotImplemented")


def envoy_body(body: bytes, headers: dict[str, str], limit: BodyLimit) -> tuple[bytes, int]:
    """The body Envoy sends to the authorization service and the size it reports, adjusting `headers` as Envoy
    does: a chunked body arrives decoded without `transfer-encoding`, one over the limit cut to it (or refused
    with 413), and a buffered body is marked `x-envoy-auth-partial-body: true|false`."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        del headers["transfer-encoding"]
        body = _dechunk(body)
        size = len(body)
    else:
        declared = headers.get("content-length")
        size = int(declared) if declared is not None else len(body)  # a number: `envoy_framing` checked it
        if len(body) > size:
            body = body[:size]  # what follows would be the connection's next request, not this one's body
    if not body:
        return body, size
    if len(body) > limit.max_bytes:
        if not limit.partial:
            raise ProxyRejects(
                f"the body is over with_request_body.max_request_bytes ({limit.max_bytes})", 413, "RequestTooLarge"
            )
        body = body[: limit.max_bytes]
        headers["x-envoy-auth-partial-body"] = "true"
    else:
        headers["x-envoy-auth-partial-body"] = "false"
    return body, size


def _dechunk(body: bytes) -> bytes:
    """A chunked body decoded (trailers dropped); a malformed one is refused, as Envoy's codec refuses it."""
    out: list[bytes] = []
    rest = body
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        size_text = line.split(b";", 1)[0]
        if not sep or _HEX_BYTES(size_text) is None:  # no sign, prefix, space or underscore: int() takes them all
            raise ProxyRejects("the chunked body is malformed")
        size = int(size_text, 16)
        if size == 0:
            return b"".join(out)
        if len(rest) < size + 2 or rest[size : size + 2] != b"\r\n":
            raise ProxyRejects("the chunked body is malformed")
        out.append(rest[:size])
        rest = rest[size + 2 :]


def envoy_path(target: str) -> str:
    """The `:path` Envoy, as shipped, sends for the request target `target`; raises `ProxyRejects` when it answers
    400 itself (a fragment, an escaped slash or NUL, a raw byte its HTTP/1 codec refuses)."""
    if "#" in target:
        raise ProxyRejects("the target carries a fragment ('#')")
    path, sep, query = target.partition("?")
    if any(ch <= " " or ch >= "\x7f" for ch in target):
        raise ProxyRejects("the target holds a space, a control or a non-ASCII byte")
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise ProxyRejects("the path holds an escaped slash (%2F or %5C): path_with_escaped_slashes_action")
    if "%00" in path:
        raise ProxyRejects("the path holds an escaped NUL (%00)")
    if not path.startswith("/"):
        return target  # `*` or an authority form: nothing to normalize (the adapter refuses them)
    return _merge_slashes(_normalize(path)) + sep + query


def _normalize(path: str) -> str:
    """`normalize_path`: backslashes are slashes, unreserved escapes decoded, dot segments removed (a `..` above
    the root stays at the root); empty segments are kept here (merging them is `merge_slashes`' job)."""
    kept: list[str] = []
    trailing = False
    for raw in path.replace("\\", "/").split("/")[1:]:
        segment = _canonical_segment(raw)
        if segment in (".", "..") or _DOT_THEN_PARAMETER.match(raw):
            if segment.startswith("..") and kept:
                kept.pop()
            trailing = True
            continue
        kept.append(segment)
        trailing = False
    return "/" + "/".join(kept) + ("/" if trailing and kept else "")


def _canonical_segment(segment: str) -> str:
    out: list[str] = []
    index, size = 0, len(segment)
    while index < size:
        ch = segment[index]
        if ch == "%" and index + 2 < size and segment[index + 1] in _HEX and segment[index + 2] in _HEX:
            decoded = chr(int(segment[index + 1 : index + 3], 16))
            out.append(decoded if decoded in _UNRESERVED else segment[index : index + 3])
            index += 3
            continue
        out.append(f"%{ord(ch):02X}" if ch in _ESCAPED else ch)
        index += 1
    return "".join(out)


def _merge_slashes(path: str) -> str:
    """`merge_slashes`: runs of `/` become one, a leading and a trailing slash are kept (`///` becomes `//`, which
    the sidecar then refuses as an empty segment, as it does behind Envoy)."""
    if "//" not in path:
        return path
    inner = "/".join(part for part in path.split("/") if part)
    return ("/" if path.startswith("/") else "") + inner + ("/" if path.endswith("/") else "")
