"""The benchmark measures the shipped Envoy files: its bootstrap is `deploy/envoy/`'s but for addresses, ports and
the route answering from Envoy itself (`direct_response`, so no upstream is measured). Nothing else, the authz
cluster least of all: the figures in docs/performance.md are of what users run."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks import scenarios
from benchmarks.harness import Row, add_added, envoy_config, envoy_ports, native_jwt_config, offload_config
from benchmarks.load import LoadResult
from sidecar.harness.envoy import validate_envoy_config
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


def test_the_native_and_offloaded_floors_are_valid_envoy_files(tmp_path: Path) -> None:
    """The native jwt_authn floors and the offloaded rendering load in Envoy (`--mode validate`), and keep the
    shipped listener answering from Envoy: the offloaded route decided by jwt_authn + rbac, without ext_authz."""
    fx = scenarios.Fixtures(tmp_path, "127.0.0.1:18000", cold_tokens=1)
    ports = envoy_ports(18000, 18100)
    warm = scenarios.jwt_offload(fx)
    texts = {
        "cached": native_jwt_config(ports, fx.jwks_file, cached=True),
        "uncached": native_jwt_config(ports, fx.jwks_file, cached=False),
        "offload": offload_config(scenarios.sidecar_config([warm]), ports, tmp_path),
    }
    for name, text in texts.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        done = validate_envoy_config(path)
        assert done.returncode == 0, (name, done.stdout + done.stderr)
        doc = yaml.safe_load(text)
        hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        names = [f["name"] for f in hcm["http_filters"]]
        assert "envoy.filters.http.jwt_authn" in names, name
        routes = [r for v in hcm["route_config"]["virtual_hosts"] for r in v["routes"]]
        assert all("route" not in r for r in routes), name  # nothing proxied: no upstream is measured
    native = yaml.safe_load(texts["cached"])["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    jwt_authn = next(f for f in native["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn")
    providers = jwt_authn["typed_config"]["providers"]
    assert providers["bench"]["jwt_cache_config"] == {"jwt_cache_size": 100}
    assert "jwt_cache_config" not in texts["uncached"]
    offloaded = yaml.safe_load(texts["offload"])["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    jwt_route = next(
        r for r in offloaded["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] if "/jwt" in repr(r["match"])
    )
    per_route = jwt_route["typed_per_filter_config"]
    assert any(v.get("disabled") for k, v in per_route.items() if "ext_authz" in k), per_route


def test_added_cpu_is_over_envoy_alone_of_the_same_mode() -> None:
    """`added_cpu_us` sums Envoy's, the server's and its helper's CPU per request minus Envoy alone's; rows not
    through Envoy get none."""
    result = LoadResult(requests=100, seconds=1.0, errors=0, p50_us=1, p90_us=1, p99_us=1, max_us=1)
    alone = Row("envoy-only", "", "envoy", "saturation", result, None, 20.0)
    paced = Row("envoy-only", "", "envoy", "fixed-rate", result, None, 40.0)
    jwt = Row("jwt-warm", "", "envoy", "saturation", result, 30.0, 50.0)
    helped = Row("lambda-remote", "", "envoy", "fixed-rate", result, 10.0, 60.0, helper_cpu_us=10.0)
    direct = Row("jwt-warm", "", "grpc-direct", "saturation", result, 25.0, None)
    add_added([alone, paced, jwt, helped, direct])
    assert (jwt.added_cpu_us, jwt.added_vs_envoy) == (60.0, 3.0)
    assert (helped.added_cpu_us, helped.added_vs_envoy) == (40.0, 1.0)
    assert direct.added_cpu_us is None and alone.added_cpu_us is None
    assert jwt.as_dict()["added_cpu_us"] == 60.0 and jwt.as_dict()["added_vs_envoy"] == 3.0


def test_the_hop_cost_variants_are_valid_envoy_files(tmp_path: Path) -> None:
    """`benchmarks.hop_cost` measures Envoy files that load (`--mode validate`): the first is exactly the bootstrap
    the `jwt-warm` row runs, every variant keeps ext_authz but Envoy alone, each single change differs from the
    shipped file and each step from the one before (a misspelt key would measure the shipped file twice), and a
    no-op variant is the shipped file but for its authz endpoints."""
    from benchmarks import hop_cost

    fx = scenarios.Fixtures(tmp_path, "127.0.0.1:18000", cold_tokens=1)
    ports = envoy_ports(18000, 18100)
    found = hop_cost.variants(scenarios.sidecar_config([scenarios.jwt_warm(fx)]), ports, tmp_path)
    noop = hop_cost.noop_variant(ports, 18200)
    names = [name for name, _ in found]
    shipped = yaml.safe_load(envoy_config(ports))
    assert found[0] == (hop_cost.SHIPPED, shipped)
    assert len(names) == len(set(names)) == 2 + len(hop_cost.ALTERNATIVES) + len(hop_cost.STEPS) + 1
    for index, (name, doc) in enumerate([*found, (hop_cost.NOOP, noop)]):
        path = tmp_path / f"variant-{index}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        done = validate_envoy_config(path)
        assert done.returncode == 0, (name, done.stdout + done.stderr)
        filters = [f["name"] for f in hop_cost.hcm(doc)["http_filters"]]
        assert any("ext_authz" in f for f in filters) == (name != names[-1]), name
    alternatives = found[2 : 2 + len(hop_cost.ALTERNATIVES)]
    assert all(doc != shipped for _, doc in alternatives)
    steps = [shipped] + [doc for _, doc in found[2 + len(hop_cost.ALTERNATIVES) : -1]]
    assert all(after != before for before, after in itertools.pairwise(steps))
    skip = hop_cost._ext_authz(alternatives[0][1])[0]
    assert skip["grpc_service"]["envoy_grpc"]["skip_envoy_headers"] is True
    trimmed = hop_cost._ext_authz(found[-2][1])[0]
    assert trimmed["allowed_headers"] == {"patterns": [{"exact": "authorization"}]}
    assert "with_request_body" not in trimmed and "include_peer_certificate" not in trimmed
    assert normalized(noop) == normalized(shipped) and noop != shipped


def test_the_no_op_lean_server_answers_the_given_bytes(tmp_path: Path) -> None:
    """`noop_lean_grpc --response FILE` (hop_cost's no-op answering the sidecar's own bytes) answers every Check with
    exactly those bytes, and a bare OK without it."""
    from envoy.service.auth.v3.external_auth_pb2 import CheckResponse

    from benchmarks.harness import grpc_answer, noop_grpc_server
    from benchmarks.noop_grpc_authz import OK_RESPONSE
    from sidecar.harness.envoy import free_port

    answer = CheckResponse()
    answer.status.code = 0
    header = answer.ok_response.headers.add().header
    header.key, header.value = "x-authz-principal", "someone"
    path = tmp_path / "answer.bin"
    path.write_bytes(answer.SerializeToString())
    for response, expected in ((path, path.read_bytes()), (None, OK_RESPONSE)):
        port = free_port()
        with noop_grpc_server(port, "benchmarks.noop_lean_grpc", response=response):
            assert grpc_answer(port, b"") == expected


def test_the_calibration_no_ops_burn_cpu_or_wait_before_answering() -> None:
    """hop_cost's calibrations: `--spin-us` spends that much CPU in the server per Check, `--delay-us` that much
    time without CPU; both still answer OK, and only the lean no-op takes `--delay-us`."""
    import time

    from benchmarks import procs
    from benchmarks.harness import grpc_answer, noop_grpc_server
    from benchmarks.hop_cost import CALIBRATIONS, NOOPS
    from benchmarks.noop_grpc_authz import OK_RESPONSE
    from sidecar.harness.envoy import free_port

    assert len({noop.name for noop in NOOPS + CALIBRATIONS}) == len(NOOPS + CALIBRATIONS)
    calls = 20
    for spin_us, delay_us in ((20_000.0, 0.0), (0.0, 20_000.0)):
        port = free_port()
        with noop_grpc_server(port, "benchmarks.noop_lean_grpc", spin_us=spin_us, delay_us=delay_us) as server:
            assert grpc_answer(port, b"") == OK_RESPONSE  # connected and warm
            cpu_before, started = sum(procs.tree_cpu(server.pid).values()), time.monotonic()
            for _ in range(calls):
                assert grpc_answer(port, b"") == OK_RESPONSE
            cpu = sum(procs.tree_cpu(server.pid).values()) - cpu_before
            elapsed = time.monotonic() - started
        assert elapsed >= calls * 0.02  # each answer came no sooner than 20 ms after its Check
        if spin_us:
            assert cpu >= calls * 0.02 * 0.9  # the wait was spent on the CPU
        else:
            assert cpu < calls * 0.02 / 2  # the wait was a timer
    with pytest.raises(ValueError, match="--delay-us"):
        noop_grpc_server(free_port(), "benchmarks.noop_grpc_authz", delay_us=1.0)
