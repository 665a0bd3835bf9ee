"""The decision cache through real Envoy and a real redis-server: replicas share decisions, a Redis outage
costs no failed or wrong Check, and a reload stops old decisions at once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import RedisServer
from tests.e2e.conftest import StackFactory, metric

pytestmark = pytest.mark.e2e


def config(redis_url: str, extra: str = "") -> str:
    return f"""\
plugins: [tests.e2e.plugins.token]
cache:
  redis:
    url: "{redis_url}"
    signing_key: shared-test-key
    timeout_ms: 50
    breaker_threshold: 2
    breaker_cooldown: 0.2
decision_log: {{flush_interval: 0.05}}
authorizers:
  tok: {{type: test-token}}
routes:
  - {{match: "ANY /{{proxy+}}", authorizer: tok}}
{extra}"""


def metrics(stack: object) -> str:
    return httpx.get(f"{stack.admin_url}/metrics").text  # type: ignore[attr-defined]


def test_replicas_share_decisions_through_redis(authz_stack: StackFactory, redis_server: RedisServer) -> None:
    first = authz_stack(config(redis_server.url))
    second = authz_stack(config(redis_server.url))
    assert first.client.get("/orders", headers={"x-token": "alice"}).status_code == 200
    assert metric(metrics(first), "authz_cache_requests_total", layer="redis", result="miss") == 1
    raw = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 5
    while raw.dbsize() < 1:  # the first replica writes in the background
        assert time.monotonic() < deadline
        time.sleep(0.01)
    response = second.client.get("/orders", headers={"x-token": "alice"})
    assert response.status_code == 200
    assert response.json()["headers"]["x-authz-principal"] == "alice"
    assert metric(metrics(second), "authz_cache_requests_total", layer="redis", result="hit") == 1
    assert second.client.get("/orders", headers={"x-token": "alice"}).status_code == 200
    assert metric(metrics(second), "authz_cache_requests_total", layer="local", result="hit") == 1
    assert all(b"alice" not in key for key in raw.scan_iter())  # nothing readable in Redis keys
    raw.close()


def test_redis_outage_costs_no_failed_or_wrong_check(authz_stack: StackFactory, redis_server: RedisServer) -> None:
    stack = authz_stack(config(redis_server.url))
    results = []

    def send(i: int) -> None:
        token = f"bad-{i}" if i % 3 == 0 else f"user-{i}"  # unique tokens: every request misses L1
        status = stack.client.get("/stream", headers={"x-token": token}).status_code
        results.append((status, 401 if token.startswith("bad") else 200))

    for i in range(20):
        send(i)
    redis_server.stop()
    for i in range(20, 40):
        send(i)
    assert metric(metrics(stack), "authz_redis_breaker_open") == 1
    redis_server.start()
    deadline = time.monotonic() + 15
    i = 40
    while metric(metrics(stack), "authz_redis_breaker_open") != 0:
        assert time.monotonic() < deadline, "breaker never closed"
        send(i)
        i += 1
    for j in range(i, i + 10):
        send(j)
    assert [got for got, _ in results] == [want for _, want in results]
    assert (
        metric(metrics(stack), "authz_decisions_total", decision="error", reason="InternalError", transport="grpc") == 0
    )
    log = stack.sidecar.log(tail=None)
    assert "redis breaker open" in log
    assert "redis breaker closed" in log


def test_reload_stops_old_decisions_at_once(
    authz_stack: StackFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    arn = "arn:aws:execute-api:us-east-1:000000000000:local/prod/*"
    policy = tmp_path / "policy.json"

    def write(effect: str) -> None:
        statement = {"Effect": effect, "Principal": "*", "Action": "execute-api:Invoke", "Resource": arn}
        policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [statement]}))

    write("Allow")
    stack = authz_stack(config(redis_server.url, f"resource_policy: {policy}\nserver: {{watch_config: false}}\n"))
    assert stack.client.get("/x", headers={"x-token": "alice"}).status_code == 200
    assert stack.client.get("/x", headers={"x-token": "alice"}).status_code == 200
    assert metric(metrics(stack), "authz_cache_requests_total", layer="local", result="hit") == 1
    before = httpx.get(f"{stack.admin_url}/readyz").json()["config_version"]
    write("Deny")
    assert stack.sidecar.proc is not None
    stack.sidecar.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while httpx.get(f"{stack.admin_url}/readyz").json()["config_version"] == before:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert stack.client.get("/x", headers={"x-token": "alice"}).status_code == 403
