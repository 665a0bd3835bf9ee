"""The load harness: starts every process itself on loopback, measures the floors and the scenarios in one run,
and stops everything it started.

Stacks, in order: Envoy alone (no ext_authz); Envoy with its own jwt_authn filter (the native floors, cached
and uncached); Envoy + the no-op grpc.aio server; Envoy + the sidecar serving every scenario (one scenario with
Envoy running what `envoy-config --offload` renders); and the sidecar under `--workers 2` to measure how Envoy's
calls split over the workers.
Envoy is the shipped bootstrap (`render_envoy_config` with `SHIPPED`'s values, the authz cluster untouched: one
endpoint per worker, health-checked) with its addresses on loopback and one change: its route answers with
`direct_response`, so no upstream server sits in the measurement (`tests/unit/test_benchmark_envoy.py` holds it
to the shipped file). Each scenario is
checked once (a 200 through Envoy, an OK straight at gRPC) before it is loaded, so no figure is of denials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from prometheus_client.parser import text_string_to_metric_families

from sidecar.harness.demo import SidecarProcess, config_with_ports
from sidecar.harness.envoy import (
    SHIPPED,
    SHIPPED_WORKERS,
    EnvoyPorts,
    EnvoyProcess,
    free_port,
    free_ports,
    render_envoy_config,
    stop_process,
)

from . import procs, scenarios
from .load import LoadResult, ensure_tools, grpc_frame, run_h2load, run_paced, run_wrk
from .scenarios import Scenario

REPO = Path(__file__).resolve().parents[1]
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
GRPC_HEADERS = (("content-type", "application/grpc"), ("te", "trailers"))
ADMISSION = "limits-admission"
"""The name `--only` gives the two-sidecar over-admission measurement (`Profile.admission_seconds`)."""


@dataclass(frozen=True, slots=True)
class Profile:
    """How long and how hard each measurement runs."""

    name: str
    seconds: float
    warmup: float
    connections: int
    rate: int
    rate_connections: int
    direct_clients: int
    direct_streams: int
    cold_tokens: int
    workers: bool
    only: frozenset[str] | None = None
    floors: frozenset[str] | None = None
    """Floor stacks to measure (None: all). Fewer floors is for iterating on one scenario, never for a report."""
    rounds: int = 1
    """Each measurement runs this many times; see `combine`."""
    memory_tokens: int = 0
    """Distinct tokens the memory step fills the caches with (0: no memory step)."""
    floor_beside: bool = False
    """Measure the floor again right before each round of each sidecar row, with the same requests, through a
    second Envoy in front of a second no-op server kept running: at the fixed rate the gRPC floor beside each
    gRPC row (its p99), at saturation the HTTP floor beside each HTTP-mode row (its throughput). Each row can
    then be read against a floor measured seconds apart and sent the same requests, not one measured minutes
    earlier with anonymous requests: the floor's own p99 and throughput drift within a run, and a 700-byte
    bearer token is work for Envoy that an anonymous floor request does not carry."""
    admission_seconds: float = 0.0
    """Seconds of the two-sidecar over-admission measurement (`benchmarks/limits_admission.py`; 0: none). It runs
    when every scenario does, or when `only` names it (`limits-admission`) or the Redis usage-plan row."""


PROFILES = {
    "smoke": Profile(
        "smoke",
        1,
        0,
        4,
        200,
        4,
        2,
        2,
        20,
        workers=False,
        only=frozenset(
            {
                "anonymous",
                "redis-l2-hit",
                "redis-down",
                "lambda-cached",
                "lambda-uncached",
                "lambda-uncached-async",
                "lambda-remote",
                "apikey-plan-redis",
                "apikey-plan-local",
                "jwt-warm",
                "jwt-offload",
                "mtls-warm",
            }
        ),
        admission_seconds=2,
    ),
    "quick": Profile(
        "quick",
        3,
        2,
        16,
        1000,
        16,
        4,
        4,
        2000,
        workers=True,
        rounds=3,
        memory_tokens=100_000,
        floor_beside=True,
        admission_seconds=5,
    ),
    "full": Profile(
        "full",
        10,
        5,
        32,
        1000,
        16,
        4,
        8,
        10000,
        workers=True,
        rounds=5,
        memory_tokens=100_000,
        floor_beside=True,
        admission_seconds=10,
    ),
}


@dataclass
class Row:
    """One measurement: a scenario on a transport in a mode."""

    scenario: str
    title: str
    transport: str  # "envoy" (wrk/h2load through Envoy) | "grpc-direct" (h2load at the gRPC port)
    mode: str  # "saturation" | "fixed-rate"
    result: LoadResult | None = None
    sidecar_cpu_us: float | None = None
    envoy_cpu_us: float | None = None
    floor: bool = False
    load_avg: float = 0.0
    other_cores: float = 0.0
    note: str = ""
    ratios: dict[str, float] = field(default_factory=dict)
    rounds: list[dict[str, float | None]] = field(default_factory=list)
    beside_p99_us: float | None = None
    """The gRPC floor's p99 measured right before each round (median over rounds; `Profile.floor_beside`)."""
    beside_ratio: float | None = None
    """Median over rounds of this row's p99 over the floor's p99 measured right before it."""
    beside_rps: float | None = None
    """At saturation: the HTTP floor's throughput measured right before each round (median over rounds)."""
    beside_rps_ratio: float | None = None
    """Median over rounds of this row's throughput over the floor's measured right before it."""
    helper_cpu_us: float | None = None
    """CPU per Check of the process the scenario's sidecar calls (`lambda-serve`), when it has one."""
    added_cpu_us: float | None = None
    """Through Envoy: the CPU per request of Envoy, the authz server and its helper together, minus Envoy
    alone's (the `envoy-only` row of the same mode): what authorizing the request costs (`add_added`)."""
    added_vs_envoy: float | None = None
    """`added_cpu_us` over Envoy alone's own CPU per request: a stable ratio (a native filter adds a few us,
    too little to divide by)."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "title": self.title,
            "transport": self.transport,
            "mode": self.mode,
            "floor": self.floor,
            "load_avg_1m": self.load_avg,
            "other_cores": self.other_cores,
            "sidecar_cpu_us_per_check": _round(self.sidecar_cpu_us),
            "envoy_cpu_us_per_check": _round(self.envoy_cpu_us),
            "helper_cpu_us_per_check": _round(self.helper_cpu_us),
            "ratios": self.ratios,
            "note": self.note,
            "rounds": self.rounds,
            "floor_beside_p99_us": self.beside_p99_us,
            "floor_beside_rps": _round(self.beside_rps),
            "added_cpu_us": _round(self.added_cpu_us),
            "added_vs_envoy": None if self.added_vs_envoy is None else round(self.added_vs_envoy, 3),
        }
        if self.result is not None:
            out |= self.result.as_dict()
        return out


@dataclass
class RunResult:
    """Everything one run measured."""

    profile: Profile
    rows: list[Row] = field(default_factory=list)
    pending: list[dict[str, str]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    admission: list[dict[str, Any]] = field(default_factory=list)
    """The two-sidecar over-admission measurements (`limits_admission.Admission.as_dict`)."""
    metered: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per usage-plan scenario, what its sidecar's gate metrics grew by over all its rows (`gate_tallies`): every
    request metered, none refused, none decided without Redis is what its figures assume."""


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- processes ----------------------------------------------------------------------------------------------


