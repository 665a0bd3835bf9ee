"""HTTP mode's network origin: `policy.vpce_header` is believed only when a peer in `http.trusted_peers` asked
(`Request.trusted_peer`), through a real listener on 127.0.0.1 and the real pipeline of a private API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.runtime import RuntimeHolder, compile_runtime

from .client import Conn, get
from .conftest import FakePipeline, Serve
from .test_request_mapping import _build

ALLOW = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "*"}


def _private_api(tmp_path: Path) -> Pipeline:
    for name in ("resource.json", "endpoint.json"):
        (tmp_path / name).write_text(json.dumps({"Version": "2012-10-17", "Statement": [ALLOW]}))
    text = (
        "authorizers:\n  open: {type: none}\nroutes:\n  - {match: 'GET /pets', authorizer: open}\n"
        f"resource_policy: {tmp_path / 'resource.json'}\n"
        "policy:\n  private_api: true\n  vpce_header: X-Amzn-Vpce-Id\n"
        f"  vpc_endpoint_policies: {{vpce-aaa: {tmp_path / 'endpoint.json'}}}\n"
    )
    return Pipeline(RuntimeHolder(compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))))


async def _status(serve: Serve, pipeline: Pipeline, *headers: str, **settings: object) -> int:
    server = await serve(pipeline, **settings)
    conn = await Conn.open(server.port)
    await conn.send(get("/pets", "Host: api", *headers))
    status = (await conn.response()).status
    await conn.close()
    return status


async def test_a_trusted_peers_header_names_the_endpoint(serve: Serve, tmp_path: Path) -> None:
    pipeline = _private_api(tmp_path)
    assert await _status(serve, pipeline, "X-Amzn-Vpce-Id: vpce-aaa") == 200  # 127.0.0.1 is trusted by default
    assert await _status(serve, pipeline, "X-Amzn-Vpce-Id: vpce-zzz") == 403  # an endpoint with no policy
    assert await _status(serve, pipeline) == 403  # through no endpoint: a private API refuses it


async def test_the_same_header_from_an_untrusted_peer_is_ignored(serve: Serve, tmp_path: Path) -> None:
    pipeline = _private_api(tmp_path)
    status = await _status(serve, pipeline, "X-Amzn-Vpce-Id: vpce-aaa", trusted_peers=("10.0.0.0/8",))
    assert status == 403  # the client (or a proxy we do not trust) cannot claim an endpoint


async def test_the_listener_marks_whether_its_peer_is_trusted(serve: Serve, fake: FakePipeline) -> None:
    for peers, trusted in ((("127.0.0.1",), True), (("10.0.0.0/8",), False)):
        server = await serve(trusted_peers=peers)
        conn = await Conn.open(server.port)
        await conn.send(get("/x", "X-Amzn-Vpce-Id: vpce-aaa"))
        assert (await conn.response()).status == 200
        assert fake.seen[-1].trusted_peer is trusted
        await conn.close()


@pytest.mark.parametrize("flavor", ["envoy", "nginx", "traefik"])
@pytest.mark.parametrize("trusted", [True, False])
def test_every_flavor_carries_the_trust_to_the_request(flavor: str, trusted: bool) -> None:
    headers = {"x-original-uri": "/a", "x-forwarded-uri": "/a", "x-amzn-vpce-id": "vpce-aaa"}
    request = _build(flavor, "/a", headers, trusted=trusted)
    assert request is not None and request.trusted_peer is trusted
    assert not request.origin  # HTTP mode has no Envoy word on the origin: only a trusted peer's header
