"""The admin endpoint's `GET /usage?key=ID` (API Gateway's GetUsage) on a real sidecar: requests decided through
its HTTP listener on 127.0.0.1 are counted (in process, or in a real redis-server), and `/usage` reports them as
JSON; every refusal is JSON with its status; no answer holds a key's value or digest. `usage --admin` asks it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from sidecar.config import load_config
from sidecar.harness.envoy import free_port
from sidecar.limits import build
from sidecar.limits.apikeys import digest_of
from sidecar.limits.counters import period_bounds
from sidecar.limits.usage_cli import iso
from sidecar.serve.admin import AdminServer, json_response
from sidecar.serve.server import Sidecar
from tests.conftest import RedisServer
from tests.unit.limits.usage_testkit import BRONZE, GOLD, GOLD_LIMIT, GOLD_OFFSET, OFF, VALUES, config_text, key_file

FIRST_PERIOD = GOLD_LIMIT - GOLD_OFFSET


@pytest.fixture(autouse=True)
def fresh_process_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's own in-process counters (the process's are shared by every config this process loads)."""
    monkeypatch.setattr(build, "_PROCESS_COUNTERS", None)


@asynccontextmanager
async def running(tmp_path: Path, redis_url: str | None = None, text: str | None = None) -> AsyncIterator[Sidecar]:
    """A started sidecar with HTTP and admin listeners on free loopback ports, drained on exit."""
    listen = f'listen: {{grpc: null, http: "127.0.0.1:{free_port()}", admin: "127.0.0.1:{free_port()}"}}\n'
    listen += "server: {watch_config: false, grace_period: 1}\n"
    path = tmp_path / "config.yaml"
    path.write_text(listen + (text or config_text(key_file(tmp_path), redis_url)))
    sidecar = Sidecar(load_config(path), path)
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.drain_and_stop()


def admin_url(sidecar: Sidecar) -> str:
    assert sidecar.admin is not None
    return f"http://127.0.0.1:{sidecar.admin.port}"


async def send(sidecar: Sidecar, key: str, times: int) -> list[int]:
    """`times` requests with API key `key` through the sidecar's HTTP listener; their statuses."""
    address = sidecar.runtime.config.listen.http
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        return [(await client.get("/orders/1", headers={"x-api-key": key})).status_code for _ in range(times)]


