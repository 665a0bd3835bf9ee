"""`envoy-config` through a real Envoy: only what a route reads crosses the hop, and trimming changes no decision.

One sidecar config with JWT, SigV4 and open routes, a resource policy that reads a header and a rate rule keyed
on one. (1) A capture server behind the rendered Envoy records each CheckRequest: a JWT route's carries the
named headers but not a header nothing reads, no body and no certificate; a SigV4 route's carries every header
and the body. (2) The same corpus through the shipped Envoy and through the rendered one, each in front of a real
sidecar, gets the same statuses, reasons and upstream identity headers, in gRPC and HTTP modes."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from sidecar.config import load_config
from sidecar.harness.demo import EchoUpstream
from sidecar.harness.envoy import EnvoyPorts, EnvoyProcess, free_port, validate_envoy_config
from sidecar.harness.envoy_config import render
from sidecar.runtime import compile_runtime
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.test_jwt_e2e import serving_keys
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, Issuer, rsa_key

pytestmark = pytest.mark.e2e

AKID, SECRET = "AKIAENVOYCONFIG1", "envoyConfigSecret/EXAMPLE+abcdefghijklmn"


def write_config(tmp: Path, issuer_url: str) -> str:
    (tmp / "credentials.yaml").write_text(
        textwrap.dedent(
            f"""\
            credentials:
              - access_key_id: {AKID}
                secret_access_key: "{SECRET}"
                principal_arn: arn:aws:iam::123456789012:user/alice
                policies: [{{Version: "2012-10-17", Statement: [{{Effect: Allow, Action: "execute-api:Invoke",
                             Resource: "*"}}]}}]
            """
        )
    )
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "*"},
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "execute-api:Invoke",
                "Resource": "*",
                "Condition": {"StringEquals": {"request:header/x-block": "yes"}},
            },
        ],
    }
    (tmp / "policy.json").write_text(json.dumps(policy))
    return textwrap.dedent(
        f"""\
        server: {{watch_config: false}}
        api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
        resource_policy: {tmp / "policy.json"}
        authorizers:
          corp:
            type: jwt
            issuer: "{issuer_url}"
            audiences: [{AUDIENCE}]
            claim_to_headers: {{sub: x-user}}
          iam:
            type: sigv4
            credentials: {{file: {tmp / "credentials.yaml"}}}
          public: {{type: none}}
        rate_limits:
          - {{name: per-tenant, key: ["header:x-tenant"], window: 60, limit: 10, routes: ["GET /public/{{id}}"]}}
        routes:
          - {{match: "GET /orders/{{id}}", authorizer: corp}}
          - {{match: "POST /prod/payments", authorizer: iam}}
          - {{match: "ANY /prod/{{proxy+}}", authorizer: iam}}
          - {{match: "GET /public/{{id}}", authorizer: public}}
        """
    )


@pytest.fixture
def issuer_and_config(tmp_path: Path) -> Iterator[tuple[Issuer, str, Path]]:
    with serving_keys() as key_server:
        issuer = Issuer(key_server.url, {"rsa": (rsa_key(0), "RS256")})
        key_server.jwks = issuer.jwks()
        text = write_config(tmp_path, key_server.url)
        path = tmp_path / "sidecar.yaml"
        path.write_text(text)
        yield issuer, text, path


def renderer(path: Path) -> Callable[[EnvoyPorts, str], str]:
    runtime = compile_runtime(load_config(path), private_limits=True)
    return lambda ports, template: render(runtime, ports, template)


class Capture(external_auth_pb2_grpc.AuthorizationServicer):
    """An ext_authz server that allows everything and keeps each CheckRequest."""

    def __init__(self) -> None:
        self.seen: list[external_auth_pb2.CheckRequest] = []
        self.lock = threading.Lock()

    def Check(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.seen.append(request)
        return external_auth_pb2.CheckResponse()


def signed(base: str, method: str, target: str, body: bytes = b"", **headers: str) -> httpx.Request:
    aws = AWSRequest(method=method, url=base + target, data=body, headers=headers)
    SigV4Auth(Credentials(AKID, SECRET), "execute-api", "us-east-1").add_auth(aws)
    sent = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in aws.headers.items()}
    return httpx.Request(method, base + target, headers=sent, content=body)


def test_only_what_a_route_reads_crosses_the_hop(issuer_and_config: tuple[Issuer, str, Path]) -> None:
    issuer, _, path = issuer_and_config
    capture = Capture()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(capture, server)
    authz_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with EchoUpstream() as upstream:
        ports = replace(
            EnvoyPorts(), listen_port=free_port(), authz_port=authz_port, upstream_port=upstream.port,
            admin_port=free_port(),
        )  # fmt: skip
        text = renderer(path)(ports, "envoy.yaml")
        with EnvoyProcess(text, ports.admin_port), httpx.Client(timeout=10) as client:
            base = f"http://127.0.0.1:{ports.listen_port}"
            extra = {"x-secret": "s3cret", "x-tenant": "t1", "x-block": "no"}
            token = issuer.token(issuer.claims(time.time()))
            sent = [
                client.get(f"{base}/orders/7", headers={"authorization": f"Bearer {token}", **extra}),
                client.send(signed(base, "POST", "/prod/payments", b'{"amount": 5}', **extra)),
                client.get(f"{base}/public/1", headers=extra),
                client.post(f"{base}/nowhere", headers=extra, content=b"body"),
            ]
    server.stop(0)
    assert [r.status_code for r in sent] == [200, 200, 200, 200]
    jwt, sigv4, public, unknown = capture.seen
    for check in (jwt, public):
        headers = check.attributes.request.http.headers
        assert "x-secret" not in headers  # nothing reads it
        assert {"x-tenant", "x-block", "x-forwarded-for", "x-forwarded-proto"} <= set(headers)
        assert check.attributes.request.http.raw_body == b""
        assert not check.attributes.source.certificate
    assert jwt.attributes.request.http.headers["authorization"] == f"Bearer {token}"
    for check in (sigv4, unknown):  # SigV4 signs any header; the catch-all gets what every route needs
        assert check.attributes.request.http.headers["x-secret"] == "s3cret"
        assert check.attributes.request.http.raw_body != b""


def corpus(issuer: Issuer) -> list[Callable[[str], httpx.Request]]:
    now = time.time()
    good = issuer.token(issuer.claims(now))
    expired = issuer.token(issuer.claims(now - 3600))
    wrong_aud = issuer.token(issuer.claims(now, aud="someone-else"))
    forged = Issuer(issuer.url, {"rsa": (rsa_key(5), "RS256")})
    bad_sig = forged.token(forged.claims(now))

    def get(target: str, **headers: str) -> Callable[[str], httpx.Request]:
        return lambda base: httpx.Request("GET", base + target, headers=headers)

    out = [
        get("/orders/7", authorization=f"Bearer {good}"),
        get("/orders/7", authorization=f"Bearer {good}", **{"x-block": "yes"}),
        get("/orders/%37", authorization=f"Bearer {good}"),
        get("/orders/7/", authorization=f"Bearer {good}"),
        get("/orders/7", authorization=f"Bearer {expired}"),
        get("/orders/7", authorization=f"Bearer {wrong_aud}"),
        get("/orders/7", authorization=f"Bearer {bad_sig}"),
        get("/orders/7"),
        lambda base: signed(base, "POST", "/prod/payments", b'{"amount": 5}'),
        lambda base: signed(base, "POST", "/prod/payments", b'{"amount": 5}', **{"x-block": "yes"}),
        lambda base: signed(base, "PUT", "/prod/a%20b/c", b"data"),
        lambda base: signed(base, "GET", "/prod/orders?x=1"),
        lambda base: replace_body(signed(base, "POST", "/prod/payments", b'{"amount": 5}'), b'{"amount": 500}'),
        get("/prod/orders", authorization=f"Bearer {good}"),
        get("/nowhere"),
        get("/public/1", **{"x-block": "yes"}),
    ]
    out += [get("/public/1", **{"x-tenant": "t1"}) for _ in range(12)]
    out += [get("/public/2", **{"x-tenant": "t2"})]
    return out


def replace_body(request: httpx.Request, body: bytes) -> httpx.Request:
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    return httpx.Request(request.method, str(request.url), headers=headers, content=body)


def outcomes(stack: Stack, requests: list[Callable[[str], httpx.Request]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for build in requests:
        response = stack.client.send(build(stack.base_url))
        reason = response.json().get("reason") if response.status_code != 200 else None
        upstream = response.json()["headers"] if response.status_code == 200 else {}
        identity = {k: v for k, v in upstream.items() if k in ("x-user", "x-authz-principal", "x-authz-route")}
        out.append((response.status_code, reason, identity))
    return out


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-http.yaml"])
def test_trimming_changes_no_decision(
    authz_stack: StackFactory, issuer_and_config: tuple[Issuer, str, Path], template: str
) -> None:
    issuer, text, path = issuer_and_config
    requests = corpus(issuer)
    shipped = outcomes(authz_stack(text, template=template), requests)
    fitted = outcomes(authz_stack(text, template=template, envoy_render=renderer(path)), requests)
    assert fitted == shipped
    statuses = [status for status, _, _ in shipped]
    # The corpus bites: the policy's header Deny, SigV4 with its body, a tampered body, the rule's 11th request.
    assert statuses[:2] == [200, 403] and statuses[8:10] == [200, 403] and statuses[12] == 403
    assert statuses[-3:] == [403, 403, 200]


@pytest.mark.parametrize("http", [False, True])
def test_rendered_files_pass_envoy_validate(
    issuer_and_config: tuple[Issuer, str, Path], tmp_path: Path, http: bool
) -> None:
    _, _, path = issuer_and_config
    template = "envoy-http.yaml" if http else "envoy.yaml"
    runtime = compile_runtime(load_config(path), private_limits=True)
    out = tmp_path / "envoy.yaml"
    out.write_text(render(runtime, template=template))
    result = validate_envoy_config(out)
    assert result.returncode == 0, result.stdout + result.stderr
