"""A sigv4 replay guard kept in one process cannot stop a replay sent to another: `serve --workers N` (N > 1)
refuses a config that turns one on without `replay_redis_url`, at start-up and on every worker's reload, naming
the file, line and setting. With the guard in Redis the workers start and a replay is denied whichever worker
it reaches."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from sidecar.config import ConfigError, load_config
from sidecar.harness.envoy import free_port
from sidecar.serve.server import Sidecar, start_sidecar
from sidecar.serve.supervisor import check_workers, local_replay_guards
from tests.conftest import REPO, RedisServer
from tests.unit.serve.test_server import check
from tests.unit.serve.test_supervisor import grpc_check, poll, ready_body, send_check

AKID, SECRET = "AKIAWORKERSEXAMPLE", "workersSecretKey/EXAMPLE+abcdefghijklmnop"
HOST = "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com"
WHY = "with --workers 2 every worker keeps its own replay guard, so a signed request would be accepted once per worker"


def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "credentials.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            credentials:
              - access_key_id: {AKID}
                secret_access_key: "{SECRET}"
                principal_arn: arn:aws:iam::123456789012:user/alice
                policies: [{{Version: "2012-10-17", Statement: [{{Effect: Allow, Action: "execute-api:Invoke",
                             Resource: "*"}}]}}]
            """
        )
    )
    return path


def guarded_config(
    tmp_path: Path,
    grpc_port: int,
    admin_port: int,
    *,
    authorizer_guard: str = "false",
    redis_url: str | None = None,
    engine: str = "lean",
) -> str:
    """`POST /payments` turns the guard on for its route; `ANY /{proxy+}` inherits the authorizer's setting."""
    # A generous Redis timeout: the default 5 ms per operation leaves little room for a worker's first connection
    # on a loaded machine (~7 ms for connect and the first SET measured on an idle one), and a failed SET falls
    # back to the worker's own guard.
    redis_line = f"\n    replay_redis_url: {redis_url}\n    replay_redis_timeout_ms: 1000" if redis_url else ""
    return f"""\
listen: {{grpc: "127.0.0.1:{grpc_port}", admin: "127.0.0.1:{admin_port}"}}
server: {{watch_config: false, grace_period: 2, grpc_engine: {engine}}}
api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
authorizers:
  open: {{type: none}}
  iam:
    type: sigv4
    credentials: {{file: {credentials(tmp_path)}}}
    replay_guard: {authorizer_guard}{redis_line}
routes:
  - {{match: "GET /open", authorizer: open}}
  - {{match: "POST /payments", authorizer: iam, replay_guard: true}}
  - {{match: "ANY /{{proxy+}}", authorizer: iam}}
"""


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line containing `needle`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# -- the rule ------------------------------------------------------------------------------------------------


