"""What the adapter makes of a proxy's authorization request: path prefix, headers, trust, flavors."""

from __future__ import annotations

import pytest

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.request import Request
from sidecar.runtime import RuntimeHolder, compile_runtime
from sidecar.settings import HttpModeSettings
from sidecar.transports.http.protocol import _Shared, build_request

from .client import Conn, get
from .conftest import FakePipeline, Serve

CERT = "-----BEGIN%20CERTIFICATE-----%0AMIIB...%0A-----END%20CERTIFICATE-----%0A"


async def test_envoy_request_maps_to_the_same_request_the_grpc_adapter_builds(serve: Serve, fake: FakePipeline) -> None:
    server = await serve(path_prefix="/authz")
    conn = await Conn.open(server.port)
    await conn.send(
        get(
            "/authz/orders/7?b=2&a=1&a=3",
            "Host: api.example.com",
            "Content-Type: application/json",
            "X-Multi: one",
            "X-Multi: two",
            "X-Request-Id: req-1",
            "X-Forwarded-Proto: https",
            "X-Authz-Source-Address: 203.0.113.9",
            f"X-Authz-Peer-Certificate: {CERT}",
            "Authorization: Bearer abc",
            method="POST",
            body=b'{"x": 1}',
        )
    )
    assert (await conn.response()).status == 200
    request = fake.seen[0]
    assert request.method == "POST"
    assert request.raw_path == "/orders/7?b=2&a=1&a=3"
    assert request.path == "/orders/7"
    assert dict(request.query) == {"b": ("2",), "a": ("1", "3")}
    assert request.host == "api.example.com"
    assert request.headers["host"] == "api.example.com"
    assert request.headers["x-multi"] == "one,two"
    assert request.headers["authorization"] == "Bearer abc"
    assert all(k == k.lower() for k in request.headers)
    assert request.request_id == "req-1"
    assert request.scheme == "https"
    assert request.source_address == "203.0.113.9"
    assert request.peer_certificate == CERT  # URL-encoded PEM, exactly like CheckRequest's source.certificate
    assert request.body == b'{"x": 1}'
    assert request.time > 1_700_000_000
    await conn.close()


@pytest.mark.parametrize(
    ("sent", "raw_path"),
    [("/authz", "/"), ("/authz?x=1", "/?x=1"), ("/authz/", "/"), ("/authz/a%2Fb?q", "/a%2Fb?q")],
)
async def test_prefix_is_stripped(serve: Serve, fake: FakePipeline, sent: str, raw_path: str) -> None:
    server = await serve(path_prefix="/authz")
    conn = await Conn.open(server.port)
    await conn.send(get(sent))
    assert (await conn.response()).status == 200
    assert fake.seen[0].raw_path == raw_path
    await conn.close()


@pytest.mark.parametrize("sent", ["/other/x", "/authzz/x", "*"])
async def test_request_without_the_prefix_is_a_400_deny(serve: Serve, fake: FakePipeline, sent: str) -> None:
    server = await serve(path_prefix="/authz")
    conn = await Conn.open(server.port)
    await conn.send(get(sent, method="OPTIONS") + get("/authz/next"))
    first, second = await conn.responses(2)
    assert first.status == 400
    assert first.json()["reason"] == "MalformedRequest"
    assert second.status == 200  # a deny, not a protocol error: the connection lives on
    assert [r.path for r in fake.seen] == ["/next"]
    await conn.close()


async def test_trusted_headers_are_ignored_from_untrusted_peers(serve: Serve, fake: FakePipeline) -> None:
    server = await serve(trusted_peers=("10.0.0.0/8",))  # our client is 127.0.0.1: not trusted
    conn = await Conn.open(server.port)
    await conn.send(
        get(
            "/x",
            "X-Authz-Source-Address: 10.1.1.1",
            f"X-Authz-Peer-Certificate: {CERT}",
            "X-Forwarded-Proto: https",
        )
    )
    assert (await conn.response()).status == 200
    request = fake.seen[0]
    assert request.source_address == "127.0.0.1"  # the TCP peer: the only thing we know for sure
    assert request.peer_certificate == ""
    assert request.scheme == "http"
    await conn.close()


async def test_trusted_cidr_and_missing_header_gives_no_source(serve: Serve, fake: FakePipeline) -> None:
    server = await serve(trusted_peers=("127.0.0.0/8",))
    conn = await Conn.open(server.port)
    await conn.send(get("/x"))  # a trusted proxy that did not say: we must not invent 127.0.0.1 as the client
    assert (await conn.response()).status == 200
    assert fake.seen[0].source_address == ""
    await conn.close()


def test_trust_check_handles_v4_mapped_v6_and_garbage() -> None:
    shared = _Shared(FakePipeline(), HttpModeSettings(trusted_peers=("127.0.0.1", "fd00::/8")))
    assert shared.is_trusted("127.0.0.1")
    assert shared.is_trusted("::ffff:127.0.0.1")
    assert shared.is_trusted("fd00::1")
    assert not shared.is_trusted("::1")
    assert not shared.is_trusted("127.0.0.2")
    assert not shared.is_trusted("not-an-ip")
    assert not shared.is_trusted("")


