"""Decision -> HTTP response bytes, including the cases that must never reach the wire as they are."""

from __future__ import annotations

import json

import httptools
import pytest

from sidecar import reasons
from sidecar.request import Decision
from sidecar.transports.http.render import HEADERS_TO_REMOVE_HEADER, _RenderError, render

from .client import Conn, get
from .conftest import Serve


def parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    got: dict[str, object] = {"headers": {}, "body": b""}

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            got["headers"][name.decode().lower()] = value.decode()  # type: ignore[index]

        def on_body(self, body: bytes) -> None:
            got["body"] = got["body"] + body  # type: ignore[operator]

    parser = httptools.HttpResponseParser(Sink())
    parser.feed_data(data)
    return parser.get_status_code(), got["headers"], got["body"]  # type: ignore[return-value]


def test_bare_allow_is_a_constant() -> None:
    allow = Decision(allowed=True, status=200, reason=reasons.ALLOWED)
    assert render(allow, False, b"", set()) == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    assert render(allow, False, b"connection: close\r\n", set()).endswith(b"connection: close\r\n\r\n")


def test_allow_with_headers_and_headers_to_remove() -> None:
    allow = Decision(
        allowed=True,
        status=200,
        reason=reasons.ALLOWED,
        headers=(("x-authz-principal", "arn:aws:iam::123456789012:user/ana"), ("x-authz-name", "Zoë")),
        headers_to_remove=("authorization", "x-api-key"),
    )
    status, headers, body = parse(render(allow, False, b"", set()))
    assert status == 200
    assert headers["x-authz-principal"] == "arn:aws:iam::123456789012:user/ana"
    assert headers[HEADERS_TO_REMOVE_HEADER] == "authorization,x-api-key"
    assert body == b""
    assert "Zoë".encode() in render(allow, False, b"", set())  # UTF-8 on the wire, as Envoy passes it on


def test_deny_json_body_matches_the_grpc_adapter() -> None:
    deny = reasons.Denied(reasons.ACCESS_DENIED, 'User is not authorized ("quoted")', 403).decision()
    status, headers, body = parse(render(deny, False, b"", set()))
    assert status == 403
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"message": 'User is not authorized ("quoted")', "reason": "AccessDenied"}


def test_deny_never_renders_as_200() -> None:
    weird = Decision(allowed=False, status=200, reason=reasons.ACCESS_DENIED, message="no")
    assert render(weird, False, b"", set()).startswith(b"HTTP/1.1 403 ")
    out_of_range = Decision(allowed=False, status=999, reason=reasons.ACCESS_DENIED)
    assert render(out_of_range, False, b"", set()).startswith(b"HTTP/1.1 500 ")
    unusual = Decision(allowed=False, status=429, reason="TooManyRequests", message="slow down")
    assert render(unusual, False, b"", set()).startswith(b"HTTP/1.1 429 Too Many Requests\r\n")


@pytest.mark.parametrize(
    "header",
    [
        ("x-authz-principal", "eve\r\nx-admin: true"),
        ("x-authz-principal", "nul\x00"),
        ("bad name", "v"),
        ("", "v"),
        ("x-authz-principal", "lone \udc80 surrogate"),
    ],
)
def test_header_injection_is_refused(header: tuple[str, str]) -> None:
    allow = Decision(allowed=True, status=200, reason=reasons.ALLOWED, headers=(header,))
    with pytest.raises(_RenderError):
        render(allow, False, b"", set())


async def test_unrenderable_decision_becomes_500_on_the_wire(serve: Serve) -> None:
    class Injecting:
        async def check(self, request: object) -> Decision:
            return Decision(
                allowed=True, status=200, reason=reasons.ALLOWED, headers=(("x-authz-principal", "a\r\nx-evil: 1"),)
            )

    server = await serve(Injecting())
    conn = await Conn.open(server.port)
    await conn.send(get("/x"))
    response = await conn.response()
    assert response.status == 500
    assert "x-evil" not in response.headers
    await conn.close()


async def test_reused_decision_renders_right_for_every_connection_kind(serve: Serve) -> None:
    """A Decision reused across requests is remembered in its wire form only for the plain keep-alive case."""
    deny = reasons.Denied(reasons.ACCESS_DENIED, "no", 403).decision()

    class Constant:
        async def check(self, request: object) -> Decision:
            return deny

    server = await serve(Constant())
    conn = await Conn.open(server.port)
    await conn.send(get("/a") + get("/b"))
    first, second = await conn.responses(2)
    assert first.status == second.status == 403 and first.body == second.body != b""
    await conn.send(get("/head", method="HEAD") + get("/old", version="1.0"))
    raw = await conn.raw_until_closed()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ") and b"connection" not in head
    assert rest.startswith(b"HTTP/1.1 403 ")  # no HEAD body in between
    assert b"connection: close\r\n" in rest
    assert rest.endswith(b'{"message":"no","reason":"AccessDenied"}')
