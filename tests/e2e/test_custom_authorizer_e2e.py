"""`type: lambda` custom authorizers through a real Envoy: handlers written for API Gateway (powertools builders and
plain dicts, `plugins/lambda_handlers.py`) run unchanged in the sidecar's child process and behind a real
`authz-sidecar lambda-serve`, for each event format, with API Gateway's answers (allow with the context reaching
the upstream as headers, 403, 401, 500 for a crash and a timeout, 401 without a call), its result cache (a
repeated identity is not asked again; a cached policy meets other routes as `cache_key` says; replicas share
results through a real Redis and ignore an entry moved there), a remote that is down (a fast 500 from the
breaker, then recovery) and Envoy's HTTP mode.

Handlers append each call to a file (`CALLS_ENV`, set here and inherited by the child processes): a call is on
disk before the sidecar answers, so reading the file after each response counts calls without waiting.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from sidecar.authorizers.custom.authorizer import identity_id
from tests.conftest import REPO, RedisServer
from tests.e2e.conftest import Stack, StackFactory, metric
from tests.e2e.plugins.lambda_handlers import CALLS_ENV
from tests.unit.authorizers.custom.remote_testkit import LambdaServe

pytestmark = pytest.mark.e2e

HANDLERS = "tests.e2e.plugins.lambda_handlers"
API = {"id": "a1b2c3d4e5", "stage": "prod", "account": "123456789012", "region": "us-east-1"}
ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"
TIMEOUT = 0.2
"""The handlers' timeout: below the shipped Envoy's 0.5 s ext_authz timeout, so a slow handler is our 500."""
IMPLICIT_DENY = "User is not authorized to access this resource"
EXPLICIT_DENY = IMPLICIT_DENY + " with an explicit deny"


@dataclass(frozen=True)
class Style:
    """How handlers of one style answer: their context, mapped to upstream headers, and what those headers say."""

    name: str
    context_to_headers: dict[str, str]
    upstream: dict[str, str]


POWERTOOLS = Style(
    "powertools",
    {"tenant": "x-tenant", "admin": "x-admin", "level": "x-level"},
    {"x-tenant": "acme", "x-admin": "true", "x-level": "3"},
)
PLAIN = Style(
    "plain",
    {"stringKey": "x-string-key", "numberKey": "x-number-key", "booleanKey": "x-boolean-key"},
    {"x-string-key": "value", "x-number-key": "123", "x-boolean-key": "true"},
)


@dataclass(frozen=True)
class Format:
    """One event format: its settings and the handler of each style written for it."""

    event_format: str
    handlers: dict[str, str]
    identity_source: str | None = None
    simple: bool = False

    def settings(self, style: Style, **more: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "lambda",
            "handler": f"{HANDLERS}:{self.handlers[style.name]}",
            "event_format": self.event_format,
            "timeout": TIMEOUT,
            "context_to_headers": style.context_to_headers,
        }
        if self.identity_source is not None:
            out["identity_sources"] = [self.identity_source]
        if self.simple:
            out["simple_responses"] = True
        return {**out, **more}


FORMATS = {
    "token": Format("token", {"powertools": "powertools_token", "plain": "plain_token"}),
    "request": Format(
        "request", {"powertools": "powertools_request", "plain": "plain_request"}, "method.request.header.Authorization"
    ),
    "http-1.0": Format(
        "http-1.0", {"powertools": "powertools_request", "plain": "plain_request"}, "$request.header.Authorization"
    ),
    "http-2.0": Format(
        "http-2.0", {"powertools": "powertools_v2", "plain": "plain_v2"}, "$request.header.Authorization"
    ),
    "http-2.0-simple": Format(
        "http-2.0",
        {"powertools": "powertools_v2_simple", "plain": "plain_v2_simple"},
        "$request.header.Authorization",
        simple=True,
    ),
}


def config(authorizers: dict[str, dict[str, Any]], routes: list[tuple[str, str]] | None = None, **top: Any) -> str:
    """A config with these authorizers, each on `ANY /NAME/{proxy+}` unless `routes` says otherwise, and `top`
    keys (`cache`)."""
    routes = routes or [(f"ANY /{name}/{{proxy+}}", name) for name in authorizers]
    data = {
        **top,
        "api": API,
        "authorizers": authorizers,
        "routes": [{"match": match, "authorizer": name} for match, name in routes],
    }
    return yaml.safe_dump(data, sort_keys=False)


class Calls:
    """The calls the handlers recorded, in every process that runs them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()]

    def new(self) -> list[dict[str, Any]]:
        """The calls since the last look."""
        calls = self.all()
        fresh, self.seen = calls[self.seen :], len(calls)
        return fresh


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Where handlers record their calls: the environment the sidecar and lambda-serve processes inherit."""
    path = tmp_path / "calls.jsonl"
    monkeypatch.setenv(CALLS_ENV, str(path))
    return Calls(path)


def get(stack: Stack, path: str, token: str | None, method: str = "GET", **headers: str) -> httpx.Response:
    """One request through Envoy, with `token` as its Authorization header (None: no header at all)."""
    if token is not None:
        headers["authorization"] = token
    return stack.client.request(method, path, headers=headers)


def denied(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["reason"], body["message"]


def upstream(response: httpx.Response) -> dict[str, str]:
    """The headers the echo upstream received."""
    assert response.status_code == 200, response.text
    headers: dict[str, str] = response.json()["headers"]
    return headers


def handler_names(calls: list[dict[str, Any]]) -> list[str]:
    return [call["handler"] for call in calls]


def assert_event(fmt: Format, event: dict[str, Any], prefix: str) -> None:
    """The event the handler got names this request and its route as API Gateway would."""
    arn = f"{ARN}/GET/{prefix}/pets/7"
    if fmt.event_format == "token":
        assert event == {"type": "TOKEN", "authorizationToken": "allow-alice", "methodArn": arn}
    elif fmt.event_format == "http-2.0":
        assert (event["version"], event["routeArn"], event["identitySource"]) == ("2.0", arn, ["allow-alice"])
        assert (event["routeKey"], event["rawPath"]) == (f"ANY /{prefix}/{{proxy+}}", f"/{prefix}/pets/7")
        assert event["pathParameters"] == {"proxy": "pets/7"}
        assert event["requestContext"]["http"]["sourceIp"] == "127.0.0.1"
    else:
        assert (event["type"], event["methodArn"], event["resource"]) == ("REQUEST", arn, f"/{prefix}/{{proxy+}}")
        assert event["pathParameters"] == {"proxy": "pets/7"} and event["headers"]["authorization"] == "allow-alice"
        assert event["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"
        assert event.get("version") == ("1.0" if fmt.event_format == "http-1.0" else None)


def assert_core_scenarios(stack: Stack, calls: Calls, fmt: Format, style: Style, prefix: str, name: str) -> None:
    """API Gateway's answers for what a handler of `style` says, on `/PREFIX/...` (authorizer `name`)."""
    handler = fmt.handlers[style.name]
    forged = dict.fromkeys(style.upstream, "forged by the client")
    allowed = get(stack, f"/{prefix}/pets/7", "allow-alice", **forged)
    seen = upstream(allowed)
    assert {key: seen.get(key) for key in style.upstream} == style.upstream  # the handler's, never the client's
    # A simple response names no principal: the caller is named by a digest of its identity source values.
    assert seen["x-authz-principal"] == (identity_id(("allow-alice",)) if fmt.simple else "alice")
    (call,) = calls.new()
    assert call["handler"] == handler
    assert_event(fmt, call["event"], prefix)

    refused = get(stack, f"/{prefix}/pets/7", "deny-bob")
    assert denied(refused) == (403, "AccessDenied", "Forbidden" if fmt.simple else EXPLICIT_DENY)
    assert denied(get(stack, f"/{prefix}/pets/7", "unauthorized")) == (401, "Unauthorized", "Unauthorized")
    crashed = get(stack, f"/{prefix}/pets/7", "crash")
    assert denied(crashed) == (500, "AuthorizerConfigurationException", "Internal Server Error")
    slow = get(stack, f"/{prefix}/pets/7", "slow")  # our 500 within TIMEOUT, before Envoy's 0.5 s gives a 503
    assert denied(slow)[:2] == (500, "AuthorizerConfigurationException")
    assert handler_names(calls.new()) == [handler] * 4

    for token in (None, ""):  # no Authorization header, an empty one
        assert denied(get(stack, f"/{prefix}/pets/7", token)) == (401, "Unauthorized", "Unauthorized")
    assert calls.new() == []  # the handler was not called


