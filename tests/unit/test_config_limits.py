"""The config sections of API keys, usage plans and rate-based rules: what loads, and each mistake at its line."""

from __future__ import annotations

import pytest

from sidecar.config import parse_config
from sidecar.issues import ConfigError
from sidecar.runtime import compile_runtime

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


AUTHORIZER_KEYS = """\
authorizers:
  corp: {type: none}
  custom: {type: lambda, handler: "sidecar.examples.lambda_authorizer:handler"}
  simple:
    {type: lambda, handler: sidecar.examples.lambda_authorizer:handler, event_format: http-2.0, simple_responses: true}
api_keys: {file: k.yaml, source: authorizer}
routes:
  - {match: "ANY /pets/{proxy+}", authorizer: custom}
  - {match: "ANY /login", authorizer: corp}
  - {match: "ANY /simple", authorizer: simple}
"""


def test_an_api_key_rule_part_from_the_authorizer_covers_only_routes_whose_authorizer_names_keys() -> None:
    """Under `api_keys.source: authorizer` a rule counting by `api_key` on a route whose authorizer names no key
    would count nothing there, so it is refused unless `routes` leaves such routes out (a review found it inert)."""
    rule = "rate_limits: [{name: r, key: [api_key], limit: 10%s}]\n"
    errors = _errors(AUTHORIZER_KEYS + rule % "")
    assert any("rate_limits[0].key: the api_key part reads the authorizer's usageIdentifierKey" in e for e in errors)
    assert any("route 'ANY /login'" in e and "'corp' is none, which names no API keys" in e for e in errors), errors
    simple = _errors(AUTHORIZER_KEYS + rule % ', routes: ["ANY /simple"]')
    assert any("route 'ANY /simple'" in e and "simple_responses" in e for e in simple), simple
    loaded = parse_config(AUTHORIZER_KEYS + rule % ', routes: ["ANY /pets/{proxy+}"]', "cfg.yaml")
    assert loaded.rate_limits[0].routes == ("ANY /pets/{proxy+}",)
    # routes the rule never meters are no reason to refuse it: a closed route, one of another method
    closed = AUTHORIZER_KEYS.replace("  corp: {type: none}", "  corp: {type: deny}").replace(
        '  - {match: "ANY /simple", authorizer: simple}\n', ""
    )
    assert parse_config(closed + rule % "", "cfg.yaml").rate_limits[0].key == ("api_key",)
    other_method = AUTHORIZER_KEYS.replace('"ANY /login", authorizer: corp', '"GET /login", authorizer: corp').replace(
        '"ANY /simple", authorizer: simple', '"GET /simple", authorizer: simple'
    )
    assert parse_config(other_method + rule % ", methods: [POST]", "cfg.yaml").rate_limits[0].methods == ("POST",)
    assert any("route 'GET /login'" in e for e in _errors(other_method + rule % ", methods: [GET]"))
    # ANY and $default routes take every method, so a rule of any methods meters them
    assert any("route 'ANY /login'" in e for e in _errors(AUTHORIZER_KEYS + rule % ", methods: [POST]"))
    default = AUTHORIZER_KEYS.replace('"ANY /login", authorizer: corp', '"$default", authorizer: corp')
    assert any("route '$default'" in e for e in _errors(default + rule % ", methods: [POST]"))


def test_a_closed_route_may_require_a_key_the_authorizer_never_names() -> None:
    """`type: deny` allows nothing, so the meter (which runs after an allow) never asks it for a key: closing a
    route that required one under `api_keys.source: authorizer` is not refused."""
    text = AUTHORIZER_KEYS.replace("  corp: {type: none}", "  corp: {type: deny}").replace(
        "authorizer: corp}", "authorizer: corp, api_key_required: true}"
    )
    assert parse_config(text, "cfg.yaml").routes[1].api_key_required
    assert any("routes[1].api_key_required" in e for e in _errors(text.replace("{type: deny}", "{type: none}")))


def test_a_lambda_with_simple_responses_cannot_supply_the_key_a_route_requires() -> None:
    text = AUTHORIZER_KEYS.replace("authorizer: simple}", "authorizer: simple, api_key_required: true}")
    errors = _errors(text)
    assert any("routes[2].api_key_required" in e and "simple_responses" in e for e in errors), errors


