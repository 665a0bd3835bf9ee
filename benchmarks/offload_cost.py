"""`python -m benchmarks.offload_cost [--rounds N]`: where Envoy's CPU goes on an offloaded JWT route.

The warm JWT route's `envoy-config --offload` rendering (the `jwt-offload` row), taken apart one piece at a time,
each step keeping the removals before it: the access log, the local-reply mappers, the RBAC filter with its CEL
condition, the header mutation that strips identity headers, the (per-route disabled) ext_authz filter, the
route's canonical-token header regex, jwt_authn's metadata and claim headers; then Envoy's own jwt_authn as
the native floor of the same request. Each variant: Envoy (one worker) answering `direct_response`, wrk with the
warm token for a few seconds; Envoy's CPU per request, the lowest over the rounds (the steps run in turn, so
a drift of the machine touches them all). Nothing but Envoy runs: the offloaded route never asks the sidecar.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from sidecar.harness.envoy import EnvoyProcess, free_port

from . import procs, scenarios
from .harness import envoy_ports, native_jwt_config, offload_config
from .load import run_wrk

Doc = dict[str, Any]


def hcm(doc: Doc) -> Doc:
    """The ingress listener's HTTP connection manager config (the benchmark bootstraps have one listener)."""
    found: Doc = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return found


def _routes(doc: Doc) -> list[Doc]:
    return [route for vhost in hcm(doc)["route_config"]["virtual_hosts"] for route in vhost["routes"]]


def without_filter(doc: Doc, part: str) -> None:
    """Drop every HTTP filter whose name holds `part`, and its per-route settings."""
    for route in _routes(doc):
        per_route = route.get("typed_per_filter_config") or {}
        for name in [name for name in per_route if part in name]:
            del per_route[name]
    hcm(doc)["http_filters"] = [f for f in hcm(doc)["http_filters"] if part not in f["name"]]


def _plain_match(doc: Doc) -> None:
    for route in _routes(doc):
        route["match"].pop("headers", None)


def _bare_provider(doc: Doc) -> None:
    jwt_authn = next(f for f in hcm(doc)["http_filters"] if "jwt_authn" in f["name"])
    for provider in jwt_authn["typed_config"]["providers"].values():
        for key in ("payload_in_metadata", "header_in_metadata", "failed_status_in_metadata", "claim_to_headers"):
            provider.pop(key, None)


STEPS: list[tuple[str, Callable[[Doc], None]]] = [
    ("- access log", lambda d: hcm(d).pop("access_log", None)),
    ("- local-reply mappers", lambda d: hcm(d).pop("local_reply_config", None)),
    ("- rbac (the CEL condition)", lambda d: without_filter(d, "rbac")),
    ("- header mutation", lambda d: without_filter(d, "header_mutation")),
    ("- ext_authz (disabled on the route)", lambda d: without_filter(d, "ext_authz")),
    ("- canonical-token header regex", _plain_match),
    ("- jwt_authn metadata and claim headers", _bare_provider),
]


def variants(fx: scenarios.Fixtures, ports: Any, directory: Path) -> list[tuple[str, Doc]]:
    """The full rendering, then each step's (cumulative), then the native floor."""
    doc = yaml.safe_load(offload_config(scenarios.sidecar_config([scenarios.jwt_offload(fx)]), ports, directory))
    out = [("offloaded, as rendered", copy.deepcopy(doc))]
    for name, step in STEPS:
        step(doc)
        out.append((name, copy.deepcopy(doc)))
    out.append(("native jwt_authn (the floor)", yaml.safe_load(native_jwt_config(ports, fx.jwks_file, cached=True))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.offload_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="authz-offload-cost-") as tmp:
        listen = free_port()
        fx = scenarios.Fixtures(Path(tmp), f"127.0.0.1:{listen}", cold_tokens=1)
        warm = scenarios.jwt_offload(fx)
        ports = envoy_ports(listen, free_port())
        steps = variants(fx, ports, Path(tmp))
        url = f"http://127.0.0.1:{listen}{warm.path}"
        spent: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, doc in steps:
                with EnvoyProcess(yaml.safe_dump(doc, sort_keys=False, width=1 << 30), ports.admin_port) as proxy:
                    assert proxy.proc is not None
                    run_wrk(url, 16, 1, warm.headers())  # warm-up: the JWT cache, the connections
                    before = sum(procs.tree_cpu(proxy.proc.pid).values())
                    result = run_wrk(url, 16, args.seconds, warm.headers())
                    cpu = sum(procs.tree_cpu(proxy.proc.pid).values()) - before
                    if result.errors:
                        raise SystemExit(f"{name}: {result.errors} errors (every request must get the 200)")
                    spent.setdefault(name, []).append(cpu * 1e6 / max(result.requests, 1))
    print("| Envoy bootstrap | Envoy CPU us/req (lowest of the rounds) |\n|---|---|")
    for name, values in spent.items():
        print(f"| {name} | {min(values):.1f} |")


if __name__ == "__main__":
    main()
