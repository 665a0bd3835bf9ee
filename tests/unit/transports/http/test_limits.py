"""Listener-wide limits of the HTTP listener (the class of #17's finding 9): connections and held body bytes."""

from __future__ import annotations

import asyncio

from sidecar import reasons
from sidecar.request import Decision, Request
from sidecar.transports.http import SERVER_BUSY

from .client import Conn, get
from .conftest import Serve

ALLOW = Decision(allowed=True, status=200, reason=reasons.ALLOWED)


class Gate:
    """Holds `/hold` requests until released and says when one has entered its check."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def check(self, request: Request) -> Decision:
        if request.path.startswith("/hold"):
            self.entered.set()
            await self.release.wait()
        return ALLOW


async def test_connections_past_the_limit_are_closed_at_once(serve: Serve) -> None:
    server = await serve(max_connections=2)
    first, second = await Conn.open(server.port), await Conn.open(server.port)
    for conn in (first, second):
        await conn.send(get("/x"))
        assert (await conn.response()).status == 200  # both are counted by now
    third = await Conn.open(server.port)
    await third.send(get("/x"))
    assert await third.raw_until_closed() == b""  # closed without an answer
    assert server._shared.refused_connections == 1
    await second.send(get("/y"))
    assert (await second.response()).status == 200  # the open connections keep serving
    await first.close()
    for _ in range(50):  # each try is a real connection the server answers or refuses: bounded, no sleeping
        late = await Conn.open(server.port)
        await late.send(get("/z"))
        try:
            if (await late.response(timeout=2)).status == 200:
                break
        except ConnectionError:
            continue
    else:
        raise AssertionError("a freed connection slot was never reused")


async def test_held_body_bytes_are_bounded_across_connections(serve: Serve) -> None:
    gate = Gate()
    server = await serve(pipeline=gate, max_body_bytes=1000, max_buffered_bytes=1500)
    held = await Conn.open(server.port)
    await held.send(get("/hold", method="POST", body=b"a" * 1000))
    await asyncio.wait_for(gate.entered.wait(), 5)
    assert server._shared.buffered == 1000  # a body waiting for its decision still counts
    greedy = await Conn.open(server.port)
    await greedy.send(get("/x", method="POST", body=b"b" * 1000))
    refused = await greedy.response()
    assert refused.status == 503 and refused.json()["reason"] == SERVER_BUSY
    assert await greedy.closed()
    assert server._shared.buffered <= 1500
    gate.release.set()
    assert (await held.response()).status == 200
    after = await Conn.open(server.port)
    await after.send(get("/x", method="POST", body=b"c" * 1000))  # fits beside whatever `greedy` left counted
    assert (await after.response()).status == 200
    assert server._shared.buffered <= 500  # answered bodies are released; only `greedy`'s partial may remain
