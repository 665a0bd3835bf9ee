"""A private API through a real Envoy: each listener tells the sidecar its network origin, and the VPC endpoint's
policy is a second gate (docs/private-apis.md).

The bootstrap is the shipped template with test-only listeners added (`_with_origin_listeners`): `private`, whose
route sets ext_authz `context_extensions: {vpce: ...}` (one listener per VPC endpoint), and `nlb`, which reads an
NLB's PROXY protocol v2 header and forwards its VPC-endpoint TLV (0xEA, subtype 0x01) in `metadata_context`. The
public `ingress` listener names no origin, and a header a client sends never stands in for one.
"""

from __future__ import annotations

import copy
import json
import socket
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidecar.harness.envoy import free_port
from tests.e2e.conftest import Stack, StackFactory

pytestmark = pytest.mark.e2e

ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"
PRIVATE_VPCE = "vpce-0123456789abcdef0"
NLB_VPCE = "vpce-0fedcba9876543210"
SPOOFED = {"x-amzn-vpce-id": PRIVATE_VPCE, "x-vpce": PRIVATE_VPCE, "vpce": PRIVATE_VPCE}
"""What a client sends to pass for a request through the endpoint (the first is the configured vpce_header)."""
PROXY_NAMESPACE = "envoy.filters.listener.proxy_protocol"


def _statement(effect: str, resource: str, condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement = {"Effect": effect, "Principal": "*", "Action": "execute-api:Invoke", "Resource": resource}
    return {**statement, "Condition": condition} if condition else statement


def _policy(path: Path, *statements: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}, indent=2))
    return path


def _config(tmp_path: Path) -> str:
    """A private API: the resource policy allows everything but /admin, which only the NLB's endpoint may call
    (`aws:SourceVpce`); the private listener's endpoint allows GET /pets/*, the NLB's callers from 10.1.0.0/16."""
    resource = _policy(
        tmp_path / "resource.json",
        _statement("Allow", f"{ARN}/*"),
        _statement("Deny", f"{ARN}/*/admin/*", {"StringNotEquals": {"aws:SourceVpce": NLB_VPCE}}),
    )
    pets = _policy(tmp_path / "pets.json", _statement("Allow", f"{ARN}/GET/pets/*"))
    near = _policy(
        tmp_path / "nlb.json", _statement("Allow", f"{ARN}/*", {"IpAddress": {"aws:VpcSourceIp": "10.1.0.0/16"}})
    )
    return f"""\
api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
resource_policy: {resource}
policy:
  private_api: true
  vpce_header: x-amzn-vpce-id
  vpc_endpoint_policies: {{{PRIVATE_VPCE}: {pets}, {NLB_VPCE}: {near}}}
authorizers:
  open: {{type: none}}
routes:
  - {{match: "ANY /{{proxy+}}", authorizer: open}}
"""


def _ext_authz(listener: dict[str, Any]) -> dict[str, Any]:
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    found = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    assert len(found) == 1
    config: dict[str, Any] = found[0]["typed_config"]
    return config


def _route(listener: dict[str, Any]) -> dict[str, Any]:
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert len(routes) == 1
    route: dict[str, Any] = routes[0]
    return route


def _copy(ingress: dict[str, Any], name: str, port: int) -> dict[str, Any]:
    listener = copy.deepcopy(ingress)
    listener["name"] = name
    listener["address"]["socket_address"]["port_value"] = port
    listener["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = name
    return listener


def _with_origin_listeners(private_port: int, nlb_port: int) -> Any:
    """An `envoy_edit` for the gRPC template: the `private` and `nlb` listeners beside `ingress`."""

    def edit(text: str) -> str:
        bootstrap = yaml.safe_load(text)
        listeners = bootstrap["static_resources"]["listeners"]
        (ingress,) = listeners
        private = _copy(ingress, "private", private_port)
        _route(private)["typed_per_filter_config"] = {
            "envoy.filters.http.ext_authz": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": {"context_extensions": {"vpce": PRIVATE_VPCE, "vpc": "vpc-0a0a0a0a0a0a0a0a0"}},
            }
        }
        nlb = _copy(ingress, "nlb", nlb_port)
        nlb["listener_filters"] = [
            {
                "name": "envoy.filters.listener.proxy_protocol",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
                    "rules": [{"tlv_type": 0xEA, "on_tlv_present": {"key": "vpce"}}],
                },
            }
        ]
        _ext_authz(nlb)["metadata_context_namespaces"] = [PROXY_NAMESPACE]
        listeners.extend([private, nlb])
        return str(yaml.safe_dump(bootstrap, sort_keys=False))

    return edit


def _proxy_v2(source: str, tlvs: list[tuple[int, bytes]]) -> bytes:
    """A PROXY protocol v2 header (TCP over IPv4) from `source`, as an NLB writes it, with these TLVs."""
    addresses = socket.inet_aton(source) + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 40000, 443)
    body = addresses + b"".join(bytes([kind]) + struct.pack("!H", len(value)) + value for kind, value in tlvs)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def _through_nlb(port: int, source: str, path: str, vpce: str | None = NLB_VPCE) -> tuple[int, str]:
    """One request through the `nlb` listener: (status, reason). `vpce` None: a PROXY header without the TLV."""
    tlvs = [(0xEA, b"\x01" + vpce.encode())] if vpce is not None else []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            _proxy_v2(source, tlvs) + f"GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".encode()
        )
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body).get("reason", "") if status != 200 else ""


