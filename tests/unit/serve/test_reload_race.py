"""Reloads run one at a time and the newest file wins: a reload slowed down by a JWKS fetch (a real JWKS server on
127.0.0.1 holding its answer) cannot install its older read over a newer one requested meanwhile; requests made
while a reload runs coalesce into one more reload after it; a drain does not wait for a held reload; /readyz's
`last_reload_error` goes away once a reload succeeds."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest

from sidecar.config import load_config
from sidecar.harness.envoy import free_port
from sidecar.runtime import compile_runtime
from sidecar.serve.server import Sidecar
from tests.unit.serve.test_readiness import HeldJwks
from tests.unit.serve.test_server import check

QUEUED = "requested while another runs"


def config(grpc_port: int, admin_port: int, *, open_route: str = "open", jwks_url: str | None = None) -> str:
    """`GET /open` goes to `open_route`; with `jwks_url`, a JWT authorizer whose start waits for that JWKS."""
    jwt = (
        f'  corp: {{type: jwt, issuer: "https://idp.example.com", audiences: [api], jwks_uri: "{jwks_url}"}}\n'
        if jwks_url
        else ""
    )
    jwt_route = '  - {match: "GET /jwt", authorizer: corp}\n' if jwks_url else ""
    return f"""\
listen: {{grpc: "127.0.0.1:{grpc_port}", admin: "127.0.0.1:{admin_port}"}}
server: {{watch_config: false, grace_period: 2}}
authorizers:
  open: {{type: none}}
  closed: {{type: deny}}
{jwt}routes:
  - {{match: "GET /open", authorizer: {open_route}}}
{jwt_route}"""


class Logged(logging.Handler):
    """Counts the server's log records that contain `text`; `reach(n)` waits for the n-th (no polling)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.count = 0
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1
            self.changed.set()

    async def reach(self, count: int) -> None:
        while self.count < count:
            self.changed.clear()
            await self.changed.wait()


