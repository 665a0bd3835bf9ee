"""`type: lambda` with `target: grpc://...` through the real config loader, runtime and pipeline: a handler
written for API Gateway (powertools, `handlers.token_handler`, unchanged) served by an in-process `lambda-serve`
host answers exactly as it does in process (allow with context headers, 403, 401, 500 for a crash and a timeout,
401 without a call for a missing token), and while the service is down the breaker answers 500 at once until a
probe finds it back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.authorizers.custom.remote import RemoteInvoker
from sidecar.harness.envoy import free_port
from sidecar.pipeline import Pipeline

from . import handlers
from .lambda_testkit import pipeline, request, started, token
from .remote_testkit import Clock, lambda_host

TIMEOUT = 0.5


def settings(port: int) -> str:
    return f"""
        target: grpc://127.0.0.1:{port}
        event_format: token
        result_ttl: 0
        timeout: {TIMEOUT}
        breaker: {{threshold: 2, cooldown: 5}}
        context_to_headers: {{tenant: x-tenant}}
    """


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Pipeline, int]]:
    handlers.reset()
    port = free_port()
    async with lambda_host(handlers.token_handler, port=port):
        pipe = await started(pipeline(tmp_path, settings(port)))
        try:
            yield pipe, port
        finally:
            handlers.RELEASE.set()
            await pipe.holder.current.stop()


def remote_invoker(pipe: Pipeline) -> RemoteInvoker:
    invoker = pipe.holder.current.authorizers["auth"].invoker  # type: ignore[attr-defined]
    assert isinstance(invoker, RemoteInvoker)
    return invoker


async def test_a_remote_handler_decides_as_an_in_process_one(served: tuple[Pipeline, int]) -> None:
    pipe, _ = served
    allowed = await pipe.check(request(headers=token("allow-alice")))
    assert (allowed.allowed, allowed.principal and allowed.principal.id) == (True, "alice")
    assert ("x-tenant", "acme") in allowed.all_headers()
    event = handlers.CALLS[-1]
    assert (event["type"], event["authorizationToken"]) == ("TOKEN", "allow-alice")
    assert event["methodArn"].endswith("/prod/GET/pets/7")
    assert handlers.CONTEXTS[-1].function_name == "auth"
    denied = await pipe.check(request(headers=token("deny-bob")))
    assert (denied.status, denied.reason) == (403, "AccessDenied")
    unauthorized = await pipe.check(request(headers=token("unauthorized")))
    assert (unauthorized.status, unauthorized.reason) == (401, "Unauthorized")
    crashed = await pipe.check(request(headers=token("crash")))
    assert (crashed.status, crashed.reason) == (500, "AuthorizerConfigurationException")
    calls = len(handlers.CALLS)
    missing = await pipe.check(request())
    assert (missing.status, missing.reason) == (401, "Unauthorized")
    assert len(handlers.CALLS) == calls  # no identity source: no call


async def test_a_remote_handler_past_the_timeout_is_a_500_within_it(served: tuple[Pipeline, int]) -> None:
    pipe, _ = served
    begun = time.monotonic()
    slow = await pipe.check(request(headers=token("block-x")))
    assert (slow.status, slow.reason) == (500, "AuthorizerConfigurationException")
    assert time.monotonic() - begun < TIMEOUT + 0.5


async def test_a_service_down_is_a_fast_500_then_a_probe_recovers(tmp_path: Path) -> None:
    handlers.reset()
    port = free_port()
    pipe = await started(pipeline(tmp_path, settings(port)))  # nothing listens yet: the service is down
    invoker = remote_invoker(pipe)
    invoker.clock = clock = Clock()
    try:
        for _ in range(2):
            down = await pipe.check(request(headers=token("allow-alice")))
            assert (down.status, down.reason) == (500, "AuthorizerConfigurationException")
        assert invoker.breaker.is_open
        async with lambda_host(handlers.token_handler, port=port):
            begun = time.monotonic()
            refused = await pipe.check(request(headers=token("allow-alice")))
            assert time.monotonic() - begun < TIMEOUT / 5  # open: answered without asking
            assert (refused.status, refused.reason) == (500, "AuthorizerConfigurationException")
            assert handlers.CALLS == []
            clock.now += 5.0
            back = await pipe.check(request(headers=token("allow-alice")))
            assert back.allowed and not invoker.breaker.is_open
            assert len(handlers.CALLS) == 1
    finally:
        await pipe.holder.current.stop()