def test_a_forwarded_ip_header_other_than_xff_needs_a_trusted_hop() -> None:
    """With 0 hops a custom header's last entry is whatever the client wrote (a fresh counter per request): refused
    (a review found it); 1 reads what the nearest trusted proxy wrote."""
    rule = "rate_limits: [{name: r, key: [forwarded_ip], limit: 10, forwarded_ip: {header: x-real-ip%s}}]\n"
    text = BASE.replace(", api_key_required: true", "") + rule
    errors = _errors(text % "")
    assert any("rate_limits[0].forwarded_ip" in e and "trusted_hops must be at least 1" in e for e in errors), errors
    loaded = parse_config(text % ", trusted_hops: 1", "cfg.yaml")
    assert loaded.rate_limits[0].forwarded_ip.trusted_hops == 1


def test_a_route_requiring_a_client_cert_needs_mtls() -> None:
    text = BASE.replace("api_key_required: true", "require_client_cert: true")
    assert any("routes[0].require_client_cert: require_client_cert needs `mtls:`" in e for e in _errors(text))
    loaded = parse_config(text + "mtls: {truststore: ca.pem, sources: [envoy, xfcc]}\n", "cfg.yaml")
    assert loaded.mtls is not None and loaded.mtls.principal == "san.uri" and loaded.routes[0].require_client_cert


OPEN = "authorizers:\n  corp: {type: none}\nroutes:\n  - {match: ANY /login, authorizer: corp}\n"
REDIS = 'redis: {default: {url: "redis://127.0.0.1:1/0"}}\n'
RULE = "rate_limits:\n  - {name: per-key, key: [header:x-tenant], window: 60, limit: 10}\n"


def _runtime_errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        compile_runtime(parse_config(text, "cfg.yaml"))
    return [str(issue) for issue in caught.value.issues]


def test_rate_rules_counted_in_redis_need_a_shared_key_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every replica must make the same aggregation keys: with Redis and no secret the config is refused at the
    rules; a secret of its own, or the decision cache's signing key, makes it load. In process a random secret
    is fine."""
    (refused,) = _runtime_errors(OPEN + REDIS + RULE)
    assert refused.startswith("cfg.yaml:") and "rate_limits" in refused and "limits.key_secret" in refused
    assert compile_runtime(parse_config(OPEN + RULE, "cfg.yaml")).gates is not None  # in process
    own = OPEN + REDIS + RULE + "limits: {key_secret: 0123456789abcdef}\n"
    assert compile_runtime(parse_config(own, "cfg.yaml")).gates is not None
    cache = "cache: {redis: {connection: default, signing_key: a-signing-key}}\n"
    assert compile_runtime(parse_config(OPEN + REDIS + RULE + cache, "cfg.yaml")).gates is not None
    monkeypatch.setenv("AUTHZ_TEST_KEY_SECRET", "short")
    (short,) = _runtime_errors(OPEN + REDIS + RULE + "limits: {key_secret_env: AUTHZ_TEST_KEY_SECRET}\n")
    assert "limits.key_secret_env: must be at least 16 bytes" in short
    (unset,) = _runtime_errors(OPEN + REDIS + RULE + "limits: {key_secret_env: AUTHZ_TEST_NO_SUCH_VAR}\n")
    assert "limits.key_secret_env: environment variable AUTHZ_TEST_NO_SUCH_VAR is not set" in unset
    (missing,) = _runtime_errors(OPEN + REDIS + RULE + "limits: {key_secret_file: /nonexistent/secret}\n")
    assert "limits.key_secret_file: cannot read the key secret file /nonexistent/secret" in missing


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ("{key_secret: short}", "limits.key_secret: must be at least 16 bytes"),
        (
            "{key_secret: 0123456789abcdef, key_secret_env: X}",
            "give one of key_secret, key_secret_file and key_secret_env",
        ),
    ],
)
def test_key_secret_mistakes_are_located(limits: str, expected: str) -> None:
    (error,) = _errors(OPEN + RULE + f"limits: {limits}\n")
    assert error.startswith("cfg.yaml:") and expected in error and "0123456789abcdef" not in error