def test_check_workers_names_file_line_and_setting(tmp_path: Path) -> None:
    text = guarded_config(tmp_path, 9191, 9190, authorizer_guard="true")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    config = load_config(path)
    check_workers(config, 1)  # one process: its guard sees every request
    with pytest.raises(ConfigError) as refused:
        check_workers(config, 2)
    route_line, authorizer_line = line_of(text, "POST /payments"), line_of(text, "    replay_guard: true")
    lines = str(refused.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:{route_line}:")
    assert f": routes[1].replay_guard: {WHY}; set authorizers.iam.replay_redis_url" in lines[0]
    assert lines[1].startswith(f"{path}:{authorizer_line}:")
    assert f": authorizers.iam.replay_guard: {WHY}" in lines[1]
    assert [issue.line for issue in refused.value.issues] == [route_line, authorizer_line]


@dataclass
class Case:
    authorizer: dict[str, object]
    routes: list[str]
    sites: list[tuple[str | int, ...]] = field(default_factory=list)


ROUTE_A, ROUTE_B_GUARDED = (
    "{match: 'ANY /a', authorizer: iam}",
    "{match: 'ANY /b', authorizer: iam, replay_guard: true}",
)


@pytest.mark.parametrize(
    "case",
    [
        # the authorizer's guard, inherited by a route
        Case({"replay_guard": True}, [ROUTE_A], [("authorizers", "iam", "replay_guard")]),
        # off by default, on for one route
        Case({}, [ROUTE_A, ROUTE_B_GUARDED], [("routes", 1, "replay_guard")]),
        # both, each named once however many routes inherit
        Case(
            {"replay_guard": True},
            [ROUTE_A, ROUTE_B_GUARDED, "{match: 'ANY /c', authorizer: iam}"],
            [("authorizers", "iam", "replay_guard"), ("routes", 1, "replay_guard")],
        ),
        # every route turns the authorizer's guard off: no guard in use
        Case({"replay_guard": True}, ["{match: 'ANY /a', authorizer: iam, replay_guard: false}"]),
        # an authorizer no route uses
        Case({"replay_guard": True}, ["{match: 'ANY /a', authorizer: open}"]),
        # shared through Redis
        Case({"replay_guard": True, "replay_redis_url": "redis://127.0.0.1:1/0"}, [ROUTE_A, ROUTE_B_GUARDED]),
    ],
)
def test_which_settings_turn_on_a_local_guard(tmp_path: Path, case: Case) -> None:
    iam = {"type": "sigv4", "credentials": {"file": str(credentials(tmp_path))}, **case.authorizer}
    routes = "".join(f"\n  - {r}" for r in case.routes)
    path = tmp_path / "c.yaml"
    path.write_text(f"authorizers:\n  open: {{type: none}}\n  iam: {json.dumps(iam)}\nroutes:{routes}\n")
    config = load_config(path)
    assert list(local_replay_guards(config)) == case.sites
    if case.sites:
        with pytest.raises(ConfigError):
            check_workers(config, 3)
    else:
        check_workers(config, 3)


async def test_a_worker_refuses_such_a_config_at_start_up(tmp_path: Path) -> None:
    """Each worker checks again as it starts (the file may have changed since the supervisor read it, and a
    restarted worker reads it afresh)."""
    path = tmp_path / "c.yaml"
    text = guarded_config(tmp_path, free_port(), free_port())
    path.write_text(text)
    vet = partial(check_workers, workers=2)
    with pytest.raises(ConfigError, match=rf"^{path}:{line_of(text, 'POST /payments')}:\d+: routes\[1\]"):
        Sidecar(load_config(path), path, vet=vet)
    assert await start_sidecar(path, reuse_port=True, vet=vet) is None  # what the worker then exits 1 on
    assert isinstance(Sidecar(load_config(path), path), Sidecar)  # the same config serves in one process


async def test_a_worker_rejects_a_reload_that_turns_on_a_local_guard(tmp_path: Path) -> None:
    """What each worker does on SIGHUP or a file change: the rule is checked before the new config is compiled,
    the old config keeps serving, and /readyz shows why."""
    grpc_port, admin_port = free_port(), free_port()
    path = tmp_path / "c.yaml"
    plain = guarded_config(tmp_path, grpc_port, admin_port).replace(", replay_guard: true}", "}")
    path.write_text(plain)
    vet = partial(check_workers, workers=2)
    sidecar = Sidecar(load_config(path), path, vet=vet)
    await sidecar.start()
    try:
        serving = sidecar.runtime.version
        guarded = guarded_config(tmp_path, grpc_port, admin_port).replace(
            '"GET /open", authorizer: open', '"GET /open", authorizer: iam'
        )
        path.write_text(guarded)
        assert await sidecar.reload("SIGHUP") is False
        assert sidecar.runtime.version == serving
        assert (await check(grpc_port, "/open")).status.code == 0  # the old config: /open is open
        where = f"{path}:{line_of(guarded, 'POST /payments')}:"
        assert where in sidecar.state.last_reload_error
        assert f"routes[1].replay_guard: {WHY}" in sidecar.state.last_reload_error
        # The same change with the guard in Redis is served (the client connects lazily: nothing is sent here).
        path.write_text(guarded_config(tmp_path, grpc_port, admin_port, redis_url="redis://127.0.0.1:1/0"))
        assert await sidecar.reload("SIGHUP") is True
        assert sidecar.runtime.version != serving
    finally:
        await sidecar.drain_and_stop()


# -- the real thing: `python -m sidecar serve --workers 2` ------------------------------------------------


class Stderr:
    """Collects a child's stderr lines in a thread, so a test can wait (bounded) for a line."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self.closed = False
        self.changed = threading.Condition()
        self.stream = proc.stderr
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.stream:
            with self.changed:
                self.lines.append(raw.decode(errors="replace"))
                self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 30.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.lines), timeout):
                raise AssertionError("not logged in time:\n" + "".join(self.lines))

    def text(self) -> str:
        with self.changed:
            return "".join(self.lines)


@pytest.fixture
def serve() -> Iterator[Callable[[Path], tuple[subprocess.Popen[bytes], Stderr]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(path: Path) -> tuple[subprocess.Popen[bytes], Stderr]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--workers", "2", "--config", str(path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started.append(proc)
        return proc, Stderr(proc)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def signed(path: str) -> CheckRequest:
    """A botocore-signed POST as the CheckRequest Envoy would send for it (signed once: send it again to replay)."""
    aws = AWSRequest(method="POST", url=f"https://{HOST}{path}", data=b"")
    SigV4Auth(Credentials(AKID, SECRET), "execute-api", "us-east-1").add_auth(aws)
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "POST", path, HOST
    for name, value in aws.headers.items():
        http.headers[name.lower()] = value.decode() if isinstance(value, bytes) else value
    http.headers[":authority"] = HOST
    return request


def send(grpc_port: int, request: CheckRequest) -> CheckResponse:
    """One Check on a new connection (the kernel may hand it to either worker)."""
    return send_check(grpc_port, request)


def test_workers_need_a_shared_replay_guard(
    tmp_path: Path, serve: Callable[..., tuple[Any, Stderr]], redis_server: RedisServer
) -> None:
    grpc_port, admin_port = free_port(), free_port()
    path = tmp_path / "local.yaml"
    text = guarded_config(tmp_path, grpc_port, admin_port)
    path.write_text(text)
    proc, stderr = serve(path)
    assert proc.wait(60) == 1
    stderr.wait_for(lambda _: stderr.closed)
    logged = stderr.text()
    assert f"{path}:{line_of(text, 'POST /payments')}:" in logged
    assert f"routes[1].replay_guard: {WHY}; set authorizers.iam.replay_redis_url" in logged
    assert "started 2 workers" not in logged  # refused before any worker was spawned

    shared = tmp_path / "shared.yaml"
    # The lean listener (the default) starts a Check outside any Task: the guard's SET must still reach Redis.
    shared.write_text(guarded_config(tmp_path, grpc_port, admin_port, redis_url=redis_server.url, engine="lean"))
    proc, stderr = serve(shared)
    url = f"http://127.0.0.1:{admin_port}/readyz"
    poll(lambda: ready_body(url) is not None or proc.poll() is not None, timeout=60)
    body = ready_body(url)
    assert body is not None, stderr.text()
    assert len(body["workers"]) == 2
    payment = signed("/payments")
    first = send(grpc_port, payment)
    assert first.status.code == 0, first
    keys = redis.Redis.from_url(redis_server.url)
    assert keys.dbsize() == 1, stderr.text()  # the guard remembered the signature in Redis
    keys.close()
    # Whichever worker a replay reaches (each on a new connection), Redis has seen it.
    for _ in range(6):
        replayed = send(grpc_port, payment)
        assert replayed.denied_response.status.code == 403, stderr.text()
        assert json.loads(replayed.denied_response.body)["reason"] == "ReplayedRequest"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_workers_reject_a_reload_that_turns_on_a_local_guard(
    tmp_path: Path, serve: Callable[..., tuple[Any, Stderr]]
) -> None:
    grpc_port, admin_port = free_port(), free_port()
    path = tmp_path / "c.yaml"
    path.write_text(guarded_config(tmp_path, grpc_port, admin_port).replace(", replay_guard: true}", "}"))
    proc, stderr = serve(path)
    url = f"http://127.0.0.1:{admin_port}/readyz"
    poll(lambda: ready_body(url) is not None or proc.poll() is not None, timeout=60)
    body = ready_body(url)
    assert body is not None, stderr.text()
    pids = [w["pid"] for w in body["workers"]]
    assert grpc_check(grpc_port, "/open").status.code == 0
    # The new config would also move /open behind the sigv4 authorizer: if a worker took it, /open would be denied.
    guarded = guarded_config(tmp_path, grpc_port, admin_port).replace(
        '"GET /open", authorizer: open', '"GET /open", authorizer: iam'
    )
    path.write_text(guarded)
    proc.send_signal(signal.SIGHUP)
    where = f"{path}:{line_of(guarded, 'POST /payments')}:"

    def rejected_by_both(lines: list[str]) -> bool:
        rejections = [i for i, line in enumerate(lines) if "reload (SIGHUP) rejected" in line]
        return len({lines[i].partition("[worker ")[2].partition("]")[0] for i in rejections}) == 2 and all(
            any(where in line and WHY in line for line in lines[i + 1 : i + 3]) for i in rejections
        )

    stderr.wait_for(rejected_by_both)
    for _ in range(6):  # new connections: each worker is likely to answer some
        assert grpc_check(grpc_port, "/open").status.code == 0
    now = ready_body(url)
    assert now is not None and [w["pid"] for w in now["workers"]] == pids  # nobody restarted, both still ready
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
