"""Through a real Envoy: allow reaches the upstream with our headers, denials carry our body, failure is closed,
SIGTERM drains in-flight Checks, SIGHUP reloads, `check` agrees with the server, shipped Envoy configs validate."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from sidecar.config import default_config_text
from sidecar.harness.demo_certs import PARTNER_ID
from sidecar.harness.envoy import SHIPPED, render_envoy_config, validate_envoy_config
from tests.conftest import REPO
from tests.e2e.conftest import StackFactory, metric
from tests.e2e.tls_testkit import with_tls_files

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("engine", ["lean", "grpcio"])
def test_allow_reaches_upstream_with_identity_headers(shared_authz_stack: StackFactory, engine: str) -> None:
    """Both gRPC engines (`server.grpc_engine`) behind the same Envoy; every other e2e test runs on the default."""
    stack = shared_authz_stack(default_config_text() + f"server: {{grpc_engine: {engine}}}\n")
    response = stack.client.post("/public/orders?x=1", content=b"payload", headers={"x-authz-principal": "spoofed"})
    assert response.status_code == 200
    seen = response.json()
    assert seen["path"] == "/public/orders?x=1"
    assert seen["body_bytes"] == 7
    assert seen["headers"]["x-authz-principal"] == "anonymous"  # overwritten, not appended to the spoof
    assert seen["headers"]["x-authz-authorizer"] == "public"
    assert f"({engine}) http=" in stack.sidecar.log()


@pytest.mark.parametrize("engine", ["lean", "grpcio"])
def test_denials_carry_status_and_reason(shared_authz_stack: StackFactory, engine: str) -> None:
    stack = shared_authz_stack(default_config_text() + f"server: {{grpc_engine: {engine}}}\n")
    closed = stack.client.get("/admin/users")
    assert closed.status_code == 403
    assert closed.headers["content-type"] == "application/json"
    assert closed.json() == {"message": "This route is closed", "reason": "RouteDeny"}
    unknown = stack.client.get("/no/route")
    assert unknown.status_code == 403
    assert unknown.json()["reason"] == "MissingAuthenticationToken"


def test_sidecar_down_fails_closed(authz_stack: StackFactory) -> None:
    stack = authz_stack(default_config_text())
    assert stack.client.get("/public/x").status_code == 200
    assert stack.sidecar.stop() == 0
    response = stack.client.get("/public/x")
    assert response.status_code == 503  # status_on_error, never the upstream
    assert "headers" not in response.text


SLOW = """\
plugins: [tests.e2e.plugins.slow]
server: {grace_period: 10, watch_config: false}
authorizers:
  slow: {type: slow, delay: 1.5}
routes:
  - {match: "ANY /{proxy+}", authorizer: slow}
"""


def test_sigterm_lets_in_flight_checks_finish(authz_stack: StackFactory) -> None:
    stack = authz_stack(SLOW, authz_timeout="10s")
    in_flight = 4
    with ThreadPoolExecutor(in_flight) as pool:
        futures = [pool.submit(stack.client.get, f"/slow/{i}") for i in range(in_flight)]
        deadline = time.monotonic() + 10
        # In flight means inside the sidecar's pipeline (its own gauge), not merely sent by Envoy.
        while metric(httpx.get(f"{stack.admin_url}/metrics").text, "authz_checks_in_flight") < in_flight:
            assert time.monotonic() < deadline, "checks never became in flight"
            time.sleep(0.01)
        assert stack.sidecar.proc is not None
        stack.sidecar.proc.send_signal(signal.SIGTERM)
        statuses = [f.result(timeout=15).status_code for f in futures]
    assert statuses == [200] * in_flight
    assert stack.sidecar.proc.wait(15) == 0
    assert "draining" in stack.sidecar.log()


SLOW_AND_FAST = """\
plugins: [tests.e2e.plugins.slow]
server: {watch_config: false}
authorizers:
  slow: {type: slow, delay: 1.0}
  public: {type: none}
routes:
  - {match: "ANY /slow/{proxy+}", authorizer: slow}
  - {match: "ANY /fast/{proxy+}", authorizer: public}
