"""What the limits e2e tests (test_limits_e2e.py) share: key files of fresh values, config text, a bounded wait,
metrics by name, Redis's own clock, sidecars serving their HTTP listener alone, and an asyncio driver that sends
one key to several of them at once.

Nothing here sleeps to synchronize: `wait_until` polls a condition until a deadline, and the drivers stop at a
deadline or a count they are given.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from sidecar.harness.demo import SidecarProcess, config_with_ports
from sidecar.harness.envoy import free_port
from sidecar.limits.apikeys import digest_of, new_key_value
from tests.conftest import REPO
from tests.e2e.conftest import metric

T = TypeVar("T")
KEY_HEADER = "x-api-key"
Outcome = tuple[int, str]
"""(HTTP status, reason code from the deny body; "" for an allow)."""


@dataclass(frozen=True)
class KeyFile:
    """A key file holding only digests of fresh random values; `values[id]` is what a client presents."""

    path: Path
    values: dict[str, str]

    @classmethod
    def write(cls, path: Path, entries: Sequence[tuple[str, str | None, bool]]) -> KeyFile:
        """Entries are (id, plan or None, enabled)."""
        values = {key_id: new_key_value() for key_id, _, _ in entries}
        rows: list[dict[str, Any]] = []
        for key_id, plan, enabled in entries:
            row: dict[str, Any] = {"id": key_id, "name": f"{key_id} holder", "sha256": digest_of(values[key_id])}
            row["enabled"] = enabled
            if plan is not None:
                row["plan"] = plan
            rows.append(row)
        path.write_text(yaml.safe_dump(rows, sort_keys=False), encoding="utf-8")
        return cls(path, values)

    def header(self, key_id: str) -> dict[str, str]:
        """The request header presenting key `key_id`."""
        return {KEY_HEADER: self.values[key_id]}


KEY_SECRET = "e2e-limits-key-secret-0123456789"
"""The rate rules' key secret of every config counting in Redis (`limits.key_secret`: replicas share it)."""


def limits_config(keys: KeyFile | None, redis_url: str | None, redis: dict[str, Any] | None = None, **top: Any) -> str:
    """A config counting in Redis at `redis_url` (connection `default`, with `redis` options) or, without one, in
    process; `keys` (absolute path: the stack writes the config elsewhere) as `api_keys.file`; `top` the rest
    (authorizers, usage_plans, rate_limits, routes, ...)."""
    data: dict[str, Any] = {"decision_log": {"flush_interval": 0.05}, **top}
    if redis_url is not None:
        data["redis"] = {"default": {"url": redis_url, "timeout_ms": 200, **(redis or {})}}
        data["limits"] = {"key_secret": KEY_SECRET, **data.get("limits", {})}  # what rate rules in Redis need
    if keys is not None:
        data["api_keys"] = {**data.get("api_keys", {}), "file": str(keys.path)}
    return yaml.safe_dump(data, sort_keys=False)


def wait_until(condition: Callable[[], T], what: str, timeout: float = 10.0) -> T:
    """Poll `condition` until it returns something truthy (returned), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)
    return value


def scrape(admin_url: str) -> str:
    return httpx.get(f"{admin_url}/metrics", timeout=5.0).text


def sample(admin_url: str, series: str, /, **labels: str) -> float:
    """One sample of the sidecar's /metrics (0 when absent); positional, as `name` is also a label (of gates)."""
    return metric(scrape(admin_url), series, **labels)


def outcome(response: httpx.Response) -> Outcome:
    """What a client saw: the status and, for a deny, the reason code of the JSON body."""
    if response.status_code == 200:
        return 200, ""
    return response.status_code, str(response.json()["reason"])


def denied(response: httpx.Response) -> tuple[int, str, str]:
    """(status, reason, message) of a deny's JSON body."""
    body = response.json()
    return response.status_code, body["reason"], body["message"]


