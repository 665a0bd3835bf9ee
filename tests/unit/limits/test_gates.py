"""API keys, usage plans and rate-based rules through the real config loader, runtime and pipeline, counting in
process on a clock the test moves (Redis: test_gates_redis.py and the e2e tests)."""

from __future__ import annotations

import hashlib
import hmac
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import parse_config
from sidecar.issues import ConfigError
from sidecar.limits.apikeys import digest_of
from sidecar.limits.build import KEY_SECRET_LABEL
from sidecar.limits.counters import LocalCounters
from sidecar.pipeline import Pipeline
from sidecar.request import Decision, Request
from sidecar.runtime import RuntimeHolder, compile_runtime

from ..authorizers.custom.lambda_testkit import Clock
from . import gate_handlers

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a Friday (lambda_testkit.T0: its Clock starts there)
GOLD = "gold-key-value-0123456789abcdef"
SILVER = "silver-key-value-0123456789abcd"
OFF = "disabled-key-value-0123456789ab"
LOOSE = "key-in-no-plan-value-0123456789"


def _key_file(path: Path) -> Path:
    entries = [
        ("k-gold", GOLD, "gold", True),
        ("k-silver", SILVER, "silver", True),
        ("k-off", OFF, "gold", False),
        ("k-loose", LOOSE, None, True),
    ]
    lines = []
    for key_id, value, plan, enabled in entries:
        lines.append(
            f"- id: {key_id}\n  name: {key_id}\n  sha256: {digest_of(value)}\n  enabled: {str(enabled).lower()}"
        )
        if plan:
            lines.append(f"  plan: {plan}")
    file = path / "api-keys.yaml"
    file.write_text("\n".join(lines) + "\n")
    return file


BASE = """\
api: {id: a1b2c3d4e5, stage: prod, account: '123456789012', region: us-east-1}
decision_log: {enabled: false}
authorizers:
  open: {type: none}
  closed: {type: deny}
api_keys: {file: KEYS}
usage_plans:
  gold:
    throttle: {rate: 1, burst: 3}
    quota: {limit: 100, period: DAY}
    routes: {"GET /pets/{id}": {throttle: {rate: 1, burst: 1}}}
  silver:
    quota: {limit: 4, period: DAY}
routes:
  - {match: "GET /pets/{id}", authorizer: open, api_key_required: true}
  - {match: "ANY /orders/{proxy+}", authorizer: open, api_key_required: true}
  - {match: "ANY /closed/{proxy+}", authorizer: closed, api_key_required: true}
  - {match: "ANY /free/{proxy+}", authorizer: open}
"""


def _pipeline(tmp_path: Path, text: str, clock: Clock) -> Pipeline:
    text = textwrap.dedent(text.replace("KEYS", str(_key_file(tmp_path))))
    (tmp_path / "config.yaml").write_text(text)  # errors found after validation point into the file
    config = parse_config(text, str(tmp_path / "config.yaml"))
    return Pipeline(RuntimeHolder(compile_runtime(config, clock=clock)))


def _request(path: str, key: str | None = None, method: str = "GET", **fields: Any) -> Request:
    headers = {"host": "api.example.test", **fields.pop("headers", {})}
    if key is not None:
        headers["x-api-key"] = key
    return Request(
        method=method,
        raw_path=path,
        path=path,
        headers=headers,
        host="api.example.test",
        source_address=fields.pop("source_address", "203.0.113.9"),
        time=T0,
        protocol="HTTP/1.1",
        **fields,
    )


def _headers(decision: Decision) -> dict[str, str]:
    return dict(decision.headers)


async def test_a_route_requiring_a_key_refuses_each_kind_of_bad_key(tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path, BASE, Clock())
    for key in (None, "", "not-a-key-anyone-has-0123456789", OFF, LOOSE):
        decision = await pipe.check(_request("/orders/1", key))
        assert (decision.status, decision.reason, decision.message) == (403, "InvalidApiKey", "Forbidden"), key
        assert decision.gate == "usage_plan"
    assert (await pipe.check(_request("/orders/1", GOLD))).allowed
    assert (await pipe.check(_request("/free/1"))).allowed  # no key needed there


