"""What the remote tests share: an in-process `lambda-serve` (`LambdaHost` over the handlers of
`remote_handlers`), a client `RemoteInvoker` with a clock the test moves, a black-hole server (accepts TCP and
never speaks: a hung host), and the Lambda context a call carries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sidecar.authorizers.custom.context import LambdaContext
from sidecar.authorizers.custom.invoke import LocalInvoker
from sidecar.authorizers.custom.remote import RemoteInvoker
from sidecar.kv.breaker import Breaker
from sidecar.metrics import AUTHORIZER_BREAKER_OPEN, REMOTE_AUTHORIZER_CALLS, flush
from sidecar.serve.lambda_host import LambdaHost

from . import remote_handlers


class Clock:
    """A monotonic clock the test advances (the breaker's cooldowns pass without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(token: str) -> dict[str, Any]:
    """A TOKEN event as API Gateway sends it."""
    return {
        "type": "TOKEN",
        "authorizationToken": token,
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:api/prod/GET/pets",
    }


def context(request_id: str = "req-1", timeout: float = 1.0) -> LambdaContext:
    return LambdaContext(aws_request_id=request_id, function_name="auth-fn", deadline=time.monotonic() + timeout)


@asynccontextmanager
async def lambda_host(
    handler: Any = remote_handlers.handler, max_concurrency: int = 4, port: int = 0
) -> AsyncIterator[LambdaHost]:
    """A `LambdaHost` on 127.0.0.1 (a free port unless one is given), stopped on exit."""
    remote_handlers.RELEASE.clear()
    remote_handlers.STARTED.clear()
    remote_handlers.CALLS.clear()
    host = LambdaHost(LocalInvoker(handler, max_concurrency), max_concurrency)
    await host.start(f"127.0.0.1:{port}")
    try:
        yield host
    finally:
        remote_handlers.RELEASE.set()  # no handler thread stays blocked past the test
        await host.stop(0)


@asynccontextmanager
async def remote(
    port: int,
    *,
    name: str = "remote",
    max_concurrency: int = 8,
    threshold: int = 3,
    cooldown: float = 5.0,
    clock: Clock | None = None,
) -> AsyncIterator[RemoteInvoker]:
    """A started `RemoteInvoker` for 127.0.0.1:`port`, its breaker on `clock`; stopped on exit."""
    breaker = Breaker(
        threshold=threshold,
        cooldown=cooldown,
        name=name,
        while_open="failing fast",
        gauge=AUTHORIZER_BREAKER_OPEN.labels(name),
    )
    invoker = RemoteInvoker(
        f"127.0.0.1:{port}", name=name, max_concurrency=max_concurrency, breaker=breaker, clock=clock or Clock()
    )
    await invoker.start()
    try:
        yield invoker
    finally:
        await invoker.stop()


@asynccontextmanager
async def black_hole(port: int = 0) -> AsyncIterator[int]:
    """A TCP server that accepts and never answers (a hung host): every call to it waits for its deadline."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", port)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


def calls(name: str, outcome: str) -> float:
    """`authz_remote_authorizer_calls_total{authorizer=name, outcome}` as exposed (after folding local counts)."""
    flush()
    value = REMOTE_AUTHORIZER_CALLS.labels(name, outcome)._value.get()
    return float(value)


def breaker_gauge(name: str) -> float:
    return float(AUTHORIZER_BREAKER_OPEN.labels(name)._value.get())
