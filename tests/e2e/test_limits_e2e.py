"""Issue #21 end to end: API keys, usage plans and WAF rate-based rules through a real Envoy (gRPC and HTTP mode),
real `authz-sidecar serve` processes and a real redis-server, all on 127.0.0.1.

- a burst of `burst` passes, the next is 429 with Retry-After, RateLimit-Policy and RateLimit as the client sees
  them; a missing, unknown, disabled or plan-less key is 403 Forbidden; a used-up quota is 429 Limit Exceeded;
- two sidecar processes sharing one Redis admit one key what one exact bucket allows (within 1%, printed), and
  exactly N of 2N attempts at a quota of N;
- Redis killed while requests flow: no 5xx, no invalid key let in, the fallback on /metrics, and counting back
  in Redis after it restarts;
- WAF rules: per-IP blocking, a spoofed X-Forwarded-For that does not evade a forwarded-IP rule with no trusted
  hops, a count rule in the decision log, and a flood of bad JWTs refused before any verification;
- API keys from a header and from a Lambda authorizer's `usageIdentifierKey`, the key file edited while serving
  (`authz-sidecar api-keys add` / `disable`), and not one key value in the sidecar's whole output at DEBUG.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
import uvloop

from sidecar.limits.apikeys import new_key_value
from tests.conftest import REPO, RedisServer
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.limits_testkit import (
    KEY_HEADER,
    HttpSidecar,
    KeyFile,
    Outcome,
    decision_lines,
    denied,
    hammer,
    http_sidecars,
    limits_config,
    open_connections,
    outcome,
    redis_seconds,
    sample,
    spend,
    wait_until,
)
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, Issuer, rsa_key

pytestmark = pytest.mark.e2e

OPEN = {"open": {"type": "none"}}
KEYED = {"match": "ANY /pets/{proxy+}", "authorizer": "open", "api_key_required": True}
PLANS = {
    "gold": {"throttle": {"rate": 0.5, "burst": 5}},  # a token every 2 s: nothing refills during a test's burst
    "bronze": {"quota": {"limit": 3, "period": "DAY"}},
}
PLAN_KEYS = [
    ("k-gold", "gold", True),
    ("k-bronze", "bronze", True),
    ("k-off", "gold", False),
    ("k-loose", None, True),  # in no plan: API Gateway refuses it
]


def plans_config(keys: KeyFile, redis_url: str) -> str:
    return limits_config(keys, redis_url, authorizers=OPEN, usage_plans=PLANS, routes=[KEYED])


def assert_bad_keys_are_forbidden(stack: Stack, keys: KeyFile) -> None:
    """API Gateway's INVALID_API_KEY for each kind of bad key: 403 `Forbidden`."""
    for what, headers in {
        "missing": {},
        "unknown": {KEY_HEADER: new_key_value()},
        "disabled": keys.header("k-off"),
        "in no plan": keys.header("k-loose"),
    }.items():
        assert denied(stack.client.get("/pets/1", headers=headers)) == (403, "InvalidApiKey", "Forbidden"), what


def assert_burst_then_throttled(stack: Stack, keys: KeyFile) -> httpx.Response:
    """Gold's burst of 5 passes and the 6th is 429 with the headers the client must see; the refusal."""
    began = time.monotonic()
    for _ in range(5):
        allowed = stack.client.get("/pets/1", headers=keys.header("k-gold"))
        assert allowed.status_code == 200, allowed.text
    refused = stack.client.get("/pets/1", headers=keys.header("k-gold"))
    elapsed = time.monotonic() - began
    assert denied(refused) == (429, "Throttled", "Too Many Requests")
    # GCRA at 0.5/s, burst 5: the 6th request is 2 s (one interval) short of a token, the bucket 10 s from full.
    assert math.ceil(2 - elapsed) <= int(refused.headers["retry-after"]) <= 2
    assert refused.headers["ratelimit-policy"] == '"throttle";q=5;w=10'
    found = re.fullmatch(r'"throttle";r=0;t=(\d+)', refused.headers["ratelimit"])
    assert found is not None and math.ceil(10 - elapsed) <= int(found[1]) <= 10, refused.headers["ratelimit"]
    return refused


