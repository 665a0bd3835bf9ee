"""`check --http` judges what the shipped Envoy forwards: a corpus of odd targets through a real Envoy (shipped
normalization on, in front of the real sidecar) against `check`'s offline answer for the same request file, and
the CheckRequests a real Envoy sends for bodies (sized, chunked, over the limit) against the ones `check` builds.

For every target, the status the client gets through Envoy (Envoy's own 400, the sidecar's deny, or the
upstream's 200) equals `check`'s, and on an allow the path the upstream received is the path `check` judged.
The corpus is the hand-picked cases of docs/security.md plus targets generated from a seeded token set.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from dataclasses import replace

import grpc
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationServicer, add_AuthorizationServicer_to_server

from sidecar.config import parse_config
from sidecar.harness.demo import EchoUpstream
from sidecar.harness.envoy import EnvoyPorts, EnvoyProcess, free_port, render_envoy_config
from sidecar.offline import decide_http, parse_http_request
from sidecar.proxy_path import HTTP_MODE
from tests.e2e.conftest import StackFactory

pytestmark = pytest.mark.e2e

CONFIG = """
authorizers:
  open: {type: none}
  closed: {type: deny}
routes:
  - {match: "ANY /", authorizer: open}
  - {match: "ANY /{proxy+}", authorizer: open}
  - {match: "ANY /admin", authorizer: closed}
  - {match: "ANY /admin/{proxy+}", authorizer: closed}
