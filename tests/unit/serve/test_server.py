"""The server in-process on loopback: Check, health, reflection, port exclusivity, reload and drain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar.config import load_config
from sidecar.harness.envoy import free_port
from sidecar.serve.server import BindError, Sidecar

CONFIG = """\
listen: {{grpc: "127.0.0.1:{grpc}", admin: "127.0.0.1:{admin}"}}
server: {{watch_config: false, grace_period: 2, grpc_engine: {engine}}}
authorizers:
  open: {{type: none}}
  closed: {{type: deny}}
routes:
  - {{match: "GET /open", authorizer: {open_route}}}
"""


def write_config(path: Path, grpc_port: int, admin_port: int, open_route: str = "open", engine: str = "lean") -> None:
    path.write_text(CONFIG.format(grpc=grpc_port, admin=admin_port, open_route=open_route, engine=engine))


@pytest.fixture(params=["lean", "grpcio"])
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Sidecar, Path]]:
    path = tmp_path / "config.yaml"
    write_config(path, free_port(), free_port(), engine=request.param)
    sidecar = Sidecar(load_config(path), path)
    await sidecar.start()
    await sidecar.runtime.wait_ready(5)
    try:
        yield sidecar, path
    finally:
        await sidecar.drain_and_stop()


async def check(port: int, path: str) -> CheckResponse:
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", path
    http.headers[":authority"] = "example.com"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=CheckRequest.SerializeToString,
            response_deserializer=CheckResponse.FromString,
        )
        response: CheckResponse = await call(request, timeout=5)
        return response


async def test_check_over_grpc(running: tuple[Sidecar, Path]) -> None:
    sidecar, _ = running
    allowed = await check(sidecar.grpc_port, "/open")
    assert allowed.status.code == 0
    denied = await check(sidecar.grpc_port, "/elsewhere")
    assert denied.denied_response.status.code == 403
    assert json.loads(denied.denied_response.body)["reason"] == "MissingAuthenticationToken"


async def test_health_and_reflection(running: tuple[Sidecar, Path]) -> None:
    sidecar, _ = running
    if sidecar.runtime.config.server.grpc_engine == "lean":
        await lean_health(sidecar)
        return
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        # SERVING is set by the readiness watcher; Watch streams until it arrives (no sleeping).
        async for reply in health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5):
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
        reply = await health.Check(health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        names: set[str] = set()
        async for response in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            names |= {s.name for s in response.list_services_response.service}
    assert {"envoy.service.auth.v3.Authorization", "grpc.health.v1.Health"} <= names


SERVICE = "envoy.service.auth.v3.Authorization"


async def serving_within(health: health_pb2_grpc.HealthStub, seconds: float) -> bool:
    """Ask Health/Check until it says SERVING (readiness flips in a background task), for at most `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=seconds)
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return True
    return False


async def lean_health(sidecar: Sidecar) -> None:
    """The lean listener answers Health/Check (what Kubernetes' gRPC probes and Envoy's health checks call);
    Watch and reflection are grpcio-only."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert await serving_within(health, 5)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="other.Service"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as watch:
            async for _ in health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5):
                pass
        assert watch.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_second_instance_on_same_port_fails_clearly(running: tuple[Sidecar, Path], tmp_path: Path) -> None:
    sidecar, _ = running
    other = tmp_path / "other.yaml"
    write_config(other, sidecar.grpc_port, free_port())
    second = Sidecar(load_config(other), other)
    with pytest.raises(BindError, match=f"cannot listen on 127.0.0.1:{sidecar.grpc_port}"):
        await second.start()
    await second.drain_and_stop()
    assert (await check(sidecar.grpc_port, "/open")).status.code == 0  # the first one is unharmed


async def test_reload_good_then_bad(running: tuple[Sidecar, Path]) -> None:
    sidecar, path = running
    first = sidecar.runtime.version
    grpc_port, admin_port = sidecar.grpc_port, sidecar.admin.port if sidecar.admin else 0
    write_config(path, grpc_port, admin_port, open_route="closed")
    assert await sidecar.reload("test") is True
    assert sidecar.runtime.version != first
    assert (await check(grpc_port, "/open")).denied_response.status.code == 403
    second = sidecar.runtime.version
    path.write_text(path.read_text() + "  - {match: 'GET /x', authorizer: missing}\n")
    assert await sidecar.reload("test") is False
    assert sidecar.runtime.version == second  # the old config keeps serving
    assert "routes[1].authorizer" in sidecar.state.last_reload_error
    assert (await check(grpc_port, "/open")).denied_response.status.code == 403


async def test_drain_flips_health(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, free_port(), free_port())
    sidecar = Sidecar(load_config(path), path)
    await sidecar.start()
    await sidecar.drain_and_stop()
    assert sidecar.state.draining
    readyz = sidecar._readyz()
    assert readyz.status == 503
    assert json.loads(readyz.body)["draining"] is True
    with pytest.raises(grpc.aio.AioRpcError):
        await check(sidecar.grpc_port, "/open")


async def test_drain_delay_keeps_deciding_while_not_serving(tmp_path: Path) -> None:
    """`server.drain_delay`: after SIGTERM, health says NOT_SERVING at once (Envoy's health check takes the endpoint
    out) but new Checks are still decided until the delay ends; only then is the port closed. Without it, Envoy's
    Checks between the SIGTERM and its next health check were refused (503s in the soak's rolling restart)."""
    path = tmp_path / "config.yaml"
    write_config(path, free_port(), free_port())
    path.write_text(path.read_text().replace("grace_period: 2,", "grace_period: 2, drain_delay: 3,"))
    sidecar = Sidecar(load_config(path), path)
    await sidecar.start()
    await sidecar.runtime.wait_ready(5)
    draining = asyncio.create_task(sidecar.drain_and_stop())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = asyncio.get_running_loop().time() + 2
        while (await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)).status == SERVING:
            assert asyncio.get_running_loop().time() < deadline, "health never said NOT_SERVING"
    assert (await check(sidecar.grpc_port, "/open")).status.code == 0  # a new connection, still decided
    assert not draining.done()
    await asyncio.wait_for(draining, 10)
    with pytest.raises(grpc.aio.AioRpcError):
        await check(sidecar.grpc_port, "/open")


SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_reload_notices_a_secret_only_change(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    grpc_port, admin_port = free_port(), free_port()
    base = CONFIG.format(grpc=grpc_port, admin=admin_port, open_route="open", engine="lean")
    path.write_text(base + "cache: {redis: {url: 'redis://127.0.0.1:1/0', signing_key: first}}\n")
    sidecar = Sidecar(load_config(path), path)
    await sidecar.start()
    try:
        public, internal = sidecar.runtime.version, sidecar.runtime.cache_version
        path.write_text(base + "cache: {redis: {url: 'redis://127.0.0.1:1/0', signing_key: second}}\n")
        assert await sidecar.reload("test")
        assert sidecar.runtime.cache_version != internal  # cached decisions keyed by the old key are dropped
        assert sidecar.runtime.version == public  # the published fingerprint reveals nothing about the secret
        assert sidecar.state.reloads_ok == 1
    finally:
        await sidecar.drain_and_stop()


def test_jwks_file_change_is_a_change(tmp_path: Path) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from sidecar.runtime import compile_runtime

    def jwks_with_new_key() -> str:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
        return json.dumps({"keys": [{**jwk, "kid": "k", "alg": "RS256", "use": "sig"}]})

    jwks = tmp_path / "jwks.json"
    jwks.write_text(jwks_with_new_key())
    path = tmp_path / "c.yaml"
    path.write_text(
        "authorizers:\n  corp: {type: jwt, issuer: 'https://idp.example.com', audiences: [a], "
        f"jwks_file: '{jwks}'}}\nroutes:\n  - {{match: 'GET /a', authorizer: corp}}\n"
    )
    first = compile_runtime(load_config(path))
    assert jwks in first.watched  # the file watch reloads on a key rotation
    jwks.write_text(jwks_with_new_key())
    second = compile_runtime(load_config(path))
    assert (second.version, second.cache_version) != (first.version, first.cache_version)


async def test_drain_folds_the_last_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the periodic fold an hour away, only the fold at drain can move the Check into prometheus_client."""
    from sidecar import metrics
    from sidecar.serve import server as servermod

    monkeypatch.setattr(servermod, "_METRICS_FOLD", 3600.0)
    metrics.flush()
    allowed = metrics.DECISIONS.labels("allow", "Anonymous", "grpc")
    before = allowed._value.get()
    path = tmp_path / "config.yaml"
    write_config(path, free_port(), free_port())
    sidecar = Sidecar(load_config(path), path)
    await sidecar.start()
    assert (await check(sidecar.grpc_port, "/open")).status.code == 0
    assert allowed._value.get() == before  # counted locally, not folded yet
    await sidecar.drain_and_stop()
    assert allowed._value.get() == before + 1


async def test_a_failing_metrics_fold_does_not_stop_the_folding(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from sidecar.serve import server as servermod

    calls: list[int] = []
    second = asyncio.Event()

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        second.set()

    monkeypatch.setattr(servermod, "flush_metrics", flaky)
    monkeypatch.setattr(servermod, "_METRICS_FOLD", 0.01)
    task = asyncio.create_task(servermod._fold_metrics())
    try:
        await asyncio.wait_for(second.wait(), 5)
    finally:
        task.cancel()
    assert len(calls) >= 2
