"""Readiness follows the keys: a JWT authorizer whose JWKS has not arrived keeps /readyz at 503 and gRPC health at
NOT_SERVING; once a real JWKS server on 127.0.0.1 answers, both flip to ready."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config import load_config
from sidecar.harness.envoy import free_port
from sidecar.serve.server import Sidecar
from tests.unit.serve.test_server import serving_within


class HeldJwks:
    """A JWKS endpoint that holds every response until `release()`; `requested` is set once a request arrived."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()
        released, requested = threading.Event(), threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requested.set()
                released.wait(5)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.released, self.requested = released, requested
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def held_jwks() -> Iterator[HeldJwks]:
    server = HeldJwks()
    yield server
    server.release()
    server.server.shutdown()
    server.server.server_close()


@pytest.mark.parametrize("engine", ["lean", "grpcio"])
async def test_not_ready_until_keys_load(held_jwks: HeldJwks, tmp_path: Path, engine: str) -> None:
    admin, grpc_port = free_port(), free_port()
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""\
listen: {{grpc: "127.0.0.1:{grpc_port}", admin: "127.0.0.1:{admin}"}}
server: {{watch_config: false, grpc_engine: {engine}}}
authorizers:
  corp: {{type: jwt, issuer: "https://idp.example.com", audiences: [api], jwks_uri: "{held_jwks.url}"}}
routes:
  - {{match: "ANY /{{proxy+}}", authorizer: corp}}
"""
    )
    sidecar = Sidecar(load_config(path), path)
    await asyncio.wait_for(sidecar.start(), 5)  # serving starts without waiting for keys
    async with httpx.AsyncClient() as client:
        readyz = await client.get(f"http://127.0.0.1:{admin}/readyz")
        assert readyz.status_code == 503
        assert readyz.json()["waiting_for"] == ["corp"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            held_jwks.release()
            if engine == "lean":  # no Watch on the lean listener: ask Check until it flips
                assert await serving_within(health, 10)
            else:
                async for update in health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10):
                    if update.status == health_pb2.HealthCheckResponse.SERVING:
                        break
        readyz = await client.get(f"http://127.0.0.1:{admin}/readyz")
        assert readyz.status_code == 200
        assert readyz.json()["ready"] is True
    await sidecar.drain_and_stop()
