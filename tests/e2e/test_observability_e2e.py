"""Observability through a real Envoy: /metrics counts what was sent, decision logs are JSON with the documented
fields and carry no secrets, probes report readiness and draining."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from sidecar.config import default_config_text
from sidecar.logs import FIELDS
from tests.e2e.conftest import StackFactory, metric

pytestmark = pytest.mark.e2e

SECRETS = {
    "authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLXBheWxvYWQ.c2lnbmF0dXJlLXNlY3JldA",
    "cookie": "session=cookie-secret-4f1a9c",
    "x-api-key": "apikey-secret-77d2e0",
}
QUERY_SECRET = "X-Amz-Signature=presigned-secret-0b8e1f"


def test_metrics_and_decision_logs(authz_stack: StackFactory) -> None:
    stack = authz_stack(default_config_text() + "decision_log: {flush_interval: 0.05}\n")
    sent = [
        ("GET", f"/public/a?{QUERY_SECRET}", 200),
        ("POST", "/public/b", 200),
        ("GET", "/public/c", 200),
        ("GET", f"/admin/x?{QUERY_SECRET}", 403),
        ("DELETE", "/admin/y", 403),
        ("GET", "/unknown", 403),
    ]
    for method, path, status in sent:
        assert stack.client.request(method, path, headers=SECRETS).status_code == status
    text = httpx.get(f"{stack.admin_url}/metrics").text
    grpc = {"transport": "grpc"}
    assert metric(text, "authz_decisions_total", decision="allow", reason="Anonymous", **grpc) == 3
    assert metric(text, "authz_decisions_total", decision="deny", reason="RouteDeny", **grpc) == 2
    assert metric(text, "authz_decisions_total", decision="deny", reason="MissingAuthenticationToken", **grpc) == 1
    assert metric(text, "authz_check_duration_seconds_count", authorizer="public", decision="allow", **grpc) == 3
    assert metric(text, "authz_check_duration_seconds_count", authorizer="closed", decision="deny", **grpc) == 2
    assert (
        metric(text, "authz_check_duration_seconds_bucket", authorizer="public", decision="allow", le="+Inf", **grpc)
        == 3
    )
    assert metric(text, "authz_stage_duration_seconds_count", stage="adapter") == 6
    assert metric(text, "authz_checks_in_flight") == 0
    assert metric(text, "authz_build_info", version="0.1.0") == 1

    # Stop the sidecar so its buffered decision log is flushed, then read everything it printed.
    assert stack.sidecar.proc is not None
    stack.sidecar.proc.send_signal(signal.SIGTERM)
    assert stack.sidecar.proc.wait(15) == 0
    output = stack.sidecar.log(tail=None)
    for secret in [*SECRETS.values(), QUERY_SECRET, "presigned-secret", "cookie-secret", "apikey-secret"]:
        assert secret not in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len(lines) == 6
    assert all(tuple(entry) == FIELDS for entry in lines)
    by_path = {entry["path"]: entry for entry in lines}
    assert by_path["/admin/x"]["decision"] == "deny"
    assert by_path["/admin/x"]["reason"] == "RouteDeny"
    assert by_path["/admin/x"]["authorizer"] == "closed"
    assert by_path["/admin/x"]["route"] == "ANY /admin/{proxy+}"
    assert by_path["/admin/x"]["source_ip"] == "127.0.0.1"
    assert by_path["/public/a"]["principal"] == "anonymous"
    assert by_path["/public/a"]["request_id"]  # Envoy's x-request-id
    assert by_path["/public/a"]["latency_us"] > 0
    assert by_path["/public/a"]["time"].endswith("Z")


def test_allows_sampled_denials_always(authz_stack: StackFactory) -> None:
    stack = authz_stack(default_config_text() + "decision_log: {allow_sample_rate: 0.0}\n")
    for _ in range(3):
        stack.client.get("/public/a")
    stack.client.get("/admin/a")
    assert stack.sidecar.proc is not None
    stack.sidecar.proc.send_signal(signal.SIGTERM)
    assert stack.sidecar.proc.wait(15) == 0
    lines = [json.loads(line) for line in stack.sidecar.log(tail=None).splitlines() if line.startswith("{")]
    assert [entry["decision"] for entry in lines] == ["deny"]


def test_probes(authz_stack: StackFactory) -> None:
    stack = authz_stack(default_config_text())
    assert httpx.get(f"{stack.admin_url}/healthz").status_code == 200
    ready = httpx.get(f"{stack.admin_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert httpx.get(f"{stack.admin_url}/nope").status_code == 404
    assert httpx.post(f"{stack.admin_url}/readyz").status_code == 405


def test_http_mode_metrics_carry_their_transport(authz_stack: StackFactory) -> None:
    stack = authz_stack(default_config_text(), template="envoy-http.yaml")
    assert stack.client.get("/public/a").status_code == 200
    assert stack.client.get("/admin/a").status_code == 403
    text = httpx.get(f"{stack.admin_url}/metrics").text
    assert metric(text, "authz_decisions_total", decision="allow", reason="Anonymous", transport="http") == 1
    assert metric(text, "authz_decisions_total", decision="deny", reason="RouteDeny", transport="http") == 1
    assert metric(text, "authz_decisions_total", decision="allow", reason="Anonymous", transport="grpc") == 0
