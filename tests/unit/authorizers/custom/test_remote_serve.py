"""A real `authz-sidecar lambda-serve` process (the handler module on PYTHONPATH, 127.0.0.1, a free port) behind
the remote invoker: every outcome, the timeout, health, the --max-concurrency refusal, a SIGTERM drain that
lets the call in flight finish and exits 0, usage errors (exit 2), and logs that never hold the event."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.authorizers.custom.invoke import HandlerFailed, HandlerUnauthorized
from sidecar.authorizers.custom.remote import SERVICE_NAME

from .remote_testkit import LambdaServe, context, event, remote, run_lambda_serve

SECRET = "tok-SECRET-7f3a"


async def test_lambda_serve_answers_every_outcome_and_never_logs_the_event(tmp_path: Path) -> None:
    server = await LambdaServe(tmp_path).start()
    try:
        async with remote(server.port, name="served") as invoker:
            allowed = await invoker.invoke(event("allow"), context("req-7"), 2.0)
            assert allowed["principalId"] == "alice"
            assert (allowed["context"]["functionName"], allowed["context"]["requestId"]) == ("auth-fn", "req-7")
            denied = await invoker.invoke(event("deny"), context(), 2.0)
            assert denied["policyDocument"]["Statement"][0]["Effect"] == "Deny"
            with pytest.raises(HandlerUnauthorized):
                await invoker.invoke(event("unauthorized"), context(), 2.0)
            with pytest.raises(HandlerFailed) as crashed:
                await invoker.invoke(event(f"crash:{SECRET}"), context(), 2.0)
            assert crashed.value.kind == "exception:KeyError"
            with pytest.raises(HandlerFailed) as malformed:
                await invoker.invoke(event("malformed"), context(), 2.0)
            assert malformed.value.kind == "malformed"
            started = time.monotonic()
            with pytest.raises(HandlerFailed) as slow:  # a sync handler blocked in its thread
                await invoker.invoke(event("block"), context(timeout=0.5), 0.5)
            assert slow.value.kind == "timeout"
            assert time.monotonic() - started < 2.0
            assert (await invoker.invoke(event("allow"), context(), 2.0))["principalId"] == "alice"  # still serving
        server.terminate()
        # The blocked handler's thread never returns by itself: the exit does not wait for it past the drain.
        assert await server.wait() == 0
    finally:
        server.kill()
    log = server.log()
    assert "KeyError" in log and "serving remote_handlers:handler" in log and "stopped" in log
    assert SECRET not in log and "authorizationToken" not in log and "methodArn" not in log


async def test_sigterm_drains_a_call_in_flight_then_exits_0(tmp_path: Path) -> None:
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    server = await LambdaServe(tmp_path, "remote_handlers:handler", "--max-concurrency", "1").start()
    try:
        async with (
            remote(server.port, name="drained") as invoker,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            call = asyncio.create_task(invoker.invoke(event(f"fifo:{fifo}"), context(timeout=20), 20))
            # Opening the pipe's writing end returns once the handler has opened its reading end: it is running.
            writer = await asyncio.wait_for(asyncio.to_thread(open, fifo, "w"), 20)
            with pytest.raises(HandlerFailed) as refused:  # --max-concurrency 1: the second call is refused at once
                await invoker.invoke(event("allow"), context(), 5)
            assert refused.value.kind == "overloaded"
            server.terminate()
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING  # draining began
            with writer:
                writer.write("finished-in-drain")
            answered = await asyncio.wait_for(call, 20)
        assert answered["principalId"] == "finished-in-drain"
        assert await server.wait() == 0
    finally:
        server.kill()
    assert "draining" in server.log()


def test_a_handler_that_cannot_be_imported_exits_2(tmp_path: Path) -> None:
    for handler, said in (
        ("no_such_module:handler", "no module named 'no_such_module'"),
        ("remote_handlers:missing", "has no attribute 'missing'"),
        ("remote_handlers", "expected 'package.module:function'"),
        ("remote_handlers:RELEASE", "is not callable"),
    ):
        run = run_lambda_serve(handler, "--listen", "127.0.0.1:0")
        assert run.returncode == 2, (handler, run.stderr)
        assert "error: handler" in run.stderr and said in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def test_app_dir_is_where_the_handler_is_imported_from(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.py").write_text("value = 1\n")
    run = run_lambda_serve("elsewhere:handler", "--listen", "127.0.0.1:0", "--app-dir", str(tmp_path))
    assert run.returncode == 2
    assert "'elsewhere' has no attribute 'handler'" in run.stderr  # found the module there, not the attribute


def test_a_taken_port_exits_2_with_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = run_lambda_serve("remote_handlers:handler", "--listen", f"127.0.0.1:{port}")
    assert run.returncode == 2, run.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr


def test_bad_limits_exit_2() -> None:
    run = run_lambda_serve("remote_handlers:handler", "--max-concurrency", "0")
    assert run.returncode == 2
    assert "--max-concurrency must be at least 1" in run.stderr


async def test_a_handler_still_blocked_after_the_drain_is_reported_and_the_exit_does_not_wait(tmp_path: Path) -> None:
    fifo = tmp_path / "never"
    os.mkfifo(fifo)
    server = await LambdaServe(tmp_path, "remote_handlers:handler", "--grace-period", "0.2").start()
    try:
        async with remote(server.port, name="stuck") as invoker:
            call = asyncio.create_task(invoker.invoke(event(f"fifo:{fifo}"), context(timeout=20), 20))
            writer = await asyncio.wait_for(asyncio.to_thread(open, fifo, "w"), 20)  # the handler is running
            server.terminate()
            assert await server.wait() == 0  # not held by the handler thread, which stays blocked
            writer.close()
            call.cancel()
    finally:
        server.kill()
    assert "still blocked" in server.log()
