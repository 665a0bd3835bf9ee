"""Fixtures: a real HTTP authz server on 127.0.0.1 (ephemeral port) in front of a scriptable fake pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sidecar import reasons
from sidecar.request import Decision, Request
from sidecar.settings import HttpModeSettings
from sidecar.transports.http import HttpAuthzServer, start_http_server

from .client import Conn


class FakePipeline:
    """Allows everything, echoing what it saw in upstream headers, unless a path says otherwise.

    Paths starting with `/async` suspend a few times before answering (forcing the Task path); `/deny` denies
    with 401 and a challenge; `/boom` raises; `/async-boom` raises after suspending; `/hold` waits for `release`.
    """

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.release = asyncio.Event()
        self.cancelled = 0

    async def check(self, request: Request) -> Decision:
        self.seen.append(request)
        path = request.path
        if path.startswith("/async"):
            for _ in range(3):
                await asyncio.sleep(0)
            if path.startswith("/async-boom"):
                raise RuntimeError("authorizer bug after await")
        if path.startswith("/boom"):
            raise RuntimeError("authorizer bug")
        if path.startswith("/hold"):
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if path.startswith("/deny"):
            return reasons.Denied(reasons.UNAUTHORIZED, "No token", 401).decision(challenge='Bearer realm="api"')
        return Decision(
            allowed=True,
            status=200,
            reason=reasons.ALLOWED,
            headers=(("x-authz-principal", "alice"), ("x-seen-path", request.raw_path)),
        )


Serve = Callable[..., Awaitable[HttpAuthzServer]]


@pytest.fixture
def fake() -> FakePipeline:
    return FakePipeline()


class Servers:
    """Starts servers on the running loop and closes them all at the end (usable outside fixtures too)."""

    def __init__(self, fake: FakePipeline) -> None:
        self.fake = fake
        self.started: list[HttpAuthzServer] = []

    async def start(self, pipeline: object = None, **settings: object) -> HttpAuthzServer:
        server = await start_http_server(
            "127.0.0.1",
            0,
            pipeline or self.fake,  # type: ignore[arg-type]
            HttpModeSettings(**settings),  # type: ignore[arg-type]
        )
        self.started.append(server)
        return server

    async def close(self) -> None:
        await Conn.close_all()
        for server in self.started:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def serve(fake: FakePipeline) -> AsyncIterator[Serve]:
    servers = Servers(fake)
    yield servers.start
    await servers.close()
