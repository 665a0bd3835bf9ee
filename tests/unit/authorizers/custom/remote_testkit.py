"""What the remote tests share: an in-process `lambda-serve` (`LambdaHost` over the handlers of
`remote_handlers`) and a real one (`LambdaServe`, a child process), a client `RemoteInvoker` with a clock the
test moves, a black-hole server (accepts TCP and never speaks: a hung host), a scripted service (answers what
the test says), and the Lambda context a call carries."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._proto.custom_pb2 import AuthorizeRequest, AuthorizeResponse
from sidecar.authorizers.custom.context import LambdaContext
from sidecar.authorizers.custom.invoke import LocalInvoker
from sidecar.authorizers.custom.remote import METHOD, SERVICE_NAME, RemoteInvoker
from sidecar.harness.envoy import free_port
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


Answer = Callable[[str, Any], Awaitable[AuthorizeResponse]]
"""How a scripted service answers a call: given the event's token and the call's gRPC context."""


@asynccontextmanager
async def scripted_service(answer: Answer) -> AsyncIterator[int]:
    """A `CustomAuthorizer` service on 127.0.0.1 that answers each call as `answer` says (what `lambda-serve`
    never sends: a response of the test's making, a gRPC error, a call held until the test lets it go)."""

    async def authorize(request: AuthorizeRequest, context: Any) -> AuthorizeResponse:
        return await answer(str(json.loads(request.event_json).get("authorizationToken")), context)

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        authorize,
        request_deserializer=AuthorizeRequest.FromString,
        response_serializer=AuthorizeResponse.SerializeToString,
    )
    service, method = METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


def calls(name: str, outcome: str) -> float:
    """`authz_remote_authorizer_calls_total{authorizer=name, outcome}` as exposed (after folding local counts)."""
    flush()
    value = REMOTE_AUTHORIZER_CALLS.labels(name, outcome)._value.get()
    return float(value)


def breaker_gauge(name: str) -> float:
    return float(AUTHORIZER_BREAKER_OPEN.labels(name)._value.get())


HANDLERS_DIR = Path(remote_handlers.__file__).resolve().parent
"""On the child's PYTHONPATH, so `remote_handlers:handler` imports there as a deployed handler module would."""


class LambdaServe:
    """A real `authz-sidecar lambda-serve` child process on 127.0.0.1 (its output in a file)."""

    def __init__(self, tmp: Path, handler: str = "remote_handlers:handler", *args: str) -> None:
        self.port = free_port()
        self.log_path = tmp / f"lambda-serve-{self.port}.log"
        self.argv = [
            sys.executable, "-m", "sidecar", "--log-level", "DEBUG", "lambda-serve", handler,
            "--listen", f"127.0.0.1:{self.port}", *args,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> LambdaServe:
        """Start it and wait until its health service answers SERVING."""
        with open(self.log_path, "wb") as log:
            env = {**os.environ, "PYTHONPATH": str(HANDLERS_DIR)}
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            try:  # waits for the port to open (wait_for_ready), not a fixed time
                reply = await stub.Check(request, timeout=20, wait_for_ready=True)
            except grpc.aio.AioRpcError:
                self.kill()
                raise RuntimeError(f"lambda-serve did not start:\n{self.log()}") from None
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        return self

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float = 20) -> int:
        """The exit code, once it has exited (within `timeout` seconds)."""
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def run_lambda_serve(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`authz-sidecar lambda-serve ARGS` expected to exit by itself (a usage error), within 30 s."""
    argv = [sys.executable, "-m", "sidecar", "lambda-serve", *args]
    env = {**os.environ, "PYTHONPATH": str(HANDLERS_DIR)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd, env=env)
