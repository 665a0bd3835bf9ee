"""The benchmark measures the shipped Envoy files: its bootstrap is `deploy/envoy/`'s but for addresses, ports and
the route answering from Envoy itself (`direct_response`, so no upstream is measured). Nothing else, the authz
cluster least of all: the figures in docs/performance.md are of what users run."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from benchmarks.harness import envoy_config, envoy_ports
from tests.conftest import REPO

ADDRESS_KEYS = frozenset({"address", "port_value", "path", "uri"})


def normalized(node: Any) -> Any:
    """`node` with every address, port and socket path replaced by a marker, and each route's action dropped."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ADDRESS_KEYS and not isinstance(value, dict | list):
                out[key] = "<address>"
            elif key in ("route", "direct_response") and isinstance(value, dict):
                out["<action>"] = "<action>"
            else:
                out[key] = normalized(value)
        return out
    if isinstance(node, list):
        return [normalized(item) for item in node]
    return node


@pytest.mark.parametrize("name", ["envoy.yaml", "envoy-http.yaml", "envoy-uds.yaml"])
def test_the_benchmark_runs_the_shipped_file(name: str) -> None:
    shipped = yaml.safe_load((REPO / "deploy" / "envoy" / name).read_text())
    socket = "/tmp/bench-{worker}.sock" if name == "envoy-uds.yaml" else ""
    ports = envoy_ports(18000, 18100, name, socket)
    measured = yaml.safe_load(envoy_config(ports, template=name))
    assert normalized(measured) == normalized(shipped)


def test_the_authz_cluster_is_the_shipped_one() -> None:
    """Spelled out for the cluster the options were measured on: every worker an endpoint, health-checked."""
    measured = yaml.safe_load(envoy_config(envoy_ports(18000, 18100)))
    cluster = next(c for c in measured["static_resources"]["clusters"] if c["name"] == "authz")
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints]
    assert ports == [18100, 18101]
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    assert cluster["health_checks"][0]["grpc_health_check"] == {}
