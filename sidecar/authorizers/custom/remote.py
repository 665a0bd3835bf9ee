"""The remote invoker (`target: grpc://host:port`): the same event and the same response as an in-process handler,
over our own protocol (`proto/authz_sidecar/custom/v1/custom.proto`), to a service such as `authz-sidecar
lambda-serve` that runs the handler.

What a remote adds, and this module bounds, is waiting: each call has the authorizer's `timeout` as its gRPC
deadline; at most `max_concurrency` calls are in flight, and one more fails at once (`overloaded`) instead of
queueing behind a slow service; and a circuit breaker (`sidecar.kv.Breaker`, as Redis users have) opens after
`breaker.threshold` consecutive failures of the service itself (unreachable, past the deadline, a gRPC error), so
that while it is down every call fails at once (`unavailable`: a 500 deny, never an allow) rather than after a
timeout. After the cooldown one call probes, waiting for the connection within its deadline; its success
closes the breaker. What the handler itself raises travels in-band (`AuthorizeResponse.error`) and is no
failure of the service: it maps to `HandlerUnauthorized` and `HandlerFailed` exactly as `LocalInvoker` raises
them, so the authorizer cannot tell the two apart.

The wire mapping both ends share (method name, the handler outcome <-> `HandlerError` codes) lives here too:
`sidecar/serve/lambda_host.py`, the service side, imports it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from ..._proto.custom_pb2 import AuthorizeRequest, AuthorizeResponse, HandlerError
from ...kv.breaker import CLOSED_CALL, Breaker
from ...metrics import AUTHORIZER_BREAKER_OPEN, REMOTE_AUTHORIZER_CALLS, Tally, tally
from .context import LambdaContext
from .invoke import UNAUTHORIZED_MESSAGE, HandlerFailed, HandlerUnauthorized, Invoker

if TYPE_CHECKING:
    from ..base import BuildContext
    from .settings import LambdaSettings

__all__ = [
    "METHOD",
    "SERVICE_NAME",
    "RemoteInvoker",
    "TargetError",
    "failure_to_error",
    "parse_target",
    "remote_invoker",
]

log = logging.getLogger(__name__)

SERVICE_NAME = "authz_sidecar.custom.v1.CustomAuthorizer"
"""The service's full name: what the health service reports and `METHOD` is built from."""
METHOD = f"/{SERVICE_NAME}/Authorize"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest message either side accepts (gRPC's own default): a response past it is refused by gRPC before it is
parsed (RESOURCE_EXHAUSTED, `malformed`); the authorizer applies its own, smaller response limit after that."""
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 2000),
)
"""gRPC takes `min_reconnect_backoff_ms` as the least time a connection attempt may take (its default is 20 s):
2 s, so a slow handshake still connects while a host that accepts and never answers costs a call its deadline.
Reconnects start 0.1 s apart and grow to `RemoteInvoker.max_backoff`."""
MAX_BACKOFF = 1.0
"""The longest wait between reconnect attempts (gRPC's own ceiling is 120 s), for timeouts of 2 s and more."""
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
"""An exception type name as a service may report it; anything else is not passed on (it reaches logs and
metrics)."""

_ERROR_KINDS = {
    HandlerError.HANDLER_ERROR: "exception",
    HandlerError.TIMEOUT: "timeout",
    HandlerError.MALFORMED: "malformed",
    HandlerError.OVERLOADED: "overloaded",
}
_KIND_ERRORS = {kind: code for code, kind in _ERROR_KINDS.items()}

_SERVICE_FAILURES = {
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "malformed",
}
"""gRPC statuses that say something more precise than `unavailable` (every other one)."""


class TargetError(ValueError):
    """A `target:` that is not `grpc://host:port`."""


def parse_target(target: str) -> str:
    """`grpc://host:port` -> `host:port` (what grpc dials); raises `TargetError`."""
    scheme, sep, address = target.partition("://")
    host, colon, port = address.rpartition(":")
    if sep != "://" or scheme != "grpc" or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"target {target!r}: expected grpc://host:port")
    if "/" in address or "@" in address:
        raise TargetError(f"target {target!r}: expected grpc://host:port (no path, no user)")
    return address


def failure_to_error(failure: HandlerUnauthorized | HandlerFailed) -> HandlerError:
    """What a service answers for a handler that raised (the inverse of `error_to_failure`)."""
    if isinstance(failure, HandlerUnauthorized):
        return HandlerError(kind=HandlerError.UNAUTHORIZED)
    kind, _, detail = failure.kind.partition(":")
    if kind == "exception":
        return HandlerError(kind=HandlerError.HANDLER_ERROR, exception_type=detail)
    return HandlerError(kind=_KIND_ERRORS.get(kind, HandlerError.HANDLER_ERROR))


def error_to_failure(error: HandlerError) -> HandlerUnauthorized | HandlerFailed:
    """What a service's `HandlerError` means to the authorizer, exactly as `LocalInvoker` would have raised it."""
    if error.kind == HandlerError.UNAUTHORIZED:
        return HandlerUnauthorized(UNAUTHORIZED_MESSAGE)
    kind = _ERROR_KINDS.get(error.kind, "malformed")  # KIND_UNSPECIFIED or a newer code: not something we know
    if kind == "exception":
        name = error.exception_type
        return HandlerFailed(f"exception:{name if _TYPE_NAME.fullmatch(name) else 'Exception'}")
    return HandlerFailed(kind)


def encode_request(event: dict[str, Any], context: LambdaContext, timeout: float) -> AuthorizeRequest:
    """The call for one invocation; raises `HandlerFailed("malformed")` for an event that is not JSON."""
    try:
        event_json = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        raise HandlerFailed("malformed") from None
    return AuthorizeRequest(
        event_json=event_json,
        aws_request_id=context.aws_request_id,
        function_name=context.function_name,
        function_version=context.function_version,
        invoked_function_arn=context.invoked_function_arn,
        memory_limit_in_mb=context.memory_limit_in_mb,
        log_group_name=context.log_group_name,
        log_stream_name=context.log_stream_name,
        timeout_ms=max(1, round(timeout * 1000)),
    )


def decode_response(reply: AuthorizeResponse) -> Any:
    """The handler's response object, or the exception it raised (`HandlerUnauthorized`, `HandlerFailed`)."""
    outcome = reply.WhichOneof("outcome")
    if outcome == "response_json":
        try:
            return json.loads(reply.response_json)
        except Exception:  # not JSON, or nested too deep to decode (RecursionError): not an answer either way
            raise HandlerFailed("malformed") from None
    if outcome == "error":
        raise error_to_failure(reply.error)
    raise HandlerFailed("malformed")  # neither: not an answer of this protocol


class RemoteInvoker:
    """Calls a remote `CustomAuthorizer` service. Its channel is created by `start()` (or the first call) and
    connects lazily; `stop()` lets calls in flight finish within `grace` seconds.

    Everything here runs on the event loop, so the in-flight count needs no lock."""

    def __init__(
        self,
        address: str,
        *,
        name: str,
        max_concurrency: int,
        breaker: Breaker,
        grace: float = 1.0,
        max_backoff: float = MAX_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.name = name
        self.max_concurrency = max_concurrency
        self.breaker = breaker
        self.grace = grace
        self.max_backoff = max_backoff
        """The longest wait between reconnect attempts: at most half the timeout, so that the probe after a
        cooldown, which waits for the connection within its timeout, sees an attempt whatever gRPC's backoff had
        grown to (with gRPC's own ceiling it would fail until the backoff, not the service, allowed)."""
        self.clock = clock
        """The breaker's clock (monotonic; tests move their own)."""
        self.in_flight = 0
        self._stopped = False
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._counts: dict[str, Tally] = {}

    async def start(self) -> None:
        self._stopped = False
        self._open()
        self.breaker.gauge.set(1 if self.breaker.is_open else 0)  # a new config's breaker starts closed

    async def stop(self) -> None:
        """Close the channel once the calls in flight end (within `grace`); a call after this fails `unavailable`
        (a Check still on a replaced config), as `LocalInvoker`'s does, rather than open a channel nobody closes."""
        self._stopped = True
        channel, self._channel, self._call = self._channel, None, None
        if channel is not None:
            await channel.close(self.grace)

    def _open(self) -> Any:
        if self._channel is None:
            options = [*CHANNEL_OPTIONS, ("grpc.max_reconnect_backoff_ms", round(self.max_backoff * 1000))]
            self._channel = grpc.aio.insecure_channel(self.address, options=options)
            self._call = self._channel.unary_unary(
                METHOD,
                request_serializer=AuthorizeRequest.SerializeToString,
                response_deserializer=AuthorizeResponse.FromString,
            )
        return self._call

    async def invoke(self, event: dict[str, Any], context: LambdaContext, timeout: float) -> Any:  # noqa: ASYNC109
        if self._stopped:
            self._count("stopped")
            raise HandlerFailed("unavailable")
        if self.in_flight >= self.max_concurrency:
            self._count("shed")
            raise HandlerFailed("overloaded")
        request = encode_request(event, context, timeout)  # before `admit`: a probe, once let in, must be settled
        breaker = self.breaker
        ticket = breaker.admit(self.clock())
        if ticket is None:
            self._count("breaker_open")
            raise HandlerFailed("unavailable")
        try:
            reply = await self._send(request, timeout, probe=ticket != CLOSED_CALL, ticket=ticket)
            return self._answered(reply, ticket)
        finally:
            # Whatever ended the call (a verdict given above, a cancelled Check, an answer nothing could judge),
            # a probe leaves the half-open slot free: the breaker can never stay open for good.
            breaker.abandon(ticket)

    async def _send(self, request: AuthorizeRequest, timeout: float, *, probe: bool, ticket: int) -> Any:  # noqa: ASYNC109
        """The call itself; a service that did not answer is settled here (`_service_failed`)."""
        call = self._open()
        self.in_flight += 1
        try:
            # The probe waits for the channel to (re)connect within its deadline; other calls fail at once when
            # it is down, rather than each waiting a timeout.
            return await call(request, timeout=timeout, wait_for_ready=probe)
        except grpc.aio.AioRpcError as exc:
            raise self._service_failed(exc.code(), ticket) from None
        except asyncio.CancelledError:  # the Check was abandoned: no verdict on the service
            raise
        except Exception:  # the channel itself failed (closed under the call by a stop): the service is unusable
            raise self._service_failed(grpc.StatusCode.UNAVAILABLE, ticket) from None
        finally:
            self.in_flight -= 1

    def _service_failed(self, code: grpc.StatusCode, ticket: int) -> HandlerFailed:
        """The service did not answer: counted against it (the breaker), unless it only refused a response too
        large to accept, which says nothing about its health."""
        kind = _SERVICE_FAILURES.get(code, "unavailable")
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.breaker.success(ticket)
        else:
            self.breaker.failure(self.clock(), ticket)
        self._count(kind)
        log.debug("authorizer %s: %s answered %s", self.name, self.address, code.name)
        return HandlerFailed(kind)

    def _answered(self, reply: AuthorizeResponse, ticket: int) -> Any:
        """The service answered: a handler that ran past its time is a failure of the service as the breaker
        sees it (waiting is what the breaker is for); any other answer, an error or a malformed one included, is
        a success."""
        try:
            response = decode_response(reply)
        except HandlerUnauthorized:
            self.breaker.success(ticket)
            self._count("unauthorized")
            raise
        except HandlerFailed as failure:
            if failure.kind == "timeout":
                self.breaker.failure(self.clock(), ticket)
            else:
                self.breaker.success(ticket)
            self._count(failure.kind.partition(":")[0])
            raise
        self.breaker.success(ticket)
        self._count("ok")
        return response

    def _count(self, outcome: str) -> None:
        count = self._counts.get(outcome)
        if count is None:
            count = self._counts[outcome] = tally(REMOTE_AUTHORIZER_CALLS, self.name, outcome)
        count.inc()


def remote_invoker(settings: LambdaSettings, ctx: BuildContext) -> Invoker:
    """The invoker for a `type: lambda` authorizer with `target: grpc://host:port` (its `timeout` is passed to
    each `invoke`; `breaker.threshold`/`cooldown` configure the breaker)."""
    if settings.target is None:
        raise TargetError("a remote invoker needs target: grpc://host:port")
    breaker = Breaker(
        threshold=settings.breaker.threshold,
        cooldown=settings.breaker.cooldown,
        name=f"authorizer {ctx.name} ({settings.target})",
        while_open="answering 500 at once until it answers",
        gauge=AUTHORIZER_BREAKER_OPEN.labels(ctx.name),
    )
    return RemoteInvoker(
        parse_target(settings.target),
        name=ctx.name,
        max_concurrency=settings.max_concurrency,
        breaker=breaker,
        grace=settings.timeout,
        max_backoff=min(MAX_BACKOFF, max(0.1, settings.timeout / 2)),
    )
