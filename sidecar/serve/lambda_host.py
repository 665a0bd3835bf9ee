"""`authz-sidecar lambda-serve package.module:function`: an unchanged Lambda authorizer handler served as a
remote custom authorizer (`proto/authz_sidecar/custom/v1/custom.proto`), for sidecars whose `type: lambda`
authorizer names it with `target: grpc://host:port`.

The handler runs exactly as it runs in the sidecar's own process: the same `LocalInvoker` (sync handlers on a
bounded thread pool, async ones on the loop), the same outcomes, sent back in-band. The host adds what a
service needs: a concurrency limit (`--max-concurrency`: a call beyond it is answered OVERLOADED at once, never
queued, and so is one while every handler thread is still held, by a sync handler stuck past a call's timeout
included), the standard gRPC health service (SERVING while the handler is loaded and the host is not draining),
and graceful shutdown (SIGTERM/SIGINT: NOT_SERVING, no new calls, calls in flight finish within
`--grace-period`, exit 0). A bad import string or a taken port is a clear error and exit 2.

Logs name the call (`aws_request_id`) and the outcome, a handler's exception by its type only: never the event,
which holds the caller's token and headers, nor an exception's message, which handlers fill with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from .._proto.custom_pb2 import AuthorizeRequest, AuthorizeResponse, HandlerError
from ..authorizers.custom.context import LambdaContext
from ..authorizers.custom.invoke import HandlerFailed, HandlerImportError, HandlerUnauthorized, Invoker, local_invoker
from ..authorizers.custom.remote import MAX_MESSAGE_BYTES, METHOD, SERVICE_NAME, failure_to_error

__all__ = ["HostOptions", "LambdaHost", "run"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_USAGE = 0, 2
MAX_BUDGET = 30.0
"""Seconds a call may run when it names no budget and has no deadline (a client other than the sidecar)."""
REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between log lines about calls refused for --max-concurrency (an overload would otherwise flood)."""
EXIT_JOIN = 1.0
"""Seconds the exit waits for the handler's idle pool threads to end before it stops waiting for any."""


_OVERLOADED = AuthorizeResponse(error=HandlerError(kind=HandlerError.OVERLOADED))
"""The answer to a call refused for --max-concurrency, or because every handler thread is still held (one stuck
past its timeout keeps its thread): at once, never queued."""


@dataclass(frozen=True, slots=True)
class HostOptions:
    """What `lambda-serve`'s flags say."""

    handler: str
    """`package.module:function`, resolved once at start-up."""
    listen: str = "127.0.0.1:9300"
    max_concurrency: int = 16
    """The sidecar's own default for `max_concurrency`, so one sidecar alone is never refused by default."""
    grace_period: float = 5.0


class BindError(RuntimeError):
    """The listen address could not be bound (taken, or not an address of this host)."""


class LambdaHost:
    """The `CustomAuthorizer` service over one `Invoker`, with health, on a grpc.aio server."""

    def __init__(self, invoker: Invoker, max_concurrency: int) -> None:
        self.invoker = invoker
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.refused = 0
        """Calls refused for --max-concurrency since the last line that said so."""
        self._next_refusal_log = float("-inf")
        self.port = 0
        self.health = HealthServicer()
        self._server: grpc.aio.Server | None = None

    async def start(self, address: str) -> int:
        """Bind `address`, start the handler's invoker and serve; returns the bound port (useful with port 0).
        Raises `BindError` if the address is taken: ports are never shared by accident (no SO_REUSEPORT)."""
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        handler = grpc.unary_unary_rpc_method_handler(
            self.authorize,
            request_deserializer=AuthorizeRequest.FromString,
            response_serializer=AuthorizeResponse.SerializeToString,
        )
        service, method = METHOD.strip("/").split("/")
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            port: int = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise BindError(f"cannot listen on {address}: address in use or unavailable ({exc})") from None
        if port == 0:
            raise BindError(f"cannot listen on {address}: address in use or unavailable")
        await self.invoker.start()
        await server.start()
        self._server, self.port = server, port
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return port

    async def stop(self, grace: float) -> None:
        """NOT_SERVING, no new calls, calls in flight get `grace` seconds; then release the handler's threads."""
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        await self.invoker.stop()

    async def authorize(self, request: AuthorizeRequest, context: Any) -> AuthorizeResponse:
        """One call: the handler's response JSON, or what it raised as a `HandlerError`."""
        if self.in_flight >= self.max_concurrency:
            self._refused()
            return _OVERLOADED
        try:
            event = json.loads(request.event_json)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
            event = None
        if not isinstance(event, dict):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event_json is not a JSON object")
        budget = _budget(request, context.time_remaining())
        lambda_context = _context(request, budget)
        self.in_flight += 1
        started = time.monotonic()
        try:
            response = await self.invoker.invoke(event, lambda_context, budget)
        except (HandlerUnauthorized, HandlerFailed) as failure:
            if isinstance(failure, HandlerFailed) and failure.kind == "overloaded":  # every thread held: say so
                self._refused()
                return _OVERLOADED
            return self._failed(lambda_context.aws_request_id, failure)
        finally:
            self.in_flight -= 1
        try:
            text = json.dumps(response, separators=(",", ":"), ensure_ascii=False)
        except Exception:  # not JSON (TypeError, ValueError), nested too deep (RecursionError): in-band, as any
            return self._failed(lambda_context.aws_request_id, HandlerFailed("malformed"))
        log.debug("call %s: answered in %.1f ms", lambda_context.aws_request_id, (time.monotonic() - started) * 1000)
        return AuthorizeResponse(response_json=text)

    def _refused(self) -> None:
        """Log a refusal for --max-concurrency: the first, then at most one line per interval with the count."""
        self.refused += 1
        now = time.monotonic()
        if now >= self._next_refusal_log:
            log.warning(
                "refused %d call(s): %d calls in flight or handler threads held (--max-concurrency)",
                self.refused,
                self.max_concurrency,
            )
            self.refused, self._next_refusal_log = 0, now + REFUSAL_LOG_INTERVAL

    def _failed(self, request_id: str, failure: HandlerUnauthorized | HandlerFailed) -> AuthorizeResponse:
        if isinstance(failure, HandlerFailed):
            log.warning("call %s: handler failed: %s", request_id, failure.kind)
        else:
            log.debug("call %s: handler said Unauthorized", request_id)
        return AuthorizeResponse(error=failure_to_error(failure))


