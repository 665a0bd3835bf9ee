"""`python -m benchmarks.hop_cost [--rounds N] [--calibrate]`: where Envoy's CPU goes on a warm JWT route.

Why: on the warm JWT row most of what authorizing adds is Envoy's, not the sidecar's (docs/performance.md,
"Envoy's side of the hop"), so the shipped bootstrap is measured beside variants of it: what `authz-sidecar
envoy-config` renders for the route's config (the per-route CheckRequest trimming); single changes
(`ALTERNATIVES`); cumulative steps (`STEPS`: the request body, the peer certificate, the identity-header
removal, the connection manager's hardening, every header but `authorization` kept off the CheckRequest); the
shipped file in front of a no-op server on our own transport, answering a bare OK (`NOOP`) or the sidecar's own
response bytes (`NOOP_SAME`), and with `--calibrate` no-ops that burn CPU (`NOOP_SPIN`) or wait (`NOOP_DELAY`) per
Check; and Envoy alone. One sidecar (`serve`, one process, the warm JWT config) serves
every variant but the no-ops; each variant is its own Envoy (one worker) answering `direct_response`, loaded by
wrk with the warm token for a few seconds, in a new order each round. Reported per variant: Envoy's and the
authz server's CPU per request and their sum, each the lowest over rounds, and the median over rounds of the
sum against the shipped file's in the same round (paired: single readings move by 20-30% between rounds here).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import random
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse

from sidecar.harness.envoy import SHIPPED_WORKERS, EnvoyPorts, EnvoyProcess, free_port

from . import procs, scenarios
from .harness import (
    answer_directly,
    authz_ports,
    check_request,
    envoy_config,
    envoy_ports,
    grpc_answer,
    noop_grpc_server,
    sidecar,
)
from .load import run_wrk
from .offload_cost import hcm, without_filter

Doc = dict[str, Any]


def _ext_authz(doc: Doc) -> list[Doc]:
    return [f["typed_config"] for f in hcm(doc)["http_filters"] if "ext_authz" in f["name"]]


def _no_body(doc: Doc) -> None:
    for config in _ext_authz(doc):
        config.pop("with_request_body", None)


def _no_peer_certificate(doc: Doc) -> None:
    for config in _ext_authz(doc):
        config.pop("include_peer_certificate", None)


def _no_header_mutation(doc: Doc) -> None:
    without_filter(doc, "header_mutation")


def _no_remote_address(doc: Doc) -> None:
    hcm(doc).pop("use_remote_address", None)


def _no_headers_timeout(doc: Doc) -> None:
    hcm(doc).pop("request_headers_timeout", None)


def _no_normalisation(doc: Doc) -> None:
    for key in ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action"):
        hcm(doc).pop(key, None)


def _no_underscore_rule(doc: Doc) -> None:
    hcm(doc).get("common_http_protocol_options", {}).pop("headers_with_underscores_action", None)


HARDENING: list[tuple[str, Callable[[Doc], None]]] = [
    ("shipped - use_remote_address", _no_remote_address),
    ("shipped - request_headers_timeout", _no_headers_timeout),
    ("shipped - path normalisation", _no_normalisation),
    ("shipped - the underscore rule", _no_underscore_rule),
]
"""The connection manager's hardening, one option at a time (`ALTERNATIVES`) or all at once (`STEPS`)."""


def _no_hardening(doc: Doc) -> None:
    for _, change in HARDENING:
        change(doc)


def _authorization_only(doc: Doc) -> None:
    for config in _ext_authz(doc):
        config["allowed_headers"] = {"patterns": [{"exact": "authorization"}]}


STEPS: list[tuple[str, Callable[[Doc], None]]] = [
    ("- request body", _no_body),
    ("- peer certificate", _no_peer_certificate),
    ("- identity-header removal (header_mutation)", _no_header_mutation),
    ("- connection-manager hardening", _no_hardening),
    ("- every header but authorization", _authorization_only),
]


def _skip_envoy_headers(doc: Doc) -> None:
    for config in _ext_authz(doc):
        config["grpc_service"]["envoy_grpc"]["skip_envoy_headers"] = True


def _raw_headers(doc: Doc) -> None:
    for config in _ext_authz(doc):
        config["encode_raw_headers"] = True


