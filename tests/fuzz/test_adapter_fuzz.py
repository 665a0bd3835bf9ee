"""Arbitrary CheckRequests through the whole gRPC adapter and pipeline: every one is answered, none is an internal
error, and nothing but a real credential is ever allowed on a protected route.

The runtime is compiled from a config file as in production: an open route, a JWT route (real keys, a JWKS file,
a claim passed upstream), a SigV4 route (a credential file) and a resource policy with conditions. Requests mix
garbage with real credentials (valid JWTs and botocore-signed SigV4 headers) that hypothesis then damages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar import reasons
from sidecar.authorizers.jwt import errors as jwterrors
from sidecar.authorizers.sigv4 import errors as sigv4errors
from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.runtime import RuntimeHolder, compile_runtime
from sidecar.transports.ext_authz import AuthorizationService
from tests.fuzz.world import config_text
from tests.unit.authorizers.jwt.jwt_testkit import Issuer

AKID = "AKIDFUZZEXAMPLE"
SECRET = "fuzz/secret/key/0123456789abcdefghijklmn"
HOST = "api.example.test"
ISS = Issuer.default()

KNOWN_REASONS = (
    {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
    | set(jwterrors.REASONS)
    | set(sigv4errors.REASONS)
)


def _config(tmp: Path) -> str:
    """The fuzz world's config (`tests/fuzz/world.py`), with this module's issuer."""
    return config_text(tmp, ISS)


Service = tuple[AuthorizationService, asyncio.AbstractEventLoop]


@contextlib.contextmanager
def started_pipeline(tmp: Path) -> Iterator[tuple[Pipeline, asyncio.AbstractEventLoop]]:
    """The fuzz config compiled and started on a loop of its own (shared with the HTTP-mode fuzz test)."""
    runtime = compile_runtime(parse_config(_config(tmp), str(tmp / "config.yaml")))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(runtime.start())
    try:
        yield Pipeline(RuntimeHolder(runtime)), loop
    finally:
        loop.run_until_complete(runtime.stop())
        loop.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with started_pipeline(tmp_path_factory.mktemp("fuzz")) as (pipeline, loop):
        yield AuthorizationService(pipeline.check), loop


def _tokens() -> list[str]:
    """Made at import (collection): valid for an hour, since a whole suite on a loaded machine can run longer than
    the 5 minutes the test issuer's tokens last by default, and the HTTP-mode fuzz test reuses them."""
    now = int(time.time())
    exp = now + 3600
    return [ISS.token(ISS.claims(now=now, exp=exp), kid=kid) for kid in ISS.keys] + [
        ISS.token(ISS.claims(now=now, exp=exp, sub="a\u00e9\U0001f600", scope=None, scp=["orders.read"])),
        ISS.token(ISS.claims(now=now, exp=exp, scope="orders.write")),  # lacks the route's scope
    ]


def _signed(method: str, path: str, body: bytes) -> dict[str, str]:
    request = AWSRequest(method=method, url=f"https://{HOST}{path}", data=body, headers={"host": HOST})
    SigV4Auth(Credentials(AKID, SECRET), "execute-api", "us-east-1").add_auth(request)
    return {k.lower(): v for k, v in request.headers.items()}


TOKENS = _tokens()
SIGNED_PATH = "/iam/orders/1?a=b&c=%20d"
SIGNED = _signed("POST", SIGNED_PATH, b'{"x": 1}')

