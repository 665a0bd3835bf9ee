"""The config sections of API keys, usage plans and rate-based rules: what loads, and each mistake at its line."""

from __future__ import annotations

import pytest

from sidecar.config import parse_config
from sidecar.issues import ConfigError

BASE = """\
authorizers:
  corp: {type: none}
routes:
  - {match: "ANY /pets/{proxy+}", authorizer: corp, api_key_required: true}
  - {match: "ANY /login", authorizer: corp}
"""
KEYS = "api_keys: {file: api-keys.yaml, source: header, header: X-Api-Key}\n"


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "cfg.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_the_issue_example_loads() -> None:
    config = parse_config(
        BASE
        + KEYS
        + """\
usage_plans:
  gold:
    throttle: {rate: 50, burst: 100}
    quota: {limit: 100000, period: DAY, offset: 0}
    routes: {"ANY /pets/{proxy+}": {throttle: {rate: 5, burst: 10}}}
rate_limits:
  - {name: per-ip, key: [ip], window: 300, limit: 1000, action: block, routes: ["ANY /login"]}
  - {name: by-tenant, key: [Header:X-Tenant, route], limit: 10, action: count, methods: [post]}
""",
        "cfg.yaml",
    )
    assert config.api_keys is not None and config.api_keys.header == "x-api-key"
    gold = config.usage_plans["gold"]
    assert gold.throttle is not None and gold.throttle.burst == 100 and gold.routes["ANY /pets/{proxy+}"]
    assert config.rate_limits[1].key == ("header:x-tenant", "route") and config.rate_limits[1].methods == ("POST",)
    assert config.limits.on_redis_error == "local" and config.limits.connection == "default"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "usage_plans: {gold: {throttle: {rate: 5, burst: 0}}}\n",
            "usage_plans.gold.throttle.burst: must be at least 1",
        ),
        (
            "usage_plans: {gold: {throttle: {rate: 0, burst: 1}}}\n",
            "usage_plans.gold.throttle.rate: must be at least 0.001",
        ),
        (
            "usage_plans: {gold: {quota: {limit: 10, period: DAY, offset: 10}}}\n",
            "usage_plans.gold.quota: offset must be below limit",
        ),
        ("usage_plans: {gold: {quota: {limit: 10, period: YEAR}}}\n", "usage_plans.gold.quota.period:"),
        (
            "usage_plans: {gold: {routes: {'GET /pet/{id}': {throttle: {rate: 1, burst: 1}}}}}\n",
            "usage_plans.gold.routes.GET /pet/{id}: no route has the key 'GET /pet/{id}'",
        ),
        ("usage_plans: {'gold plan': {}}\n", "a plan name is 1-64 letters"),
        ("rate_limits: [{name: r, key: [ip], limit: 9}]\n", "rate_limits[0].limit: must be at least 10"),
        ("rate_limits: [{name: r, key: [ip], limit: 10, window: 30}]\n", "rate_limits[0].window:"),
        ("rate_limits: [{name: r, key: [ip, nope], limit: 10}]\n", "unknown key part 'nope'"),
        ("rate_limits: [{name: r, key: [ip, ip], limit: 10}]\n", "a key part is repeated"),
        ("rate_limits: [{name: r, key: [], limit: 10}]\n", "rate_limits[0].key:"),
        ("rate_limits: [{name: r, key: [ip], limit: 10, routes: [ANY /logn]}]\n", "did you mean `ANY /login`"),
        (
            "rate_limits: [{name: r, key: [ip], limit: 10}, {name: r, key: [ip], limit: 10}]\n",
            "duplicates rate_limits[0]",
        ),
        ("rate_limits: [{name: r, key: [ip], limit: 10, methods: [head]}]\n", "HEAD is judged as GET: name GET"),
        ("rate_limits: [{name: r, key: [ip], limit: 10, methods: [ANY]}]\n", "leave methods out"),
        ("rate_limits: [{name: r, key: [ip], limit: 10, methods: ['GE T']}]\n", "not an HTTP method"),
        ("limits: {connection: shared}\n", "limits.connection: names Redis connection 'shared'"),
        ("limits: {on_redis_error: retry}\n", "limits.on_redis_error:"),
    ],
)
def test_mistakes_are_located(extra: str, expected: str) -> None:
    errors = _errors(BASE + KEYS + extra)
    assert any(expected in error for error in errors), errors
    assert all(error.startswith("cfg.yaml:") for error in errors)


def test_a_route_requiring_a_key_needs_api_keys() -> None:
    assert any("routes[0].api_key_required: api_key_required needs `api_keys:`" in e for e in _errors(BASE))


def test_keys_from_the_authorizer_need_a_lambda_authorizer() -> None:
    errors = _errors(BASE + "api_keys: {file: k.yaml, source: authorizer}\n")
    assert any(
        "routes[0].api_key_required: api_keys.source is authorizer" in e and "'corp' is none" in e for e in errors
    )


def test_an_api_key_rule_part_needs_api_keys() -> None:
    text = BASE.replace(", api_key_required: true", "") + "rate_limits: [{name: r, key: [api_key], limit: 10}]\n"
    assert any("rate_limits[0].key: the api_key part needs `api_keys:`" in e for e in _errors(text))


def test_a_route_requiring_a_client_cert_needs_mtls() -> None:
    text = BASE.replace("api_key_required: true", "require_client_cert: true")
    assert any("routes[0].require_client_cert: require_client_cert needs `mtls:`" in e for e in _errors(text))
    loaded = parse_config(text + "mtls: {truststore: ca.pem, sources: [envoy, xfcc]}\n", "cfg.yaml")
    assert loaded.mtls is not None and loaded.mtls.principal == "san.uri" and loaded.routes[0].require_client_cert