async def test_the_throttle_passes_a_burst_then_429_with_retry_after_and_ratelimit_headers(tmp_path: Path) -> None:
    clock = Clock()
    pipe = _pipeline(tmp_path, BASE, clock)
    for _ in range(3):
        assert (await pipe.check(_request("/orders/1", GOLD))).allowed
    refused = await pipe.check(_request("/orders/1", GOLD))
    assert (refused.status, refused.reason, refused.message) == (429, "Throttled", "Too Many Requests")
    headers = _headers(refused)
    assert headers["retry-after"] == "1"
    assert headers["ratelimit-policy"] == '"throttle";q=3;w=3'
    assert headers["ratelimit"].startswith('"throttle";r=0;t=')
    assert refused.gate == "usage_plan:gold" and refused.principal is not None  # who was throttled, for logs
    clock.now += 1.0  # one emission interval: one more request
    assert (await pipe.check(_request("/orders/1", GOLD))).allowed
    assert (await pipe.check(_request("/orders/1", GOLD))).status == 429


async def test_a_route_override_has_its_own_bucket_and_shares_the_quota(tmp_path: Path) -> None:
    clock = Clock()
    pipe = _pipeline(tmp_path, BASE, clock)
    assert (await pipe.check(_request("/pets/1", GOLD))).allowed
    assert (await pipe.check(_request("/pets/2", GOLD))).status == 429  # burst 1 on this route
    for _ in range(3):  # the plan-wide bucket is untouched by the override's
        assert (await pipe.check(_request("/orders/1", GOLD))).allowed
    gates = pipe.holder.current.gates
    assert gates is not None and gates.counters is not None
    quota = gates.plans["gold"].default.quota
    assert quota is not None
    assert await gates.counters.usage("gold:k-gold", quota) == (4, 96)  # one quota over both routes


async def test_the_quota_is_429_limit_exceeded_and_a_denied_request_uses_none(tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path, BASE, Clock())
    for _ in range(3):
        assert (await pipe.check(_request("/closed/1", SILVER))).reason == "RouteDeny"  # denied: not counted
    for _ in range(4):
        assert (await pipe.check(_request("/orders/1", SILVER))).allowed
    refused = await pipe.check(_request("/orders/1", SILVER))
    assert (refused.status, refused.reason, refused.message) == (429, "QuotaExceeded", "Limit Exceeded")
    assert _headers(refused)["ratelimit-policy"] == '"quota";q=4;w=86400'
    assert int(_headers(refused)["retry-after"]) == 16 * 3600  # T0 is 08:00 UTC: the period ends at midnight


async def test_a_throttled_request_uses_no_quota(tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path, BASE, Clock())
    for _ in range(10):
        await pipe.check(_request("/orders/1", GOLD))
    gates = pipe.holder.current.gates
    assert gates is not None and gates.counters is not None
    quota = gates.plans["gold"].default.quota
    assert quota is not None
    assert (await gates.counters.usage("gold:k-gold", quota))[0] == 3


RULES = (
    BASE
    + """\
rate_limits:
  - {name: per-ip, key: [ip], window: 60, limit: 10, routes: ["ANY /free/{proxy+}"]}
  - {name: per-tenant, key: ["header:x-tenant"], window: 60, limit: 10, action: count, routes: ["ANY /free/{proxy+}"]}
  - {name: spoof-proof, key: [forwarded_ip], window: 60, limit: 10, status: 429, routes: ["GET /pets/{id}"]}
"""
)


async def test_an_ip_rule_blocks_over_its_limit_per_address(tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path, RULES, Clock())
    for _ in range(10):
        assert (await pipe.check(_request("/free/1"))).allowed
    blocked = await pipe.check(_request("/free/1"))
    assert (blocked.status, blocked.reason, blocked.gate) == (403, "RateLimited", "rate_limit:per-ip")
    assert "retry-after" in _headers(blocked)
    assert (await pipe.check(_request("/free/1", source_address="198.51.100.7"))).allowed


