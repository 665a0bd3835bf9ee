"""Run a coroutine inline until it first suspends, and hand the rest to a Task only if it does.

Both listeners written on asyncio.Protocol (`transports/http/`, `transports/grpc_lean/`) start every Check with
`coro.send(None)` in the protocol callback that parsed it: a warm Check finishes without ever suspending, so it
costs no Task, no loop turn, and its answer leaves in the same write as its neighbours'. A Check that does suspend
(a Redis read, a JWKS fetch) continues in a Task through `Resume`.

A coroutine started inline runs outside any Task, so code on the Check path must not need `asyncio.current_task()`
before its first suspension (`asyncio.timeout` does): `in_task` runs such code in a Task of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Resume(Generic[T]):
    """Awaitable that continues a coroutine which already ran up to its first suspension.

    The future the coroutine yielded is handed to the awaiting Task through this object, which then forwards
    every send/throw to the coroutine exactly as `await` would have.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, T], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        pending = self._first
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    result: T = stop.value
                    return result
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    result = stop.value
                    return result


async def in_task(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` inside a Task: directly when already in one, else in a new Task (a coroutine started
    inline has none, and `asyncio.timeout` raises RuntimeError without one)."""
    if asyncio.current_task() is not None:
        return await awaitable
    return await asyncio.ensure_future(awaitable)
