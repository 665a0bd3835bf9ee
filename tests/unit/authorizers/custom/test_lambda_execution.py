"""How handlers run: sync ones in a bounded pool of their own (a blocked handler holds a thread, not the loop),
async ones on the loop; one call per cache key however many requests wait for it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.authorizers.custom.context import LambdaContext
from sidecar.authorizers.custom.invoke import HandlerFailed, HandlerUnauthorized, LocalInvoker, local_invoker

from . import handlers
from .lambda_testkit import ARN, HANDLERS, pipeline, request, token


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    handlers.reset()
    yield
    handlers.RELEASE.set()  # no pool thread stays blocked past a test


def context(timeout: float = 1.0) -> LambdaContext:
    return LambdaContext("req", "fn", time.monotonic() + timeout)


async def test_concurrent_requests_with_one_new_identity_make_one_call(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:token_handler\nevent_format: token\n")
    checks = [asyncio.ensure_future(pipe.check(request(headers=token("block-x")))) for _ in range(20)]
    assert await asyncio.to_thread(handlers.STARTED.wait, 5)  # the one call is inside the handler
    assert not any(check.done() for check in checks)
    handlers.RELEASE.set()
    decisions = await asyncio.gather(*checks)
    assert all(d.allowed for d in decisions)
    assert len(handlers.CALLS) == 1


async def test_a_cancelled_waiter_leaves_the_call_to_the_others(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:token_handler\nevent_format: token\n")
    first = asyncio.ensure_future(pipe.check(request(headers=token("block-x"))))
    second = asyncio.ensure_future(pipe.check(request(headers=token("block-x"))))
    assert await asyncio.to_thread(handlers.STARTED.wait, 5)
    first.cancel()  # Envoy gave up on the first Check
    handlers.RELEASE.set()
    assert (await second).allowed
    assert first.cancelled()
    assert (await pipe.check(request(headers=token("block-x")))).allowed  # and the result was cached
    assert len(handlers.CALLS) == 1


async def test_a_blocked_handler_does_not_delay_a_check_on_another_route(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:blocking_handler\nidentity_sources: [$request.header.x-t]\n")
    slow = asyncio.ensure_future(pipe.check(request("/slow", headers={"x-t": "a"})))
    assert await asyncio.to_thread(handlers.STARTED.wait, 5)
    # Answered while the slow handler is still held (it is released only below): no wall-clock bound to flake.
    other = await asyncio.wait_for(pipe.check(request("/fast", headers={"x-t": "b"})), 5)
    assert other.allowed and not slow.done() and not handlers.RELEASE.is_set()
    handlers.RELEASE.set()
    assert (await slow).allowed


async def test_sync_handlers_run_on_the_invokers_own_threads() -> None:
    seen: list[str] = []

    def handler(event: dict[str, object], ctx: LambdaContext) -> dict[str, object]:
        seen.append(threading.current_thread().name)
        return {}

    invoker = LocalInvoker(handler, 2, name="auth")
    await invoker.start()
    try:
        await invoker.invoke({}, context(), 1.0)
    finally:
        await invoker.stop()
    assert seen[0].startswith("authz-auth") and seen[0] != threading.main_thread().name


async def test_a_call_while_every_thread_is_busy_is_refused_at_once_as_overloaded() -> None:
    """Not queued behind a held thread (each queued call would wait its whole timeout, holding its event)."""
    invoker = local_invoker(f"{HANDLERS}:sleepy_handler", 1)
    await invoker.start()
    try:
        held = asyncio.ensure_future(invoker.invoke({}, context(), 5.0))
        assert await asyncio.to_thread(handlers.STARTED.wait, 5)
        with pytest.raises(HandlerFailed) as caught:
            await asyncio.wait_for(invoker.invoke({}, context(30), 30), 5)  # far less than its own timeout
        assert caught.value.kind == "overloaded"
        handlers.RELEASE.set()
        await held
        assert len(handlers.CALLS) == 1  # the refused call never ran, now that the pool is drained
        await invoker.invoke({}, context(), 5.0)  # a thread is free again
        assert len(handlers.CALLS) == 2
    finally:
        await invoker.stop()


async def test_a_thread_held_past_its_timeout_keeps_its_slot_until_the_handler_returns() -> None:
    invoker = LocalInvoker(handlers.sleepy_handler, 1)
    await invoker.start()
    try:
        with pytest.raises(HandlerFailed) as timed_out:
            await invoker.invoke({}, context(0.1), 0.1)
        assert timed_out.value.kind == "timeout" and not handlers.RELEASE.is_set()  # the handler still runs
        with pytest.raises(HandlerFailed) as refused:
            await invoker.invoke({}, context(5), 5.0)
        assert refused.value.kind == "overloaded"  # its waiter gave up, its thread did not
        handlers.RELEASE.set()
        assert invoker._pool is not None
        await invoker._pool.submit(lambda: None)  # runs once the held thread is back: drained
        await invoker.invoke({}, context(), 5.0)
        assert len(handlers.CALLS) == 2
    finally:
        await invoker.stop()


async def test_what_a_handler_raises_maps_to_api_gateways_outcomes() -> None:
    def unauthorized(event: object, ctx: object) -> None:
        raise Exception("Unauthorized")

    async def broken(event: object, ctx: object) -> None:
        raise ValueError("secret detail")

    with pytest.raises(HandlerUnauthorized):
        await LocalInvoker(unauthorized, 1).invoke({}, context(), 1.0)
    with pytest.raises(HandlerFailed) as caught:
        await LocalInvoker(broken, 1).invoke({}, context(), 1.0)
    assert caught.value.kind == "exception:ValueError"
    assert "secret" not in str(caught.value)


async def test_an_async_handler_that_overruns_is_a_timeout() -> None:
    never = asyncio.Event()

    async def slow(event: object, ctx: object) -> None:
        await never.wait()

    with pytest.raises(HandlerFailed) as caught:
        await LocalInvoker(slow, 1).invoke({}, context(0.05), 0.05)
    assert caught.value.kind == "timeout"


async def test_an_async_handler_that_swallows_its_cancellation_is_still_a_timeout() -> None:
    """`wait_for` would wait for such a handler and return its late answer; the call must end at its timeout."""
    invoker = local_invoker(f"{HANDLERS}:stubborn_handler", 1)
    call = asyncio.ensure_future(invoker.invoke({"methodArn": f"{ARN}/GET/pets"}, context(0.05), 0.05))
    try:
        done, _ = await asyncio.wait({call}, timeout=5)  # a bound, far above the 0.05 s timeout
        assert call in done, "the call waited for a handler that ignored its cancellation"
        assert not handlers.FINISHED.is_set()  # answered while the handler still ran
        with pytest.raises(HandlerFailed) as caught:
            await call
        assert caught.value.kind == "timeout"
    finally:
        handlers.RELEASE.set()
    assert await asyncio.to_thread(handlers.FINISHED.wait, 5)  # the late answer came, and went nowhere


async def test_waiters_for_a_handler_that_swallows_its_timeout_get_the_500_at_the_timeout(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:stubborn_handler\nevent_format: token\ntimeout: 0.1\n")
    checks = [asyncio.ensure_future(pipe.check(request(headers=token("t")))) for _ in range(3)]
    try:
        done, _ = await asyncio.wait(checks, timeout=5)
        assert len(done) == 3, "single-flight waiters waited for a handler that ignored its cancellation"
        assert not handlers.FINISHED.is_set()
        for check in checks:
            assert (check.result().status, check.result().reason) == (500, "AuthorizerConfigurationException")
    finally:
        handlers.RELEASE.set()
    assert await asyncio.to_thread(handlers.FINISHED.wait, 5)
    assert len(handlers.CALLS) == 1
    again = await pipe.check(request(headers=token("t")))  # the late allow was not cached: the handler is asked
    assert len(handlers.CALLS) == 2 and again.status == 500


async def test_an_async_handler_calling_sys_exit_is_a_failure_not_a_stop() -> None:
    async def leaves(event: object, ctx: object) -> None:
        raise SystemExit(1)

    with pytest.raises(HandlerFailed) as caught:
        await LocalInvoker(leaves, 1).invoke({}, context(), 1.0)
    assert caught.value.kind == "exception:SystemExit"


async def test_a_stopped_invoker_answers_unavailable() -> None:
    invoker = local_invoker(f"{HANDLERS}:token_handler", 1)
    await invoker.start()
    await invoker.stop()
    with pytest.raises(HandlerFailed) as caught:
        await invoker.invoke({"authorizationToken": "allow-a", "methodArn": "x"}, context(), 1.0)
    assert caught.value.kind == "unavailable"
    assert handlers.CALLS == []
