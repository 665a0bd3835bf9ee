"""`python -m benchmarks.authz_options`: Envoy's ways of reaching `serve --workers N`, measured side by side.

Why: the shipped bootstrap must spread Envoy's Checks over the workers (the kernel balances connections, never
calls) and should cost as little CPU as it can while doing it. Each option is the shipped bootstrap (through
`benchmarks.harness.envoy_config`) with its authz cluster edited; every option serves the warm RS256 JWT route
(`jwt-warm`) at saturation through one Envoy worker thread. Per option: requests per second, Envoy's and the
sidecar's CPU per request (the sidecar's summed over its processes) and each process's share of the sidecar CPU
(how calls split). The figures and the choice are in docs/performance.md ("Reaching the workers").
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sidecar.harness.envoy import SHIPPED_WORKERS, EnvoyProcess, free_port, free_ports

from . import procs, scenarios
from .harness import UDS_TEMPLATE, envoy_config, envoy_ports, measured, precheck_envoy, sidecar
from .load import ensure_tools, run_wrk

Cluster = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Option:
    """One way for Envoy to reach the sidecar: the authz cluster edit and how the sidecar runs."""

    name: str
    edit: Callable[[Cluster, list[str]], None]
    """Edits the authz cluster in place, given the sidecar addresses (one per endpoint)."""
    workers: int = 2
    """Workers of one `serve --workers` (endpoints == 1), or separate `serve` processes, one per endpoint."""
    endpoints: int = 1
    per_worker: bool = False
    """`listen.grpc_per_worker`: the workers of one supervisor on ports + k, the cluster left as shipped."""
    unix: bool = False
    """The sidecar on a Unix socket per worker and Envoy the shipped envoy-uds.yaml (with `per_worker`)."""
    notes: str = ""


def _h2(cluster: Cluster) -> dict[str, Any]:
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    h2: dict[str, Any] = options["explicit_http_config"]["http2_protocol_options"]
    return h2


def _common(cluster: Cluster) -> dict[str, Any]:
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    common: dict[str, Any] = options.setdefault("common_http_protocol_options", {})
    return common


def _endpoints(cluster: Cluster, addresses: list[str]) -> None:
    def endpoint(address: str) -> dict[str, Any]:
        host, _, port = address.rpartition(":")
        return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}

    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [endpoint(a) for a in addresses]}]


def streams(n: int, lb: str = "", requests: int = 0) -> Callable[[Cluster, list[str]], None]:
    """`max_concurrent_streams: n`, an lb_policy, `max_requests_per_connection`, one endpoint per address."""

    def edit(cluster: Cluster, addresses: list[str]) -> None:
        _h2(cluster)["max_concurrent_streams"] = n
        if lb:
            cluster["lb_policy"] = lb
        if requests:
            _common(cluster)["max_requests_per_connection"] = requests
        _endpoints(cluster, addresses)

    return edit


def shipped(cluster: Cluster, addresses: list[str]) -> None:
    """The shipped cluster as it is (one endpoint per worker, health-checked)."""


OPTIONS = (
    Option("shipped: endpoint per worker", shipped, per_worker=True),
    Option("shipped, 1 worker", shipped, workers=1, per_worker=True),
    Option("shipped over Unix sockets", shipped, per_worker=True, unix=True),
    Option("shipped over Unix sockets, 1 worker", shipped, workers=1, per_worker=True, unix=True),
    Option("streams-1", streams(1), notes="shipped before"),
    Option("streams-4", streams(4)),
    Option("streams-100", streams(100)),
    Option("streams-100/requests-1000", streams(100, requests=1000)),
    Option("endpoint-per-worker/rr", streams(100, "ROUND_ROBIN"), endpoints=2),
    Option("endpoint-per-worker/least", streams(100, "LEAST_REQUEST"), endpoints=2),
    Option("1-worker/streams-1", streams(1), workers=1),
    Option("1-worker/streams-100", streams(100), workers=1),
)


@contextlib.contextmanager
def sidecars(config: str, option: Option, tmp: Path) -> Iterator[tuple[list[int], list[str]]]:
    """The sidecar processes of `option`: their pids (the workers when one supervisor) and gRPC addresses (a Unix
    socket path with `{worker}`, for `unix`)."""
    with contextlib.ExitStack() as stack:
        addresses, pids = [], []
        for _ in range(option.endpoints):
            port = free_ports(SHIPPED_WORKERS)
            sockets = Path(tempfile.mkdtemp(dir=tmp)) if option.unix else None
            workers = option.workers if option.endpoints == 1 else 1
            side = stack.enter_context(sidecar(config, port, workers=workers, sockets=sockets))
            assert side.proc is not None
            addresses.append(f"{sockets}/grpc-{{worker}}.sock" if sockets else f"127.0.0.1:{port}")
            workers = [w for w in procs.children(side.proc.pid) if "spawn_main" in procs.cmdline(w)]
            pids.extend(workers or [side.proc.pid])
        yield pids, addresses


def bootstrap(option: Option, listen_port: int, addresses: list[str]) -> tuple[str, int]:
    """The benchmark's bootstrap (shipped, answering itself) with `option`'s authz cluster; (yaml, admin port)."""
    if option.unix:
        ports = envoy_ports(listen_port, 1, UDS_TEMPLATE, addresses[0])
        doc = yaml.safe_load(envoy_config(ports, template=UDS_TEMPLATE))
    else:
        ports = envoy_ports(listen_port, int(addresses[0].rpartition(":")[2]))
        doc = yaml.safe_load(envoy_config(ports))
    cluster = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "authz")
    option.edit(cluster, addresses)
    return yaml.safe_dump(copy.deepcopy(doc), sort_keys=False), ports.admin_port


@dataclass
class Stack:
    """One option's running sidecar(s) and Envoy."""

    option: Option
    url: str
    pids: list[int]
    envoy_pid: int
    results: list[dict[str, Any]]


