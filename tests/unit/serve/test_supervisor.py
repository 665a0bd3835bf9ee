"""`serve --workers N`: the supervisor with fake workers (restart, back-off, start-up failure, drain, /readyz),
then the real thing in a child process: two real workers on one port answering real gRPC Checks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from sidecar.config import load_config
from sidecar.harness.envoy import free_port
from sidecar.serve.supervisor import Supervisor, worker_config
from tests.conftest import REPO

CONFIG = """\
listen: {{grpc: "127.0.0.1:{grpc}", admin: "127.0.0.1:{admin}"}}
server: {{watch_config: false, grace_period: 2}}
authorizers:
  open: {{type: none}}
routes:
  - {{match: "GET /open", authorizer: open}}
"""


# -- fake workers (module level: spawned processes import them by name) ------------------------------------


def ready_until_term(config_path: str | None, ready: Any, log_level: str, workers: int, *_: object) -> None:
    """Becomes ready at once, exits 0 on SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ready.value = 1
    while True:
        signal.pause()


def exit_at_once(config_path: str | None, ready: Any, log_level: str, workers: int, *_: object) -> None:
    """Dies before becoming ready, as a worker with an unusable port does."""
    sys.exit(3)


def poll(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait (polling, bounded) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


async def apoll(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


# -- the supervisor with fakes --------------------------------------------------------------------------------


async def test_restarts_a_crashed_worker_and_drains_all() -> None:
    import asyncio

    supervisor = Supervisor(None, 2, f"127.0.0.1:{free_port()}", grace_period=1, target=ready_until_term)
    task = asyncio.create_task(supervisor.run(install_signals=False))
    await apoll(supervisor.is_ready)
    first = [w.pid for w in supervisor.workers]
    assert len(set(first)) == 2
    assert first[0] is not None
    os.kill(first[0], signal.SIGKILL)
    await apoll(lambda: supervisor.restarts == 1 and supervisor.is_ready())
    now = [w.pid for w in supervisor.workers]
    assert now[0] != first[0] and now[1] == first[1]
    supervisor.stop()
    assert await asyncio.wait_for(task, 15) == 0
    assert not any(w.process.is_alive() for w in supervisor.workers)
    assert [w.process.exitcode for w in supervisor.workers] == [0, 0]


async def test_readyz_reports_every_worker() -> None:
    import asyncio

    admin = free_port()
    supervisor = Supervisor(None, 2, f"127.0.0.1:{admin}", grace_period=1, target=ready_until_term)
    task = asyncio.create_task(supervisor.run(install_signals=False))
    await apoll(supervisor.is_ready)
    body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{admin}/readyz")
    assert body[0] == 200
    assert body[1]["ready"] is True
    assert sorted(w["pid"] for w in body[1]["workers"]) == sorted(w.pid for w in supervisor.workers)
    supervisor.stop()
    assert await asyncio.wait_for(task, 15) == 0


async def test_worker_failing_at_start_up_stops_everything() -> None:
    import asyncio

    supervisor = Supervisor(None, 2, None, grace_period=1, target=exit_at_once)
    assert await asyncio.wait_for(supervisor.run(install_signals=False), 20) == 1
    assert supervisor.restarts == 0
    assert not any(w.process.is_alive() for w in supervisor.workers)


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Supervisor(None, 0, None)


def test_worker_config_drops_only_the_admin_listener(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(grpc=9999, admin=9998))
    config = load_config(path)
    worker = worker_config(config)
    assert worker.listen.admin is None
    assert worker.listen.grpc == "127.0.0.1:9999"
    assert worker.routes == config.routes


# -- the real thing: `python -m sidecar serve --workers 2` ------------------------------------------------


def fetch(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def ready_body(url: str) -> dict[str, Any] | None:
    try:
        status, body = fetch(url)
    except OSError:
        return None
    return body if status == 200 else None


def grpc_check(port: int, path: str = "/open") -> CheckResponse:
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", path
    http.headers[":authority"] = "example.com"
    return send_check(port, request)


def send_check(port: int, request: CheckRequest) -> CheckResponse:
    """One Check on a new connection: a local subchannel pool, so the kernel may pick another worker."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=CheckRequest.SerializeToString,
            response_deserializer=CheckResponse.FromString,
        )
        response: CheckResponse = call(request, timeout=5)
        return response


@pytest.fixture
def serve_workers(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], int, int]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(grpc_port: int | None = None) -> tuple[subprocess.Popen[bytes], int, int]:
        grpc_port, admin = grpc_port or free_port(), free_port()
        path = tmp_path / f"config-{len(started)}.yaml"
        path.write_text(CONFIG.format(grpc=grpc_port, admin=admin))
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--workers", "2", "--config", str(path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started.append(proc)
        return proc, grpc_port, admin

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_real_workers_share_the_port_survive_a_crash_and_drain(serve_workers: Any) -> None:
    proc, grpc_port, admin = serve_workers()
    url = f"http://127.0.0.1:{admin}/readyz"
    poll(lambda: ready_body(url) is not None)
    body = ready_body(url)
    assert body is not None
    pids = [w["pid"] for w in body["workers"]]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    for _ in range(6):
        assert grpc_check(grpc_port).status.code == 0

    # One scrape of the supervisor sees every worker's decisions (prometheus multiprocess mode), once each worker
    # has folded its local counts into its file (every second).
    def decisions_counted() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(
            float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith("authz_decisions_total{")
        )

    poll(lambda: decisions_counted() >= 6)
    assert decisions_counted() == 6
    # Both workers listen on the one port (SO_REUSEPORT).
    assert all(listens_on(pid, grpc_port) for pid in pids)

    os.kill(pids[0], signal.SIGKILL)

    def replaced() -> bool:
        now = ready_body(url)
        return now is not None and now["restarts"] == 1 and pids[0] not in [w["pid"] for w in now["workers"]]

    poll(replaced)
    assert grpc_check(grpc_port).status.code == 0
    body = ready_body(url)
    assert body is not None
    current = [w["pid"] for w in body["workers"]]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not any(alive(p) for p in current)


def test_workers_do_not_outlive_a_killed_supervisor(serve_workers: Any) -> None:
    proc, grpc_port, admin = serve_workers()
    url = f"http://127.0.0.1:{admin}/readyz"
    poll(lambda: ready_body(url) is not None)
    body = ready_body(url)
    assert body is not None
    pids = [w["pid"] for w in body["workers"]]
    proc.kill()
    proc.wait(10)
    poll(lambda: not any(alive(p) for p in pids))
    with socket.socket() as probe:  # the port is free again
        probe.bind(("127.0.0.1", grpc_port))


def test_port_taken_by_another_program_exits_1(serve_workers: Any) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        proc, _, _ = serve_workers(holder.getsockname()[1])
        assert proc.wait(30) == 1
        assert b"cannot listen on" in proc.stderr.read()


def test_bad_config_exits_1_before_starting_workers(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("routes:\n  - {match: 'GET /x', authorizer: missing}\n")
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--workers", "2", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert b"routes[0].authorizer" in done.stderr


def listens_on(pid: int, port: int) -> bool:
    """Whether `pid` holds a listening TCP socket on `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue
    return any(link[8:-1] in inodes for link in links if link.startswith("socket:["))
