"""SigV4 through a real Envoy: botocore-signed requests (header and presigned, static and session credentials,
bodies, odd paths and queries, HTTP/1.1 and HTTP/2) are allowed; changing any signed byte is denied with the AWS
reason; a body too large for Envoy to forward whole is denied as unverifiable."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.e2e.conftest import Stack, StackFactory

pytestmark = pytest.mark.e2e

AKID, SECRET = "AKIAE2EEXAMPLE", "e2eSecretKey/EXAMPLE+abcdefghijklmnopqrstu"
STS_AKID, TOKEN = "ASIAE2EEXAMPLE", "FwoGZXIvYXdzEXAMPLE//////////wEaDE2E+TOKEN=="


def sigv4_config(tmp_path: Path) -> str:
    credentials = tmp_path / "credentials.yaml"
    credentials.write_text(
        textwrap.dedent(
            f"""\
            credentials:
              - access_key_id: {AKID}
                secret_access_key: "{SECRET}"
                principal_arn: arn:aws:iam::123456789012:user/alice
                policies: [{{Version: "2012-10-17", Statement: [{{Effect: Allow, Action: "execute-api:Invoke",
                             Resource: "*"}}]}}]
              - access_key_id: {STS_AKID}
                secret_access_key: "{SECRET}"
                session_token: "{TOKEN}"
                principal_arn: arn:aws:sts::123456789012:assumed-role/Deployer/ci
                policies: [{{Version: "2012-10-17", Statement: [{{Effect: Allow, Action: "execute-api:Invoke",
                             Resource: "*"}}]}}]
            """
        )
    )
    return textwrap.dedent(
        f"""\
        api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
        authorizers:
          iam:
            type: sigv4
            credentials: {{file: {credentials}}}
            upstream_headers: {{access_key_id: x-amz-access-key, principal_arn: x-principal-arn}}
        routes:
          - {{match: "POST /prod/payments", authorizer: iam, replay_guard: true}}
          - {{match: "ANY /{{proxy+}}", authorizer: iam}}
        """
    )


def signed(
    stack: Stack,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    session: bool = False,
    presign: bool = False,
) -> httpx.Request:
    """A request signed by botocore over exactly the bytes httpx will put on the wire."""
    client = stack.client
    wire = client.build_request(method, target).url.raw_path.decode("ascii")
    base = stack.base_url
    creds = Credentials(STS_AKID, SECRET, TOKEN) if session else Credentials(AKID, SECRET)
    aws = AWSRequest(method=method, url=base + wire, data=body, headers=dict(headers or {}))
    (
        SigV4QueryAuth(creds, "execute-api", "us-east-1", 300)
        if presign
        else SigV4Auth(creds, "execute-api", "us-east-1")
    ).add_auth(aws)
    final_target = aws.url[len(base) :]
    sent_headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in aws.headers.items()}
    request = client.build_request(method, final_target, headers=sent_headers, content=aws.body or b"")
    assert request.url.raw_path.decode("ascii") == final_target, "httpx changed the signed target"
    return request


def send(stack: Stack, request: httpx.Request) -> httpx.Response:
    return stack.client.send(request)


def tamper(request: httpx.Request, **changes: object) -> httpx.Request:
    headers = dict(request.headers)
    headers.update(changes.pop("headers", {}))  # type: ignore[call-overload]
    return httpx.Request(
        str(changes.get("method", request.method)),
        str(changes.get("url", request.url)),
        headers=headers,
        content=changes.get("content", request.content),  # type: ignore[arg-type]
    )


TARGETS = [
    "/prod/orders",
    "/prod/orders/42/?expand=items&expand=lines&limit=10&empty=",
    "/prod/a%20b/%E2%9C%93/caf%C3%A9",
    "/prod/x?q=a%20b&plus=%2B&slash=%2F&utf=%C3%A9&tilde=~",
    "/prod/odd$chars:@!*,=+",  # no raw ';': refused before SigV4 (Tomcat and Spring cut a path at it)
    "/prod/semi%3Bcolon",  # an encoded one is data, signed and allowed
]


@pytest.fixture(scope="module")
def stack(module_authz_stack: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """One stack for the module: every test signs its own requests, and the one replay-guarded route is sent
    only by the replay test."""
    return module_authz_stack(sigv4_config(tmp_path_factory.mktemp("sigv4")))


def test_a_signed_path_with_a_raw_semicolon_is_refused_as_ambiguous(stack: Stack) -> None:
    response = send(stack, signed(stack, "GET", "/prod/odd;jsessionid=1"))
    assert response.status_code == 400 and response.json()["reason"] == "MalformedRequest"


def test_botocore_requests_allowed_and_tampering_denied(stack: Stack) -> None:
    for target in TARGETS:
        for session in (False, True):
            for presign in (False, True):
                request = signed(stack, "GET", target, session=session, presign=presign)
                response = send(stack, request)
                assert response.status_code == 200, (target, session, presign, response.text, stack.logs())
                seen = response.json()
                assert seen["headers"]["x-amz-access-key"] == (STS_AKID if session else AKID)
                assert seen["headers"]["x-principal-arn"].startswith("arn:aws:")
                path, _, query = str(request.url.raw_path.decode()).partition("?")
                url = str(request.url)
                mutated = [
                    tamper(request, method="DELETE"),
                    tamper(request, url=url.replace(path, path + "x", 1)),
                ]
                if query and not presign:
                    mutated.append(tamper(request, url=url + "&added=1"))
                if not presign:
                    date = request.headers["x-amz-date"]
                    bumped = date[:-2] + ("1" if date[-2] != "1" else "2") + "Z"
                    mutated.append(tamper(request, headers={"x-amz-date": bumped}))
                else:
                    mutated.append(tamper(request, url=re.sub(r"X-Amz-Expires=\d+", "X-Amz-Expires=301", url)))
                for bad in mutated:
                    denied = send(stack, bad)
                    assert denied.status_code == 403, (target, bad.method, str(bad.url), denied.text)
                    assert denied.json()["reason"] == "InvalidSignature", denied.text


def test_bodies_are_signed(stack: Stack) -> None:
    bodies = [
        ("POST", b'{"item": "book", "qty": 2}', "application/json"),
        ("PUT", bytes(range(256)) * 64, "application/octet-stream"),
        ("PATCH", "ünïcödé ✓".encode(), "text/plain; charset=utf-8"),
    ]
    for method, body, content_type in bodies:
        for session in (False, True):
            request = signed(
                stack,
                method,
                "/prod/orders/7?dry-run=true",
                body=body,
                headers={"Content-Type": content_type},
                session=session,
            )
            response = send(stack, request)
            assert response.status_code == 200, (method, response.text, stack.logs())
            assert response.json()["body_bytes"] == len(body)
            changed_body = send(stack, tamper(request, content=body[:-1] + b"!"))
            assert changed_body.status_code == 403 and changed_body.json()["reason"] == "InvalidSignature"
            changed_type = send(stack, tamper(request, headers={"content-type": "text/html"}))
            assert changed_type.status_code == 403 and changed_type.json()["reason"] == "InvalidSignature"


def test_unsigned_and_unverifiable_requests(stack: Stack) -> None:
    missing = stack.client.get("/prod/orders")
    assert missing.status_code == 403
    assert missing.json() == {"message": "Missing Authentication Token", "reason": "MissingAuthenticationToken"}
    big = b"x" * 70_000  # over the template's max_request_bytes: Envoy forwards it marked partial
    request = signed(stack, "POST", "/prod/upload", body=big, headers={"Content-Type": "application/octet-stream"})
    response = send(stack, request)
    assert response.status_code == 413 and response.json()["reason"] == "PartialBody"
    unknown = signed(stack, "GET", "/prod/orders")
    unknown.headers["authorization"] = unknown.headers["authorization"].replace(AKID, "AKIANOBODY")
    response = send(stack, unknown)
    assert response.status_code == 403 and response.json()["reason"] == "UnrecognizedClient"


def test_replay_guard_on_one_route(stack: Stack) -> None:
    """`replay_guard: true` on POST /prod/payments: the same signed request passes once there, and as often as it
    is sent on routes that leave the guard off."""
    body = b'{"amount": 10}'
    payment = signed(stack, "POST", "/prod/payments", body=body, headers={"Content-Type": "application/json"})
    assert send(stack, payment).status_code == 200, stack.logs()
    replayed = send(stack, payment)
    assert replayed.status_code == 403, replayed.text
    assert replayed.json()["reason"] == "ReplayedRequest"
    order = signed(stack, "POST", "/prod/orders", body=body, headers={"Content-Type": "application/json"})
    assert [send(stack, order).status_code for _ in range(3)] == [200, 200, 200]


def _h2load(url: str, headers: Mapping[str, str]) -> str:
    args = ["h2load", "-n", "1", "-c", "1", "-m", "1"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=30, check=False)
    match = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", result.stdout)
    assert match, result.stdout + result.stderr
    return "2xx" if match[1] == "1" else "4xx" if match[3] == "1" else json.dumps(match.groups())


def test_http2_client(stack: Stack) -> None:
    target = "/prod/h2/orders?x=1"
    aws = AWSRequest(method="GET", url=stack.base_url + target)
    SigV4Auth(Credentials(AKID, SECRET), "execute-api", "us-east-1").add_auth(aws)
    headers = {k.lower(): v for k, v in aws.headers.items()}
    assert _h2load(stack.base_url + target, headers) == "2xx", stack.logs()
    assert _h2load(stack.base_url + target + "&y=2", headers) == "4xx"


def test_a_raw_plus_in_the_query_cannot_share_a_signature_with_an_encoded_one(stack: Stack) -> None:
    """Review finding E: `to=a%2Bb` (a plus, what was signed) replayed as `to=a+b` (a space to the upstream)."""
    good = signed(stack, "GET", "/prod/transfer?to=a%2Bb&amount=1")
    assert send(stack, good).status_code == 200
    swapped = tamper(good, url=str(good.url).replace("a%2Bb", "a+b"))
    response = send(stack, swapped)
    assert response.status_code == 403 and response.json()["reason"] == "IncompleteSignature", response.text