HTTP_TEMPLATE = "envoy-http.yaml"
UDS_TEMPLATE = "envoy-uds.yaml"
"""The shipped gRPC file over Unix sockets (envoy.yaml's template, its endpoints sockets)."""


def envoy_ports(listen_port: int, authz_port: int, template: str = "envoy.yaml", socket: str = "") -> EnvoyPorts:
    """The shipped file's values (`SHIPPED[template]`: timeouts, body limit, one endpoint per worker) with every
    address on loopback: the authz endpoints `authz_port` + k (`authz_ports` reserves them), or `socket`'s
    `{worker}` paths (a Unix socket row)."""
    return dataclasses.replace(
        SHIPPED[template],
        listen_host="127.0.0.1",
        listen_port=listen_port,
        authz_port=authz_port,
        authz_socket=socket,
        upstream_port=1,
        admin_port=free_port(),
    )


def authz_ports() -> int:
    """The first of the consecutive free ports the shipped gRPC file's endpoints need (`SHIPPED_WORKERS`): a
    single-process server answers on the first, Envoy's health check leaves the others out."""
    return free_ports(SHIPPED_WORKERS)


def answer_directly(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` (a bootstrap) with every route of its ingress listener answering from Envoy (`direct_response`)
    instead of proxying: no upstream server sits in the measurement. Routes that already answer directly (a
    closed route) and every per-route filter setting are kept."""
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            if route.pop("route", None) is not None:
                route["direct_response"] = {"status": 200, "body": {"inline_string": "ok\n"}}
    return doc


def envoy_config(ports: EnvoyPorts, ext_authz: bool = True, template: str = "envoy.yaml") -> str:
    """The shipped bootstrap, answering from Envoy itself (`direct_response`), optionally without ext_authz."""
    doc = answer_directly(yaml.safe_load(render_envoy_config(ports, template)))
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    if not ext_authz:
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_authz"]
    return str(yaml.safe_dump(doc, sort_keys=False))


JWT_AUTHN = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"


def native_jwt_config(ports: EnvoyPorts, jwks_file: Path, cached: bool) -> str:
    """Envoy alone (`envoy_config` without ext_authz) with its own jwt_authn filter requiring the benchmark
    issuer's tokens on every path: the native floor of a JWT route, with Envoy's JWT cache or without it."""
    doc = yaml.safe_load(envoy_config(ports, ext_authz=False))
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    provider: dict[str, Any] = {
        "issuer": scenarios.ISSUER,
        "audiences": [scenarios.AUDIENCE],
        "local_jwks": {"filename": str(jwks_file)},
    }
    if cached:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100}
    jwt_authn = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": JWT_AUTHN,
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }
    hcm["http_filters"].insert(len(hcm["http_filters"]) - 1, jwt_authn)  # before the router
    return str(yaml.safe_dump(doc, sort_keys=False))


def offload_config(config_text: str, ports: EnvoyPorts, directory: Path) -> str:
    """What `authz-sidecar envoy-config --offload` renders for `config_text` (the gRPC bootstrap), answering from
    Envoy itself (`answer_directly`)."""
    from sidecar.config import load_config
    from sidecar.harness.envoy_config import render
    from sidecar.runtime import compile_runtime

    path = directory / "offload-sidecar.yaml"
    path.write_text(config_text)
    runtime = compile_runtime(load_config(path), private_limits=True)
    return str(yaml.safe_dump(answer_directly(yaml.safe_load(render(runtime, ports, offload=True))), sort_keys=False))


@contextlib.contextmanager
def envoy(
    listen_port: int,
    authz_port: int | None,
    template: str = "envoy.yaml",
    socket: str = "",
    fit: Callable[[EnvoyPorts], str] | None = None,
) -> Iterator[EnvoyProcess]:
    """A real Envoy (one worker thread) in front of `authz_port` (or `socket`), or with no ext_authz when both
    are absent; `fit` renders its bootstrap from the ports instead (a native or offloaded stack)."""
    ports = envoy_ports(listen_port, authz_port or 1, template, socket)
    wanted = authz_port is not None or bool(socket)
    text = fit(ports) if fit is not None else envoy_config(ports, wanted, template)
    with EnvoyProcess(text, ports.admin_port) as proc:
        yield proc


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Poll until something accepts on 127.0.0.1:port (or `proc` died)."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


@contextlib.contextmanager
def listening_child(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (run from the repository, output discarded), yielded once it accepts on `port`."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 30, proc)
        yield proc
    finally:
        stop_process(proc)


def noop_grpc_server(
    port: int,
    module: str = "benchmarks.noop_grpc_authz",
    spin_us: float = 0.0,
    response: Path | None = None,
    delay_us: float = 0.0,
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """A no-op floor server (gRPC by default, or `benchmarks.noop_http_authz`) in a child process; `response`: a
    file of CheckResponse bytes `benchmarks.noop_lean_grpc` answers with instead of a bare OK, after `delay_us`
    of waiting (lean only)."""
    lean_only = {"--response": response is not None, "--delay-us": bool(delay_us)}
    for option, given in lean_only.items():
        if given and module != "benchmarks.noop_lean_grpc":
            raise ValueError(f"{module} has no {option}: only benchmarks.noop_lean_grpc takes it")
    spin = ["--spin-us", str(spin_us)] if spin_us else []
    answer = ["--response", str(response)] if response is not None else []
    delay = ["--delay-us", str(delay_us)] if delay_us else []
    return listening_child([sys.executable, "-m", module, "--port", str(port), *spin, *answer, *delay], port)


def grpc_answer(port: int, message: bytes) -> bytes:
    """The serialized CheckResponse the server on `port` answers `message` (a serialized CheckRequest) with."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(CHECK_PATH, request_serializer=None, response_deserializer=None)
        answer: bytes = call(message, timeout=5)
    return answer


def lambda_serve(
    handler: str, port: int, concurrency: int
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """`authz-sidecar lambda-serve` hosting `handler` on 127.0.0.1:port, for the remote custom-authorizer row."""
    listen = f"127.0.0.1:{port}"
    args = [sys.executable, "-m", "sidecar", "lambda-serve", handler, "--listen", listen]
    return listening_child([*args, "--max-concurrency", str(concurrency)], port)


def redis_server(port: int, directory: Path) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """`redis-server` on 127.0.0.1:port without persistence, for the Redis scenarios."""
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    return listening_child(["redis-server", *args], port)


@contextlib.contextmanager
def sidecar(
    config_text: str,
    grpc_port: int,
    workers: int = 1,
    http_port: int | None = None,
    sockets: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[SidecarProcess]:
    """`authz-sidecar serve` (under the supervisor when workers > 1), waiting for /readyz; with `sockets`, its gRPC
    (a socket per worker) and HTTP listeners on Unix sockets in that directory instead of the ports."""
    admin = free_port()
    args = ("--workers", str(workers)) if workers > 1 else ()
    text = config_with_ports(config_text, grpc_port, admin, http_port)
    if sockets is not None:
        text = unix_listeners(text, sockets, http_port is not None)
    with SidecarProcess(text, admin, args, env=env) as proc:
        yield proc


def unix_listeners(config_text: str, sockets: Path, http: bool) -> str:
    """The config with `listen.grpc` on `sockets`/grpc-{worker}.sock (and `listen.http` on http.sock)."""
    data = yaml.safe_load(config_text)
    data["listen"] |= {"grpc": f"unix:{sockets}/grpc-{{worker}}.sock", "grpc_per_worker": True}
    if http:
        data["listen"]["http"] = f"unix:{sockets}/http.sock"
    return str(yaml.safe_dump(data, sort_keys=False))


def gate_tallies(admin_port: int) -> dict[str, float]:
    """From a sidecar's /metrics: `fallbacks` (usage-plan and rate-rule decisions taken without Redis, in any
    `on_redis_error` mode) and the usage-plan gate's outcomes (`ok`, `throttled`, `quota`, ...) over every plan."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    tallies: dict[str, float] = {"fallbacks": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "authz_limit_fallbacks_total":
                tallies["fallbacks"] += sample.value
            elif sample.name == "authz_gate_decisions_total" and sample.labels.get("gate") == "usage_plan":
                outcome = sample.labels.get("outcome", "")
                tallies[outcome] = tallies.get(outcome, 0.0) + sample.value
    return tallies


def tally_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each of `gate_tallies`' counts grew by."""
    return {name: after[name] - before.get(name, 0.0) for name in after}


# -- checks before loading ----------------------------------------------------------------------------------


def first_headers(scenario: Scenario) -> tuple[tuple[str, str], ...]:
    """The headers of the first request the scenario sends."""
    headers = scenario.headers()
    if scenario.rotation is not None:
        with open(scenario.rotation.values_file) as values:
            first = values.readline().strip()
        headers = (*headers, (scenario.rotation.header, scenario.rotation.prefix + first))
    return headers


def precheck_envoy(base: str, scenario: Scenario) -> str:
    """'' when one request of the scenario gets 200 through Envoy, else what it got."""
    request = urllib.request.Request(base + scenario.path, headers=dict(first_headers(scenario)))
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return "" if response.status == 200 else f"status {response.status}"
    except urllib.error.HTTPError as exc:
        return f"status {exc.code}: {exc.read()[:200]!r}"
    except OSError as exc:
        return f"error: {exc}"


def check_request(scenario: Scenario, host: str) -> bytes:
    """The CheckRequest Envoy would send for this scenario's request, serialized."""
    check = CheckRequest()
    http = check.attributes.request.http
    http.id, http.method, http.path, http.host, http.scheme, http.protocol = (
        "1",
        "GET",
        scenario.path,
        host,
        "http",
        "HTTP/1.1",
    )
    http.headers.update({":authority": host, ":method": "GET", ":path": scenario.path, ":scheme": "http"})
    http.headers.update({"user-agent": "bench", "x-request-id": "00000000-0000-0000-0000-000000000001"})
    http.headers.update(dict(first_headers(scenario)))
    check.attributes.source.address.socket_address.address = "127.0.0.1"
    check.attributes.source.address.socket_address.port_value = 40000
    check.attributes.source.certificate = scenario.peer_certificate  # what Envoy sends of a TLS peer's certificate
    wire: bytes = check.SerializeToString()
    return wire


def precheck_grpc(port: int, message: bytes) -> str:
    """'' when the Check straight at the gRPC port answers OK."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(CHECK_PATH, request_serializer=None, response_deserializer=CheckResponse.FromString)
        try:
            response = call(message, timeout=5)
        except grpc.RpcError as exc:
            return f"rpc error: {exc}"
    return "" if response.status.code == 0 else f"grpc status {response.status.code}"


# -- measuring ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """A load run with the CPU it cost: per request for the server and Envoy, and what everything else used."""

    result: LoadResult
    server_us: float | None
    envoy_us: float | None
    other_cores: float
    """Cores' worth of CPU used during the run by processes that are not part of it (other work on the machine)."""
    helper_us: float | None = None
    """CPU per request of the process the server calls (`lambda-serve`), when there is one."""


def measured(
    run: Callable[[], LoadResult], server_pid: int | None, envoy_pid: int | None, helper_pid: int | None = None
) -> Measured:
    """Run the load; CPU from /proc for the server tree, Envoy and the helper the server calls, and the machine's
    remaining busy time."""
    pids = {"server": server_pid, "envoy": envoy_pid, "helper": helper_pid}
    before = {name: _cpu(pid) for name, pid in pids.items()}
    busy_before, ours_before, wall_before = procs.machine_busy_seconds(), procs.own_and_children_seconds(), time.time()
    result = run()
    wall = max(time.time() - wall_before, 1e-3)
    spent = {name: _cpu(pid) - before[name] for name, pid in pids.items()}
    ours = procs.own_and_children_seconds() - ours_before + sum(spent.values())
    other = max(0.0, procs.machine_busy_seconds() - busy_before - ours) / wall
    n = max(result.requests, 1)
    per_request = {name: spent[name] * 1e6 / n if pid else None for name, pid in pids.items()}
    return Measured(result, per_request["server"], per_request["envoy"], other, per_request["helper"])


def _cpu(pid: int | None) -> float:
    """CPU seconds of `pid` and everything below it (0 without a pid)."""
    return sum(procs.tree_cpu(pid).values()) if pid else 0.0


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def combine(rounds: list[Measured]) -> Measured:
    """One figure per metric from several rounds: the median of each metric over the rounds that competed least
    with other work (within 0.1 core of the quietest); errors are summed over every round."""
    quiet = min(r.other_cores for r in rounds)
    clean = [r for r in rounds if r.other_cores <= quiet + 0.1]
    by_rps = sorted(clean, key=lambda r: r.result.rps)[(len(clean) - 1) // 2]
    result = LoadResult(
        requests=by_rps.result.requests,
        seconds=by_rps.result.seconds,
        errors=sum(r.result.errors for r in rounds),
        p50_us=_median([r.result.p50_us for r in clean]),
        p90_us=_median([r.result.p90_us for r in clean]),
        p99_us=_median([r.result.p99_us for r in clean]),
        max_us=max(r.result.max_us for r in clean),
    )
    servers = [r.server_us for r in clean if r.server_us is not None]
    envoys = [r.envoy_us for r in clean if r.envoy_us is not None]
    helpers = [r.helper_us for r in clean if r.helper_us is not None]
    return Measured(
        result,
        _median(servers) if servers else None,
        _median(envoys) if envoys else None,
        _median([r.other_cores for r in clean]),
        _median(helpers) if helpers else None,
    )


class Harness:
    """Runs one profile and collects a `RunResult`; `log` gets one line per step."""

    def __init__(self, profile: Profile, log: Callable[[str], None] = print) -> None:
        self.profile = profile
        self.log = log
        self.result = RunResult(profile)
        self.listen_port = free_port()
        self.host = f"127.0.0.1:{self.listen_port}"
        self._floor_beside: str | None = None
        """Base URL of the Envoy + no-op floor kept running beside the sidecar rows (`Profile.floor_beside`)."""
        self._http_floor_beside: str | None = None
        """The same for HTTP mode: Envoy (http_service) + the no-op HTTP server, beside the HTTP-mode rows."""
        self._helper_pid: int | None = None
        """The `lambda-serve` process of the running sidecar group, if it has one (`Scenario.lambda_serve`)."""

    @property
    def base(self) -> str:
        return f"http://{self.host}"

    def run(self) -> RunResult:
        with tempfile.TemporaryDirectory(prefix="authz-bench-") as tmp:
            fixtures = scenarios.Fixtures(Path(tmp), self.host, self.profile.cold_tokens, free_port(), free_port())
            planned = scenarios.build(fixtures)
            only = self.profile.only
            runnable = [s for s in planned if not s.pending and self._wanted(s)]
            ensure_tools(("wrk", "h2load", "redis-server") if any(s.redis for s in runnable) else ("wrk", "h2load"))
            self.result.pending = [
                {"scenario": s.name, "title": s.title, "why": s.pending} for s in planned if s.pending
            ]
            for scenario in runnable:
                if scenario.stack == "envoy-only":
                    with envoy(self.listen_port, None) as proxy:
                        self.scenario(scenario, proxy, None, None)
                elif scenario.stack == "envoy-native":
                    cached = scenario.native == "cached"
                    fit = functools.partial(native_jwt_config, jwks_file=fixtures.jwks_file, cached=cached)
                    with envoy(self.listen_port, None, fit=fit) as proxy:
                        self.scenario(scenario, proxy, None, None)
                elif scenario.stack == "noop-grpc":
                    port = authz_ports()
                    with (
                        noop_grpc_server(port, scenario.module, spin_us=scenario.spin_us) as server,
                        envoy(self.listen_port, port) as proxy,
                    ):
                        self.scenario(scenario, proxy, server.pid, port)
                elif scenario.stack == "noop-http":
                    port = free_port()
                    with (
                        noop_grpc_server(port, "benchmarks.noop_http_authz") as server,
                        envoy(self.listen_port, port, template=HTTP_TEMPLATE) as proxy,
                    ):
                        self.scenario(scenario, proxy, server.pid, None)
            on_sidecar = [s for s in runnable if s.stack == "sidecar"]
            groups: dict[tuple[str, str, bool, bool], list[Scenario]] = {}
            for s in on_sidecar:
                groups.setdefault((scenarios.settings_key(s), s.transport, s.unix, s.offload), []).append(s)
            floor_stack = contextlib.ExitStack()
            if self.profile.floor_beside and on_sidecar and self.profile.rate:
                floor_port, floor_listen = authz_ports(), free_port()
                floor_stack.enter_context(noop_grpc_server(floor_port))
                floor_stack.enter_context(envoy(floor_listen, floor_port))
                self._floor_beside = f"http://127.0.0.1:{floor_listen}"
            with floor_stack:
                self._sidecar_groups(groups, fixtures, Path(tmp))
            self._floor_beside = None
            noop = next((s for s in runnable if s.name == "noop-grpc"), None)
            if noop is not None and on_sidecar and self.profile.workers:
                self.floor_again(noop)
            if self._admission_wanted():
                self.admission()
            if self.profile.memory_tokens and (only is None or "memory" in only):
                n = self.profile.memory_tokens
                self.memory(scenarios.memory_fill(fixtures, n), "as shipped (token cache 10,000)")
                both = scenarios.memory_fill(fixtures, n, token_cache=n + 1000, policy=True)
                self.memory(both, "both caches full (a resource policy; token cache 101,000)")
            anonymous = next((s for s in on_sidecar if s.name == "anonymous"), None)  # gRPC transport
            if self.profile.workers and anonymous is not None:
                self.workers_split(scenarios.sidecar_config([anonymous]), anonymous)
        add_ratios(self.result.rows)
        add_added(self.result.rows)
        return self.result

    def _sidecar_groups(
        self, groups: dict[tuple[str, str, bool, bool], list[Scenario]], fixtures: scenarios.Fixtures, tmp: Path
    ) -> None:
        """Every sidecar scenario, one sidecar process per group of scenarios that share their settings (and
        transport, whether Envoy asks over Unix sockets, and whether Envoy runs the offloaded rendering)."""
        for index, ((_, transport, unix, offload), group) in enumerate(groups.items()):
            config = scenarios.sidecar_config(group)
            port = authz_ports()
            http_port = free_port() if transport == "envoy-http" else None
            template = HTTP_TEMPLATE if http_port else "envoy.yaml"
            sockets = tmp / f"sockets-{index}" if unix else None
            socket = ""
            if sockets is not None:
                sockets.mkdir(mode=0o750)
                template = template if http_port else UDS_TEMPLATE
                socket = f"{sockets}/http.sock" if http_port else f"{sockets}/grpc-{{worker}}.sock"
            with contextlib.ExitStack() as stack:
                if http_port and self.profile.floor_beside:
                    floor_port, floor_listen = free_port(), free_port()
                    stack.enter_context(noop_grpc_server(floor_port, "benchmarks.noop_http_authz"))
                    stack.enter_context(envoy(floor_listen, floor_port, template=HTTP_TEMPLATE))
                    self._http_floor_beside = f"http://127.0.0.1:{floor_listen}"
                    stack.callback(setattr, self, "_http_floor_beside", None)
                redis = None
                if any(s.redis for s in group):
                    redis = stack.enter_context(redis_server(fixtures.redis_port, tmp))
                served = next((s.lambda_serve for s in group if s.lambda_serve), "")
                if served:
                    host = stack.enter_context(lambda_serve(served, fixtures.lambda_port, scenarios.LAMBDA_CONCURRENCY))
                    self._helper_pid = host.pid
                    stack.callback(setattr, self, "_helper_pid", None)
                side = stack.enter_context(sidecar(config, port, http_port=http_port, sockets=sockets))
                fit = functools.partial(offload_config, config, directory=tmp) if offload else None
                proxy = stack.enter_context(envoy(self.listen_port, http_port or port, template, socket, fit))
                assert side.proc is not None
                for scenario in group:
                    if scenario.redis == "down" and redis is not None:
                        stop_process(redis)  # killed under a running sidecar, as in an outage
                    before = gate_tallies(side.admin_port) if scenario.metered else {}
                    self.scenario(scenario, proxy, side.proc.pid, None if http_port or unix else port)
                    if scenario.metered:
                        self.result.metered[scenario.name] = tally_delta(before, gate_tallies(side.admin_port))

    def _wanted(self, scenario: Scenario) -> bool:
        if scenario.is_floor:
            return self.profile.floors is None or scenario.name in self.profile.floors
        return self.profile.only is None or scenario.name in self.profile.only

    def _admission_wanted(self) -> bool:
        only = self.profile.only
        wanted = only is None or bool(only & {ADMISSION, "apikey-plan-redis"})
        return bool(self.profile.admission_seconds) and wanted

    def admission(self) -> None:
        """Two sidecars sharing one Redis, offered twice a throttle's rate (`benchmarks/limits_admission.py`)."""
        from . import limits_admission  # it builds on this module's process helpers

        measured = limits_admission.measure(self.profile.admission_seconds, log=self.log)
        self.result.admission.append(measured.as_dict())
        self.log(limits_admission.describe(measured))

    def memory(self, scenario: Scenario, variant: str) -> None:
        """RSS of one sidecar process before and after it has verified and cached `memory_tokens` distinct JWTs."""
        n = self.profile.memory_tokens
        self.log(f"  memory ({variant}): filling the caches with {n:,} distinct ES256 tokens ...")
        port = authz_ports()
        with sidecar(scenarios.sidecar_config([scenario]), port) as side, envoy(self.listen_port, port):
            assert side.proc is not None
            problem = precheck_envoy(self.base, scenario)
            if problem:
                self.log(f"  memory: skipped, a request through Envoy got {problem}")
                return
            before = procs.rss_bytes(side.proc.pid)
            rate = 1500
            fill = run_paced(self.base + scenario.path, rate, n / rate, (), scenario.rotation, 64)
            after = procs.rss_bytes(side.proc.pid)
        cached = max(fill.requests - fill.errors, 1)  # a request that failed left nothing cached
        per_entry = (after - before) / cached
        self.result.memory.append(
            {
                "variant": variant,
                "tokens_sent": fill.requests,
                "errors": fill.errors,
                "decisions_cached": cached,
                "rss_before_mb": round(before / 2**20, 1),
                "rss_after_mb": round(after / 2**20, 1),
                "bytes_per_cached_decision": round(per_entry),
            }
        )
        self.log(
            f"  memory ({variant}): RSS {before / 2**20:.0f} MB -> {after / 2**20:.0f} MB after {cached:,} distinct"
            f" tokens ({per_entry:.0f} bytes each), errors {fill.errors}"
        )

    def floor_again(self, noop: Scenario) -> None:
        """The gRPC floor once more at the end: its ratio to the first shows how much the machine drifted."""
        again = dataclasses.replace(noop, name="noop-grpc-again", title="floor again, end of run")
        port = authz_ports()
        with noop_grpc_server(port) as server, envoy(self.listen_port, port) as proxy:
            self.scenario(again, proxy, server.pid, port)

    def scenario(self, scenario: Scenario, proxy: EnvoyProcess, server_pid: int | None, grpc_port: int | None) -> None:
        """Every mode and transport of one scenario on a running stack."""
        if scenario.through_envoy and not self._through_envoy(scenario, proxy, server_pid):
            return
        if scenario.direct and grpc_port is not None:
            self._direct(scenario, server_pid, grpc_port)
        elif not scenario.through_envoy:
            self.log(f"  {scenario.name}: not measured, it goes straight at a gRPC port and this stack has none")

    def _through_envoy(self, scenario: Scenario, proxy: EnvoyProcess, server_pid: int | None) -> bool:
        """The rows through Envoy (saturation, and the fixed rate); False when the precheck failed (no row for the
        scenario is measured then)."""
        p = self.profile
        url = self.base + scenario.path
        envoy_pid = proxy.proc.pid if proxy.proc else None
        problem = precheck_envoy(self.base, scenario)
        if problem:
            self.log(f"  {scenario.name}: skipped, a request through Envoy got {problem}")
            self.add(
                Row(
                    scenario.name,
                    scenario.title,
                    scenario.transport,
                    "saturation",
                    floor=scenario.is_floor,
                    note=problem,
                )
            )
            return False
        headers = scenario.headers()
        http_beside = self._http_floor_beside if scenario.transport == "envoy-http" and not scenario.is_floor else None
        if p.warmup:
            run_wrk(url, p.connections, p.warmup, headers, scenario.rotation)
            if http_beside is not None:
                run_wrk(http_beside + scenario.path, p.connections, p.warmup, headers, scenario.rotation)
        self.add(
            self.row(
                scenario,
                scenario.transport,
                "saturation",
                lambda: run_wrk(url, p.connections, p.seconds, headers, scenario.rotation),
                server_pid,
                envoy_pid,
                None
                if http_beside is None
                else lambda: run_wrk(http_beside + scenario.path, p.connections, p.seconds, headers, scenario.rotation),
            )
        )
        if scenario.fixed_rate:
            beside = self._floor_beside if scenario.transport == "envoy" and not scenario.is_floor else None
            self.add(
                self.row(
                    scenario,
                    scenario.transport,
                    "fixed-rate",
                    lambda: run_paced(url, p.rate, p.seconds, headers, scenario.rotation, p.rate_connections),
                    server_pid,
                    envoy_pid,
                    None
                    if beside is None
                    else lambda: run_paced(
                        beside + scenario.path, p.rate, p.seconds, headers, scenario.rotation, p.rate_connections
                    ),
                )
            )
        return True

    def _direct(self, scenario: Scenario, server_pid: int | None, grpc_port: int) -> None:
        """The row straight at the gRPC port: h2load sending one pre-encoded CheckRequest (`check_request`)."""
        p = self.profile
        message = check_request(scenario, self.host)
        problem = precheck_grpc(grpc_port, message)
        if problem:
            self.log(f"  {scenario.name}: gRPC-direct skipped: {problem}")
            if not scenario.through_envoy:  # its only row: the report says why it is missing
                self.add(Row(scenario.name, scenario.title, "grpc-direct", "saturation", note=problem))
            return
        frame = grpc_frame(message)
        direct = f"http://127.0.0.1:{grpc_port}{CHECK_PATH}"

        def load(seconds: float) -> LoadResult:
            return run_h2load(
                direct, p.direct_clients, seconds, streams=p.direct_streams, headers=GRPC_HEADERS, body=frame
            )

        if p.warmup and not scenario.through_envoy:  # no load through Envoy has warmed this sidecar up
            load(p.warmup)
        self.add(self.row(scenario, "grpc-direct", "saturation", lambda: load(p.seconds), server_pid, None))

    def row(
        self,
        scenario: Scenario,
        transport: str,
        mode: str,
        run: Callable[[], LoadResult],
        server_pid: int | None,
        envoy_pid: int | None,
        floor_run: Callable[[], LoadResult] | None = None,
    ) -> Row:
        rounds = []
        beside: list[LoadResult] = []
        for _ in range(max(1, self.profile.rounds)):
            if floor_run is not None:
                beside.append(floor_run())
            rounds.append(measured(run, server_pid, envoy_pid, self._helper_pid if scenario.lambda_serve else None))
        m = combine(rounds)
        row = Row(
            scenario.name,
            scenario.title,
            transport,
            mode,
            m.result,
            m.server_us,
            m.envoy_us,
            scenario.is_floor,
            procs.load_average(),
            round(m.other_cores, 2),
            rounds=[
                {
                    "rps": round(r.result.rps, 1),
                    "p99_us": r.result.p99_us,
                    "server_cpu_us": _round(r.server_us),
                    "other_cores": round(r.other_cores, 2),
                }
                for r in rounds
            ],
            helper_cpu_us=m.helper_us,
        )
        if beside and mode == "saturation":
            row.beside_rps = _median([b.rps for b in beside])
            # A floor round with errors counted failed requests as throughput: that pair is not a comparison.
            pairs = [(r.result.rps, b.rps) for r, b in zip(rounds, beside, strict=True) if b.rps and not b.errors]
            row.beside_rps_ratio = _median([ours / floor for ours, floor in pairs]) if pairs else None
            for entry, b in zip(row.rounds, beside, strict=True):
                entry["floor_beside_rps"] = round(b.rps, 1)
                entry["floor_beside_errors"] = b.errors
        elif beside:
            row.beside_p99_us = _median([b.p99_us for b in beside])
            pairs = [(r.result.p99_us, b.p99_us) for r, b in zip(rounds, beside, strict=True) if b.p99_us]
            row.beside_ratio = _median([ours / floor for ours, floor in pairs]) if pairs else None
            for entry, b in zip(row.rounds, beside, strict=True):
                entry["floor_beside_p99_us"] = b.p99_us
        return row

    def add(self, row: Row) -> None:
        self.result.rows.append(row)
        r = row.result
        if r is None:
            return
        cpu = f"{row.sidecar_cpu_us:.0f}" if row.sidecar_cpu_us is not None else "-"
        self.log(
            f"  {row.scenario:<16} {row.transport:<11} {row.mode:<10} {r.rps:8.0f} rps  "
            f"p50 {r.p50_us / 1000:6.2f} ms  p99 {r.p99_us / 1000:6.2f} ms  server {cpu} us/check  errors {r.errors}"
            f"  others {row.other_cores:.2f} cores"
        )

    def workers_split(self, config: str, scenario: Scenario) -> None:
        """`--workers 2` behind the shipped bootstrap (one endpoint per worker): saturate through Envoy and see how
        calls (CPU) and connections spread over the workers. The other ways of reaching the workers are measured
        side by side by `benchmarks/authz_options.py`."""
        p = self.profile
        port = authz_ports()
        with sidecar(config, port, workers=2) as side, envoy(self.listen_port, port) as proxy:
            assert side.proc is not None
            supervisor = side.proc.pid
            workers = [w for w in procs.children(supervisor) if "spawn_main" in procs.cmdline(w)]
            if p.warmup:
                run_wrk(self.base + scenario.path, p.connections, p.warmup)
            before = {w: procs.cpu_seconds(w) for w in workers}
            row = self.row(
                scenario,
                "envoy",
                "workers-2/shipped",
                lambda: run_wrk(self.base + scenario.path, p.connections, p.seconds),
                supervisor,
                proxy.proc.pid if proxy.proc else None,
            )
            spent = {w: procs.cpu_seconds(w) - before[w] for w in workers}
            connections = {w: 0 for w in workers}
            for k in range(SHIPPED_WORKERS):
                for w, n in procs.established_on_port(workers, port + k).items():
                    connections[w] += n
            total = sum(spent.values()) or 1.0
            self.result.workers.append(
                {
                    "envoy": "shipped: one endpoint per worker, 100 streams per connection",
                    "connections": p.connections,
                    "rps": round(row.result.rps, 1) if row.result else None,
                    "sidecar_cpu_us_per_check": _round(row.sidecar_cpu_us),
                    "per_worker": [
                        {"cpu_share": round(spent[w] / total, 3), "authz_connections": connections[w]} for w in workers
                    ],
                }
            )
            self.add(row)
            shares = ", ".join(f"{spent[w] / total:.0%} ({connections[w]} conn)" for w in workers)
            self.log(f"  workers split behind the shipped bootstrap: {shares}")


def add_ratios(rows: list[Row]) -> None:
    """Each row's figures over the floor of its transport and mode (the no-op grpc.aio server).

    The floor is measured at the start and again at the end of the run. The reference (marked `floor`) is the
    one that competed less with other work on the machine, or, when both ran as quietly, the faster one (the
    conservative choice: our ratios can only look worse for it); the other row shows how far the floor drifted.
    """
    floors: dict[tuple[str, str], Row] = {}
    for r in rows:
        if r.scenario in ("noop-grpc", "noop-grpc-again", "noop-http") and r.result is not None:
            best = floors.get((r.transport, r.mode))
            if best is None or best.result is None or _better_floor(r, r.result, best, best.result):
                floors[(r.transport, r.mode)] = r
    for r in floors.values():
        r.note = "floor"
    for row in rows:
        floor = floors.get((row.transport, row.mode.split("/")[0] if row.mode.startswith("workers") else row.mode))
        if row.mode.startswith("workers"):
            floor = floors.get(("envoy", "saturation"))
        if floor is None or row.result is None or floor.result is None or row is floor:
            continue
        ratios = {"rps": row.result.rps / floor.result.rps if floor.result.rps else 0.0}
        if floor.result.p99_us:
            ratios["p99"] = row.result.p99_us / floor.result.p99_us
        if row.sidecar_cpu_us is not None and floor.sidecar_cpu_us:
            ratios["sidecar_cpu"] = row.sidecar_cpu_us / floor.sidecar_cpu_us
        if row.beside_ratio is not None:
            ratios["p99_beside"] = row.beside_ratio
        if row.beside_rps_ratio is not None:
            ratios["rps_beside"] = row.beside_rps_ratio
        row.ratios = {k: round(v, 3) for k, v in ratios.items()}


def add_added(rows: list[Row]) -> None:
    """Each row through Envoy: what it adds over Envoy alone of the same mode (`Row.added_cpu_us`, and that over
    Envoy alone's CPU, `Row.added_vs_envoy`). HTTP-mode rows are read against the same Envoy alone: without its
    ext_authz filter the HTTP-mode bootstrap is the gRPC one."""
    alone = {r.mode: r for r in rows if r.scenario == "envoy-only" and r.envoy_cpu_us}
    for row in rows:
        base = alone.get("saturation" if row.mode.startswith("workers") else row.mode)
        if base is None or base.envoy_cpu_us is None or row.envoy_cpu_us is None or row is base:
            continue
        if row.transport not in ("envoy", "envoy-http"):
            continue
        total = row.envoy_cpu_us + (row.sidecar_cpu_us or 0.0) + (row.helper_cpu_us or 0.0)
        row.added_cpu_us = total - base.envoy_cpu_us
        row.added_vs_envoy = row.added_cpu_us / base.envoy_cpu_us


def _better_floor(row: Row, result: LoadResult, best: Row, best_result: LoadResult) -> bool:
    if abs(row.other_cores - best.other_cores) > 0.1:
        return row.other_cores < best.other_cores
    if row.mode == "fixed-rate":
        return result.p99_us < best_result.p99_us
    return result.rps > best_result.rps
