"""Arbitrary requests through the real HTTP listener and the real pipeline (the runtime of
`tests/fuzz/test_adapter_fuzz.py`): every request gets a well-formed answer with a known reason, never a 500,
and an allow on a protected route only with an intact credential."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar import reasons
from sidecar.settings import HttpModeSettings
from sidecar.transports.http import HttpAuthzServer, start_http_server
from tests.fuzz.test_adapter_fuzz import (
    HOST,
    KNOWN_REASONS,
    SIGNED,
    SIGNED_PATH,
    TOKENS,
    _same,
    _signed,
    authorizations,
    damaged,
    header_names,
    started_pipeline,
    texts,
)

from .client import Conn, Response

Listener = tuple[HttpAuthzServer, asyncio.AbstractEventLoop]
SIGNED_BODY = b'{"x": 1}'


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    with started_pipeline(tmp_path_factory.mktemp("http-fuzz")) as (pipeline, loop):
        settings = HttpModeSettings(request_timeout=5)
        server = loop.run_until_complete(start_http_server("127.0.0.1", 0, pipeline, settings))
        yield server, loop
        server.close()
        loop.run_until_complete(server.wait_closed())


header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[bytes, str, bool]:
    """Raw request bytes, the path sent, and whether it carries an undamaged real SigV4 signature."""
    if draw(st.booleans()):
        method, path, body = "POST", draw(damaged(SIGNED_PATH)), SIGNED_BODY
        headers = {k: draw(damaged(v)) for k, v in SIGNED.items()}
    else:
        method = draw(st.sampled_from(["GET", "POST", "DELETE", "PATCH", "BREW"]))  # not HEAD: its answer has no body
        suffix = st.one_of(texts, header_values.map(lambda t: t.replace(" ", "")))  # the latter mostly parses
        path = draw(st.sampled_from(["/open/", "/open/private/", "/jwt/", "/iam/", "/"])) + draw(suffix)
        body = draw(st.binary(max_size=30))
        headers = draw(st.dictionaries(header_names, header_values, max_size=6))
        headers.setdefault("host", HOST)
        authorization = draw(authorizations)
        if authorization is not None:
            headers["authorization"] = authorization
    headers["content-length"] = str(len(body))
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    raw = f"{method} {path} HTTP/1.1\r\n{lines}\r\n".encode("utf-8", "surrogateescape") + body
    genuine = (
        method == "POST"
        and path == SIGNED_PATH
        and all(_same(headers.get(k), v) for k, v in SIGNED.items())
        and body == SIGNED_BODY
    )
    return raw, path, genuine


async def _exchange(port: int, raw: bytes) -> Response | None:
    conn = await Conn.open(port)
    try:
        await conn.send(raw)
        return await conn.response(timeout=5)
    except (ConnectionError, asyncio.IncompleteReadError):
        return None  # the listener closed a connection whose bytes it could not parse: also an answer
    finally:
        await conn.close()


# 200 examples in the suite (was 500): tests/fuzz/targets/http1.py drives this code at scale.
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=http_requests())
def test_every_request_is_answered_with_a_reasoned_decision(listener: Listener, case: tuple[bytes, str, bool]) -> None:
    server, loop = listener
    raw, path, genuine = case
    response = loop.run_until_complete(_exchange(server.port, raw))
    if response is None:
        event("connection closed")
        return
    assert response.status != 500, (raw, response)
    if response.status != 200:
        reason = response.json()["reason"]
        assert reason in KNOWN_REASONS and reason != reasons.INTERNAL_ERROR, response
        event(f"denied: {reason}")
        return
    event(f"allowed: {path.split('/')[1]}")
    if path.startswith("/iam/"):
        assert genuine and response.headers["x-authz-principal"] == "arn:aws:iam::123456789012:user/alice"
    elif path.startswith("/jwt/"):
        assert response.headers["x-authz-principal"] in ("user-123", "a\u00e9\U0001f600")


def test_a_signed_request_is_allowed(listener: Listener) -> None:
    """The property above means something only if a genuine request passes over this listener (signed now: a long
    fuzz run outlasts the 5 minutes an import-time signature is valid)."""
    server, loop = listener
    lines = "".join(f"{name}: {value}\r\n" for name, value in _signed("POST", SIGNED_PATH, SIGNED_BODY).items())
    raw = f"POST {SIGNED_PATH} HTTP/1.1\r\n{lines}content-length: 8\r\n\r\n".encode() + SIGNED_BODY
    response = loop.run_until_complete(_exchange(server.port, raw))
    assert response is not None and response.status == 200, response
    assert json.dumps(response.headers)  # decodable headers


def test_a_token_is_allowed(listener: Listener) -> None:
    server, loop = listener
    raw = f"GET /jwt/orders HTTP/1.1\r\nhost: {HOST}\r\nauthorization: Bearer {TOKENS[0]}\r\n\r\n".encode()
    response = loop.run_until_complete(_exchange(server.port, raw))
    assert response is not None and response.status == 200, response
    assert response.headers["x-authz-principal"] == "user-123"
