"""`check` judges gates against counters of its own: deciding a request offline spends no one's quota, in
Redis or in the process."""

from __future__ import annotations

from pathlib import Path

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from sidecar.config import load_config
from sidecar.limits.apikeys import digest_of
from sidecar.limits.build import process_counters
from sidecar.limits.counters import Quota
from sidecar.offline import evaluate

from ...conftest import RedisServer

KEY = "offline-check-key-0123456789abcdef"


def _config(tmp_path: Path, redis_url: str) -> Path:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"- {{id: k1, name: k1, sha256: {digest_of(KEY)}, plan: gold}}\n")
    path = tmp_path / "c.yaml"
    path.write_text(
        f"redis: {{default: {{url: '{redis_url}'}}}}\n"
        f"api_keys: {{file: {keys}}}\n"
        "usage_plans: {gold: {quota: {limit: 1, period: DAY}}}\n"
        "rate_limits: [{name: per-ip, key: [ip], limit: 10}]\n"
        "authorizers: {open: {type: none}}\n"
        "routes: [{match: 'ANY /{proxy+}', authorizer: open, api_key_required: true}]\n"
    )
    return path


def _check() -> CheckRequest:
    check = CheckRequest()
    http = check.attributes.request.http
    http.method, http.path, http.host = "GET", "/x", "api.example.test"
    http.headers.update({"x-api-key": KEY})
    check.attributes.source.address.socket_address.address = "203.0.113.9"
    return check


async def test_check_never_counts_in_redis_nor_in_the_process(tmp_path: Path, redis_server: RedisServer) -> None:
    config = load_config(_config(tmp_path, redis_server.url))
    for _ in range(3):  # a quota of 1: every run is judged as the first request
        result = await evaluate(config, _check())
        assert result.decision.allowed
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.keys("authz:l:*") == []
    finally:
        client.close()
    assert await process_counters().usage("gold:k1", Quota(1, "DAY")) == (0, 1)