@pytest.mark.parametrize("format_name", list(FORMATS))
def test_handlers_of_both_styles_answer_as_on_api_gateway(
    authz_stack: StackFactory, calls: Calls, format_name: str
) -> None:
    fmt = FORMATS[format_name]
    stack = authz_stack(config({style.name: fmt.settings(style) for style in (POWERTOOLS, PLAIN)}))
    for style in (POWERTOOLS, PLAIN):
        assert_core_scenarios(stack, calls, fmt, style, style.name, style.name)


# -- the result cache ---------------------------------------------------------------------------------------------


def test_a_repeated_identity_skips_the_handler_and_result_ttl_0_asks_every_time(
    authz_stack: StackFactory, calls: Calls
) -> None:
    fmt = FORMATS["token"]
    stack = authz_stack(
        config({"cached": fmt.settings(POWERTOOLS), "uncached": fmt.settings(POWERTOOLS, result_ttl=0)})
    )
    for _ in range(3):
        assert upstream(get(stack, "/cached/pets/7", "allow-alice"))["x-tenant"] == "acme"
    assert len(calls.new()) == 1
    for _ in range(2):  # a deny is cached too, as API Gateway caches it
        assert denied(get(stack, "/cached/pets/7", "deny-bob"))[0] == 403
    assert len(calls.new()) == 1
    for _ in range(2):  # failures are not: the next request asks again
        assert denied(get(stack, "/cached/pets/7", "crash"))[0] == 500
    assert len(calls.new()) == 2
    assert upstream(get(stack, "/cached/pets/7", "allow-carol"))["x-authz-principal"] == "carol"
    assert len(calls.new()) == 1
    for _ in range(3):
        assert upstream(get(stack, "/uncached/pets/7", "allow-alice"))["x-authz-principal"] == "alice"
    assert len(calls.new()) == 3