ALTERNATIVES: list[tuple[str, Callable[[Doc], None]]] = [
    ("shipped + skip_envoy_headers (no x-envoy-* on the Check)", _skip_envoy_headers),
    ("shipped + encode_raw_headers (header_map)", _raw_headers),
    *HARDENING,
]
"""Single changes to the shipped file, each on its own."""


SHIPPED = "shipped envoy.yaml (the jwt-warm row)"
"""The bootstrap the harness's `jwt-warm` row runs: every other variant is read against it."""
NOOP = "shipped envoy.yaml in front of a no-op server on our transport"
"""The same file asking `benchmarks.noop_lean_grpc` (OK to every Check, the request not even parsed): what Envoy's
ext_authz client and our HTTP/2 transport cost with no authorizing at all."""
NOOP_SAME = "shipped envoy.yaml in front of a no-op server answering the sidecar's own bytes"
"""A no-op server answering every Check with the bytes the sidecar answers this route with (its identity headers
and dynamic metadata): what Envoy pays for applying the answer, apart from how long the sidecar takes."""
SPIN_US = 30.0
"""The calibration no-op's CPU per Check: about what the sidecar spends on a warm Check beyond the no-op's own."""
DELAY_US = 300.0
"""The calibration no-op's wait per Check (a timer, no CPU): longer than the sidecar takes to answer under load."""
NOOP_SPIN = f"shipped envoy.yaml in front of a no-op burning {SPIN_US:.0f} us of CPU per Check"
"""Calibration (`--calibrate`): what the authz server's CPU alone costs Envoy, on a machine whose cores Envoy, the
server and the load generator share (a busier server delays Envoy's worker and cools its caches)."""
NOOP_DELAY = f"shipped envoy.yaml in front of a no-op waiting {DELAY_US:.0f} us per Check"
"""Calibration (`--calibrate`): what the authz server's latency alone costs Envoy (more Checks in flight, fewer
answers per wake-up), with no CPU spent on it."""


@dataclasses.dataclass(frozen=True)
class NoOp:
    """A no-op server variant: `benchmarks.noop_lean_grpc` with these options, on its own endpoint ports."""

    name: str
    response: bool = False
    """Answer with the sidecar's own bytes for the route (else a bare OK)."""
    spin_us: float = 0.0
    delay_us: float = 0.0


NOOPS = (NoOp(NOOP), NoOp(NOOP_SAME, response=True))
CALIBRATIONS = (NoOp(NOOP_SPIN, spin_us=SPIN_US), NoOp(NOOP_DELAY, delay_us=DELAY_US))


def variants(config_text: str, ports: EnvoyPorts, directory: Path, steps: bool = True) -> list[tuple[str, Doc]]:
    """The shipped file, envoy-config's rendering, the single changes, each step's (cumulative, from the shipped
    file; left out without `steps`), Envoy alone. The no-op variants are `noop_variant`'s."""
    from sidecar.config import load_config
    from sidecar.harness.envoy_config import render
    from sidecar.runtime import compile_runtime

    shipped = yaml.safe_load(envoy_config(ports))
    out = [(SHIPPED, copy.deepcopy(shipped))]
    path = directory / "hop-cost-sidecar.yaml"
    path.write_text(config_text)
    rendered = answer_directly(yaml.safe_load(render(compile_runtime(load_config(path)), ports)))
    out.append(("envoy-config's rendering of the route's config", rendered))
    for name, change in ALTERNATIVES:
        alternative = copy.deepcopy(shipped)
        change(alternative)
        out.append((name, alternative))
    for name, step in STEPS if steps else ():
        step(shipped)
        out.append((name, copy.deepcopy(shipped)))
    out.append(("Envoy alone (no ext_authz)", yaml.safe_load(envoy_config(ports, ext_authz=False))))
    return out