texts = st.text(max_size=40)
header_names = st.one_of(
    st.sampled_from(["authorization", "x-amz-date", "x-amz-content-sha256", "cookie", "x-forwarded-for", "host"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12).map(str.lower),
)


@st.composite
def damaged(draw: st.DrawFn, value: str) -> str:
    """`value` unchanged, or with a slice replaced by arbitrary text."""
    if draw(st.booleans()):
        return value
    start = draw(st.integers(0, len(value)))
    end = draw(st.integers(start, min(len(value), start + 8)))
    return value[:start] + draw(st.text(max_size=4)) + value[end:]


authorizations = st.one_of(
    st.none(),
    texts,
    texts.map(lambda t: "Bearer " + t),
    st.sampled_from(TOKENS).flatmap(lambda t: damaged("Bearer " + t)),
    damaged(SIGNED["authorization"]),
    st.builds(
        "AWS4-HMAC-SHA256 Credential={}, SignedHeaders={}, Signature={}".format,
        st.one_of(texts, st.just(f"{AKID}/20260101/us-east-1/execute-api/aws4_request")),
        st.one_of(texts, st.just("host;x-amz-date")),
        st.text(alphabet="0123456789abcdef", max_size=64),
    ),
)


@st.composite
def check_requests(draw: st.DrawFn) -> tuple[CheckRequest, bool]:
    """A CheckRequest, and whether it carries an undamaged real credential."""
    check = CheckRequest()
    http = check.attributes.request.http
    signed = draw(st.booleans())
    if signed:
        http.method, path, body = "POST", draw(damaged(SIGNED_PATH)), b'{"x": 1}'
        headers = {k: draw(damaged(v)) for k, v in SIGNED.items()}
        headers[":authority"] = headers.pop("host")
    else:
        http.method = draw(st.one_of(st.sampled_from(["GET", "POST", "DELETE", "get", "BREW"]), texts))
        prefix = draw(st.sampled_from(["/open/", "/open/private/", "/jwt/", "/iam/", "/", ""]))
        path = prefix + draw(st.text(max_size=30))
        body = draw(st.binary(max_size=30))
        headers = draw(st.dictionaries(header_names, texts, max_size=6))
        headers[":authority"] = draw(st.one_of(st.just(HOST), texts))
        authorization = draw(authorizations)
        if authorization is not None:
            headers["authorization"] = authorization
    http.path = path
    http.headers.update(headers)
    http.raw_body = body
    source = check.attributes.source.address.socket_address
    source.address = draw(st.one_of(st.sampled_from(["127.0.0.1", "10.1.2.3", "::1", "2001:db8::1"]), texts))
    source.port_value = draw(st.integers(0, 65535))
    genuine = signed and path == SIGNED_PATH and all(_same(headers.get(k), v) for k, v in SIGNED.items() if k != "host")
    return check, genuine


def _same(sent: str | None, signed: str) -> bool:
    """Equal up to whitespace, which SigV4 canonicalization trims and collapses (and HTTP never delivers around a
    header value anyway)."""
    return sent is not None and "".join(sent.split()) == "".join(signed.split())


def _answer(service: Service, check: CheckRequest) -> CheckResponse:
    handler, loop = service
    return CheckResponse.FromString(loop.run_until_complete(handler.check(check, None)))  # type: ignore[arg-type]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=check_requests())
def test_every_check_is_answered_with_a_reasoned_decision(service: Service, case: tuple[CheckRequest, bool]) -> None:
    check, genuine = case
    response = _answer(service, check)
    path = check.attributes.request.http.path
    if response.HasField("denied_response"):
        denied = response.denied_response
        body = json.loads(denied.body)
        assert body["reason"] in KNOWN_REASONS and body["reason"] != reasons.INTERNAL_ERROR, body
        event(f"denied: {body['reason']}")
        assert 400 <= denied.status.code < 600
        return
    assert response.status.code == 0 and response.HasField("ok_response")
    headers = {o.header.key: o.header.value for o in response.ok_response.headers}
    event(f"allowed: {path.split('/')[1] if path.count('/') > 1 else path}")
    if path.startswith("/iam/"):
        assert genuine and headers["x-authz-principal"] == "arn:aws:iam::123456789012:user/alice"
    elif path.startswith("/jwt/"):
        assert headers["x-authz-principal"] in ("user-123", "a\u00e9\U0001f600")
        assert headers.get("x-scope", "") in ("orders.read orders.write", "")  # the scp-only token has no scope


def test_the_generator_reaches_allows(service: Service) -> None:
    """The property above is only meaningful if real credentials get through: check each kind once. Signed and
    minted now, not at import: a long fuzz run on a loaded machine outlasts the 5 minutes they are valid."""
    check = CheckRequest()
    http = check.attributes.request.http
    http.method, http.path, http.raw_body = "POST", SIGNED_PATH, b'{"x": 1}'
    fresh = _signed("POST", SIGNED_PATH, b'{"x": 1}')
    http.headers.update({":authority": HOST, **{k: v for k, v in fresh.items() if k != "host"}})
    assert _answer(service, check).status.code == 0
    tokens = _tokens()
    for token in tokens[:-1]:
        check = CheckRequest()
        http = check.attributes.request.http
        http.method, http.path = "GET", "/jwt/orders"
        http.headers.update({":authority": HOST, "authorization": "Bearer " + token})
        assert _answer(service, check).status.code == 0, token
    http.headers["authorization"] = "Bearer " + tokens[-1]
    denied = _answer(service, check)
    assert json.loads(denied.denied_response.body)["reason"] == reasons.INSUFFICIENT_SCOPE