CACHE_ROUTES = ("ANY /{key}/pets/{{id}}", "ANY /{key}/owners/{{id}}")
"""Two routes per authorizer, each with an `{id}`: ANY, so that another method is the same route."""


def test_cache_key_identity_applies_the_cached_policy_to_every_route(authz_stack: StackFactory, calls: Calls) -> None:
    """API Gateway's pitfall: a policy written for the one ARN the handler was asked about is cached for the
    identity, then evaluated for other routes' ARNs, and denies them without asking. The fix: a policy for every
    route the caller may use (`broad-`)."""
    fmt = FORMATS["token"]
    settings = {style.name: fmt.settings(style, cache_key="identity") for style in (POWERTOOLS, PLAIN)}
    routes = [(match.format(key=name), name) for name in settings for match in CACHE_ROUTES]
    stack = authz_stack(config(settings, routes))
    for style in (POWERTOOLS, PLAIN):
        prefix = style.name
        assert upstream(get(stack, f"/{prefix}/pets/7", "allow-alice"))["x-authz-principal"] == "alice"
        assert len(calls.new()) == 1
        for method, path in (("GET", "owners/1"), ("DELETE", "pets/7"), ("GET", "pets/8")):
            refused = get(stack, f"/{prefix}/{path}", "allow-alice", method=method)
            assert denied(refused) == (403, "AccessDenied", IMPLICIT_DENY), (style, method, path)
        assert calls.new() == []  # every one decided by the cached policy
        for method, path in (("GET", "pets/7"), ("GET", "owners/1"), ("DELETE", "pets/7")):
            assert upstream(get(stack, f"/{prefix}/{path}", "broad-dana", method=method))["x-authz-principal"] == "dana"
        assert len(calls.new()) == 1


