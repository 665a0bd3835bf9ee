"""How a Lambda handler is called: the `Invoker` interface every execution mode implements, the two outcomes
other than a response (`HandlerUnauthorized`, `HandlerFailed`), and the in-process `LocalInvoker`.

The authorizer sees only `Invoker`: it builds the event and the context, awaits `invoke`, and judges the raw
response (`responses.py`). `local_invoker` runs a handler named by an import string, resolved once when the
config loads (as uvicorn resolves its app string): sync handlers in a bounded thread pool of their own, so a
handler that blocks delays only calls to itself, async handlers on the event loop. The remote invoker
(`remote.py`, `target: grpc://`) sends the same event and returns the same response over `proto/`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any, Protocol

from ...inline import Resume
from .context import LambdaContext
from .threads import HandlerThreads

__all__ = [
    "HandlerFailed",
    "HandlerImportError",
    "HandlerUnauthorized",
    "Invoker",
    "LocalInvoker",
    "local_invoker",
    "resolve_handler",
]

UNAUTHORIZED_MESSAGE = "Unauthorized"
"""What a handler raises (`raise Exception("Unauthorized")`) to refuse the caller with a 401, API Gateway's way."""


class HandlerUnauthorized(Exception):
    """The handler said Unauthorized (raise Exception('Unauthorized')): 401."""


class HandlerFailed(Exception):
    """Any other failure: 500 AuthorizerConfigurationException.

    `kind` says which, for logs and metrics (never the token or the event): `timeout`, `exception:<TypeName>`,
    `malformed`, `overloaded` or `unavailable`."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class HandlerImportError(ValueError):
    """A handler import string that does not name a callable; a config error (the settings report it at the
    line of `handler:`)."""


class Invoker(Protocol):
    """Calls a handler with one event. Raises `HandlerUnauthorized` or `HandlerFailed`, never anything else."""

    async def invoke(self, event: dict[str, Any], context: LambdaContext, timeout: float) -> Any:  # noqa: ASYNC109
        """The handler's raw response object (judged by `responses.py`), within `timeout` seconds."""
        ...

    async def start(self) -> None:
        """Acquire what calls need (threads, channels). Called once before serving."""
        ...

    async def stop(self) -> None:
        """Release them. Called when a newer config replaces this one, or at shutdown."""
        ...


Handler = Callable[[dict[str, Any], LambdaContext], Any]