async def test_a_count_rule_never_refuses_and_notes_itself_and_a_missing_part_is_not_counted(tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path, RULES, Clock())
    decisions = []
    for index in range(12):
        address = f"198.51.100.{index}"  # a fresh address each time: per-ip never blocks
        decisions.append(await pipe.check(_request("/free/1", headers={"x-tenant": "acme"}, source_address=address)))
    assert all(d.allowed for d in decisions)
    assert [d.gate for d in decisions[:10]] == [""] * 10
    assert decisions[10].gate == decisions[11].gate == "count:per-tenant"
    untagged = await pipe.check(_request("/free/1", source_address="192.0.2.50"))
    assert untagged.allowed and untagged.gate == ""  # no x-tenant: the rule does not count it


async def test_a_spoofed_forwarded_for_does_not_evade_a_forwarded_ip_rule_with_no_trusted_hops(tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path, RULES, Clock())
    statuses = []
    for index in range(12):
        spoofed = {"x-forwarded-for": f"10.0.0.{index}"}
        statuses.append((await pipe.check(_request("/pets/1", GOLD, headers=spoofed))).status)
    # The rule counts the peer, not the client's entries: the 11th request is over 10 (the plan's own bucket,
    # burst 1, refuses the allowed ones after the first: the rule runs first, before authentication).
    assert statuses[10:] == [429, 429]
    pipe2 = _pipeline(tmp_path, RULES, Clock())
    blocked = None
    for index in range(11):
        blocked = await pipe2.check(_request("/pets/1", GOLD, headers={"x-forwarded-for": f"10.0.1.{index}"}))
    assert blocked is not None and blocked.reason == "RateLimited"


LAMBDA = """\
api: {id: a1b2c3d4e5, stage: prod, account: '123456789012', region: us-east-1}
decision_log: {enabled: false}
authorizers:
  auth:
    type: lambda
    handler: tests.unit.limits.gate_handlers:usage_key_handler
    event_format: token
    result_ttl: 0
api_keys: {file: KEYS, source: authorizer}
usage_plans:
  silver: {quota: {limit: 4, period: DAY}}
  gold: {}
rate_limits:
  - {name: flood, key: [ip], window: 60, limit: 10}
  - {name: per-caller, key: [principal], window: 60, limit: 10, action: count}
routes:
  - {match: "ANY /api/{proxy+}", authorizer: auth, api_key_required: true}
"""


async def test_keys_from_the_authorizer_and_a_flood_refused_before_the_handler(tmp_path: Path) -> None:
    gate_handlers.CALLS.clear()
    pipe = _pipeline(tmp_path, LAMBDA, Clock())
    token = {"authorization": f"key:{SILVER}"}
    assert (await pipe.check(_request("/api/x", headers={"authorization": "no-key"}))).reason == "InvalidApiKey"
    for _ in range(4):
        assert (await pipe.check(_request("/api/x", headers=token))).allowed
    for _ in range(5):  # the quota is used up; requests 6 to 10 of this address still reach the handler
        assert (await pipe.check(_request("/api/x", headers=token))).reason == "QuotaExceeded"
    for _ in range(3):  # the flood rule's 11th request onwards never reaches the handler
        assert (await pipe.check(_request("/api/x", headers=token))).reason == "RateLimited"
    assert len(gate_handlers.CALLS) == 10
    assert (await pipe.check(_request("/api/x", headers=token, source_address="192.0.2.1"))).reason == "QuotaExceeded"


async def test_a_principal_rule_counts_allowed_callers_after_the_authorizer(tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path, LAMBDA.replace("flood, key: [ip]", "flood, key: [ip, route]"), Clock())
    token = {"authorization": f"key:{GOLD}"}
    gates = []
    for index in range(11):
        decision = await pipe.check(_request("/api/x", headers=token, source_address=f"198.51.100.{index}"))
        assert decision.allowed
        gates.append(decision.gate)
    assert gates[:10] == [""] * 10 and gates[10] == "count:per-caller"


def test_a_key_naming_an_unconfigured_plan_is_a_config_error(tmp_path: Path) -> None:
    text = BASE.replace("  silver:\n    quota: {limit: 4, period: DAY}\n", "")
    with pytest.raises(ConfigError) as caught:
        _pipeline(tmp_path, text, Clock())
    (issue,) = caught.value.issues  # at the key's plan in the key file, as a reload of the file reports it
    assert (issue.file, issue.line, issue.field) == (str(tmp_path / "api-keys.yaml"), 10, "[1].plan")
    assert "'silver'" in issue.message and "(gold)" in issue.message


