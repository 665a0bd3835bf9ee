"""`authz-sidecar check --at T` decides as a server whose clock reads T: one clock for every time-dependent check.

The server here is the real one minus its process: the config compiled with a clock set to T (what its JWKS fetch
and staleness read), the lean gRPC transport on 127.0.0.1, and CheckRequests stamped with T as Envoy stamps
`attributes.request.time`. `check` runs through the CLI on the same request file. The matrix covers every
time-dependent stage: JWT exp/nbf/iat (keys fetched over HTTP, so their staleness is judged too), SigV4 skew and a
temporary credential's expiry (botocore signs), and a resource policy's `aws:CurrentTime` window.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import botocore.auth
import grpc
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from sidecar.cli import main
from sidecar.config import load_config
from sidecar.offline import parse_http_request
from sidecar.pipeline import Pipeline
from sidecar.runtime import RuntimeHolder, compile_runtime
from sidecar.transports import load
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, ISSUER, Issuer, JwksServer, jwks_server

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z
HOST = "api.example.test"
AKID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
STS_AKID, TOKEN = "ASIAIOSFODNN7EXAMPLE", "IQoJb3JpZ2luX2VjEXAMPLEsession"
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"}],
}

TIMES = {
    "before the token's nbf": T0 - 30,
    "inside every window": T0 + 250,
    "after the token's exp": T0 + 350,
    "after the temporary credential's expiry": T0 + 390,
    "past the signature's skew": T0 + 2000,
    "years later (2030)": 1_893_456_000,
}
"""The token is valid in [T0, T0+300), the SigV4 signatures are made at T0+100 (valid within 5 minutes either
side), the temporary credential expires at T0+380, the policy window is [T0+200, T0+1000)."""


def write_files(tmp_path: Path, jwks_uri: str) -> Path:
    (tmp_path / "credentials.yaml").write_text(
        json.dumps(
            {
                "credentials": [
                    {
                        "access_key_id": AKID,
                        "secret_access_key": SECRET,
                        "principal_arn": "arn:aws:iam::123456789012:user/alice",
                        "policies": [ALLOW_ALL],
                    },
                    {
                        "access_key_id": STS_AKID,
                        "secret_access_key": SECRET,
                        "session_token": TOKEN,
                        "expires": dt.datetime.fromtimestamp(T0 + 380, dt.UTC).isoformat(),
                        "principal_arn": "arn:aws:sts::123456789012:assumed-role/deployer/ci",
                        "policies": [ALLOW_ALL],
                    },
                ]
            }
        )
    )
    window = {
        "DateGreaterThan": {"aws:CurrentTime": dt.datetime.fromtimestamp(T0 + 200, dt.UTC).isoformat()},
        "DateLessThan": {"aws:CurrentTime": dt.datetime.fromtimestamp(T0 + 1000, dt.UTC).isoformat()},
    }
    arn = "arn:aws:execute-api:us-east-1:123456789012:api/prod"
    (tmp_path / "policy.json").write_text(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{arn}/*"},
                    {
                        "Sid": "OutsideTheWindow",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "execute-api:Invoke",
                        "Resource": f"{arn}/GET/window",
                        "Condition": {"DateLessThan": window["DateGreaterThan"]},
                    },
                    {
                        "Sid": "AfterTheWindow",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "execute-api:Invoke",
                        "Resource": f"{arn}/GET/window",
                        "Condition": {"DateGreaterThan": window["DateLessThan"]},
                    },
                ],
            }
        )
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            api: {{id: api, stage: prod, account: "123456789012", region: us-east-1}}
            resource_policy: policy.json
            authorizers:
              idp: {{type: jwt, issuer: "{ISSUER}", audiences: [{AUDIENCE}], jwks_uri: "{jwks_uri}",
                     allow_http: true, leeway: 0}}
              iam: {{type: sigv4, service: execute-api, credentials: {{file: credentials.yaml}}}}
              open: {{type: none}}
            routes:
              - {{match: "GET /orders/{{id}}", authorizer: idp}}
              - {{match: "GET /iam/{{proxy+}}", authorizer: iam}}
              - {{match: "GET /window", authorizer: open}}
            """
        )
    )
    return config


def signed(path: str, access_key: str, secret: str, token: str | None, monkeypatch: pytest.MonkeyPatch) -> str:
    """A raw HTTP request signed by botocore at T0+100."""
    at = dt.datetime.fromtimestamp(T0 + 100, dt.UTC).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: at)
    request = AWSRequest(method="GET", url=f"https://{HOST}{path}", headers={})
    botocore.auth.SigV4Auth(Credentials(access_key, secret, token), "execute-api", "us-east-1").add_auth(request)
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items() if name.lower() != "host"]
    return "\r\n".join(lines) + "\r\n\r\n"