def decision_lines(log: str) -> list[str]:
    """The decision log's lines in a sidecar's output (JSON objects; other log lines start with a date)."""
    return [line for line in log.splitlines() if line.startswith('{"time"')]


@dataclass(frozen=True)
class HttpSidecar:
    """A sidecar process asked directly on its HTTP listener (as Envoy's `http_service` would, prefix /authz)."""

    process: SidecarProcess
    http_url: str
    admin_url: str


@contextmanager
def http_sidecars(config_text: str, count: int) -> Iterator[list[HttpSidecar]]:
    """`count` `authz-sidecar serve` processes of one config, each on its own loopback ports; all stopped after."""
    with ExitStack() as stack:
        started = []
        for _ in range(count):
            grpc, admin, http = free_port(), free_port(), free_port()
            text = config_with_ports(config_text, grpc, admin, http)
            process = stack.enter_context(SidecarProcess(text, admin, env={"PYTHONPATH": str(REPO)}))
            started.append(HttpSidecar(process, f"http://127.0.0.1:{http}/authz", f"http://127.0.0.1:{admin}"))
        yield started


class Connection:
    """One keep-alive HTTP/1.1 connection to a sidecar's HTTP listener, as lean as a client can be: on a small
    machine httpx's own cost per request would take most of the CPU the sidecars need to be driven past a limit."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: str) -> None:
        self.reader, self.writer, self.prefix = reader, writer, prefix

    @classmethod
    async def open(cls, sidecar: HttpSidecar) -> Connection:
        url = httpx.URL(sidecar.http_url)
        assert url.host == "127.0.0.1" and url.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", url.port)
        return cls(reader, writer, url.path)

    async def get(self, path: str, headers: dict[str, str]) -> Outcome:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.writer.write(f"GET {self.prefix}{path} HTTP/1.1\r\nhost: api.test\r\n{lines}\r\n".encode())
        async with asyncio.timeout(10):  # a sidecar that stops answering fails the test, never hangs it
            head = await self.reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            body = await self.reader.readexactly(int(found[1])) if found else b""
        status = int(head[9:12])
        return status, "" if status == 200 else str(json.loads(body)["reason"])

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def open_connections(
    sidecars: Sequence[HttpSidecar], per_sidecar: int, headers: dict[str, str]
) -> list[Connection]:
    """`per_sidecar` connections to each sidecar, each used once with `headers` (a key other than the measured
    one) so that they, and the sidecars' own Redis connections, are open before anything is measured."""
    connections = await asyncio.gather(*(Connection.open(s) for s in sidecars for _ in range(per_sidecar)))
    await asyncio.gather(*(c.get("/warm", headers) for c in connections))
    return list(connections)


async def hammer(connections: Sequence[Connection], headers: dict[str, str], seconds: float) -> Counter[Outcome]:
    """Every connection sends `headers`, one request after another, until `seconds` have passed; what came back."""
    deadline = time.monotonic() + seconds
    seen: Counter[Outcome] = Counter()

    async def loop(connection: Connection) -> None:
        while time.monotonic() < deadline:
            got = await connection.get("/hot", headers)  # awaited first: `seen[await ...] += 1` loses updates
            seen[got] += 1

    await asyncio.gather(*(loop(c) for c in connections))
    return seen


async def spend(connections: Sequence[Connection], headers: dict[str, str], attempts: int) -> Counter[Outcome]:
    """Exactly `attempts` requests spread over the connections; what came back."""
    left = [attempts]
    seen: Counter[Outcome] = Counter()

    async def loop(connection: Connection) -> None:
        while left[0] > 0:
            left[0] -= 1
            got = await connection.get("/quota", headers)
            seen[got] += 1

    await asyncio.gather(*(loop(c) for c in connections))
    return seen


async def redis_seconds(redis: Any) -> float:
    """Redis's clock (TIME), the one the counting scripts read."""
    seconds, micros = await redis.time()
    return float(seconds) + float(micros) / 1e6
