"""What `check --explain` shows of a SigV4 InvalidSignature (the canonical request and string to sign the sidecar
computed) is for `check` only: a served request's deny body, its decision log line and the log carry none of it.

The server is the real one minus its process: the compiled config, the lean gRPC transport and the HTTP transport
on 127.0.0.1, a decision logger writing to memory; the request is signed by botocore with the wrong secret.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from sidecar.authorizers.sigv4.verifier import MSG_BAD_SIGNATURE
from sidecar.config import load_config
from sidecar.explanation import text_lines
from sidecar.logs import FIELDS, DecisionLogger
from sidecar.offline import evaluate, parse_http_request
from sidecar.pipeline import Pipeline
from sidecar.runtime import RuntimeHolder, compile_runtime
from sidecar.settings import HttpModeSettings
from sidecar.transports import load
from sidecar.transports.ext_authz import to_request
from sidecar.transports.http import start_http_server
from tests.unit.authorizers.jwt.jwt_testkit import Issuer
from tests.unit.test_check_explain import ALICE_KEY, ALICE_SECRET, write_config

HOST = "api.example.test"


class RecordingSigner(SigV4Auth):
    creq = ""

    def canonical_request(self, request: AWSRequest) -> str:
        self.creq = super().canonical_request(request)
        return self.creq


def wrongly_signed() -> tuple[bytes, str]:
    """A raw request signed now with a secret that is not the credential's, and botocore's canonical request."""
    request = AWSRequest(method="GET", url=f"https://{HOST}/iam/reports?year=2027", headers={"X-Custom": "v"})
    signer = RecordingSigner(Credentials(ALICE_KEY, "not-" + ALICE_SECRET), "execute-api", "us-east-1")
    signer.add_auth(request)
    lines = ["GET /iam/reports?year=2027 HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items() if name.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), signer.creq


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """`check`'s explanation tests' config: SigV4 callers on `ANY /iam/{proxy+}` (and JWT and open routes)."""
    return write_config(tmp_path, Issuer.default())


@pytest.fixture
async def served(config: Path) -> AsyncIterator[tuple[Pipeline, io.StringIO, int, int]]:
    """A pipeline logging decisions to memory behind the lean gRPC and the HTTP transport: (pipeline, log, gRPC
    port, HTTP port)."""
    settings = load_config(config)
    runtime = compile_runtime(settings)
    await runtime.start()
    stream = io.StringIO()
    pipeline = Pipeline(RuntimeHolder(runtime), decision_log=DecisionLogger(stream))
    grpc_transport = await load("lean")("127.0.0.1:0", pipeline, settings)
    http = await start_http_server("127.0.0.1", 0, pipeline, HttpModeSettings())
    try:
        yield pipeline, stream, grpc_transport.port, http.port
    finally:
        await grpc_transport.shutdown(1)
        http.close()
        await http.wait_closed()
        await runtime.stop()


def computed_texts(creq: str) -> list[str]:
    """Pieces of the explanation that must never leave `check`: AWS's titles and the canonical request's lines
    that no deny message contains (the payload hash, the signed header lines)."""
    return [
        "Canonical String",
        "String-to-Sign",
        "x-amz-date:",
        "x-custom:v",
        "host;x-amz-date;x-custom",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        creq,
    ]


async def test_check_explains_the_signature_that_serving_keeps_to_itself(
    config: Path, served: tuple[Pipeline, io.StringIO, int, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    raw, creq = wrongly_signed()
    pipeline, log_stream, grpc_port, http_port = served

    # `check --explain` shows it: the canonical request botocore signed, as AWS's error quotes it.
    offline = await evaluate(load_config(config), parse_http_request(raw, scheme="https"))
    assert offline.decision.reason == "InvalidSignature"
    explained = "\n".join(text_lines(offline.decision.explanation))
    assert all(piece in explained for piece in computed_texts(creq)[:-1])
    assert "'" + creq.replace("\n", "\n" + " " * 19) + "'" in explained

    # Served over gRPC, as Envoy asks: the deny body is the message and the reason, nothing more.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=CheckRequest.SerializeToString,
            response_deserializer=CheckResponse.FromString,
        )
        response: CheckResponse = await call(parse_http_request(raw, scheme="https"), timeout=10)
    assert response.status.code != 0
    grpc_body = response.denied_response.body
    assert json.loads(grpc_body) == {"message": MSG_BAD_SIGNATURE, "reason": "InvalidSignature"}

    # Served over HTTP (Envoy's http_service): the same body.
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(raw)
    await writer.drain()
    head, _, http_body = (await asyncio.wait_for(reader.readuntil(b"}"), 10)).partition(b"\r\n\r\n")
    writer.close()
    await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 403")
    assert json.loads(http_body) == {"message": MSG_BAD_SIGNATURE, "reason": "InvalidSignature"}

    # The pipeline's own decision, as every transport renders it, carries no explanation.
    decision = await pipeline.check(to_request(parse_http_request(raw, scheme="https")))
    assert decision.reason == "InvalidSignature" and decision.explanation == ()

    # The decision log: three lines (gRPC, HTTP, direct), the closed field list, none of the computed texts.
    assert pipeline.decision_log is not None
    pipeline.decision_log.flush()
    entries = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [entry["reason"] for entry in entries] == ["InvalidSignature"] * 3
    assert all(tuple(entry) == FIELDS for entry in entries)
    # The sidecar's own log lines, at DEBUG (botocore, the client here, logs its canonical request itself).
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("sidecar"))
    served_text = [grpc_body, http_body.decode(), log_stream.getvalue(), ours]
    for piece in computed_texts(creq):
        assert not any(piece in text for text in served_text), piece