def _build(flavor: str, url: str, headers: dict[str, str], trusted: bool = True, method: str = "GET") -> Request | None:
    shared = _Shared(FakePipeline(), HttpModeSettings(flavor=flavor))  # type: ignore[arg-type]
    return build_request(method, url, headers, b"", "192.0.2.1", trusted, shared)


def test_nginx_flavor_reads_the_original_uri_and_method() -> None:
    request = _build(
        "nginx",
        "/auth",
        {
            "host": "shop.example.com",
            "x-original-uri": "/cart/3?y=1",
            "x-original-method": "DELETE",
            "x-authz-source-address": "198.51.100.4",
            "x-authz-peer-certificate": CERT,
        },
    )
    assert request is not None
    assert (request.method, request.raw_path, request.path) == ("DELETE", "/cart/3?y=1", "/cart/3")
    assert request.source_address == "198.51.100.4"
    assert request.peer_certificate == CERT
    assert _build("nginx", "/auth", {"host": "a"}) is None  # no X-Original-URI: cannot say what to authorize


def test_traefik_flavor_reads_the_forwarded_headers() -> None:
    request = _build(
        "traefik",
        "/",
        {
            "host": "authz:9192",
            "x-forwarded-method": "PUT",
            "x-forwarded-proto": "https",
            "x-forwarded-host": "api.example.com",
            "x-forwarded-uri": "/items/9?z=2",
            "x-forwarded-for": "198.51.100.7, 10.0.0.2",
        },
    )
    assert request is not None
    assert request.method == "PUT"
    assert request.raw_path == "/items/9?z=2"
    assert request.host == "api.example.com"
    assert request.headers["host"] == "api.example.com"
    assert request.scheme == "https"
    assert request.source_address == "10.0.0.2"  # the hop Traefik itself saw


def test_traefik_flavor_from_an_untrusted_peer_ignores_forwarded_for() -> None:
    request = _build(
        "traefik",
        "/",
        {"x-forwarded-uri": "/a", "x-forwarded-for": "1.2.3.4", "x-forwarded-proto": "https"},
        trusted=False,
    )
    assert request is not None
    assert request.source_address == "192.0.2.1"
    assert request.scheme == "http"


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="flavor"):
        HttpModeSettings(flavor="caddy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path_prefix"):
        HttpModeSettings(path_prefix="authz/")
    with pytest.raises(ValueError, match="trusted_peers"):
        HttpModeSettings(trusted_peers=("localhost",))
    with pytest.raises(ValueError, match="max_body_bytes"):
        HttpModeSettings(max_body_bytes=0)


async def test_real_pipeline_behind_the_http_listener(serve: Serve) -> None:
    """The real foundation pipeline (route table, `none` and `deny` authorizers) over this transport."""
    config = parse_config(
        """
upstream_headers: {principal: x-authz-principal, authorizer: x-authz-authorizer, route: x-authz-route}
authorizers:
  public: {type: none}
  closed: {type: deny, message: "This route is closed"}
routes:
  - {match: "GET /public/{proxy+}", authorizer: public}
  - {match: "ANY /admin/{proxy+}", authorizer: closed}
"""
    )
    holder = RuntimeHolder(compile_runtime(config))
    await holder.current.start()
    try:
        server = await serve(Pipeline(holder), path_prefix="/authz")
        conn = await Conn.open(server.port)
        await conn.send(get("/authz/public/a?b=1") + get("/authz/admin/x", method="DELETE") + get("/authz/nowhere"))
        allowed, closed, unknown = await conn.responses(3)
        assert allowed.status == 200
        assert allowed.headers["x-authz-principal"] == "anonymous"
        assert allowed.headers["x-authz-authorizer"] == "public"
        assert allowed.headers["x-authz-route"] == "GET /public/{proxy+}"
        assert closed.status == 403
        assert closed.json() == {"message": "This route is closed", "reason": "RouteDeny"}
        assert unknown.status == 403
        assert unknown.json()["reason"] == "MissingAuthenticationToken"
        await conn.close()
    finally:
        await holder.current.stop()


@pytest.mark.parametrize(("flavor", "header"), [("nginx", "x-original-method"), ("traefik", "x-forwarded-method")])
def test_a_forwarded_method_that_is_not_an_upper_case_token_is_refused(flavor: str, header: str) -> None:
    uri = "x-original-uri" if flavor == "nginx" else "x-forwarded-uri"
    for method in ("delete", "Delete", "GET\r\nX: 1", ""):
        assert _build(flavor, "/auth", {"host": "a", uri: "/items/1", header: method}) is None, method
    request = _build(flavor, "/auth", {"host": "a", uri: "/items/1", header: "DELETE"})
    assert request is not None and request.method == "DELETE"


def test_nginx_flavor_marks_a_body_it_never_saw() -> None:
    base = {"host": "a", "x-original-uri": "/orders/7", "x-original-method": "DELETE"}
    for extra in ({"x-original-content-length": "17"}, {"x-original-transfer-encoding": "chunked"}):
        request = _build("nginx", "/auth", {**base, **extra, "x-envoy-auth-partial-body": "false"})
        assert request is not None and request.headers["x-envoy-auth-partial-body"] == "true"
    for extra in ({}, {"x-original-content-length": "0"}):
        request = _build("nginx", "/auth", {**base, **extra, "x-envoy-auth-partial-body": "false"})
        assert request is not None and "x-envoy-auth-partial-body" not in request.headers  # a client's copy is gone