"""


def test_checks_envoy_gives_up_on_leave_the_connection_serving(authz_stack: StackFactory) -> None:
    """Envoy resets the stream of a Check that outlives its timeout (RST_STREAM on the lean listener); the Check
    is cancelled, Envoy fails closed, and the connection keeps serving the Checks after it."""
    stack = authz_stack(SLOW_AND_FAST, authz_timeout="0.2s")
    assert stack.client.get("/fast/before").status_code == 200
    with ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(stack.client.get, f"/slow/{i}") for i in range(4)]
        fast = [stack.client.get(f"/fast/{i}").status_code for i in range(20)]
        timed_out = [f.result(timeout=10).status_code for f in slow]
    assert timed_out == [503] * 4  # status_on_error: never the upstream
    assert fast == [200] * 20
    deadline = time.monotonic() + 10
    while metric(httpx.get(f"{stack.admin_url}/metrics").text, "authz_checks_in_flight") > 0:
        assert time.monotonic() < deadline, "the abandoned checks never finished"
        time.sleep(0.05)
    assert stack.client.get("/fast/after").status_code == 200
    assert "Traceback" not in stack.sidecar.log()
    stats = envoy_stats(stack.ports.admin_port)
    assert stats["cluster.authz.upstream_rq_tx_reset"] >= 4  # Envoy did reset the late streams
    assert stats["cluster.authz.upstream_cx_protocol_error"] == 0
    assert stats["cluster.authz.upstream_rq_rx_reset"] == 0


def envoy_stats(admin_port: int) -> dict[str, int]:
    text = httpx.get(f"http://127.0.0.1:{admin_port}/stats?filter=^cluster\\.authz\\.").text
    pairs = (line.partition(": ") for line in text.splitlines())
    return {name: int(value) for name, _, value in pairs if value.isdigit()}


def test_sighup_reload_and_bad_reload_keeps_old(authz_stack: StackFactory) -> None:
    stack = authz_stack(default_config_text())
    path = stack.sidecar.config_path
    before = httpx.get(f"{stack.admin_url}/readyz").json()["config_version"]
    assert stack.client.get("/admin/x").status_code == 403
    path.write_text(path.read_text().replace("authorizer: closed", "authorizer: public"))
    assert stack.sidecar.proc is not None
    stack.sidecar.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: httpx.get(f"{stack.admin_url}/readyz").json()["config_version"] != before)
    assert stack.client.get("/admin/x").status_code == 200
    good = httpx.get(f"{stack.admin_url}/readyz").json()["config_version"]
    data = yaml.safe_load(path.read_text())
    data["routes"].append({"match": "GET /x", "authorizer": "nobody"})
    path.write_text(yaml.safe_dump(data))
    stack.sidecar.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "last_reload_error" in httpx.get(f"{stack.admin_url}/readyz").json())
    ready = httpx.get(f"{stack.admin_url}/readyz").json()
    assert ready["config_version"] == good
    assert "routes[3].authorizer" in ready["last_reload_error"]
    assert stack.client.get("/admin/x").status_code == 200  # still the last good config


def test_file_change_reloads(authz_stack: StackFactory) -> None:
    text = default_config_text() + "server: {watch_interval: 0.2}\n"
    stack = authz_stack(text)
    assert stack.client.get("/admin/x").status_code == 403
    path = stack.sidecar.config_path
    path.write_text(path.read_text().replace("authorizer: closed", "authorizer: public"))
    wait_until(lambda: stack.client.get("/admin/x").status_code == 200)


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


CASES = [
    ("GET", "/public/a?q=1", b""),
    ("POST", "/public/orders", b"body"),
    ("GET", "/admin/users", b""),
    ("DELETE", "/nowhere", b""),
]


@pytest.mark.parametrize(("method", "path", "body"), CASES)
def test_check_cli_agrees_with_server(
    shared_authz_stack: StackFactory, tmp_path: Path, method: str, path: str, body: bytes
) -> None:
    stack = shared_authz_stack(default_config_text())
    served = stack.client.request(method, path, content=body or None)
    raw = f"{method} {path} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    req = tmp_path / "request.req"
    req.write_bytes(raw)
    result = run_cli("check", "--config", str(stack.sidecar.config_path), "--http", str(req), "--output", "json")
    offline = json.loads(result.stdout)
    assert offline["status"] == served.status_code
    assert result.returncode == (0 if served.status_code == 200 else 1)
    if served.status_code != 200:
        assert offline["reason"] == served.json()["reason"]
    # The same request as a CheckRequest JSON document.
    doc = {
        "attributes": {
            "request": {"http": {"method": method, "path": path, "headers": {":authority": "example.com"}}},
            "source": {"address": {"socketAddress": {"address": "127.0.0.1"}}},
        }
    }
    as_json = tmp_path / "check.json"
    as_json.write_text(json.dumps(doc))
    result2 = run_cli(
        "check", "--config", str(stack.sidecar.config_path), "--check-request", str(as_json), "--output", "json"
    )
    assert json.loads(result2.stdout)["status"] == served.status_code


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )


def test_shipped_envoy_configs_validate(tmp_path: Path) -> None:
    """Validating loads every certificate a file names: envoy-mtls.yaml's /etc/envoy/tls/ files are made here."""
    shipped = sorted((REPO / "deploy" / "envoy").glob("*.yaml"))
    assert shipped, "no Envoy configs shipped"
    for path in shipped:
        checked = tmp_path / path.name
        checked.write_text(with_tls_files(path.read_text(), tmp_path))
        result = validate_envoy_config(checked)
        assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"


