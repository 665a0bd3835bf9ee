"""The network origin's context keys (`aws:SourceVpce`, `aws:SourceVpc`, `aws:VpcSourceIp`): from Envoy's word
(`Request.origin`) or HTTP mode's headers from a trusted peer, never from a header anyone else sent."""

from __future__ import annotations

from typing import Any

import pytest
from policy_support import API, request

from sidecar.policy import ContextSettings, EvalContext
from sidecar.request import ANONYMOUS, Request

HEADERS = ContextSettings(vpce_header="x-amzn-vpce-id", vpc_header="x-amzn-vpc-id")
SENT = {"x-amzn-vpce-id": "vpce-from-a-header", "x-amzn-vpc-id": "vpc-from-a-header"}


def _keys(req: Request, settings: ContextSettings = HEADERS) -> tuple[Any, Any, Any]:
    ctx = EvalContext(req, ANONYMOUS, API, settings)
    return ctx.get("aws:sourcevpce"), ctx.get("aws:sourcevpc"), ctx.get("aws:vpcsourceip")


def test_envoys_origin_names_the_endpoint_and_the_client_address_through_it() -> None:
    through = request(source="10.1.2.3")._replace(origin={"vpce": "vpce-0a1b", "vpc": "vpc-9f"}, protocol="HTTP/1.1")
    assert _keys(through) == ("vpce-0a1b", "vpc-9f", "10.1.2.3")


def test_in_grpc_mode_a_header_never_names_an_endpoint_even_when_configured() -> None:
    sent = request(headers=SENT)._replace(protocol="HTTP/1.1")  # a CheckRequest: Envoy passed the client's header
    assert _keys(sent) == (None, None, None)
    both = sent._replace(origin={"vpce": "vpce-envoy"})
    assert _keys(both) == ("vpce-envoy", None, "203.0.113.10")  # Envoy's word only: the header's vpc is not read


def test_in_http_mode_the_headers_count_only_from_a_trusted_peer() -> None:
    assert _keys(request(headers=SENT, trusted_peer=True)) == (
        "vpce-from-a-header",
        "vpc-from-a-header",
        "203.0.113.10",
    )
    assert _keys(request(headers=SENT)) == (None, None, None)  # an untrusted peer (or the client itself) sent them
    assert _keys(request(headers=SENT, trusted_peer=True), ContextSettings()) == (None, None, None)  # not configured


def test_envoys_origin_wins_over_a_trusted_peers_header() -> None:
    req = request(headers=SENT, trusted_peer=True)._replace(origin={"vpce": "vpce-envoy"})
    assert _keys(req)[0] == "vpce-envoy"


@pytest.mark.parametrize(
    "value",
    ["vpce-1,vpce-2", "vpce 1", "vpce-\x01", "", " vpce-1", "v" * 129],
)
def test_a_header_value_that_is_not_an_id_is_no_origin(value: str) -> None:
    req = request(headers={"x-amzn-vpce-id": value}, trusted_peer=True)
    assert _keys(req) == (None, None, None)


def test_the_vpc_alone_is_an_origin_for_the_client_address() -> None:
    req = request(source="10.9.9.9")._replace(origin={"vpc": "vpc-1"})
    assert _keys(req) == (None, "vpc-1", "10.9.9.9")


def test_vpc_source_ip_honours_trusted_hops_like_source_ip() -> None:
    req = request(source="10.0.0.1", headers={"x-forwarded-for": "172.16.0.5"})._replace(origin={"vpce": "vpce-1"})
    ctx = EvalContext(req, ANONYMOUS, API, ContextSettings(trusted_proxy_hops=1))
    assert ctx.get("aws:vpcsourceip") == ctx.get("aws:sourceip") == "172.16.0.5"
