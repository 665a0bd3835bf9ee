"""Shared test configuration."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def repo_root() -> Path:
    return REPO


def run_processes(commands: Sequence[Sequence[str]], **options: Any) -> list[subprocess.CompletedProcess[str]]:
    """`subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, **options)` for each
    command, all started at once (each is a Python start-up, CPU a serial suite leaves idle on a second core):
    the results in the commands' order. Only for commands that do not depend on each other's effects."""

    def one(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, **options)

    with ThreadPoolExecutor(max_workers=max(1, len(commands))) as pool:
        return list(pool.map(one, commands))


class RedisServer:
    """A real redis-server on a free loopback port, no persistence; can be stopped and restarted on that port."""

    def __init__(self, tmp: Path, extra: Sequence[str] = ()) -> None:
        from sidecar.harness.envoy import free_port

        self.port = free_port()
        self.dir = tmp
        self.extra = tuple(extra)
        """More redis-server options (cluster mode: tests/unit/limits/cluster_testkit.py)."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:  # a missing dependency is a failure, never a skip
            pytest.fail("redis-server is not installed (make test installs it: scripts/ensure-system-deps.sh)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--protected-mode",
                "yes",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail("redis-server did not start")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
StartServer = Callable[[Handler], Awaitable[int]]


@pytest.fixture
async def fake_server() -> AsyncIterator[StartServer]:
    """Scripted TCP servers on 127.0.0.1 standing in for a Redis that misbehaves (started with a handler,
    answering with the port)."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