def _budget(request: AuthorizeRequest, remaining: float | None) -> float:
    """The handler's time: the budget the sidecar sent, cut to the call's deadline (whichever ends first)."""
    budget = request.timeout_ms / 1000 if request.timeout_ms else MAX_BUDGET
    if remaining is not None:
        budget = min(budget, remaining)
    return max(0.0, budget)


def _context(request: AuthorizeRequest, budget: float) -> LambdaContext:
    """Lambda's context object from the call, counting down from now (never from the other host's clock)."""
    return LambdaContext(
        aws_request_id=request.aws_request_id or str(uuid.uuid4()),
        function_name=request.function_name or "lambda",
        deadline=time.monotonic() + budget,
        function_version=request.function_version or "$LATEST",
        invoked_function_arn=request.invoked_function_arn,
        memory_limit_in_mb=request.memory_limit_in_mb or 128,
        log_group_name=request.log_group_name,
        log_stream_name=request.log_stream_name,
    )


async def serve(options: HostOptions, invoker: Invoker) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns the exit code."""
    host = LambdaHost(invoker, options.max_concurrency)
    try:
        port = await host.start(options.listen)
    except BindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        await invoker.stop()
        return EXIT_USAGE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving %s on %s (port %d, max %d calls)", options.handler, options.listen, port, options.max_concurrency)
    await stop.wait()
    log.info("draining: finishing calls in flight (grace %.1fs)", options.grace_period)
    await host.stop(options.grace_period)
    log.info("stopped")
    return EXIT_OK


def run(options: HostOptions) -> int:
    """The `lambda-serve` command: resolve the handler (exit 2 if it cannot be), serve, exit 0 after a drain."""
    if options.max_concurrency < 1 or options.grace_period < 0:
        print("error: --max-concurrency must be at least 1 and --grace-period not negative", file=sys.stderr)
        return EXIT_USAGE
    try:
        invoker = local_invoker(options.handler, options.max_concurrency)
    except HandlerImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import uvloop

    code = uvloop.run(serve(options, invoker))
    _exit_past_stuck_handlers(code)
    return code


def _holds_exit(thread: threading.Thread) -> bool:
    """A thread the exit waits for, or one of the handler threads (daemons, named `authz-...` by the invoker's
    pool: the exit would not wait for them, but one still alive after the drain is a stuck handler to report)."""
    return thread is not threading.main_thread() and (not thread.daemon or thread.name.startswith("authz-"))


def _exit_past_stuck_handlers(code: int) -> None:
    """A sync handler still blocked after the grace period holds a pool thread the interpreter would wait for at
    exit, for ever if it never returns: the drain is over, so exit now rather than hang the shutdown. Idle
    threads of the stopped pool end at once; only one that stays past `EXIT_JOIN` means a stuck handler."""
    deadline = time.monotonic() + EXIT_JOIN
    for thread in threading.enumerate():
        if _holds_exit(thread):
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in threading.enumerate() if _holds_exit(t) and t.is_alive()]
    if stuck:
        log.warning("exiting with %d handler thread(s) still blocked (their calls are answered already)", len(stuck))
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