def resolve_handler(ref: str) -> Handler:
    """The callable `package.module:function` names (`function` may be dotted: `module:App.handler`).

    Raises `HandlerImportError` with what went wrong; importing runs the module's top level, as Lambda's init
    phase does, so its own exceptions are reported too."""
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerImportError(f"handler {ref!r}: expected 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise HandlerImportError(f"handler {ref!r}: no module named {exc.name!r}") from exc
        raise HandlerImportError(f"handler {ref!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the module's own top level failed: still a config error, at handler:
        raise HandlerImportError(f"handler {ref!r}: importing {module_name!r} raised {type(exc).__name__}") from exc
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError as exc:
            raise HandlerImportError(f"handler {ref!r}: {module_name!r} has no attribute {attr_path!r}") from exc
    if not callable(target):
        raise HandlerImportError(f"handler {ref!r}: {type(target).__name__} is not callable")
    return target  # type: ignore[no-any-return]


def handler_failure(exc: BaseException) -> HandlerUnauthorized | HandlerFailed:
    """What an exception a handler raised means: `Unauthorized` (by its message, as API Gateway reads it) or a
    failure named by the exception's type."""
    if str(exc) == UNAUTHORIZED_MESSAGE:
        return HandlerUnauthorized(UNAUTHORIZED_MESSAGE)
    return HandlerFailed(f"exception:{type(exc).__name__}")


class LocalInvoker:
    """Runs an in-process handler: a sync one on `HandlerThreads`, at most `max_concurrency` threads owned by this
    invoker (a call while every one is busy fails at once, `overloaded`), an async one on the loop, as a Task of
    its own.

    A sync handler that outlives its timeout keeps its thread until it returns (Python cannot stop a thread):
    the call is already answered 500, and its thread counts as busy until then, so such handlers cannot take more
    threads, nor make new calls queue behind them for their whole timeout. An async one is cancelled; if it goes
    on regardless, its answer is never read."""

    def __init__(self, handler: Handler, max_concurrency: int, name: str = "lambda") -> None:
        self.handler = handler
        self.max_concurrency = max_concurrency
        self.is_async = inspect.iscoroutinefunction(handler)
        self._name = name
        self._pool: HandlerThreads | None = None
        self._stopped = False
        self._abandoned: set[asyncio.Future[Any]] = set()
        """Async calls past their timeout that have not ended yet (`_abandon`)."""

    async def start(self) -> None:
        self._stopped = False
        if not self.is_async and self._pool is None:
            self._pool = HandlerThreads(self.max_concurrency, f"authz-{self._name}")

    async def stop(self) -> None:
        """Release the threads once the calls already running return (they are not cut short); a call still queued
        is cancelled, so a replaced config never runs its handler later; a call after this fails `unavailable`, as
        one to a stopped function would."""
        self._stopped = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(cancel_queued=True)

    async def invoke(self, event: dict[str, Any], context: LambdaContext, timeout: float) -> Any:  # noqa: ASYNC109
        try:
            if self.is_async:
                return await self._on_loop(event, context, timeout)
            return await self._on_thread(event, context, timeout)
        except (HandlerUnauthorized, HandlerFailed):
            raise
        except TimeoutError:
            raise HandlerFailed("timeout") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise handler_failure(exc) from None

    async def _on_loop(self, event: dict[str, Any], context: LambdaContext, timeout: float) -> Any:  # noqa: ASYNC109
        """An async handler's call, run at once up to its first `await`: one that answers without waiting is done
        there. One that waits goes on as a Task of its own, waited for at most `timeout`. Past it the Task is
        cancelled and left behind, its result never read: a handler that catches `CancelledError` and answers later
        is still a timeout, answered at the timeout (`wait_for` would wait for it and return its late answer)."""
        if self._stopped:
            raise HandlerFailed("unavailable")
        coro = self._call(event, context)
        try:
            first = coro.send(None)  # started eagerly, as Python 3.12's eager tasks do
        except StopIteration as answered:
            # Answered without waiting for anything: no Task, no timer, and the Check can finish in the same turn
            # of the loop, so the transport still answers it with the others it read (one write for all).
            return answered.value
        task = asyncio.ensure_future(Resume(coro, first))
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:  # the caller gave up: so does the handler
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            raise HandlerFailed("timeout")
        return task.result()

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        """Cancel a call nobody waits for any more, and keep it referenced until it ends (the loop holds Tasks
        weakly); whatever it ends with is read there, so nothing is logged as never retrieved."""
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()

    async def _call(self, event: dict[str, Any], context: LambdaContext) -> Any:
        try:
            return await self.handler(event, context)
        except SystemExit:  # out of a task it would stop the event loop, and the sidecar with it
            raise HandlerFailed("exception:SystemExit") from None

    async def _on_thread(self, event: dict[str, Any], context: LambdaContext, timeout: float) -> Any:  # noqa: ASYNC109
        """A sync handler's call on the pool, timed by a timer that cancels it (`TimeoutError`): `wait_for` of a
        coroutine would wrap each call in a Task of its own. With every thread busy it is refused at once."""
        if self._stopped:
            raise HandlerFailed("unavailable")
        if self._pool is None:
            await self.start()  # first use without `start` (a `check`, a test): the pool starts here
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        call = self._pool.submit_now(_run_sync, self.handler, event, context)
        if call is None:
            raise HandlerFailed("overloaded")
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            call.cancel()  # a call still queued never runs; one running keeps its thread until it returns

        timer = loop.call_later(timeout, expire)
        try:
            return await call
        except asyncio.CancelledError:
            if expired:
                raise TimeoutError from None
            raise
        finally:
            timer.cancel()


def _run_sync(handler: Handler, event: dict[str, Any], context: LambdaContext) -> Any:
    """The handler's call on a pool thread. `SystemExit` and other non-`Exception`s become a failure here, on
    the thread, so that none of them reaches the event loop."""
    try:
        return handler(event, context)
    except Exception:
        raise
    except BaseException as exc:
        raise HandlerFailed(f"exception:{type(exc).__name__}") from None


def local_invoker(handler_ref: str, max_concurrency: int) -> Invoker:
    """The in-process invoker for `handler_ref` (`package.module:function`), resolved once, now."""
    return LocalInvoker(resolve_handler(handler_ref), max_concurrency)