def _refusal(response: httpx.Response) -> tuple[int, str, str]:
    if response.status_code == 200:
        return 200, "", ""
    answer = response.json()
    return response.status_code, answer["reason"], answer["message"]


@pytest.fixture(scope="module")
def stack(module_authz_stack: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> tuple[Stack, int, int]:
    """One stack for the three listener tests: they only send requests, which leave nothing behind."""
    private_port, nlb_port = free_port(), free_port()
    config = _config(tmp_path_factory.mktemp("private-api"))
    started = module_authz_stack(config, envoy_edit=_with_origin_listeners(private_port, nlb_port))
    return started, private_port, nlb_port


def test_the_private_listener_allows_what_its_endpoint_policy_allows(stack: tuple[Stack, int, int]) -> None:
    running, private_port, _ = stack
    with httpx.Client(base_url=f"http://127.0.0.1:{private_port}", timeout=10) as private:
        allowed = private.get("/pets/7")
        assert allowed.status_code == 200, running.logs()
        assert allowed.json()["path"] == "/pets/7"  # the upstream answered
        status, reason, message = _refusal(private.get("/orders/7"))
        assert (status, reason) == (403, "AccessDenied")
        assert message.endswith("because no VPC endpoint policy allows the execute-api:Invoke action")
        status, reason, message = _refusal(private.get("/admin/x"))  # the resource policy's aws:SourceVpce Deny
        assert (status, reason) == (403, "AccessDenied") and message.endswith("with an explicit deny")


def test_the_public_listener_is_denied_and_a_client_sent_origin_never_counts(stack: tuple[Stack, int, int]) -> None:
    running, _, _ = stack
    for headers in ({}, SPOOFED):
        status, reason, message = _refusal(running.client.get("/pets/7", headers=headers))
        assert (status, reason) == (403, "AccessDenied"), running.logs()
        assert message.endswith("because the request did not come through a VPC endpoint")


def test_the_nlbs_vpc_endpoint_tlv_names_the_endpoint_and_the_client_address(stack: tuple[Stack, int, int]) -> None:
    running, _, nlb_port = stack
    assert _through_nlb(nlb_port, "10.1.2.3", "/orders/7") == (200, ""), running.logs()
    assert _through_nlb(nlb_port, "10.1.2.3", "/admin/x") == (200, "")  # the resource policy admits this endpoint
    assert _through_nlb(nlb_port, "10.9.9.9", "/orders/7") == (403, "AccessDenied")  # aws:VpcSourceIp outside
    assert _through_nlb(nlb_port, "10.1.2.3", "/orders/7", vpce=None) == (403, "AccessDenied")  # no TLV: no origin
    assert _through_nlb(nlb_port, "10.1.2.3", "/orders/7", vpce="vpce-0000000000000000a") == (403, "AccessDenied")


def _http_mode_origin(private_port: int) -> Any:
    """An `envoy_edit` for the HTTP template: every listener removes a client's `x-amzn-vpce-id`; the `private`
    one then sets its endpoint's in the authorization request (`authorization_request.headers_to_add`)."""

    def edit(text: str) -> str:
        bootstrap = yaml.safe_load(text)
        listeners = bootstrap["static_resources"]["listeners"]
        (ingress,) = listeners
        manager = ingress["filter_chains"][0]["filters"][0]["typed_config"]
        (mutation,) = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.header_mutation"]
        mutation["typed_config"]["mutations"]["request_mutations"].append({"remove": "x-amzn-vpce-id"})
        private = _copy(ingress, "private", private_port)
        request = _ext_authz(private)["http_service"]["authorization_request"]
        request["headers_to_add"].append({"key": "x-amzn-vpce-id", "value": PRIVATE_VPCE})
        listeners.append(private)
        return str(yaml.safe_dump(bootstrap, sort_keys=False))

    return edit


def test_http_mode_believes_the_origin_header_only_as_envoy_sets_it(authz_stack: StackFactory, tmp_path: Path) -> None:
    private_port = free_port()
    running = authz_stack(_config(tmp_path), template="envoy-http.yaml", envoy_edit=_http_mode_origin(private_port))
    with httpx.Client(base_url=f"http://127.0.0.1:{private_port}", timeout=10) as private:
        assert private.get("/pets/7", headers={"x-amzn-vpce-id": NLB_VPCE}).status_code == 200, running.logs()
        assert _refusal(private.get("/orders/7"))[:2] == (403, "AccessDenied")  # the endpoint policy's word
    for headers in ({}, SPOOFED):
        status, reason, message = _refusal(running.client.get("/pets/7", headers=headers))
        assert (status, reason) == (403, "AccessDenied"), running.logs()
        assert message.endswith("because the request did not come through a VPC endpoint")