async def get(sidecar: Sidecar, target: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient() as client:
        response = await client.request(method, admin_url(sidecar) + target, timeout=10)
    for value in VALUES:  # never a key's value or digest, whatever the answer
        assert value not in response.text and digest_of(value)[:16] not in response.text
    return response


async def test_usage_reports_this_process_counts(tmp_path: Path) -> None:
    async with running(tmp_path) as sidecar:
        assert await send(sidecar, GOLD, 3) == [200] * 3
        assert await send(sidecar, BRONZE, 1) == [200]
        answer = await get(sidecar, "/usage?key=k-gold")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        start, end = period_bounds("DAY", int(sidecar.runtime.gates.counters.clock()))  # type: ignore[union-attr]
        assert answer.json() == {
            "key": "k-gold",
            "plan": "gold",
            "period": "DAY",
            "period_start": iso(start),
            "period_end": iso(end),
            "used": 3,
            "remaining": FIRST_PERIOD - 3,
            "limit": FIRST_PERIOD,
            "shared": False,
        }
        assert await send(sidecar, GOLD, FIRST_PERIOD - 3 + 1) == [200] * (FIRST_PERIOD - 3) + [429]
        used_up = (await get(sidecar, "/usage?key=k-gold")).json()
        assert (used_up["used"], used_up["remaining"], used_up["limit"]) == (FIRST_PERIOD, 0, FIRST_PERIOD)
        bronze = (await get(sidecar, "/usage?key=k-bronze")).json()
        assert (bronze["period"], bronze["used"], bronze["limit"]) == ("WEEK", 1, 5)
        assert bronze["period_start"] == iso(period_bounds("WEEK", int(sidecar.runtime.gates.counters.clock()))[0])  # type: ignore[union-attr]
        assert (await send(sidecar, OFF, 1)) == [403]  # a disabled key is refused, and its usage still reported
        off = await get(sidecar, "/usage?key=k-off")
        assert off.status_code == 200 and off.json()["used"] == 0
        head = await get(sidecar, "/usage?key=k-gold", method="HEAD")
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0


@pytest.mark.parametrize(
    ("target", "status", "body"),
    [
        ("/usage", 400, {"error": "name the api key by its id: /usage?key=ID"}),
        ("/usage?key=", 400, {"error": "name the api key by its id: /usage?key=ID"}),
        ("/usage?key=k-nobody", 404, {"error": "no api key has this id"}),
        ("/usage?key=" + GOLD, 404, {"error": "no api key has this id"}),  # a value given as an id is not echoed
        ("/usage?key=bad%0Aid", 404, {"error": "not an api key id"}),
        ("/usage?key=k-gold&key=k-bronze", 400, {"error": "bad query string (each name at most once)"}),
        ("/usage?key", 400, {"error": "bad query string (each name at most once)"}),
    ],
)
async def test_usage_refusals_are_json_with_their_status(
    tmp_path: Path, target: str, status: int, body: dict[str, str]
) -> None:
    async with running(tmp_path) as sidecar:
        answer = await get(sidecar, target)
        assert (answer.status_code, answer.json()) == (status, body)


async def test_keys_without_a_quota_are_404_with_why(tmp_path: Path) -> None:
    async with running(tmp_path) as sidecar:
        loose, free = await get(sidecar, "/usage?key=k-loose"), await get(sidecar, "/usage?key=k-free")
        assert loose.status_code == 404 and "k-loose is in no usage plan" in loose.json()["error"]
        assert loose.json()["key"] == "k-loose"
        assert free.status_code == 404 and "usage plan free of api key k-free has no quota" in free.json()["error"]
        assert (await get(sidecar, "/usage?key=k-gold", method="POST")).status_code == 405


async def test_a_config_without_api_keys_has_no_usage(tmp_path: Path) -> None:
    text = "authorizers: {open: {type: none}}\nroutes: [{match: 'ANY /{proxy+}', authorizer: open}]\n"
    async with running(tmp_path, text=text) as sidecar:
        answer = await get(sidecar, "/usage?key=k-gold")
        assert answer.status_code == 404 and "no api keys" in answer.json()["error"]


async def test_usage_in_redis_is_shared_and_503_while_redis_is_away(tmp_path: Path, redis_server: RedisServer) -> None:
    async with running(tmp_path, redis_server.url) as sidecar:
        assert await send(sidecar, GOLD, 2) == [200, 200]
        shared = (await get(sidecar, "/usage?key=k-gold")).json()
        assert (shared["used"], shared["remaining"], shared["shared"]) == (2, FIRST_PERIOD - 2, True)
        redis_server.stop()
        away = await get(sidecar, "/usage?key=k-gold")
        assert away.status_code == 503 and away.json() == {
            "error": "cannot read the counts of api key k-gold: redis usage: no answer (breaker open or Redis failing)",
            "key": "k-gold",
        }
        assert (await get(sidecar, "/healthz")).status_code == 200  # the admin listener serves on


async def usage_command(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`authz-sidecar usage` in a child process, waited for in a thread: the sidecar it asks runs on this loop."""
    command = [sys.executable, "-m", "sidecar", "usage", "--config", str(config), *args]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60, check=False)


async def test_the_usage_command_asks_a_running_sidecar_with_admin(tmp_path: Path) -> None:
    async with running(tmp_path) as sidecar:
        assert await send(sidecar, GOLD, 2) == [200, 200]
        config = sidecar.source.path
        assert config is not None
        result = await usage_command(config, "--key", "k-gold", "--admin")  # the config's listen.admin
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[3:] == [
            f"used:       2 of {FIRST_PERIOD}",
            f"remaining:  {FIRST_PERIOD - 2}",
            "counters:   one process's (in-process counters)",
        ]
        unknown = await usage_command(
            config, "--key", "k-nobody", "--admin", admin_url(sidecar).removeprefix("http://")
        )
        assert unknown.returncode == 2 and "404: no api key has this id" in unknown.stderr


async def test_usage_admin_says_so_where_no_usage_is_served(tmp_path: Path) -> None:
    """A `serve --workers` supervisor's admin listener serves /healthz, /readyz and /metrics only."""
    supervisor_like = AdminServer({"/healthz": lambda: json_response(200, {"status": "alive"})})
    await supervisor_like.start("127.0.0.1", 0)
    try:
        config = tmp_path / "config.yaml"
        config.write_text(config_text(key_file(tmp_path)))
        result = await usage_command(config, "--key", "k-gold", "--admin", f"127.0.0.1:{supervisor_like.port}")
        assert result.returncode == 2 and "not served there" in result.stderr
    finally:
        await supervisor_like.stop()
