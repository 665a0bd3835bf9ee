"""Interop: requests signed by botocore (the signer behind the AWS CLI and boto3) pass the `sigv4` authorizer.

botocore signs a URL the way it will travel: the path already percent-encoded, then (for every service but S3)
encoded once more in the canonical request. The Request built here is what Envoy forwards for that URL. Every
accepted request is also re-sent with one signed part changed, which must be denied.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from sigv4_testkit import credential, verifier

from sidecar.authorizers.sigv4.authorizer import SigV4Authorizer
from sidecar.authorizers.sigv4.credentials import StaticCredentialStore
from sidecar.authorizers.sigv4.errors import CONTENT_SHA256_MISMATCH, INVALID_SIGNATURE
from sidecar.authorizers.sigv4.settings import SigV4UpstreamHeaders
from sidecar.authorizers.sigv4.verifier import SigV4Verifier, VerifierOptions
from sidecar.reasons import Denied
from sidecar.request import Request

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQC+EXAMPLE=="
STS_AKID = "ASIAIOSFODNN7EXAMPLE"
HOST = "abc123.execute-api.us-east-1.amazonaws.com"


def sign(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    session: bool = False,
    presign: bool = False,
    service: str = "execute-api",
    region: str = "us-east-1",
) -> Request:
    """Sign with botocore, then build the Request Envoy would deliver for what goes on the wire."""
    creds = Credentials(STS_AKID, SECRET, TOKEN) if session else Credentials(AKID, SECRET)
    aws_request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    if presign:
        SigV4QueryAuth(creds, service, region, expires=300).add_auth(aws_request)
    else:
        SigV4Auth(creds, service, region).add_auth(aws_request)
    parts = urlsplit(aws_request.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    wire_headers = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in aws_request.headers.items()}
    wire_headers.setdefault("host", parts.netloc)
    data = aws_request.data
    raw_body = data.encode() if isinstance(data, str) else bytes(data or b"")
    if raw_body and "content-length" not in wire_headers:
        wire_headers["content-length"] = str(len(raw_body))
    return Request(
        method=method,
        raw_path=target,
        path=parts.path,
        headers=wire_headers,
        host=parts.netloc,
        body=raw_body,
        time=time.time(),
    )


def execute_api_verifier(**options: object) -> SigV4Verifier:
    return verifier(
        [
            credential(AKID, SECRET),
            credential(STS_AKID, SECRET, token=TOKEN, arn="arn:aws:sts::123456789012:assumed-role/Ops/alice"),
        ],
        service="execute-api",
        **options,  # type: ignore[arg-type]
    )


URLS = [
    f"https://{HOST}/",
    f"https://{HOST}/prod/orders",
    f"https://{HOST}/prod/orders/42/",
    f"https://{HOST}/prod/orders?b=2&a=1&a=0&empty=&flag",
    f"https://{HOST}/prod/a%20b/%E2%9C%93/caf%C3%A9",
    f"https://{HOST}/prod/odd$chars:@!*'(),;=+/x",
    f"https://{HOST}/prod/x?q=a%20b&plus=%2B&slash=%2F&tilde=~&utf=%C3%A9&eq=%3D",
    f"https://{HOST}/prod//double//slashes",
    f"https://{HOST}/prod/dots/./and/../here",
    f"https://{HOST}/prod/percent%2541",
]


def _denied_mutations(request: Request) -> list[tuple[str, Request]]:
    headers = dict(request.headers)
    path, sep, query = request.raw_path.partition("?")
    out = [
        ("method", request._replace(method="DELETE" if request.method != "DELETE" else "GET")),
        ("path", request._replace(raw_path=f"{path}x{sep}{query}", path=path + "x")),
        ("host", request._replace(headers={**headers, "host": "evil.example.com"})),
    ]
    if "x-amz-date" in headers:
        date = headers["x-amz-date"]
        bumped = date[:-2] + ("1" if date[-2] != "1" else "2") + "Z"
        out.append(("date", request._replace(headers={**headers, "x-amz-date": bumped})))
    params = [p for p in query.split("&") if p and not p.startswith("X-Amz-")]
    if params:
        changed = query.replace(params[0], params[0] + "1", 1)
        out.append(("query", request._replace(raw_path=f"{path}?{changed}")))
    else:
        out.append(("query", request._replace(raw_path=f"{path}?{query}&extra=1" if query else f"{path}?extra=1")))
    if request.body:
        out.append(("body", request._replace(body=request.body[:-1] + b"!")))
    for name in ("content-type", "x-custom"):
        if name in headers:
            out.append((name, request._replace(headers={**headers, name: headers[name] + "x"})))
    return out


def _assert_accepted_and_tamper_proof(v: SigV4Verifier, request: Request) -> None:
    v.verify(request)
    for label, mutated in _denied_mutations(request):
        with pytest.raises(Denied) as info:
            v.verify(mutated)
        assert info.value.reason in {INVALID_SIGNATURE, CONTENT_SHA256_MISMATCH}, label


@pytest.mark.parametrize("session", [False, True], ids=["static", "session"])
@pytest.mark.parametrize("url", URLS)
def test_sigv4auth_get(url: str, session: bool) -> None:
    _assert_accepted_and_tamper_proof(execute_api_verifier(), sign("GET", url, session=session))


@pytest.mark.parametrize("session", [False, True], ids=["static", "session"])
@pytest.mark.parametrize("url", URLS)
def test_sigv4queryauth_get(url: str, session: bool) -> None:
    _assert_accepted_and_tamper_proof(execute_api_verifier(), sign("GET", url, session=session, presign=True))


@pytest.mark.parametrize("session", [False, True], ids=["static", "session"])
@pytest.mark.parametrize(
    ("method", "body", "content_type"),
    [
        ("POST", b'{"item": "book", "qty": 2}', "application/json"),
        ("PUT", bytes(range(256)) * 40, "application/octet-stream"),
        ("PATCH", "ünïcödé ✓".encode(), "text/plain; charset=utf-8"),
        ("POST", b"a=1&b=two+words", "application/x-www-form-urlencoded"),
        ("DELETE", b"", "application/json"),
    ],
)
def test_sigv4auth_bodies(method: str, body: bytes, content_type: str, session: bool) -> None:
    request = sign(
        method,
        f"https://{HOST}/prod/orders/7?dry-run=true",
        body=body,
        headers={"Content-Type": content_type, "X-Custom": "a  b   c"},
        session=session,
    )
    assert "content-type" in request.headers["authorization"]
    _assert_accepted_and_tamper_proof(execute_api_verifier(), request)


def test_sigv4queryauth_post_moves_json_body_into_query() -> None:
    request = sign("POST", f"https://{HOST}/prod/orders", body=b'{"Action": "List", "n": "1"}', presign=True)
    assert request.body == b"" and "Action=List" in request.raw_path
    _assert_accepted_and_tamper_proof(execute_api_verifier(), request)


def test_explicit_content_sha256_is_checked_against_the_body() -> None:
    body = b"payload bytes"
    import hashlib

    request = sign(
        "PUT",
        f"https://{HOST}/prod/blob",
        body=body,
        headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()},
    )
    v = execute_api_verifier()
    v.verify(request)
    with pytest.raises(Denied) as info:
        v.verify(request._replace(body=b"other bytes!"))
    assert info.value.reason == CONTENT_SHA256_MISMATCH and info.value.status == 400


def test_unsigned_payload_only_where_allowed() -> None:
    request = sign(
        "PUT", f"https://{HOST}/prod/blob", body=b"big", headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    )
    with pytest.raises(Denied) as info:
        execute_api_verifier().verify(request)
    assert info.value.reason == "UnsignedPayloadNotAllowed"
    allowing = execute_api_verifier(allow_unsigned_payload=True)
    allowing.verify(request)
    allowing.verify(request._replace(body=b"anything: the body is not covered"))
    partial = request._replace(headers={**request.headers, "x-envoy-auth-partial-body": "true"})
    allowing.verify(partial)  # an unsigned payload does not need the whole body


def test_s3_style_single_encoding() -> None:
    """S3 signs the wire path as is (no second encoding, no dot-segment removal)."""
    from botocore.auth import S3SigV4Auth

    aws_request = AWSRequest(method="GET", url="https://bucket.s3.amazonaws.com/a%20b/./c", data=b"")
    S3SigV4Auth(Credentials(AKID, SECRET), "s3", "us-east-1").add_auth(aws_request)
    headers = {k.lower(): v for k, v in aws_request.headers.items()}
    headers["host"] = "bucket.s3.amazonaws.com"
    request = Request("GET", "/a%20b/./c", "/a%20b/./c", headers, time=time.time())
    options = VerifierOptions(service="s3", regions=frozenset({"us-east-1"}), normalize_path=False, double_encode=False)
    v = SigV4Verifier(StaticCredentialStore([credential(AKID, SECRET)]), options)
    v.verify(request)
    with pytest.raises(Denied):
        execute_api_verifier().verify(request)  # the execute-api rules canonicalize differently


async def test_authorizer_returns_the_principal_with_policies_and_headers() -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"}],
    }
    store = StaticCredentialStore(
        [
            credential(
                STS_AKID,
                SECRET,
                token=TOKEN,
                arn="arn:aws:sts::123456789012:assumed-role/Ops/alice",
                expires_at=time.time() + 3600,
                policies=(policy,),
            )
        ]
    )
    options = VerifierOptions(service="execute-api", regions=frozenset({"us-east-1"}))
    authorizer = SigV4Authorizer(
        "iam",
        SigV4Verifier(store, options),
        SigV4UpstreamHeaders(access_key_id="X-Access-Key", principal_arn="x-principal-arn"),
    )
    principal = await authorizer.authenticate(sign("GET", f"https://{HOST}/prod/orders", session=True))
    assert principal.kind == "sigv4"
    assert principal.id == principal.arn == "arn:aws:sts::123456789012:assumed-role/Ops/alice"
    assert principal.account == "123456789012"
    assert principal.context["aws:PrincipalType"] == "AssumedRole"
    assert principal.context["aws:userid"] == "Ops:alice"
    assert principal.policies == (policy,)
    assert principal.expires_at is not None and principal.expires_at > time.time()
    assert principal.upstream_headers == (("x-access-key", STS_AKID), ("x-principal-arn", principal.arn))
    # The same credential yields the very same Principal object (built once per snapshot).
    again = await authorizer.authenticate(sign("POST", f"https://{HOST}/prod/x", body=b"{}", session=True))
    assert again is principal