def test_shipped_envoy_configs_are_the_rendered_templates() -> None:
    for name, ports in SHIPPED.items():
        assert (REPO / "deploy" / "envoy" / name).read_text() == render_envoy_config(ports, name), name


@pytest.mark.parametrize("transport", [(), ("--http",)])
def test_demo_runs_and_leaves_nothing_behind(transport: tuple[str, ...]) -> None:
    """The demo's scenario table (anonymous, closed and unknown routes, JWT scopes and expiry, a Lambda authorizer,
    an API key route: no key, a good key, the same key throttled with Retry-After; mutual TLS: a partner's
    certificate, none, a stranger's, JWT with and without one; SigV4) through a real Envoy terminating TLS, asking
    over gRPC and over HTTP: both transports decide the table alike."""
    result = run_cli("demo", *transport)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "22 of 22 scenarios as expected" in result.stdout
    partner = [line for line in result.stdout.splitlines() if "a partner's client certificate" in line]
    assert len(partner) == 1 and partner[0].startswith("ok") and PARTNER_ID in partner[0]  # its SPIFFE id upstream
    assert "429     Throttled, retry-after: 5" in result.stdout  # Envoy passes the 429's Retry-After to the client
    assert ("(HTTP ext_authz)" if transport else "(gRPC ext_authz)") in result.stdout


TRANSPORT_CASES = [
    ("GET", "/public/a?x=1", 200, ""),
    ("POST", "/public/b", 200, ""),
    ("GET", "/admin/users", 403, "RouteDeny"),
    ("GET", "/nowhere", 403, "MissingAuthenticationToken"),
    ("GET", "/public/../admin/x", 403, "RouteDeny"),
]


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-http.yaml"])
def test_both_transports_decide_alike(shared_authz_stack: StackFactory, template: str) -> None:
    stack = shared_authz_stack(default_config_text(), template=template)
    for method, path, status, reason in TRANSPORT_CASES:
        response = stack.client.request(method, path, content=b"x" if method == "POST" else None)
        assert response.status_code == status, (template, path, response.text)
        if reason:
            assert response.json()["reason"] == reason
        else:
            seen = response.json()["headers"]
            assert seen["x-authz-principal"] == "anonymous"
            assert seen["x-authz-authorizer"] == "public"
            assert "x-authz-source-address" not in seen  # the trusted headers stop at the sidecar


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-http.yaml"])
def test_encoded_separators_never_reach_the_upstream(shared_authz_stack: StackFactory, template: str) -> None:
    stack = shared_authz_stack(default_config_text(), template=template)
    for path in ("/admin/x%2F..%2F..%2Fpublic/a", "/public/a%5C..%5C..%5Cadmin", "/public/%2e%2e/admin/x"):
        response = stack.client.get(path)
        assert response.status_code in (400, 403), (path, response.status_code)
        assert "headers" not in response.text  # the echo upstream never answered
