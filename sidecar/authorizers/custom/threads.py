"""`HandlerThreads`: the bounded pool of threads a sync Lambda handler runs on, with a cheap way back to the loop.

Why not `ThreadPoolExecutor` with `loop.run_in_executor`: there every call costs a `concurrent.futures.Future`
chained to an asyncio one, the executor's work item and idle semaphore, and one wake-up of the event loop per
result. A handler call is short and there are many at once under load, so that machinery was most of what an
uncached in-process call cost (docs/performance.md, custom authorizers). Here a call is one asyncio future and
one `SimpleQueue` item, and results that finish while the loop is busy reach it in one wake-up.

What the executor did and this keeps: at most `limit` threads, started as calls need them (a call waits in the
queue when all are busy), calls in the order they came, a queued call whose future was cancelled (its timeout
passed) never runs, and `shutdown` lets the calls already queued finish before the threads end, or cancels them.
The threads are daemons: one held by a handler that never returns must not keep the process from exiting (its call
was answered already, with a timeout).

What it adds: `submit_now`, which refuses a call (None) while every thread is busy instead of queueing it. A call
counts as busy until its thread is done with it, not until its waiter gives up: a handler that outlives its
timeout still holds its thread, and queueing behind it would only make each new call wait its whole timeout.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["HandlerThreads"]

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]
_Done = tuple["asyncio.Future[Any]", Any, BaseException | None]
_STOP = None


class HandlerThreads:
    """Up to `limit` threads named `authz-<name>_<n>` calling sync functions for an event loop."""

    def __init__(self, limit: int, name: str) -> None:
        self.limit = limit
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        """Threads waiting for a job that no submitted job has claimed yet."""
        self._busy = 0
        """Jobs submitted that no thread is done with yet (running, or queued)."""
        self._finished: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
        """Results waiting for their loop's next wake-up; a loop is in here while one is scheduled."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Call `fn(*args)` on a thread; the future (of the running loop) gets its result or its exception."""
        future = self._submit(fn, args, wait=True)
        assert future is not None
        return future

    def submit_now(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any] | None:
        """`submit`, or None when every thread is busy (the call would have to wait for one)."""
        return self._submit(fn, args, wait=False)

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], wait: bool) -> asyncio.Future[Any] | None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not wait and self._busy >= self.limit:
                return None
            self._busy += 1
            if self._idle:
                self._idle -= 1
                start = False
            else:
                start = len(self._threads) < self.limit
                if start:
                    thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True)
                    self._threads.append(thread)
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        if start:
            thread.start()
        return future

    def shutdown(self, cancel_queued: bool = False) -> None:
        """End every thread once the jobs queued before this have run (a thread in a call finishes it first). With
        `cancel_queued` (on the loop that submitted them) those jobs are cancelled instead, and never run."""
        if cancel_queued:
            self._cancel_queued()
        with self._lock:
            count = len(self._threads)
        for _ in range(count):
            self._jobs.put(_STOP)

    def _cancel_queued(self) -> None:
        stops = 0
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:  # an earlier shutdown's: put back below, or a thread would never end
                stops += 1
                continue
            job[1].cancel()
            self._now_idle(claimed=False)
        for _ in range(stops):
            self._jobs.put(_STOP)

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is _STOP:
                return
            loop, future, fn, args = job
            if future.cancelled():  # its timeout passed while it waited for a thread
                self._now_idle()
                continue
            try:
                outcome: tuple[Any, BaseException | None] = (fn(*args), None)
            except BaseException as exc:  # handed to the awaiting call, never raised on this thread
                outcome = (None, exc)
            # The slot is free before the result is handed over: a caller woken by it may submit again at once.
            self._now_idle()
            self._deliver(loop, future, outcome)

    def _now_idle(self, claimed: bool = True) -> None:
        """A job is done with (run, or skipped cancelled): its slot is free, and so is its thread if it `claimed`
        one (a job cancelled by `shutdown` while queued claimed none)."""
        with self._lock:
            self._busy -= 1
            if claimed:
                self._idle += 1

    def _deliver(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]
    ) -> None:
        with self._lock:
            waiting = self._finished.get(loop)
            if waiting is not None:
                waiting.append((future, *outcome))
                return
            self._finished[loop] = [(future, *outcome)]
        try:
            loop.call_soon_threadsafe(self._settle, loop)
        except RuntimeError:  # the loop is closed: nobody waits for the result any more
            with self._lock:
                self._finished.pop(loop, None)

    def _settle(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`: hand every result that arrived since the last wake-up to its future."""
        with self._lock:
            finished = self._finished.pop(loop, [])
        for future, result, error in finished:
            if future.done():  # cancelled (a timeout, or the caller gave up)
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
