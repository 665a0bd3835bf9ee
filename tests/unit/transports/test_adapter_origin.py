"""The gRPC adapter's network origin (`Request.origin`): a route's `context_extensions`, else the PROXY-protocol
TLV Envoy forwards in `metadata_context` (an NLB's VPC-endpoint TLV, subtype byte first), never a header."""

from __future__ import annotations

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from sidecar.request import EMPTY_MAP
from sidecar.transports.ext_authz import PROXY_PROTOCOL_NAMESPACE, to_request


def _check(extensions: dict[str, str] | None = None, tlvs: dict[str, object] | None = None) -> CheckRequest:
    check = CheckRequest()
    http = check.attributes.request.http
    http.method, http.path, http.protocol = "GET", "/pets", "HTTP/1.1"
    http.headers.update({":authority": "api", "x-amzn-vpce-id": "vpce-from-the-client"})
    for key, value in (extensions or {}).items():
        check.attributes.context_extensions[key] = value
    if tlvs is not None:
        check.attributes.metadata_context.filter_metadata[PROXY_PROTOCOL_NAMESPACE].update(tlvs)
    return CheckRequest.FromString(check.SerializeToString())  # as it arrives: parsed from the wire


def test_a_routes_context_extensions_name_the_origin() -> None:
    request = to_request(_check({"vpce": "vpce-0123456789abcdef0", "vpc": "vpc-1", "tenant": "acme"}))
    assert dict(request.origin) == {"vpce": "vpce-0123456789abcdef0", "vpc": "vpc-1"}
    assert dict(request.context_extensions) == {"vpce": "vpce-0123456789abcdef0", "vpc": "vpc-1", "tenant": "acme"}
    assert not request.trusted_peer  # gRPC mode: no header speaks for the connection


def test_the_nlb_tlv_names_the_endpoint_without_its_subtype_byte() -> None:
    request = to_request(_check(tlvs={"vpce": "\x01vpce-0a1b2c3d4e5f60718"}))
    assert dict(request.origin) == {"vpce": "vpce-0a1b2c3d4e5f60718"}


def test_the_routes_word_wins_over_the_tlv_and_each_key_is_taken_where_it_is() -> None:
    request = to_request(_check({"vpce": "vpce-route"}, tlvs={"vpce": "\x01vpce-tlv", "vpc": "vpc-tlv"}))
    assert dict(request.origin) == {"vpce": "vpce-route", "vpc": "vpc-tlv"}


def test_values_that_are_no_id_are_no_origin() -> None:
    assert to_request(_check(tlvs={"vpce": "\x02vpce-other-subtype"})).origin is EMPTY_MAP
    assert to_request(_check(tlvs={"vpce": 7})).origin is EMPTY_MAP  # not a string TLV
    assert to_request(_check({"vpce": "vpce 1"})).origin is EMPTY_MAP
    assert to_request(_check({"vpce": ""}, tlvs={"vpce": "\x01vpce-tlv"})).origin is EMPTY_MAP  # the route said ""


def test_without_extensions_or_metadata_there_is_no_origin_whatever_the_headers_say() -> None:
    request = to_request(_check())
    assert request.origin is EMPTY_MAP
    assert request.headers["x-amzn-vpce-id"] == "vpce-from-the-client"  # still a header, never an origin
    other = to_request(_check({"tenant": "acme"}, tlvs={"other": "x"}))
    assert other.origin is EMPTY_MAP
