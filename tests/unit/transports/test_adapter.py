"""The gRPC adapter: CheckRequest -> Request and Decision -> CheckResponse, malformed input never raises."""

from __future__ import annotations

import json

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from sidecar import reasons
from sidecar.reasons import Denied
from sidecar.request import Decision, Request
from sidecar.transports.ext_authz import MALFORMED, AuthorizationService, MalformedRequest, ResponseEncoder, to_request


def envoy_check(**http_fields: object) -> CheckRequest:
    check = CheckRequest()
    http = check.attributes.request.http
    http.id = "envoy-id"
    http.method = "POST"
    http.path = "/orders/7?b=2&a=1&a=3"
    http.host = "api.example.com"
    http.scheme = "https"
    http.protocol = "HTTP/2"
    http.headers.update(
        {
            ":authority": "api.example.com",
            ":method": "POST",
            ":path": "/orders/7?b=2&a=1&a=3",
            ":scheme": "https",
            ":protocol": "websocket",
            ":made-up": "not from Envoy",
            "content-type": "application/json",
            "x-request-id": "req-1",
            "x-multi": "one,two",
            "x-forwarded-proto": "https",
        }
    )
    http.raw_body = b'{"x": 1}'
    for key, value in http_fields.items():
        setattr(http, key, value)
    check.attributes.source.address.socket_address.address = "10.1.2.3"
    check.attributes.source.address.socket_address.port_value = 5555
    check.attributes.source.certificate = "-----BEGIN%20CERTIFICATE-----"
    check.attributes.context_extensions["tenant"] = "acme"
    check.attributes.request.time.FromSeconds(1_700_000_000)
    return check


def test_to_request_maps_every_field() -> None:
    request = to_request(envoy_check())
    assert request.method == "POST"
    assert request.raw_path == "/orders/7?b=2&a=1&a=3"
    assert request.path == "/orders/7"
    assert request.query_string == "b=2&a=1&a=3"
    assert dict(request.query) == {"b": ("2",), "a": ("1", "3")}
    assert request.headers["host"] == "api.example.com"
    assert not any(k.startswith(":") for k in request.headers)
    assert sorted(request.headers) == ["content-type", "host", "x-forwarded-proto", "x-multi", "x-request-id"]
    assert request.headers["x-multi"] == "one,two"
    assert request.host == "api.example.com"
    assert request.scheme == "https"
    assert request.protocol == "HTTP/2"
    assert (request.source_address, request.source_port) == ("10.1.2.3", 5555)
    assert request.peer_certificate.startswith("-----BEGIN")
    assert request.body == b'{"x": 1}'
    assert dict(request.context_extensions) == {"tenant": "acme"}
    assert request.request_id == "req-1"
    assert request.time == 1_700_000_000


def test_body_from_string_field_when_not_packed_as_bytes() -> None:
    check = envoy_check(raw_body=b"")
    check.attributes.request.http.body = "hello"
    assert to_request(check).body == b"hello"


def test_header_map_form() -> None:
    check = envoy_check()
    http = check.attributes.request.http
    http.headers.clear()
    for key, value in [(":authority", "h.example"), ("X-Dup", "a"), ("x-dup", "b")]:
        entry = http.header_map.headers.add()
        entry.key, entry.raw_value = key, value.encode()
    request = to_request(check)
    assert request.headers == {"x-dup": "a,b", "host": "h.example"}


def test_missing_time_uses_clock() -> None:
    check = envoy_check()
    check.attributes.request.ClearField("time")
    assert to_request(check, clock=lambda: 42.0).time == 42.0


def test_missing_method_or_path_is_malformed() -> None:
    for field in ("method", "path"):
        check = envoy_check(**{field: ""})
        try:
            to_request(check)
        except MalformedRequest:
            continue
        raise AssertionError(f"no error for missing {field}")


def decode(wire: bytes) -> CheckResponse:
    return CheckResponse.FromString(wire)


def test_encode_allow() -> None:
    decision = Decision(
        allowed=True,
        status=200,
        reason="Allowed",
        headers=(("x-authz-principal", "alice"),),
        headers_to_remove=("authorization",),
        metadata={"principal": "alice"},
    )
    response = decode(ResponseEncoder().encode(decision))
    assert response.status.code == 0
    assert [(h.header.key, h.header.value) for h in response.ok_response.headers] == [("x-authz-principal", "alice")]
    assert response.ok_response.headers[0].append_action == 2  # OVERWRITE: a client cannot spoof it
    assert list(response.ok_response.headers_to_remove) == ["authorization"]
    assert response.dynamic_metadata["principal"] == "alice"