def noop_variant(ports: EnvoyPorts, authz_port: int) -> Doc:
    """The shipped file with its authz endpoints at `authz_port` (+ k): the same Envoy in front of another server."""
    return dict(yaml.safe_load(envoy_config(dataclasses.replace(ports, authz_port=authz_port))))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hop_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-steps", action="store_true", help="leave the cumulative steps out")
    parser.add_argument(
        "--calibrate", action="store_true", help="add no-ops that burn CPU or wait per Check (NOOP_SPIN, NOOP_DELAY)"
    )
    args = parser.parse_args()
    noops = NOOPS + (CALIBRATIONS if args.calibrate else ())
    with tempfile.TemporaryDirectory(prefix="authz-hop-cost-") as tmp:
        listen, grpc_port = free_port(), authz_ports()
        noop_ports = [authz_ports() for _ in noops]
        endpoints = [set(range(p, p + SHIPPED_WORKERS)) for p in (grpc_port, *noop_ports)]
        if len(set().union(*endpoints) | {listen}) != 1 + SHIPPED_WORKERS * len(endpoints):
            raise SystemExit("the servers' endpoint ports overlap: run again")  # each server must get its own Checks
        fx = scenarios.Fixtures(Path(tmp), f"127.0.0.1:{listen}", cold_tokens=1)
        warm = scenarios.jwt_warm(fx)
        config = scenarios.sidecar_config([warm])
        ports = envoy_ports(listen, grpc_port)
        measured = variants(config, ports, Path(tmp), not args.no_steps)
        measured[1:1] = [(noop.name, noop_variant(ports, port)) for noop, port in zip(noops, noop_ports, strict=True)]
        url = f"http://127.0.0.1:{listen}{warm.path}"
        spent: dict[str, list[tuple[float, float]]] = {}
        answer = Path(tmp) / "answer.bin"
        with contextlib.ExitStack() as stack:
            side = stack.enter_context(sidecar(config, grpc_port))
            answer.write_bytes(grpc_answer(grpc_port, check_request(warm, f"127.0.0.1:{listen}")))
            if CheckResponse.FromString(answer.read_bytes()).status.code != 0:
                raise SystemExit("the sidecar did not allow the warm JWT request straight at its port")
            assert side.proc is not None
            servers = {
                noop.name: stack.enter_context(
                    noop_grpc_server(
                        port,
                        "benchmarks.noop_lean_grpc",
                        spin_us=noop.spin_us,
                        response=answer if noop.response else None,
                        delay_us=noop.delay_us,
                    )
                ).pid
                for noop, port in zip(noops, noop_ports, strict=True)
            }
            for round_ in range(args.rounds):
                # a new order each round (the same orders every run, seeded by the round): the variant after an
                # idle spell (Envoy alone) must not always be the same
                for name, doc in random.Random(round_).sample(measured, len(measured)):
                    server = servers.get(name, side.proc.pid)
                    text = yaml.safe_dump(doc, sort_keys=False, width=1 << 30)
                    with EnvoyProcess(text, ports.admin_port) as proxy:
                        assert proxy.proc is not None
                        run_wrk(url, 32, 1, warm.headers())  # warm-up: the connections, the health check
                        envoy_before = sum(procs.tree_cpu(proxy.proc.pid).values())
                        server_before = sum(procs.tree_cpu(server).values())
                        result = run_wrk(url, 32, args.seconds, warm.headers())
                        envoy_cpu = sum(procs.tree_cpu(proxy.proc.pid).values()) - envoy_before
                        server_cpu = sum(procs.tree_cpu(server).values()) - server_before
                        if result.errors:
                            raise SystemExit(f"{name}: {result.errors} errors (every request must get the 200)")
                        per = 1e6 / max(result.requests, 1)
                        spent.setdefault(name, []).append((envoy_cpu * per, server_cpu * per))
    report({name: spent[name] for name, _ in measured})


def report(spent: dict[str, list[tuple[float, float]]]) -> None:
    """Per variant: the lowest Envoy CPU, the lowest authz-server CPU and the lowest of their sums over rounds,
    and the median over rounds of the sum against the shipped file's in the same round (paired, so a drift of
    the machine between rounds cancels)."""
    first = spent[SHIPPED]
    print("| Envoy bootstrap | Envoy CPU us/req | authz server CPU us/req | both | both vs shipped, paired median |")
    print("|---|---|---|---|---|")
    for name, values in spent.items():
        envoy_us, server_us = min(v[0] for v in values), min(v[1] for v in values)
        both = min(v[0] + v[1] for v in values)
        paired = statistics.median((v[0] + v[1]) / (f[0] + f[1]) for v, f in zip(values, first, strict=True))
        print(f"| {name} | {envoy_us:.1f} | {server_us:.1f} | {both:.1f} | {paired:.2f}x |")


if __name__ == "__main__":
    main()