def test_a_burst_passes_then_429_with_its_headers_bad_keys_are_403_and_a_quota_runs_out(
    authz_stack: StackFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = KeyFile.write(tmp_path / "api-keys.yaml", PLAN_KEYS)
    stack = authz_stack(plans_config(keys, redis_server.url))
    assert_bad_keys_are_forbidden(stack, keys)
    assert_burst_then_throttled(stack, keys)
    for _ in range(3):
        assert stack.client.get("/pets/1", headers=keys.header("k-bronze")).status_code == 200
    spent = stack.client.get("/pets/1", headers=keys.header("k-bronze"))
    assert denied(spent) == (429, "QuotaExceeded", "Limit Exceeded")
    assert spent.headers["ratelimit-policy"] == '"quota";q=3;w=86400'
    midnight = (int(time.time()) // 86400 + 1) * 86400  # the UTC day's end
    assert abs(int(spent.headers["retry-after"]) - (midnight - time.time())) <= 2
    # The counting happened in Redis: the quota's counter of this UTC day holds the three admitted requests.
    raw = redis.Redis.from_url(redis_server.url)
    assert raw.get(f"authz:l:{{bronze:k-bronze}}:q:DAY:{midnight - 86400}") == b"3"
    raw.close()

    def refusals() -> set[tuple[str, str]]:
        entries = map(json.loads, decision_lines(stack.sidecar.log(tail=None)))
        return {(entry["reason"], entry["gate"]) for entry in entries if entry["decision"] == "deny"}

    wanted = {("Throttled", "usage_plan:gold"), ("QuotaExceeded", "usage_plan:bronze"), ("InvalidApiKey", "usage_plan")}
    wait_until(lambda: wanted <= refusals(), "the gates named in the decision log", 5)


def test_the_throttle_headers_survive_envoy_http_mode(
    authz_stack: StackFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = KeyFile.write(tmp_path / "api-keys.yaml", PLAN_KEYS)
    stack = authz_stack(plans_config(keys, redis_server.url), template="envoy-http.yaml")
    unknown = stack.client.get("/pets/1", headers={KEY_HEADER: new_key_value()})
    assert denied(unknown) == (403, "InvalidApiKey", "Forbidden")
    assert_burst_then_throttled(stack, keys)


SHARED_SECONDS = 3.0
TASKS = 4
"""Concurrent requests per sidecar: together far more than the limit admits."""
SHARED_RATE, SHARED_BURST = 100, 20
QUOTA = 300


def test_two_sidecars_sharing_one_redis_admit_one_bucket_and_one_quota(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = KeyFile.write(
        tmp_path / "api-keys.yaml", [("k-hot", "shared", True), ("k-warm", "shared", True), ("k-quota", "quota", True)]
    )
    text = limits_config(
        keys,
        redis_server.url,
        redis={"timeout_ms": 1000},  # a loaded machine must not make a replica fall back to counting alone
        authorizers=OPEN,
        decision_log={"enabled": False},
        usage_plans={
            "shared": {"throttle": {"rate": SHARED_RATE, "burst": SHARED_BURST}},
            "quota": {"quota": {"limit": QUOTA, "period": "DAY"}},
        },
        routes=[{"match": "ANY /{proxy+}", "authorizer": "open", "api_key_required": True}],
    )
    with http_sidecars(text, 2) as sidecars:
        throttled, start, end, spent = uvloop.run(drive_shared(sidecars, keys, redis_server.url))
        fallbacks = [sample(s.admin_url, "authz_limit_fallbacks_total", mode="local") for s in sidecars]
    elapsed = end - start
    allowance = SHARED_BURST + SHARED_RATE * elapsed  # what one exact GCRA bucket admits over the run
    admitted = throttled[(200, "")]
    error = (admitted - allowance) / allowance
    with capsys.disabled():
        print(
            f"\n[two sidecars, HTTP listeners, one Redis] {sum(throttled.values())} requests over {elapsed:.3f} s of"
            f" Redis time: admitted {admitted}, GCRA allowance {allowance:.1f}, {error:+.3%}"
            f" ({'over' if error > 0 else 'under'}-admission); quota {QUOTA} of {2 * QUOTA} attempts:"
            f" admitted {spent[(200, '')]}"
        )
    assert fallbacks == [0, 0]  # every decision was Redis's
    assert set(throttled) == {(200, ""), (429, "Throttled")}
    assert sum(throttled.values()) > 2 * allowance  # the key was driven well past its limit
    assert abs(error) <= 0.01
    assert spent == {(200, ""): QUOTA, (429, "QuotaExceeded"): QUOTA}


async def drive_shared(
    sidecars: list[HttpSidecar], keys: KeyFile, redis_url: str
) -> tuple[Counter[Outcome], float, float, Counter[Outcome]]:
    """Both sidecars at once: `k-hot` for SHARED_SECONDS between two readings of Redis's clock, then 2 * QUOTA
    attempts with `k-quota`."""
    clock = redis.asyncio.Redis.from_url(redis_url)
    connections = await open_connections(sidecars, TASKS, keys.header("k-warm"))
    try:
        await clock.ping()
        start = await redis_seconds(clock)
        throttled = await hammer(connections, keys.header("k-hot"), SHARED_SECONDS)
        end = await redis_seconds(clock)
        spent = await spend(connections, keys.header("k-quota"), 2 * QUOTA)
    finally:
        await asyncio.gather(*(c.close() for c in connections))
        await clock.aclose()
    return throttled, start, end, spent


class Stream:
    """Requests sent one after another from a thread until stopped (at most `limit`): a live key, an unknown
    one, a disabled one and none, in turn; each (expected, got) is kept."""

    def __init__(self, stack: Stack, keys: KeyFile, limit: int = 5000) -> None:
        self.stack, self.keys, self.limit = stack, keys, limit
        self.results: list[tuple[Outcome, Outcome]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="limits-stream", daemon=True)
        self.failure: BaseException | None = None

    def _run(self) -> None:
        turns: list[tuple[dict[str, str], Outcome]] = [
            (self.keys.header("k-live"), (200, "")),
            ({KEY_HEADER: new_key_value()}, (403, "InvalidApiKey")),
            (self.keys.header("k-off"), (403, "InvalidApiKey")),
            ({}, (403, "InvalidApiKey")),
        ]
        try:
            with httpx.Client(base_url=self.stack.base_url, timeout=10.0) as client:
                while not self.stop.is_set() and len(self.results) < self.limit:
                    headers, expected = turns[len(self.results) % len(turns)]
                    self.results.append((expected, outcome(client.get("/pets/1", headers=headers))))
        except BaseException as exc:  # surfaced by `join`
            self.failure = exc

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)

    def at_least(self, count: int) -> bool:
        assert self.failure is None, self.failure
        return len(self.results) >= count


def test_redis_killed_mid_stream_falls_back_without_a_5xx_and_returns_to_redis(
    authz_stack: StackFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = KeyFile.write(tmp_path / "api-keys.yaml", [("k-live", "big", True), ("k-off", "big", False)])
    text = limits_config(
        keys,
        redis_server.url,
        redis={"timeout_ms": 100, "breaker_threshold": 1, "breaker_cooldown": 0.2},
        authorizers=OPEN,
        usage_plans={"big": {"quota": {"limit": 1_000_000, "period": "DAY"}}},
        rate_limits=[{"name": "per-ip", "key": ["ip"], "window": 60, "limit": 1_000_000}],
        routes=[KEYED],
    )
    stack = authz_stack(text)
    admin = stack.admin_url
    with Stream(stack, keys) as stream:
        wait_until(lambda: stream.at_least(20), "requests before the outage")
        redis_server.stop()
        wait_until(lambda: sample(admin, "authz_limit_degraded") == 1, "the fallback reported")
        during = len(stream.results)
        wait_until(lambda: stream.at_least(during + 20), "requests during the outage")
        assert sample(admin, "authz_limit_fallbacks_total", mode="local") >= 10  # every gate call of 20 requests
        redis_server.start()
        wait_until(lambda: sample(admin, "authz_limit_degraded") == 0, "counting back in Redis", 15)
        after = len(stream.results)
        wait_until(lambda: stream.at_least(after + 8), "requests after the restart")
    assert stream.failure is None, stream.failure
    wrong = [(i, want, got) for i, (want, got) in enumerate(stream.results) if want != got]
    assert not wrong, wrong[:5]
    # Shared counting again: the live key's quota counter is in the restarted (empty) Redis and moves per request.
    raw = redis.Redis.from_url(redis_server.url)
    (counter,) = raw.keys("authz:l:{big:k-live}:q:DAY:*")
    before = int(raw.get(counter) or 0)
    for _ in range(5):
        assert stack.client.get("/pets/1", headers=keys.header("k-live")).status_code == 200
    assert int(raw.get(counter) or 0) == before + 5
    assert raw.keys("authz:l:{per-ip:*}:w60")  # the rule counts there too (its window, a hash of slots)
    raw.close()
    log = stack.sidecar.log(tail=None)
    assert "rate limits: Redis unavailable" in log and "rate limits: Redis answers again" in log


JWT = "corp"
WAF_RULES = [
    {"name": "per-ip", "key": ["ip"], "window": 60, "limit": 10, "routes": ["ANY /ip/{proxy+}"]},
    {
        "name": "spoof-proof",
        "key": ["forwarded_ip"],
        "window": 60,
        "limit": 10,
        "forwarded_ip": {"trusted_hops": 0},
        "routes": ["ANY /fwd/{proxy+}"],
    },
    {"name": "watch", "key": ["ip"], "window": 60, "limit": 10, "action": "count", "routes": ["ANY /count/{proxy+}"]},
    {"name": "flood", "key": ["ip"], "window": 60, "limit": 10, "routes": ["ANY /jwt/{proxy+}"]},
]


def waf_config(redis_url: str, issuer: Issuer, jwks: Path) -> str:
    authorizers = {
        **OPEN,
        JWT: {"type": "jwt", "issuer": issuer.url, "audiences": [AUDIENCE], "jwks_file": str(jwks)},
    }
    routes = [{"match": f"ANY /{name}/{{proxy+}}", "authorizer": "open"} for name in ("ip", "fwd", "count")]
    routes.append({"match": "ANY /jwt/{proxy+}", "authorizer": JWT})
    return limits_config(None, redis_url, authorizers=authorizers, rate_limits=WAF_RULES, routes=routes)


@pytest.fixture
def issuer(tmp_path: Path) -> tuple[Issuer, Path]:
    """A JWT issuer (a real RSA key) and its JWKS as a file."""
    issuer = Issuer(keys={"rsa-1": (rsa_key(0), "RS256")})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()), encoding="utf-8")
    return issuer, path


def test_waf_ip_and_forwarded_ip_rules_block_and_a_count_rule_only_logs(
    authz_stack: StackFactory, redis_server: RedisServer, issuer: tuple[Issuer, Path]
) -> None:
    stack = authz_stack(waf_config(redis_server.url, *issuer))
    statuses = [stack.client.get(f"/ip/{i}").status_code for i in range(11)]
    assert statuses == [200] * 10 + [403]
    blocked = stack.client.get("/ip/again")
    assert denied(blocked) == (403, "RateLimited", "Forbidden")
    assert int(blocked.headers["retry-after"]) >= 1 and blocked.headers["ratelimit-policy"] == '"per-ip";q=10;w=60'
    # Each request claims another client in X-Forwarded-For; with no trusted hops the rule counts Envoy's peer.
    spoofed = [stack.client.get("/fwd/x", headers={"x-forwarded-for": f"10.1.0.{i}"}) for i in range(12)]
    assert [outcome(r) for r in spoofed] == [(200, "")] * 10 + [(403, "RateLimited")] * 2
    counted = [stack.client.get(f"/count/{i}").status_code for i in range(12)]
    assert counted == [200] * 12  # a count rule never refuses
    over = sample(stack.admin_url, "authz_gate_decisions_total", gate="rate_limit", name="watch", outcome="counted")
    assert over == 2

    def count_lines() -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in decision_lines(stack.sidecar.log(tail=None))]
        return [entry for entry in entries if entry["path"].startswith("/count/")]

    logged = wait_until(lambda: len(count_lines()) == 12 and count_lines(), "the count rule's decision log lines", 5)
    assert [entry["gate"] for entry in logged] == [""] * 10 + ["count:watch"] * 2
    assert all(entry["decision"] == "allow" for entry in logged)


def test_a_flood_of_invalid_jwts_is_blocked_before_any_verification(
    authz_stack: StackFactory, redis_server: RedisServer, issuer: tuple[Issuer, Path]
) -> None:
    signer, jwks = issuer
    stack = authz_stack(waf_config(redis_server.url, signer, jwks))
    good = signer.token(signer.claims(now=time.time()))
    assert stack.client.get("/jwt/a", headers={"authorization": f"Bearer {good}"}).status_code == 200
    forger = Issuer(keys={"rsa-1": (rsa_key(1), "RS256")})  # the issuer's kid, another key: a signature to check

    def forged(index: int) -> dict[str, str]:
        token = forger.token(forger.claims(now=time.time(), jti=f"flood-{index}"))  # all distinct
        return {"authorization": f"Bearer {token}"}

    def authenticated() -> float:
        return sample(stack.admin_url, "authz_stage_duration_seconds_count", stage="authenticate")

    start = authenticated()
    first = [outcome(stack.client.get("/jwt/a", headers=forged(i))) for i in range(9)]
    assert {status for status, _ in first} == {401}  # verified and refused: the limit of 10 is reached
    verified = authenticated()
    assert verified == start + 9
    flood = [denied(stack.client.get("/jwt/a", headers=forged(i))) for i in range(9, 40)]
    assert set(flood) == {(403, "RateLimited", "Forbidden")}
    assert authenticated() == verified  # not one of the 31 reached the JWT authorizer


def read_everything(stack: Stack) -> str:
    """The sidecar's whole output (stdout and stderr, decision log included) once it has stopped."""
    stack.sidecar.stop()
    return stack.sidecar.log(tail=None)


def assert_no_key_value_logged(output: str, values: list[str]) -> None:
    assert " DEBUG " in output  # the level the test asked for reached the output
    leaked = [value for value in values if value in output]
    assert not leaked, f"{len(leaked)} key value(s) in the sidecar's output"


def api_keys_cli(*args: str) -> str:
    """`authz-sidecar api-keys ...` as an operator runs it; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "api-keys", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_key_file_edited_while_serving_and_no_key_value_in_the_debug_output(
    authz_stack: StackFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = KeyFile.write(
        tmp_path / "api-keys.yaml", [("k-a", "gold", True), ("k-b", "gold", True), ("k-off", "gold", False)]
    )
    text = limits_config(
        keys,
        redis_server.url,
        authorizers=OPEN,
        usage_plans={"gold": {"throttle": {"rate": 100, "burst": 100}}},
        routes=[KEYED],
    )
    stack = authz_stack(text, log_level="DEBUG")
    get = stack.client.get
    assert get("/pets/1", headers=keys.header("k-a")).status_code == 200
    assert get("/pets/1", headers=keys.header("k-b")).status_code == 200
    assert denied(get("/pets/1", headers=keys.header("k-off"))) == (403, "InvalidApiKey", "Forbidden")

    def reloads() -> float:
        return sample(stack.admin_url, "authz_config_reloads_total", source="api_keys", outcome="ok")

    added = api_keys_cli("add", "--file", str(keys.path), "--name", "new holder", "--plan", "gold", "--id", "k-new")
    value = added.strip()
    assert added == value + "\n" and 20 <= len(value) <= 128  # the value alone on stdout, once (API Gateway's sizes)
    wait_until(lambda: reloads() >= 1, "the key file reloaded (key added)")
    assert get("/pets/1", headers={KEY_HEADER: value}).status_code == 200
    api_keys_cli("disable", "--file", str(keys.path), "--id", "k-b")
    wait_until(lambda: reloads() >= 2, "the key file reloaded (key disabled)")
    assert denied(get("/pets/1", headers=keys.header("k-b"))) == (403, "InvalidApiKey", "Forbidden")
    assert get("/pets/1", headers=keys.header("k-a")).status_code == 200  # the others keep working
    assert get("/pets/1", headers={KEY_HEADER: value}).status_code == 200
    output = read_everything(stack)
    assert re.search(r"\bk-b\b.*disabled", output)  # the refused key is named by its id
    assert_no_key_value_logged(output, [*keys.values.values(), value])


def test_keys_from_a_lambda_authorizers_usage_identifier_key(
    authz_stack: StackFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = KeyFile.write(tmp_path / "api-keys.yaml", [("k-tenant", "bronze", True), ("k-off", "bronze", False)])
    lambda_authorizer = {
        "type": "lambda",
        "handler": "tests.unit.limits.gate_handlers:usage_key_handler",  # usageIdentifierKey from `key:VALUE`
        "event_format": "token",
        "result_ttl": 0,
    }
    text = limits_config(
        keys,
        redis_server.url,
        api_keys={"source": "authorizer"},
        authorizers={"tenants": lambda_authorizer},
        usage_plans={"bronze": {"quota": {"limit": 3, "period": "DAY"}}},
        routes=[{"match": "ANY /api/{proxy+}", "authorizer": "tenants", "api_key_required": True}],
    )
    stack = authz_stack(text, log_level="DEBUG")

    def call(token: str, **headers: str) -> httpx.Response:
        return stack.client.get("/api/orders", headers={"authorization": token, **headers})

    tenant = keys.values["k-tenant"]
    # The header is not where this config reads keys: a valid key there without one from the authorizer is refused.
    assert denied(call("no-key", **{KEY_HEADER: tenant})) == (403, "InvalidApiKey", "Forbidden")
    assert denied(call(f"key:{keys.values['k-off']}")) == (403, "InvalidApiKey", "Forbidden")
    assert denied(call(f"key:{new_key_value()}")) == (403, "InvalidApiKey", "Forbidden")
    for _ in range(3):
        allowed = call(f"key:{tenant}")
        assert allowed.status_code == 200, allowed.text
    assert denied(call(f"key:{tenant}")) == (429, "QuotaExceeded", "Limit Exceeded")
    assert_no_key_value_logged(read_everything(stack), list(keys.values.values()))