async def test_allows_from_the_pipeline_carry_identity_metadata_and_denials_none() -> None:
    from sidecar.config import default_config
    from sidecar.pipeline import Pipeline
    from sidecar.runtime import RuntimeHolder, compile_runtime

    pipeline = Pipeline(RuntimeHolder(compile_runtime(default_config())))
    allowed = await pipeline.check(to_request(envoy_check(path="/public/hello", method="GET")))
    assert allowed.allowed and not allowed.metadata  # nothing stored with the (cached) Decision ...
    response = decode(ResponseEncoder().encode(allowed))
    assert dict(response.dynamic_metadata) == {  # ... and all of it on the wire
        "principal": "anonymous",
        "authorizer": allowed.authorizer,
        "route": allowed.route,
    }
    denied = await pipeline.check(to_request(envoy_check(path="/nothing/here", method="GET")))
    assert not denied.allowed and not decode(ResponseEncoder().encode(denied)).HasField("dynamic_metadata")


def test_encode_401_and_403() -> None:
    unauth = decode(ResponseEncoder().encode(Denied("InvalidSignature", "bad sig").decision(challenge="AWS4")))
    assert unauth.status.code == 16
    assert unauth.denied_response.status.code == 401
    headers = {h.header.key: h.header.value for h in unauth.denied_response.headers}
    assert headers["www-authenticate"] == "AWS4"
    assert headers["content-type"] == "application/json"
    assert json.loads(unauth.denied_response.body) == {"message": "bad sig", "reason": "InvalidSignature"}
    forbidden = decode(ResponseEncoder().encode(reasons.deny(reasons.ACCESS_DENIED, "no")))
    assert forbidden.status.code == 7
    assert forbidden.denied_response.status.code == 403
    assert "www-authenticate" not in {h.header.key for h in forbidden.denied_response.headers}


def test_encoder_memoizes_per_decision_object() -> None:
    encoder = ResponseEncoder()
    decision = reasons.deny(reasons.ACCESS_DENIED, "no")
    assert encoder.encode(decision) is encoder.encode(decision)


async def test_service_denies_malformed_and_survives_exceptions() -> None:
    async def explode(request: Request) -> Decision:
        raise RuntimeError("bug")

    service = AuthorizationService(explode)
    malformed = decode(await service.check(envoy_check(method=""), None))  # type: ignore[arg-type]
    assert malformed.denied_response.status.code == MALFORMED.status == 400
    assert json.loads(malformed.denied_response.body)["reason"] == "MalformedRequest"
    failed = decode(await service.check(envoy_check(), None))  # type: ignore[arg-type]
    assert failed.denied_response.status.code == 500
    assert json.loads(failed.denied_response.body)["reason"] == "InternalError"


async def test_a_decision_that_cannot_be_encoded_is_a_reasoned_deny() -> None:
    """A header value that is not UTF-8 text (a lone surrogate) cannot go into a protobuf string: the Check is
    still answered, with a deny, instead of failing the RPC."""

    async def unencodable(request: Request) -> Decision:
        return Decision(allowed=True, status=200, reason="Allowed", headers=(("x-authz-principal", "\udc80"),))

    service = AuthorizationService(unencodable)
    response = decode(await service.check(envoy_check(), None))  # type: ignore[arg-type]
    assert response.denied_response.status.code == 500
    assert json.loads(response.denied_response.body)["reason"] == "InternalError"


async def test_empty_header_names_are_a_reasoned_deny() -> None:
    async def never(request: Request) -> Decision:
        raise AssertionError("must not be reached")

    service = AuthorizationService(never)
    check = envoy_check()
    check.attributes.request.http.headers[""] = "x"
    response = decode(await service.check(check, None))  # type: ignore[arg-type]
    assert response.denied_response.status.code == 400
    assert json.loads(response.denied_response.body)["reason"] == "MalformedRequest"


def test_a_method_that_is_not_an_upper_case_token_is_malformed() -> None:
    # Finding 3 of #17: `delete` would miss a closed `DELETE` route, land on an open `ANY` one, and still run
    # DELETE upstream (werkzeug and Django upper-case methods). Refused once, in the adapter, for every stage.
    for method in ("delete", "Get", "GET ", "G\x00T", "X" * 40):
        try:
            to_request(envoy_check(method=method))
        except MalformedRequest:
            continue
        raise AssertionError(f"{method!r} was accepted")
    for method in ("DELETE", "PROPFIND", "M-SEARCH"):
        assert to_request(envoy_check(method=method)).method == method


def test_the_scheme_comes_from_envoys_x_forwarded_proto_never_from_the_clients_scheme() -> None:
    # #17 review: over h2c a client sets `:scheme: https` itself, and Envoy copies it into `http.scheme`.
    check = envoy_check()
    del check.attributes.request.http.headers["x-forwarded-proto"]
    assert to_request(check).scheme == "http"  # https claimed by the client: not secure
    check.attributes.request.http.headers["x-forwarded-proto"] = "http"
    assert to_request(check).scheme == "http"


def test_a_target_that_is_not_an_origin_form_path_is_malformed() -> None:
    for path in ("*", "admin", "x/admin/y", "http://h/admin"):
        try:
            to_request(envoy_check(path=path))
        except MalformedRequest:
            continue
        raise AssertionError(f"{path!r} was accepted")