def test_cache_key_identity_and_route_asks_again_on_each_route(authz_stack: StackFactory, calls: Calls) -> None:
    """The default: a route's first request with an identity asks the handler; within a route the cached policy
    still meets each request's method and path, as on API Gateway (the route key is in the key, not the path)."""
    fmt = FORMATS["token"]
    settings = {style.name: fmt.settings(style) for style in (POWERTOOLS, PLAIN)}
    routes = [(match.format(key=name), name) for name in settings for match in CACHE_ROUTES]
    stack = authz_stack(config(settings, routes))
    for style in (POWERTOOLS, PLAIN):
        prefix = style.name
        assert upstream(get(stack, f"/{prefix}/pets/7", "allow-alice"))["x-authz-principal"] == "alice"
        assert upstream(get(stack, f"/{prefix}/owners/1", "allow-alice"))["x-authz-principal"] == "alice"
        arns = [call["event"]["methodArn"] for call in calls.new()]
        assert arns == [f"{ARN}/GET/{prefix}/pets/7", f"{ARN}/GET/{prefix}/owners/1"]
        for method, path in (("DELETE", "pets/7"), ("GET", "pets/8")):
            refused = get(stack, f"/{prefix}/{path}", "allow-alice", method=method)
            assert denied(refused) == (403, "AccessDenied", IMPLICIT_DENY), (style, method, path)
        assert calls.new() == []


def stored_keys(raw: redis.Redis, known: set[bytes]) -> set[bytes]:
    """The keys in Redis besides `known`, once there is at least one (a replica stores in the background)."""
    deadline = time.monotonic() + 5
    while not (fresh := set(raw.scan_iter()) - known):
        assert time.monotonic() < deadline, "nothing was stored in Redis"
        time.sleep(0.01)
    return fresh


def test_sidecars_sharing_redis_call_the_handler_once_and_ignore_a_moved_entry(
    authz_stack: StackFactory, calls: Calls, redis_server: RedisServer
) -> None:
    # 50 ms as in the decision cache's e2e tests: a fresh client's first command also opens its connection
    shared = {"redis": {"url": redis_server.url, "signing_key": "shared-test-key", "timeout_ms": 50}}
    text = config({"plain": FORMATS["token"].settings(PLAIN)}, cache=shared)
    first, second = authz_stack(text), authz_stack(text)
    raw = redis.Redis.from_url(redis_server.url)
    try:
        assert upstream(get(first, "/plain/pets/7", "allow-alice"))["x-authz-principal"] == "alice"
        assert len(calls.new()) == 1
        (alice,) = stored_keys(raw, set())
        assert all(b"alice" not in key for key in raw.scan_iter())  # nothing readable in Redis keys
        seen = upstream(get(second, "/plain/pets/7", "allow-alice"))  # the other replica's result
        assert (seen["x-authz-principal"], seen["x-string-key"]) == ("alice", "value")
        assert calls.new() == []

        assert denied(get(first, "/plain/pets/7", "deny-mallory"))[0] == 403
        (mallory,) = stored_keys(raw, {alice})
        raw.set(mallory, raw.get(alice) or b"", ex=60)  # alice's sealed allow, moved onto mallory's key
        assert denied(get(second, "/plain/pets/7", "deny-mallory")) == (403, "AccessDenied", EXPLICIT_DENY)
        assert handler_names(calls.new()) == ["plain_token", "plain_token"]  # the moved entry was not believed
    finally:
        raw.close()


# -- remote: the same handlers behind a real lambda-serve ---------------------------------------------------------


@contextmanager
def lambda_serve(tmp_path: Path, handler: str, *, start: bool = True) -> Iterator[LambdaServe]:
    """A real `authz-sidecar lambda-serve` for `handler` of the e2e handlers (the repository on its path); killed
    at the end. With `start=False` its port is chosen and nothing listens on it yet."""
    serve = LambdaServe(tmp_path, f"{HANDLERS}:{handler}", "--app-dir", str(REPO))
    try:
        if start:
            asyncio.run(serve.start())
        yield serve
    finally:
        serve.kill()


def remote(fmt: Format, style: Style, port: int, **more: Any) -> dict[str, Any]:
    settings = fmt.settings(style, target=f"grpc://127.0.0.1:{port}", **more)
    del settings["handler"]
    return settings


