"""The remote invoker against in-process `lambda-serve` hosts on 127.0.0.1: every handler outcome arrives as the
in-process invoker raises it, time and concurrency are bounded, the breaker fails fast while the service is
down and recovers when it is back, a drain lets calls in flight finish, health answers SERVING."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._proto.custom_pb2 import AuthorizeRequest, AuthorizeResponse, HandlerError
from sidecar.authorizers.custom.invoke import HandlerFailed, HandlerUnauthorized
from sidecar.authorizers.custom.remote import METHOD, SERVICE_NAME, TargetError, parse_target
from sidecar.harness.envoy import free_port

from . import remote_handlers
from .remote_testkit import (
    Clock,
    black_hole,
    breaker_gauge,
    calls,
    context,
    event,
    lambda_host,
    remote,
    scripted_service,
)


def authorize_call(channel: grpc.aio.Channel) -> Any:
    """The `Authorize` method on `channel`, as a client of its own (no sidecar code) calls it."""
    return channel.unary_unary(
        METHOD,
        request_serializer=AuthorizeRequest.SerializeToString,
        response_deserializer=AuthorizeResponse.FromString,
    )


async def test_allow_returns_the_handlers_response_with_the_lambda_context_it_saw() -> None:
    async with lambda_host() as host, remote(host.port) as invoker:
        response = await invoker.invoke(event("allow"), context("req-42", 1.0), 1.0)
    assert response["principalId"] == "alice"
    assert response["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    assert response["policyDocument"]["Statement"][0]["Resource"] == event("allow")["methodArn"]
    seen = response["context"]
    assert (seen["user"], seen["functionName"], seen["requestId"], seen["memory"]) == (
        "alice",
        "auth-fn",
        "req-42",
        128,
    )
    assert 0 < seen["remainingMs"] <= 1000  # counted down from the budget the call carried
    assert seen["admin"] is False  # JSON types survive the trip


async def test_deny_is_a_response_not_a_failure() -> None:
    async with lambda_host() as host, remote(host.port, name="deny") as invoker:
        response = await invoker.invoke(event("deny"), context(), 1.0)
    assert response["policyDocument"]["Statement"][0]["Effect"] == "Deny"
    assert calls("deny", "ok") == 1


async def test_unauthorized_arrives_as_handler_unauthorized() -> None:
    async with lambda_host() as host, remote(host.port, name="unauth") as invoker:
        with pytest.raises(HandlerUnauthorized):
            await invoker.invoke(event("unauthorized"), context(), 1.0)
    assert calls("unauth", "unauthorized") == 1
    assert not invoker.breaker.failures  # the service answered: not a failure of it


async def test_a_crash_is_named_by_type_and_its_message_goes_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with lambda_host() as host, remote(host.port, name="crash") as invoker:
        with pytest.raises(HandlerFailed) as failed:
            await invoker.invoke(event("crash:tok-SECRET-1"), context(), 1.0)
    assert failed.value.kind == "exception:KeyError"
    assert "tok-SECRET-1" not in str(failed.value)
    assert "KeyError" in caplog.text  # the service logs the type ...
    assert "tok-SECRET-1" not in caplog.text  # ... never the message nor the event
    assert not invoker.breaker.failures


async def test_a_response_that_is_not_json_is_malformed() -> None:
    async with lambda_host() as host, remote(host.port) as invoker:
        with pytest.raises(HandlerFailed) as failed:
            await invoker.invoke(event("malformed"), context(), 1.0)
    assert failed.value.kind == "malformed"


async def test_a_blocked_handler_times_out_within_the_call_timeout() -> None:
    async with lambda_host() as host, remote(host.port, name="slow") as invoker:
        started = time.monotonic()
        with pytest.raises(HandlerFailed) as failed:
            await invoker.invoke(event("block"), context(timeout=0.3), 0.3)
        elapsed = time.monotonic() - started
    assert failed.value.kind == "timeout"
    assert 0.25 < elapsed < 1.5
    assert calls("slow", "timeout") == 1
    assert invoker.breaker.failures == 1  # waiting is what the breaker counts


async def test_calls_beyond_the_clients_limit_fail_at_once_as_overloaded() -> None:
    async with lambda_host() as host, remote(host.port, name="shed", max_concurrency=1) as invoker:
        first = asyncio.create_task(invoker.invoke(event("block"), context(timeout=5), 5))
        await asyncio.to_thread(remote_handlers.STARTED.wait, 5)
        started = time.monotonic()
        with pytest.raises(HandlerFailed) as failed:  # answered while the blocked call still holds its slot
            await invoker.invoke(event("allow"), context(), 5)
        assert time.monotonic() - started < 2.5  # refused, not queued for its 5 s behind the blocked call
        remote_handlers.RELEASE.set()
        assert (await first)["principalId"] == "late"
    assert failed.value.kind == "overloaded"
    assert calls("shed", "shed") == 1


async def test_calls_beyond_the_services_limit_are_refused_by_it_as_overloaded() -> None:
    async with lambda_host(max_concurrency=1) as host, remote(host.port, name="full") as invoker:
        first = asyncio.create_task(invoker.invoke(event("block"), context(timeout=5), 5))
        await asyncio.to_thread(remote_handlers.STARTED.wait, 5)
        with pytest.raises(HandlerFailed) as failed:
            await invoker.invoke(event("allow"), context(), 5)
        remote_handlers.RELEASE.set()
        await first
    assert failed.value.kind == "overloaded"
    assert calls("full", "overloaded") == 1
    assert host.in_flight == 0
    assert not invoker.breaker.failures  # a service that sheds load is not down


async def test_a_call_while_the_services_thread_is_stuck_past_a_timeout_is_overloaded() -> None:
    """The stuck call was answered TIMEOUT, but its thread still runs the handler: a new call is refused at once
    (OVERLOADED, not counted against the service), not queued for its whole timeout."""
    async with lambda_host(max_concurrency=1) as host, remote(host.port, name="stuck") as invoker:
        with pytest.raises(HandlerFailed) as stuck:
            await invoker.invoke(event("block"), context(timeout=0.2), 0.2)
        assert stuck.value.kind == "timeout"
        # The service answers its own TIMEOUT at the same deadline as the client's: on a loaded machine it may
        # land a moment after the client gave up, so wait (bounded) for the service to count the call as done.
        deadline = asyncio.get_running_loop().time() + 5
        while host.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert host.in_flight == 0
        with pytest.raises(HandlerFailed) as refused:
            await invoker.invoke(event("allow"), context(timeout=5), 5)
        assert refused.value.kind == "overloaded"
        remote_handlers.RELEASE.set()
        pool = host.invoker._pool  # type: ignore[attr-defined]
        await pool.submit(lambda: None)  # runs once the stuck thread is back
        assert (await invoker.invoke(event("allow"), context(), 5.0))["principalId"] == "alice"
    assert remote_handlers.CALLS == ["block", "allow"]
    assert calls("stuck", "overloaded") == 1 and invoker.breaker.failures == 0


async def test_a_hung_service_opens_the_breaker_then_calls_fail_fast_and_a_probe_recovers() -> None:
    clock = Clock()
    timeout = 0.3
    port = free_port()
    async with remote(port, name="hung", threshold=2, cooldown=5.0, clock=clock) as invoker:
        async with black_hole(port):
            for _ in range(2):  # each waits for its deadline: the service never answers
                with pytest.raises(HandlerFailed) as failed:
                    await invoker.invoke(event("allow"), context(), timeout)
                assert failed.value.kind == "timeout"
            assert invoker.breaker.is_open and breaker_gauge("hung") == 1
            for _ in range(5):
                started = time.monotonic()
                with pytest.raises(HandlerFailed) as failed:  # a call let through would wait its 5 s here
                    await invoker.invoke(event("allow"), context(timeout=5), 5)
                assert time.monotonic() - started < 1.0  # open: no call, no wait (generous under CI load)
                assert failed.value.kind == "unavailable"
            assert calls("hung", "timeout") == 2
            assert calls("hung", "breaker_open") == 5
        async with lambda_host(port=port) as host:  # the service is back on its address
            with pytest.raises(HandlerFailed):
                await invoker.invoke(event("allow"), context(), timeout)  # still cooling down: refused unasked
            assert calls("hung", "breaker_open") == 6 and not remote_handlers.CALLS
            clock.now += 5.0  # the cooldown passes (on the breaker's clock)
            probe = await invoker.invoke(event("allow"), context(timeout=5), 5)  # waits for the reconnection
            assert probe["principalId"] == "alice"
            assert not invoker.breaker.is_open and breaker_gauge("hung") == 0
            assert (await invoker.invoke(event("allow"), context(), timeout))["principalId"] == "alice"
            assert remote_handlers.CALLS == ["allow", "allow"] and host.in_flight == 0


async def test_a_service_that_went_away_recovers_on_the_same_client() -> None:
    clock = Clock()
    port = free_port()
    async with lambda_host(port=port) as host, remote(port, name="away", threshold=2, clock=clock) as invoker:
        assert (await invoker.invoke(event("allow"), context(), 1.0))["principalId"] == "alice"
        await host.stop(0)  # the service goes down
        for _ in range(2):
            with pytest.raises(HandlerFailed) as failed:
                await invoker.invoke(event("allow"), context(), 1.0)
            assert failed.value.kind == "unavailable"
        assert invoker.breaker.is_open
        async with lambda_host(port=port):  # back on the same port
            clock.now += invoker.breaker.current_cooldown
            assert (await invoker.invoke(event("allow"), context(timeout=5), 5))["principalId"] == "alice"
            assert not invoker.breaker.is_open
    assert calls("away", "unavailable") == 2


async def test_concurrent_failures_open_the_breaker_once_without_stretching_its_cooldown() -> None:
    clock = Clock()
    async with black_hole() as port, remote(port, name="burst", threshold=2, cooldown=1.0, clock=clock) as invoker:
        results = await asyncio.gather(
            *(invoker.invoke(event("allow"), context(), 0.3) for _ in range(6)), return_exceptions=True
        )
    assert all(isinstance(r, HandlerFailed) and r.kind == "timeout" for r in results)
    assert invoker.breaker.is_open
    assert invoker.breaker.current_cooldown == 1.0  # six calls in flight when it opened are not six failed probes


async def test_an_abandoned_probe_lets_the_next_call_probe() -> None:
    clock = Clock()
    async with black_hole() as port, remote(port, name="abandon", threshold=1, cooldown=1.0, clock=clock) as invoker:
        with pytest.raises(HandlerFailed):
            await invoker.invoke(event("allow"), context(), 0.2)
        clock.now += 1.0
        probe = asyncio.create_task(invoker.invoke(event("allow"), context(), 5))
        await asyncio.sleep(0)  # one step of the loop: the probe runs up to its call, taking the half-open slot
        assert invoker.breaker.probing
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert not invoker.breaker.probing  # the next call may probe: the breaker is not stuck open
        with pytest.raises(HandlerFailed) as failed:
            await invoker.invoke(event("allow"), context(), 0.2)
        assert failed.value.kind == "timeout"  # it was let through, and waited its deadline


DEEP_JSON = "[" * remote_handlers.DEEP + "]" * remote_handlers.DEEP


async def test_a_probe_answered_with_json_nested_too_deep_is_malformed_and_settles_the_breaker() -> None:
    """Decoding such a response raises RecursionError: a probe whose verdict is never given would leave the breaker
    half-open for good, every later call refused unasked."""
    clock = Clock()
    answers = iter(("down", "deep", "ok"))

    async def answer(token: str, ctx: Any) -> AuthorizeResponse:
        said = next(answers)
        if said == "down":
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return AuthorizeResponse(response_json=DEEP_JSON if said == "deep" else '{"principalId": "alice"}')

    async with scripted_service(answer) as port, remote(port, name="deep", threshold=1, clock=clock) as invoker:
        with pytest.raises(HandlerFailed):
            await invoker.invoke(event("allow"), context(), 5.0)
        assert invoker.breaker.is_open
        clock.now += invoker.breaker.current_cooldown
        with pytest.raises(HandlerFailed) as failed:
            await invoker.invoke(event("allow"), context(), 5.0)  # the probe
        assert failed.value.kind == "malformed"
        assert not invoker.breaker.is_open and not invoker.breaker.probing  # the service answered: closed
        assert (await invoker.invoke(event("allow"), context(), 5.0))["principalId"] == "alice"
    assert calls("deep", "malformed") == 1


async def test_a_late_failure_of_a_call_from_before_the_breaker_opened_is_not_the_probes() -> None:
    clock = Clock()
    held = {"old": asyncio.Event(), "probe": asyncio.Event()}
    arrived = {token: asyncio.Event() for token in held}

    async def answer(token: str, ctx: Any) -> AuthorizeResponse:
        if token not in held:
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, "down")
        arrived[token].set()
        await held[token].wait()
        if token == "old":
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, "late")
        return AuthorizeResponse(response_json='{"principalId": "probe"}')

    async with (
        scripted_service(answer) as port,
        remote(port, name="late", threshold=1, cooldown=1.0, clock=clock) as invoker,
    ):
        old = asyncio.create_task(invoker.invoke(event("old"), context(timeout=5), 5))
        await asyncio.wait_for(arrived["old"].wait(), 5)  # in flight while the breaker is still closed
        with pytest.raises(HandlerFailed):
            await invoker.invoke(event("down"), context(), 5)
        assert invoker.breaker.is_open
        clock.now += 1.0
        probe = asyncio.create_task(invoker.invoke(event("probe"), context(timeout=5), 5))
        await asyncio.wait_for(arrived["probe"].wait(), 5)
        held["old"].set()  # the old call fails now, while the probe is in flight
        with pytest.raises(HandlerFailed) as late:
            await old
        assert late.value.kind == "unavailable"
        assert invoker.breaker.probing and invoker.breaker.current_cooldown == 1.0  # the probe's verdict is pending
        held["probe"].set()
        assert (await probe)["principalId"] == "probe"
        assert not invoker.breaker.is_open


async def test_a_response_nested_too_deep_is_malformed_in_band_not_a_service_failure() -> None:
    async with lambda_host() as host, remote(host.port, name="deep-host") as invoker:
        with pytest.raises(HandlerFailed) as failed:
            await invoker.invoke(event("deep"), context(), 5.0)
        assert (await invoker.invoke(event("allow"), context(), 5.0))["principalId"] == "alice"
    assert failed.value.kind == "malformed"
    assert not invoker.breaker.failures
    assert calls("deep-host", "unavailable") == 0


async def test_an_event_nested_too_deep_is_an_invalid_argument() -> None:
    async with lambda_host() as host, grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        call = authorize_call(channel)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await call(AuthorizeRequest(event_json=DEEP_JSON, timeout_ms=1000), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert remote_handlers.CALLS == []


async def test_a_drain_lets_the_call_in_flight_finish() -> None:
    async with lambda_host() as host, remote(host.port) as invoker:
        call = asyncio.create_task(invoker.invoke(event("block"), context(timeout=5), 5))
        await asyncio.to_thread(remote_handlers.STARTED.wait, 5)
        stopping = asyncio.create_task(host.stop(5))
        with pytest.raises(HandlerFailed) as refused:  # draining: no new call is accepted
            await invoker.invoke(event("allow"), context(), 1.0)
        assert refused.value.kind == "unavailable"
        remote_handlers.RELEASE.set()
        assert (await call)["principalId"] == "late"
        await asyncio.wait_for(stopping, 5)


async def test_health_answers_serving_for_the_server_and_the_service() -> None:
    async with lambda_host() as host, grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_wire_is_the_documented_protocol() -> None:
    """A client of its own (no sidecar code) gets the response JSON, and an error in-band."""
    async with lambda_host() as host, grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        call = authorize_call(channel)
        ok = await call(AuthorizeRequest(event_json='{"authorizationToken": "deny"}', timeout_ms=1000), timeout=5)
        assert ok.WhichOneof("outcome") == "response_json" and '"Effect":"Deny"' in ok.response_json
        crash = await call(AuthorizeRequest(event_json='{"authorizationToken": "crash:x"}'), timeout=5)
        assert crash.error.kind == HandlerError.HANDLER_ERROR and crash.error.exception_type == "KeyError"
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await call(AuthorizeRequest(event_json="[1]"), timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_stopped_invoker_answers_unavailable_without_a_channel() -> None:
    async with lambda_host() as host, remote(host.port, name="stopped") as invoker:
        assert (await invoker.invoke(event("allow"), context(), 1.0))["principalId"] == "alice"
        await invoker.stop()  # a reload replaced its config; a Check still on the old one arrives
        with pytest.raises(HandlerFailed) as failed:
            await invoker.invoke(event("allow"), context(), 1.0)
        assert failed.value.kind == "unavailable"
        assert invoker._channel is None  # no channel reopened that nobody would close
        assert remote_handlers.CALLS == ["allow"]
    assert calls("stopped", "stopped") == 1
    assert not invoker.breaker.failures


def test_targets_are_grpc_host_port() -> None:
    assert parse_target("grpc://127.0.0.1:9300") == "127.0.0.1:9300"
    assert parse_target("grpc://[::1]:9300") == "[::1]:9300"
    assert parse_target("grpc://authz.internal:443") == "authz.internal:443"
    for bad in ("127.0.0.1:9300", "http://h:1", "grpc://h", "grpc://h:0", "grpc://h:x", "grpc://u@h:1", "grpc://h:1/p"):
        with pytest.raises(TargetError):
            parse_target(bad)
