"""`HandlerThreads`, the pool sync handlers run on: bounded, in order, a cancelled queued call never runs, results
and exceptions reach their futures however many finish at once, `submit_now` refuses while every thread is busy,
and shutdown lets queued calls finish or cancels them."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sidecar.authorizers.custom.threads import HandlerThreads

WAIT = 5.0
"""Seconds any wait in these tests may take before it fails (never reached when the pool works)."""


def _blocker(started: threading.Event, release: threading.Event, value: object) -> object:
    started.set()
    if not release.wait(WAIT):
        raise RuntimeError("never released")
    return value


async def _held(pool: HandlerThreads) -> tuple[asyncio.Future[object], threading.Event]:
    """A call holding one of the pool's threads (it returns "first" once the event it is given is set)."""
    started, release = threading.Event(), threading.Event()
    first = pool.submit(_blocker, started, release, "first")
    assert await asyncio.to_thread(started.wait, WAIT)
    return first, release


async def test_many_calls_at_once_each_get_their_own_result() -> None:
    pool = HandlerThreads(4, "authz-test")
    results = await asyncio.gather(*(pool.submit(lambda i=i: i * i) for i in range(500)))
    assert results == [i * i for i in range(500)]
    assert len(pool._threads) <= 4
    pool.shutdown()


async def test_the_pool_never_starts_more_than_its_limit_and_queued_calls_run_in_order() -> None:
    pool = HandlerThreads(2, "authz-test")
    release = threading.Event()
    held = [threading.Event(), threading.Event()]
    blocked = [pool.submit(_blocker, held[i], release, f"held-{i}") for i in range(2)]
    for event in held:
        assert await asyncio.to_thread(event.wait, WAIT)
    order: list[int] = []
    queued = [pool.submit(order.append, i) for i in range(5)]
    assert len(pool._threads) == 2 and not any(q.done() for q in queued)
    release.set()
    assert await asyncio.gather(*blocked) == ["held-0", "held-1"]
    await asyncio.gather(*queued)
    assert sorted(order) == list(range(5)) and len(pool._threads) == 2
    assert {t.name for t in pool._threads} == {"authz-test_0", "authz-test_1"}
    assert all(t.daemon for t in pool._threads)  # a handler that never returns cannot hold the process
    pool.shutdown()


async def test_a_call_cancelled_while_queued_never_runs() -> None:
    pool = HandlerThreads(1, "authz-test")
    first, release = await _held(pool)
    ran: list[str] = []
    late = pool.submit(ran.append, "late")
    late.cancel()  # its timeout passed while the only thread was busy
    after = pool.submit(ran.append, "after")
    release.set()
    assert await first == "first"
    await after
    assert ran == ["after"]
    pool.shutdown()


async def test_an_exception_reaches_the_awaiting_call() -> None:
    pool = HandlerThreads(1, "authz-test")

    def broken() -> None:
        raise ValueError("inside the handler")

    with pytest.raises(ValueError, match="inside the handler"):
        await pool.submit(broken)
    assert await pool.submit(lambda: "still serving") == "still serving"
    pool.shutdown()


async def test_shutdown_lets_queued_calls_finish_then_ends_the_threads() -> None:
    pool = HandlerThreads(1, "authz-test")
    first, release = await _held(pool)
    queued = pool.submit(lambda: "queued")
    pool.shutdown()
    release.set()
    assert await first == "first" and await queued == "queued"
    for thread in pool._threads:
        await asyncio.to_thread(thread.join, WAIT)
        assert not thread.is_alive()


async def test_submit_now_refuses_while_every_thread_is_busy_until_one_returns() -> None:
    """A call whose waiter gave up (its timeout) still holds its thread: the slot is free once the thread is."""
    pool = HandlerThreads(1, "authz-test")
    first, release = await _held(pool)
    assert pool.submit_now(lambda: "refused") is None
    first.cancel()  # the waiter gave up; the handler still runs
    assert pool.submit_now(lambda: "refused") is None
    release.set()
    assert await pool.submit(lambda: "queued") == "queued"  # runs once the held thread is back
    now = pool.submit_now(lambda: "now")
    assert now is not None and await now == "now"
    pool.shutdown()


async def test_shutdown_can_cancel_the_calls_still_queued() -> None:
    pool = HandlerThreads(1, "authz-test")
    first, release = await _held(pool)
    ran: list[str] = []
    queued = pool.submit(ran.append, "queued")
    pool.shutdown(cancel_queued=True)
    assert queued.cancelled()
    release.set()
    assert await first == "first"
    for thread in pool._threads:
        await asyncio.to_thread(thread.join, WAIT)
        assert not thread.is_alive()
    assert ran == []  # the queued call never ran, even once the thread was free


def test_a_result_for_a_closed_loop_is_dropped() -> None:
    """A call whose loop closed before it finished (a runtime dropped at exit) is dropped, not raised on the
    pool's thread."""
    pool = HandlerThreads(1, "authz-test")
    started, release = threading.Event(), threading.Event()
    loop = asyncio.new_event_loop()

    async def submit() -> asyncio.Future[object]:
        return pool.submit(_blocker, started, release, "late")

    loop.run_until_complete(submit())
    assert started.wait(WAIT)
    loop.close()
    release.set()
    pool.shutdown()
    (thread,) = pool._threads
    thread.join(WAIT)
    assert not thread.is_alive() and pool._finished == {}