WATCH_ALL = (
    BASE
    + """\
rate_limits:
  - {name: everywhere, key: [ip], window: 60, limit: 10}
  - {name: real-ip, key: [forwarded_ip], window: 60, limit: 10, routes: ["ANY /orders/{proxy+}"],
     forwarded_ip: {header: x-real-ip, trusted_hops: 1, fallback: NO_MATCH}}
"""
)


async def test_a_rule_without_routes_counts_requests_no_route_takes(tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path, WATCH_ALL, Clock())
    for _ in range(10):  # a scanner probing unknown paths
        assert (await pipe.check(_request("/wp-admin/setup.php"))).reason == "MissingAuthenticationToken"
    blocked = await pipe.check(_request("/wp-admin/setup.php"))
    assert (blocked.status, blocked.reason, blocked.gate) == (403, "RateLimited", "rate_limit:everywhere")
    on_route = await pipe.check(_request("/free/1"))  # the same address on a route: over the same count
    assert (on_route.reason, on_route.route, on_route.authorizer) == ("RateLimited", "ANY /free/{proxy+}", "open")


async def test_a_forwarded_ip_header_other_than_xff_is_read_from_the_right_and_skipped_when_missing(
    tmp_path: Path,
) -> None:
    pipe = _pipeline(tmp_path, WATCH_ALL, Clock())
    statuses = []
    for index in range(11):  # one client behind the proxy that appends x-real-ip, from ever-changing peers,
        peer = f"198.51.100.{index}"  # writing a new address of its own before the proxy's each time
        real_ip = f"203.0.113.{index}, 192.0.2.77"
        request = _request("/orders/1", GOLD, headers={"x-real-ip": real_ip}, source_address=peer)
        statuses.append((await pipe.check(request)).reason)
    assert statuses[-1] == "RateLimited" and "RateLimited" not in statuses[:10]
    for index in range(12):  # no x-real-ip: NO_MATCH, not counted (the everywhere rule sees fresh peers)
        request = _request("/orders/1", GOLD, source_address=f"198.51.101.{index}")
        assert (await pipe.check(request)).reason != "RateLimited"


def _rule_keys(pipe: Pipeline, rule: str) -> set[str]:
    """The aggregation keys a rule has counted in process (`LocalCounters`' rule store: (key, window, bucket))."""
    gates = pipe.holder.current.gates
    assert gates is not None and isinstance(gates.counters, LocalCounters)
    return {name[0] for name in gates.counters.rules[rule]._items}


async def test_a_rule_s_aggregation_key_is_an_hmac_under_the_key_secret(tmp_path: Path) -> None:
    """A rule keyed on a credential header: the key it counts under is HMAC-SHA256 of the value with
    `limits.key_secret` (or, without one, a secret derived from the decision cache's signing key), never a plain
    digest anyone holding a guess could recompute from what Redis shows."""
    rule = "rate_limits:\n  - {name: tok, key: ['header:authorization'], window: 60, limit: 10}\n"
    token = "Bearer a-credential-0123456789"
    own = _pipeline(tmp_path, BASE + rule + "limits: {key_secret: 0123456789abcdef-own}\n", Clock())
    await own.check(_request("/free/1", headers={"authorization": token}))
    keyed = hmac.new(b"0123456789abcdef-own", token.encode(), hashlib.sha256).hexdigest()[:32]
    assert _rule_keys(own, "tok") == {f"tok:{keyed}"}
    assert hashlib.sha256(token.encode()).hexdigest()[:32] != keyed

    cache = "cache: {redis: {url: 'redis://127.0.0.1:1/0', signing_key: the-cache-signing-key}}\n"
    derived = _pipeline(tmp_path, BASE + rule + cache, Clock())
    await derived.check(_request("/free/1", headers={"authorization": token}))
    secret = hmac.new(b"the-cache-signing-key", KEY_SECRET_LABEL, hashlib.sha256).digest()
    assert _rule_keys(derived, "tok") == {f"tok:{hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()[:32]}"}
    await derived.holder.current.stop()