@pytest.fixture
async def issuer_keys() -> AsyncIterator[tuple[Issuer, JwksServer]]:
    issuer = Issuer.default()
    async with jwks_server() as server:
        server.serve(issuer.jwks())
        yield issuer, server


def requests(issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    token = issuer.token(issuer.claims(now=T0, iat=T0, nbf=T0, exp=T0 + 300))
    return {
        "jwt": f"GET /orders/1 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n\r\n",
        "sigv4": signed("/iam/reports", AKID, SECRET, None, monkeypatch),
        "sigv4 temporary": signed("/iam/reports", STS_AKID, SECRET, TOKEN, monkeypatch),
        "policy window": f"GET /window HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
    }


def set_to(at: float) -> Callable[[], float]:
    return lambda: at


async def served(config: Path, at: float, raws: dict[str, str]) -> dict[str, tuple[str, str]]:
    """(decision, reason) of each request from a server whose clock reads `at`, asked as Envoy asks."""
    settings = load_config(config)
    runtime = compile_runtime(settings, clock=set_to(at))
    await runtime.start()
    transport = None
    try:
        await runtime.wait_ready(10)
        transport = await load("lean")("127.0.0.1:0", Pipeline(RuntimeHolder(runtime)), settings)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{transport.port}") as channel:
            call = channel.unary_unary(
                "/envoy.service.auth.v3.Authorization/Check",
                request_serializer=CheckRequest.SerializeToString,
                response_deserializer=CheckResponse.FromString,
            )
            out = {}
            for name, raw in raws.items():
                check = parse_http_request(raw.encode(), scheme="https")
                check.attributes.request.time.FromNanoseconds(int(at * 1e9))  # Envoy stamps its own clock
                response: CheckResponse = await call(check, timeout=10)
                if response.status.code == 0:
                    out[name] = ("allow", "")
                else:
                    out[name] = ("deny", json.loads(response.denied_response.body)["reason"])
            return out
    finally:
        if transport is not None:
            await transport.shutdown(1)
        await runtime.stop()


def checked(config: Path, request: Path, at: float, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    args = ["check", "--config", str(config), "--http", str(request), "--at", str(at), "--scheme", "https"]
    code = main(args)
    text = capsys.readouterr().out
    assert code == (0 if "decision:  allow" in text else 1), text
    code = main([*args, "--output", "json"])
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert code == (0 if result["decision"] == "allow" else 1)
    return result


EXPECTED = {
    "before the token's nbf": {"jwt": "TokenNotYetValid", "policy window": "AccessDenied"},
    "inside every window": {},
    "after the token's exp": {"jwt": "TokenExpired"},
    "after the temporary credential's expiry": {"jwt": "TokenExpired", "sigv4 temporary": "ExpiredToken"},
    "past the signature's skew": {
        "jwt": "TokenExpired",
        "sigv4": "SignatureExpired",
        "sigv4 temporary": "SignatureExpired",
        "policy window": "AccessDenied",
    },
    "years later (2030)": {
        "jwt": "TokenExpired",
        "sigv4": "SignatureExpired",
        "sigv4 temporary": "SignatureExpired",
        "policy window": "AccessDenied",
    },
}
"""What each request gets at each time (reason of a deny; absent = allowed)."""


@pytest.mark.parametrize("moment", list(TIMES))
async def test_check_at_decides_as_a_server_whose_clock_is_set(
    moment: str,
    tmp_path: Path,
    issuer_keys: tuple[Issuer, JwksServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    issuer, server = issuer_keys
    config = write_files(tmp_path, server.jwks_uri)
    raws = requests(issuer, monkeypatch)
    at = TIMES[moment]
    from_server = await served(config, at, raws)
    offline = {}
    for name, raw in raws.items():
        path = tmp_path / f"{name.replace(' ', '-')}.req"
        path.write_text(raw)
        result = await asyncio.to_thread(checked, config, path, at, capsys)
        offline[name] = (result["decision"], result["reason"] if result["decision"] == "deny" else "")
    assert offline == from_server
    expected = {name: ("deny", EXPECTED[moment][name]) if name in EXPECTED[moment] else ("allow", "") for name in raws}
    assert offline == expected