@contextmanager
def logged(text: str) -> Iterator[Logged]:
    logger = logging.getLogger("sidecar.serve.server")
    handler, level = Logged(text), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def taken_in(reload: asyncio.Task[bool], queued: Awaitable[None]) -> None:
    """Wait until the server has taken in the reload request `reload`: either it was queued behind the running
    reload (one at a time), or it ran to its end on its own (two reloads at once, the race this file is about)."""
    waiting = asyncio.ensure_future(queued)
    try:
        done, _ = await asyncio.wait({reload, waiting}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    assert done, "the reload request was neither queued nor finished"


@pytest.fixture
def held_jwks() -> Iterator[HeldJwks]:
    server = HeldJwks()
    yield server
    server.release()
    server.server.shutdown()
    server.server.server_close()


@asynccontextmanager
async def serving(path: Path) -> AsyncIterator[Sidecar]:
    """A started `Sidecar` for the config file at `path`, drained and stopped on exit."""
    running = Sidecar(load_config(path), path)
    await running.start()
    try:
        yield running
    finally:
        await running.drain_and_stop()


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    path = tmp_path / "config.yaml"
    path.write_text(config(free_port(), free_port()))
    async with serving(path) as running:
        yield running


def ports(sidecar: Sidecar) -> tuple[int, int]:
    assert sidecar.admin is not None
    return sidecar.grpc_port, sidecar.admin.port


def version_on_disk(path: Path) -> str:
    return compile_runtime(load_config(path)).version


async def start_slow_reload(sidecar: Sidecar, held_jwks: HeldJwks) -> asyncio.Task[bool]:
    """Write a config whose runtime starts with a JWKS fetch, reload, and return once the fetch is held."""
    assert sidecar.source.path is not None
    sidecar.source.path.write_text(config(*ports(sidecar), jwks_url=held_jwks.url))
    first = asyncio.create_task(sidecar.reload("SIGHUP"))
    assert await asyncio.to_thread(held_jwks.requested.wait, 10), "the first reload never fetched the JWKS"
    assert not first.done()
    return first


async def test_a_slow_reload_never_installs_an_older_read_over_a_newer_one(
    sidecar: Sidecar, held_jwks: HeldJwks
) -> None:
    path = sidecar.source.path
    assert path is not None
    first = await start_slow_reload(sidecar, held_jwks)  # reload 1 read config A and waits for its keys
    path.write_text(config(*ports(sidecar), open_route="closed"))  # config B, which starts at once
    newest = version_on_disk(path)
    with logged(QUEUED) as queued:
        second = asyncio.create_task(sidecar.reload("file change"))
        await taken_in(second, queued.reach(1))
    held_jwks.release()  # only now may reload 1 finish
    assert await asyncio.wait_for(first, 10) is True
    assert await asyncio.wait_for(second, 10) is True
    assert sidecar.runtime.version == newest  # B, the newest file, serves; not A over it
    assert (await check(sidecar.grpc_port, "/open")).denied_response.status.code == 403
    assert sidecar.state.reloads_ok == 2


async def test_requests_during_a_reload_coalesce_into_one_more(sidecar: Sidecar, held_jwks: HeldJwks) -> None:
    path = sidecar.source.path
    assert path is not None
    first = await start_slow_reload(sidecar, held_jwks)
    with logged(QUEUED) as queued:
        path.write_text(config(*ports(sidecar), open_route="closed"))  # B
        second = asyncio.create_task(sidecar.reload("file change"))
        await taken_in(second, queued.reach(1))
        text = config(*ports(sidecar), open_route="closed") + '  - {match: "GET /c", authorizer: open}\n'
        path.write_text(text)  # C, before B was ever read
        third = asyncio.create_task(sidecar.reload("SIGHUP"))
        await taken_in(third, queued.reach(2))
    newest = version_on_disk(path)
    held_jwks.release()
    assert [await asyncio.wait_for(t, 10) for t in (first, second, third)] == [True, True, True]
    assert sidecar.runtime.version == newest
    assert sidecar.state.reloads_ok == 2  # A, then one reload (of C) for both requests made while A loaded
    assert (await check(sidecar.grpc_port, "/c")).status.code == 0


async def test_drain_does_not_wait_for_a_held_reload(sidecar: Sidecar, held_jwks: HeldJwks) -> None:
    serving = sidecar.runtime.version
    first = await start_slow_reload(sidecar, held_jwks)
    await asyncio.wait_for(sidecar.drain_and_stop(), 10)  # the JWKS is still held
    assert first.done() and first.result() is False  # the reload was abandoned, not left to finish later
    assert sidecar.runtime.version == serving
    assert await sidecar.reload("SIGHUP") is False  # nothing reloads once draining


async def readyz(admin_port: int) -> dict[str, object]:
    async with httpx.AsyncClient() as client:
        body: dict[str, object] = (await client.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=5)).json()
        return body


async def test_a_successful_reload_clears_the_last_reload_error(sidecar: Sidecar) -> None:
    path = sidecar.source.path
    assert path is not None
    grpc_port, admin_port = ports(sidecar)
    good = path.read_text()
    bad = good + '  - {match: "GET /x", authorizer: missing}\n'
    path.write_text(bad)
    assert await sidecar.reload("SIGHUP") is False
    assert "routes[1].authorizer" in str((await readyz(admin_port))["last_reload_error"])
    path.write_text(config(grpc_port, admin_port, open_route="closed"))  # a good, different config
    assert await sidecar.reload("SIGHUP") is True
    assert "last_reload_error" not in await readyz(admin_port)
    assert sidecar.state.last_reload_error == ""
    # A bad edit, then the file put back exactly as it serves: nothing to swap, and the error is gone too.
    serving = path.read_text()
    path.write_text(bad)
    assert await sidecar.reload("file change") is False
    assert "last_reload_error" in await readyz(admin_port)
    path.write_text(serving)
    assert await sidecar.reload("file change") is True
    body = await readyz(admin_port)
    assert "last_reload_error" not in body, json.dumps(body)
    assert sidecar.state.reloads_failed == 2