def test_remote_handlers_answer_as_in_process_ones(authz_stack: StackFactory, calls: Calls, tmp_path: Path) -> None:
    token, simple = FORMATS["token"], FORMATS["http-2.0-simple"]
    with (
        lambda_serve(tmp_path, token.handlers["powertools"]) as powertools,
        lambda_serve(tmp_path, simple.handlers["plain"]) as plain,
    ):
        stack = authz_stack(
            config(
                {"powertools": remote(token, POWERTOOLS, powertools.port), "plain": remote(simple, PLAIN, plain.port)}
            )
        )
        assert_core_scenarios(stack, calls, token, POWERTOOLS, "powertools", "powertools")
        assert_core_scenarios(stack, calls, simple, PLAIN, "plain", "plain")
        text = httpx.get(f"{stack.admin_url}/metrics").text
        assert metric(text, "authz_remote_authorizer_calls_total", authorizer="powertools", outcome="ok") == 2
        assert metric(text, "authz_remote_authorizer_calls_total", authorizer="plain", outcome="timeout") == 1


def test_a_remote_that_is_down_is_a_fast_500_from_the_breaker_then_recovers(
    authz_stack: StackFactory, calls: Calls, tmp_path: Path
) -> None:
    fmt = FORMATS["token"]
    with lambda_serve(tmp_path, fmt.handlers["plain"], start=False) as serve:
        breaker = {"threshold": 2, "cooldown": 0.5}
        stack = authz_stack(config({"remote": remote(fmt, PLAIN, serve.port, result_ttl=0, breaker=breaker)}))

        def metrics(outcome: str | None = None) -> float:
            text = httpx.get(f"{stack.admin_url}/metrics").text
            if outcome is None:
                return metric(text, "authz_authorizer_breaker_open", authorizer="remote")
            return metric(text, "authz_remote_authorizer_calls_total", authorizer="remote", outcome=outcome)

        for _ in range(2):  # nothing listens: refused at once, each a failure of the service
            assert denied(get(stack, "/remote/pets/7", "allow-alice"))[:2] == (500, "AuthorizerConfigurationException")
        assert (metrics("unavailable"), metrics()) == (2, 1)
        begun = time.monotonic()
        assert denied(get(stack, "/remote/pets/7", "allow-alice"))[0] == 500
        assert time.monotonic() - begun < TIMEOUT  # open: answered without a connection attempt
        assert metrics("breaker_open") >= 1

        asyncio.run(serve.start())  # the service comes back; after the cooldown one call probes and closes it
        deadline = time.monotonic() + 15
        while (response := get(stack, "/remote/pets/7", "allow-alice")).status_code != 200:
            assert denied(response)[:2] == (500, "AuthorizerConfigurationException")
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.05)  # pacing the retries while the cooldown runs, not synchronization
        assert upstream(response)["x-string-key"] == "value"
        assert metrics() == 0 and len(calls.new()) == 1  # the probe was the handler's only call
        assert upstream(get(stack, "/remote/pets/7", "allow-alice"))["x-authz-principal"] == "alice"
        assert len(calls.new()) == 1


# -- Envoy's HTTP mode ---------------------------------------------------------------------------------------------


def test_through_envoys_http_mode_the_answers_are_the_same(authz_stack: StackFactory, calls: Calls) -> None:
    """The transport does not matter: the same config and handler through envoy-http.yaml. Only a 5xx differs,
    as for every authorizer in HTTP mode: Envoy treats it as an error and answers its status_on_error, 503."""
    fmt = FORMATS["request"]
    stack = authz_stack(config({"powertools": fmt.settings(POWERTOOLS)}), template="envoy-http.yaml")
    seen = upstream(get(stack, "/powertools/pets/7", "allow-alice", **{"x-tenant": "forged"}))
    assert {key: seen[key] for key in POWERTOOLS.upstream} == POWERTOOLS.upstream
    assert seen["x-authz-principal"] == "alice"
    assert_event(fmt, calls.new()[0]["event"], "powertools")
    assert denied(get(stack, "/powertools/pets/7", "deny-bob")) == (403, "AccessDenied", EXPLICIT_DENY)
    assert denied(get(stack, "/powertools/pets/7", "unauthorized")) == (401, "Unauthorized", "Unauthorized")
    crashed = get(stack, "/powertools/pets/7", "crash")
    assert (crashed.status_code, crashed.content) == (503, b"")
    assert len(calls.new()) == 3
    assert denied(get(stack, "/powertools/pets/7", None)) == (401, "Unauthorized", "Unauthorized")
    assert calls.new() == []
