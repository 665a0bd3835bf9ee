"""Protocol behaviour of the HTTP authz listener, through real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio

from sidecar.transports.http import HEADERS_TOO_LARGE, PAYLOAD_TOO_LARGE, REQUEST_TIMEOUT

from .client import Conn, get
from .conftest import FakePipeline, Serve


async def test_allow_renders_200_with_decision_headers(serve: Serve, fake: FakePipeline) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/orders/7?x=1"))
    response = await conn.response()
    assert response.status == 200
    assert response.headers["x-authz-principal"] == "alice"
    assert response.headers["x-seen-path"] == "/orders/7?x=1"
    assert response.headers["content-length"] == "0"
    assert "connection" not in response.headers
    assert fake.seen[0].method == "GET"
    await conn.close()


async def test_keep_alive_serves_many_requests_on_one_connection(serve: Serve, fake: FakePipeline) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    for i in range(5):
        await conn.send(get(f"/n/{i}"))
        response = await conn.response()
        assert response.headers["x-seen-path"] == f"/n/{i}"
    assert server.connections == 1
    assert len(fake.seen) == 5
    await conn.close()


async def test_pipelined_in_one_send_answered_in_order(serve: Serve) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    paths = ["/async/1", "/fast/2", "/async/3", "/deny/4", "/fast/5", "/async-boom/6", "/fast/7"]
    await conn.send(b"".join(get(p) for p in paths))
    responses = await conn.responses(len(paths))
    assert [r.status for r in responses] == [200, 200, 200, 401, 200, 500, 200]
    allowed = [r.headers["x-seen-path"] for r in responses if r.status == 200]
    assert allowed == ["/async/1", "/fast/2", "/async/3", "/fast/5", "/fast/7"]
    await conn.close()


async def test_pipelined_byte_by_byte_answered_in_order(serve: Serve) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    paths = ["/async/a", "/b", "/async/c"]
    data = b"".join(get(p, "X-Extra: " + "v" * 40) for p in paths)
    for i in range(len(data)):
        await conn.send(data[i : i + 1])
    responses = await conn.responses(len(paths))
    assert [r.headers["x-seen-path"] for r in responses] == paths
    await conn.close()


async def test_many_pipelined_requests_beyond_the_queue_limit(serve: Serve) -> None:
    server = await serve(max_pipelined=4)
    conn = await Conn.open(server.port)
    paths = [f"/async/{i}" if i % 3 == 0 else f"/p/{i}" for i in range(50)]
    await conn.send(b"".join(get(p) for p in paths))
    responses = await conn.responses(len(paths))
    assert [r.headers["x-seen-path"] for r in responses] == paths
    await conn.close()


async def test_chunked_body_is_reassembled(serve: Serve, fake: FakePipeline) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    chunked = b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    await conn.send(get("/upload", "Transfer-Encoding: chunked", method="POST") + chunked)
    assert (await conn.response()).status == 200
    assert fake.seen[0].body == b"hello world"
    assert fake.seen[0].method == "POST"
    await conn.send(get("/next"))  # the connection is still usable after a chunked body
    assert (await conn.response()).status == 200
    await conn.close()


async def test_content_length_body_split_across_sends(serve: Serve, fake: FakePipeline) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    request = get("/upload", method="PUT", body=b'{"amount": 12}')
    await conn.send(request[:-5])
    await conn.send(request[-5:])
    assert (await conn.response()).status == 200
    assert fake.seen[0].body == b'{"amount": 12}'
    await conn.close()


async def test_http10_without_keep_alive_is_answered_and_closed(serve: Serve) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/old", version="1.0"))
    response = await conn.response()
    assert response.status == 200
    assert response.headers["connection"] == "close"
    assert await conn.closed()


async def test_http10_keep_alive_is_honoured(serve: Serve) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/old/1", "Connection: keep-alive", version="1.0"))
    response = await conn.response()
    assert response.headers["connection"] == "keep-alive"
    await conn.send(get("/old/2", "Connection: keep-alive", version="1.0"))
    assert (await conn.response()).headers["x-seen-path"] == "/old/2"
    await conn.close()


async def test_connection_close_answers_then_closes_and_ignores_the_rest(serve: Serve, fake: FakePipeline) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/async/last", "Connection: close") + get("/never"))
    response = await conn.response()
    assert response.status == 200
    assert response.headers["connection"] == "close"
    assert await conn.closed()
    assert [r.path for r in fake.seen] == ["/async/last"]


async def test_garbage_gets_400_and_close(serve: Serve, fake: FakePipeline) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")
    response = await conn.response()
    assert response.status == 400
    assert response.json()["reason"] == "MalformedRequest"
    assert await conn.closed()
    assert fake.seen == []


async def test_garbage_after_good_requests_is_answered_after_them(serve: Serve) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/async/ok") + b"BREW /pot HTCPCP/1.0\r\n\r\n")
    first, second = await conn.responses(2)
    assert (first.status, second.status) == (200, 400)
    assert await conn.closed()


async def test_oversized_headers_get_431_and_close(serve: Serve, fake: FakePipeline) -> None:
    server = await serve(max_header_bytes=1024)
    conn = await Conn.open(server.port)
    await conn.send(get("/", "X-Big: " + "a" * 2000))
    response = await conn.response()
    assert response.status == 431
    assert response.json()["reason"] == HEADERS_TOO_LARGE
    assert await conn.closed()
    assert fake.seen == []


async def test_oversized_url_gets_431(serve: Serve) -> None:
    server = await serve(max_header_bytes=1024)
    conn = await Conn.open(server.port)
    await conn.send(get("/" + "u" * 3000))
    assert (await conn.response()).status == 431
    assert await conn.closed()


async def test_oversized_head_split_over_two_small_reads_gets_431(serve: Serve, fake: FakePipeline) -> None:
    """Each read fits the limit, the head they make together does not: a head is only left uncounted when it
    arrived whole inside one read no longer than the limit."""
    server = await serve(max_header_bytes=1024)
    conn = await Conn.open(server.port)
    await conn.send(b"GET / HTTP/1.1\r\nX-A: " + b"a" * 800 + b"\r\n")
    async with asyncio.timeout(5):  # white-box: wait until the server has parsed into the head
        while not any(c._in_head for c in server._shared.connections):
            await asyncio.sleep(0)
    await conn.send(b"X-B: " + b"b" * 800 + b"\r\n\r\n")
    response = await conn.response()
    assert response.status == 431
    assert await conn.closed()
    assert fake.seen == []


async def test_endless_header_arriving_in_later_chunks_is_cut_off(serve: Serve) -> None:
    """A header that never ends is buffered inside the parser, where no callback sees it; whole chunks that
    arrive inside the unfinished head are counted instead, so the buffer stays bounded."""
    server = await serve(max_header_bytes=2048)
    conn = await Conn.open(server.port)
    await conn.send(b"GET / HTTP/1.1\r\nX-Endless: ")
    async with asyncio.timeout(5):  # white-box: wait until the server has parsed into the head
        while not any(c._in_head for c in server._shared.connections):
            await asyncio.sleep(0)
    await conn.send(b"b" * 3000)  # no CRLF: the header value is still incomplete
    response = await conn.response()
    assert response.status == 431
    assert await conn.closed()


async def test_oversized_body_by_content_length_gets_413_before_reading_it(serve: Serve, fake: FakePipeline) -> None:
    server = await serve(max_body_bytes=100)
    conn = await Conn.open(server.port)
    await conn.send(get("/upload", "Content-Length: 1000000", method="POST"))  # body never sent
    response = await conn.response()
    assert response.status == 413
    assert response.json()["reason"] == PAYLOAD_TOO_LARGE
    assert await conn.closed()
    assert fake.seen == []


async def test_oversized_chunked_body_gets_413(serve: Serve, fake: FakePipeline) -> None:
    server = await serve(max_body_bytes=100)
    conn = await Conn.open(server.port)
    await conn.send(get("/upload", "Transfer-Encoding: chunked", method="POST"))
    await conn.send(b"40\r\n" + b"x" * 64 + b"\r\n" + b"40\r\n" + b"y" * 64 + b"\r\n")
    assert (await conn.response()).status == 413
    assert await conn.closed()
    assert fake.seen == []


async def test_body_at_the_limit_is_accepted(serve: Serve, fake: FakePipeline) -> None:
    server = await serve(max_body_bytes=100)
    conn = await Conn.open(server.port)
    await conn.send(get("/upload", method="POST", body=b"z" * 100))
    assert (await conn.response()).status == 200
    assert len(fake.seen[0].body) == 100
    await conn.close()


async def test_idle_connection_is_closed(serve: Serve) -> None:
    server = await serve(idle_timeout=0.2, request_timeout=5)
    conn = await Conn.open(server.port)
    await conn.send(get("/once"))
    assert (await conn.response()).status == 200
    assert await conn.closed(timeout=3)
    assert server.connections == 0


async def test_slow_client_gets_408_and_close(serve: Serve, fake: FakePipeline) -> None:
    server = await serve(request_timeout=0.2, idle_timeout=30)
    conn = await Conn.open(server.port)
    await conn.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n")  # never finishes the head
    response = await conn.response(timeout=3)
    assert response.status == 408
    assert response.json()["reason"] == REQUEST_TIMEOUT
    assert await conn.closed()
    assert fake.seen == []


async def test_active_connection_is_not_idled_out(serve: Serve) -> None:
    server = await serve(idle_timeout=0.5, request_timeout=0.5)
    conn = await Conn.open(server.port)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.5  # three idle periods, with a request every ~0.02 s
    count = 0
    while loop.time() < deadline:
        await conn.send(get(f"/tick/{count}"))
        assert (await conn.response()).status == 200
        count += 1
        await asyncio.sleep(0.02)  # pacing the client, not synchronizing with the server
    assert server.connections == 1
    await conn.close()


async def test_pipeline_exception_is_a_500_deny_and_the_connection_survives(serve: Serve) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/boom"))
    response = await conn.response()
    assert response.status == 500
    assert response.json() == {"message": "Internal authorization error", "reason": "InternalError"}
    await conn.send(get("/async-boom"))
    assert (await conn.response()).status == 500
    await conn.send(get("/fine"))
    assert (await conn.response()).status == 200
    await conn.close()


async def test_deny_carries_status_headers_and_json_body(serve: Serve) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/deny/me"))
    response = await conn.response()
    assert response.status == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"message": "No token", "reason": "Unauthorized"}
    await conn.close()


async def test_head_deny_has_no_body_so_the_next_response_is_not_corrupted(serve: Serve) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/deny/head", method="HEAD") + get("/after", "Connection: close"))
    raw = await conn.raw_until_closed()
    head, _sep, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"content-length: " in head  # says how long the body would be, as HTTP requires for HEAD
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_upgrade_headers_do_not_wedge_the_connection(serve: Serve, fake: FakePipeline) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    ws = get("/chat", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZQ==")
    await conn.send(ws + get("/after"))
    first, second = await conn.responses(2)
    assert first.status == 200
    assert second.headers["x-seen-path"] == "/after"
    assert fake.seen[0].headers["upgrade"] == "websocket"
    await conn.close()


async def test_expect_100_continue_is_acknowledged(serve: Serve, fake: FakePipeline) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/upload", "Expect: 100-continue", "Content-Length: 4", method="POST"))
    interim = await conn.reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await conn.send(b"data")
    assert (await conn.response()).status == 200
    assert fake.seen[0].body == b"data"
    await conn.close()


async def test_client_disconnect_during_check_cancels_it_and_server_keeps_serving(
    serve: Serve, fake: FakePipeline
) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/hold"))
    while not fake.seen:  # wait until the check is in flight
        await asyncio.sleep(0)
    await conn.close()
    async with asyncio.timeout(5):
        while fake.cancelled == 0:
            await asyncio.sleep(0.01)
    other = await Conn.open(server.port)
    await other.send(get("/still/alive"))
    assert (await other.response()).status == 200
    await other.close()


async def test_shutdown_lets_in_flight_checks_answer(serve: Serve, fake: FakePipeline) -> None:
    server = await serve()
    busy = await Conn.open(server.port)
    idle = await Conn.open(server.port)
    await idle.send(get("/warm"))
    await idle.response()
    await busy.send(get("/hold"))
    while len(fake.seen) < 2:
        await asyncio.sleep(0)
    shutdown = asyncio.create_task(server.shutdown(grace=5))
    assert await idle.closed()  # idle connections go at once
    fake.release.set()
    response = await busy.response()
    assert response.status == 200
    await shutdown
    assert await busy.closed()
    assert not server.is_serving()


async def test_upgrade_request_with_a_body_is_refused_not_decided_without_it(serve: Serve, fake: FakePipeline) -> None:
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send(get("/async/ok") + get("/up", "Upgrade: h2c", "Connection: Upgrade", method="POST", body=b"abc"))
    first, second = await conn.responses(2)
    assert (first.status, second.status) == (200, 400)
    assert await conn.closed()
    assert [r.path for r in fake.seen] == ["/async/ok"]


async def test_a_raw_non_ascii_target_is_refused_never_judged_under_another_spelling(
    serve: Serve, fake: FakePipeline
) -> None:
    # RFC 3986 has no raw non-ASCII in a path; llhttp refuses it, so no decoding can make `/café` another path.
    server = await serve()
    conn = await Conn.open(server.port)
    await conn.send("GET /café/x HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert (await conn.response()).status == 400
    assert fake.seen == []