"""

HAND = [
    "/a//b", "//a", "/a/./b", "/public/../admin/x", "/../admin", "/a/%2e%2e/admin/x", "/a/%2E/b", "/a/.%2e/admin",
    "/a%2fb", "/a%5Cb", "/a\\..\\admin", "/a/b/", "/admin/x/..", "/a/b/.", "/%41dmin/x", "/a%20b", "/public/..;/admin",
    "/a#frag", "/a%23b", "/a?x=/../admin", "/a/%252e%252e/admin", "/%7euser", "/a/%", "/a/%zz", "/%c3%a9",
    "/a/b%2f..", "/a/.../b", "/.", "/..", "/a//../admin/x", "///", "/a/%2e", "/a%00b", "/a%3bb", "/a/.;/b",
    "/a/..;x/admin", "/a/;/b", "/a/%2e;/b", '/a"b', "/a<b", "/a{b}", "/a|b", "/a'b", "/a^b", "/a`b", "/a%7Eb",
    "/a%41%42", "/%2e%2e", "/a/b/..;x", "/a/x.;/b", "/a/..?x", "/a/%2e%2E%2e/b", "/a/.%41/b", "/a/b/.%2e",
    "/a%ffb", "/a?#", "/admin%2fx", "/ADMIN/x", "/admin/./x", "/admin;/x",
]  # fmt: skip

TOKENS = [
    "a", "admin", "x", ".", "..", "%2e", "%2E%2e", ".;", "..;x", "", "%41", "%7e", "%2f", "%5c", "\\", ";", "%3b",
    '"', "^", "{", "%", "%zz", "%00", "%ff", "~", "a.b", "...", "%2e.",
]  # fmt: skip


def generated(count: int, seed: int = 19) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        target = "/" + "/".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.15:
            target += rng.choice(["?q=/../admin", "?a=%2f", "#f", "?"])
        out.append(target)
    return out


def through_envoy(port: int, target: str) -> tuple[int, str]:
    """The status a client gets for `target` through Envoy, and the path the upstream saw ("" unless 200)."""
    head = f"GET {target} HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
            data += chunk
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        # Read by Content-Length, not to EOF: Envoy holds a connection it answered itself open for a second.
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head_bytes.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length and (chunk := conn.recv(65536)):
            body += chunk
    status = int(head_bytes.split(b" ", 2)[1])
    return status, json.loads(body)["path"] if status == 200 else ""


def offline(target: str) -> tuple[int, str]:
    raw = f"GET {target} HTTP/1.1\r\nHost: api.example.test\r\n\r\n".encode("latin-1")
    result = asyncio.run(decide_http(parse_config(CONFIG), raw))
    decision = result.decision
    return (200, result.path) if decision.allowed else (decision.status, "")


def test_check_judges_the_path_the_shipped_envoy_forwards(shared_authz_stack: StackFactory) -> None:
    stack = shared_authz_stack(CONFIG)
    corpus = list(dict.fromkeys(HAND + generated(150)))
    mismatches = []
    for target in corpus:
        served, expected = through_envoy(stack.ports.listen_port, target), offline(target)
        if served != expected:
            mismatches.append(f"{target!r}: through Envoy {served}, check {expected}")
    assert not mismatches, "\n".join(mismatches) + "\n" + stack.logs()[-3000:]
    statuses = {through_envoy(stack.ports.listen_port, t)[0] for t in ("/public/../admin/x", "/a%2fb", "/a/../b")}
    assert statuses == {403, 400, 200}  # the corpus exercises every outcome


class Recorder(AuthorizationServicer):
    """An ext_authz service that records every CheckRequest and allows it: what Envoy really sends."""

    def __init__(self) -> None:
        self.seen: list[CheckRequest] = []

    async def Check(self, request: CheckRequest, context: object) -> CheckResponse:
        self.seen.append(request)
        response = CheckResponse()
        response.status.code = 0
        return response


BODIES = [
    b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\n",
    b"PUT /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70000,
    b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 65536\r\n\r\n" + b"y" * 65536,
    b"GET /a/../b?q=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
    b"DELETE /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
]
ENVOY_ONLY = {"x-request-id", "x-forwarded-for", "x-envoy-external-address"}
"""Headers whose values differ by nature (a fresh id; the addresses Envoy appends, covered by the source-ip tests)."""


def compared(check: CheckRequest) -> dict[str, object]:
    http = check.attributes.request.http
    return {
        "method": http.method,
        "path": http.path,
        "host": http.host,
        "size": http.size,
        "body": http.raw_body,
        "headers": {k: v for k, v in http.headers.items() if k not in ENVOY_ONLY},
    }


async def send_raw(port: int, raw: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    status = int((await reader.readline()).split(b" ", 2)[1])
    writer.close()
    return status


async def test_check_builds_the_check_request_the_shipped_envoy_sends() -> None:
    recorder = Recorder()
    server = grpc.aio.server()
    add_AuthorizationServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with EchoUpstream() as upstream:
            ports = replace(EnvoyPorts(), listen_port=free_port(), admin_port=free_port(), authz_port=port)
            ports = replace(ports, upstream_port=upstream.port)
            envoy = EnvoyProcess(render_envoy_config(ports), ports.admin_port)
            await asyncio.to_thread(envoy.start)  # started off the loop: the recorder must answer meanwhile
            try:
                for raw in BODIES:
                    assert await send_raw(ports.listen_port, raw) == 200
            finally:
                envoy.stop()
    finally:
        await server.stop(0)
    assert len(recorder.seen) == len(BODIES)
    for raw, sent in zip(BODIES, recorder.seen, strict=True):
        assert compared(parse_http_request(raw)) == compared(sent), raw[:60]


def test_a_body_over_http_modes_limit_is_envoys_413(authz_stack: StackFactory) -> None:
    stack = authz_stack(CONFIG, template="envoy-http.yaml", max_request_bytes=1048576)
    raw = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1048577\r\n\r\n" + b"z" * 1048577
    assert asyncio.run(send_raw(stack.ports.listen_port, raw)) == 413
    result = asyncio.run(decide_http(parse_config(CONFIG), raw, body_limit=HTTP_MODE))
    assert (result.decision.status, result.decision.reason) == (413, "RequestTooLarge")
    small = asyncio.run(
        decide_http(parse_config(CONFIG), raw[:-2].replace(b"1048577", b"1048575"), body_limit=HTTP_MODE)
    )
    assert small.decision.allowed


FRAMING = [
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
    b"GET /a HTTP/1.1\r\nHost: h\r\nHost: g\r\n\r\n",
    b"GET /a HTTP/1.1\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
]
"""Framing Envoy's codec refuses (or accepts) before anything is asked: the smuggling shapes."""


def test_check_refuses_the_framing_the_shipped_envoy_refuses(shared_authz_stack: StackFactory) -> None:
    stack = shared_authz_stack(CONFIG)
    config = parse_config(CONFIG)
    for raw in FRAMING:
        served = asyncio.run(send_raw(stack.ports.listen_port, raw))
        decision = asyncio.run(decide_http(config, raw)).decision
        assert served == (200 if decision.allowed else decision.status), raw
    assert {asyncio.run(send_raw(stack.ports.listen_port, raw)) for raw in FRAMING} == {200, 400, 501}