@contextlib.contextmanager
def stack(option: Option, tmp: Path, scenario: scenarios.Scenario) -> Iterator[Stack]:
    """Start `option`'s processes and check one request gets through."""
    listen = free_port()
    config = scenarios.sidecar_config([scenario])
    if not option.per_worker:  # every worker on the one port (SO_REUSEPORT)
        config = config.replace("grpc_per_worker: true", "grpc_per_worker: false")
    with sidecars(config, option, tmp) as (pids, addresses):
        text, admin = bootstrap(option, listen, addresses)
        with EnvoyProcess(text, admin) as proxy:
            assert proxy.proc is not None
            base = f"http://127.0.0.1:{listen}"
            problem = precheck_envoy(base, scenario)
            if problem:
                raise RuntimeError(f"{option.name}: {problem}")
            yield Stack(option, base + scenario.path, pids, proxy.proc.pid, [])


def measure_round(s: Stack, headers: scenarios.Headers, seconds: float, connections: int) -> None:
    """One saturation round of one stack: rps, CPU per request of Envoy and of the sidecar, the workers' shares."""
    before = {p: procs.cpu_seconds(p) for p in s.pids}
    m = measured(lambda: run_wrk(s.url, connections, seconds, headers), None, s.envoy_pid)
    spent = {p: procs.cpu_seconds(p) - before[p] for p in s.pids}
    total = sum(spent.values()) or 1.0
    n = max(m.result.requests, 1)
    s.results.append(
        {
            "rps": m.result.rps,
            "envoy_us": m.envoy_us or 0.0,
            "sidecar_us": total * 1e6 / n,
            "shares": sorted((spent[p] / total for p in s.pids), reverse=True),
            # `measured` counted the sidecar processes as other work (it was given none of their pids)
            "other_cores": max(0.0, m.other_cores - total / max(m.result.seconds, 1e-3)),
            "errors": m.result.errors,
        }
    )


def measure(options: Sequence[Option], seconds: float, rounds: int, connections: int) -> list[dict[str, Any]]:
    """Every option's stack started at once, then `rounds` rounds taking the options in turn (paired rounds: a
    drift of the machine's other work touches every option alike); the medians over rounds."""
    with tempfile.TemporaryDirectory(prefix="authz-options-") as tmp, contextlib.ExitStack() as running:
        fixtures = scenarios.Fixtures(Path(tmp), "127.0.0.1", 1)
        scenario = scenarios.jwt_warm(fixtures)
        headers = scenario.headers()
        stacks = [running.enter_context(stack(option, Path(tmp), scenario)) for option in options]
        for s in stacks:
            run_wrk(s.url, connections, 2, headers)  # warm-up
        for _ in range(rounds):
            for s in stacks:
                measure_round(s, headers, seconds, connections)
        return [summarize(s.option, s.results) for s in stacks]


def summarize(option: Option, results: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in results), 1)

    shares = [round(statistics.median(r["shares"][i] for r in results), 2) for i in range(len(results[0]["shares"]))]
    return {
        "option": option.name,
        "rps": med("rps"),
        "envoy_us": med("envoy_us"),
        "sidecar_us": med("sidecar_us"),
        "total_us": round(med("envoy_us") + med("sidecar_us"), 1),
        "shares": shares,
        "other_cores": round(max(r["other_cores"] for r in results), 2),
        "errors": sum(r["errors"] for r in results),
        "notes": option.notes,
    }


def machine_load() -> str:
    """The 1-minute load average, for the record."""
    return f"load average before: {procs.load_average():.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.authz_options", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", help="comma-separated option names")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None
    ensure_tools(("wrk",))
    print(f"{machine_load()}")
    print("| option | rps | Envoy us/req | sidecar us/req | total | sidecar CPU split | other work (cores) |")
    print("|---|---|---|---|---|---|---|")
    options = [o for o in OPTIONS if wanted is None or o.name in wanted]
    for r in measure(options, args.seconds, args.rounds, args.connections):
        split = "/".join(f"{s:.0%}" for s in r["shares"])
        print(
            f"| {r['option']} | {r['rps']:.0f} | {r['envoy_us']} | {r['sidecar_us']} | {r['total_us']} | {split} "
            f"| {r['other_cores']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
