"""The fault-injection soak (issue #25): a bounded run on 127.0.0.1 of a real Envoy (the shipped TLS bootstrap,
`envoy-mtls.yaml`'s rendering, its authz cluster listing two sidecar instances' workers) in front of
`authz-sidecar serve --workers 2`, with a real Redis, a JWKS issuer the soak controls, a SigV4 credential file,
a Lambda-style handler, API keys with usage plans, a rate-based rule and mutual TLS, driven at a fixed rate by a
mix whose every answer is known in advance (`soak_mix`), while faults are injected one phase at a time.

Run: `python -m benchmarks.soak [--minutes 10] [--rate 120] [--out benchmarks/results/soak]` (`make soak
SOAK_MINUTES=N`). Phases share the run equally (`PHASES`, each at least `MIN_PHASE` seconds, longer while a
fault's effect is awaited: every wait polls a condition with a deadline). Writes results.json, results.md and
soak.png to `--out`; exits 1 when a request was wrongly allowed or denied, a 5xx was unexplained, a process
crashed, or the long-lived workers' RSS grew more than 5% after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.harness.demo import SidecarProcess, config_with_ports
from sidecar.harness.envoy import TLS_DIR, EnvoyProcess, free_port

from . import procs
from .harness import REPO, envoy_config, envoy_ports, sidecar
from .soak_driver import Driver, Record
from .soak_faults import JwksIssuer, RedisControl, Slowloris, port_accepts
from .soak_heap import HeapTrace
from .soak_mix import Kind, Material, State, schedule
from .soak_report import PhaseSpan, budgets, headline_growth, plot, rss_growth, summarize, write_markdown

PHASES = (
    "quiet",
    "redis-kill",
    "redis-pause",
    "redis-garbage",
    "jwks-down",
    "jwks-slow",
    "jwks-oversized",
    "jwks-garbage",
    "jwks-rotation",
    "config-reloads",
    "credentials-rewrite",
    "worker-kill",
    "side-load",
    "rolling-restart",
    "quiet-end",
)
MIN_PHASE = 3.0
WORKERS = 2
RSS_LIMIT_PCT = 5.0
ENVOY_COUNTERS = (
    "http.ingress.ext_authz.",
    "http.ingress.downstream_rq_2xx",
    "http.ingress.downstream_rq_4xx",
    "http.ingress.downstream_rq_5xx",
    "http.ingress.downstream_rq_rx_reset",
    "http.ingress.downstream_cx_destroy_remote_active_rq",
    "cluster.authz.upstream_cx_connect_fail",
    "cluster.authz.upstream_cx_destroy_remote_with_active_rq",
    "cluster.authz.upstream_rq_timeout",
    "cluster.authz.upstream_rq_pending_failure_eject",
    "cluster.authz.internal.upstream_rq_5",
)
"""Envoy's own count of what it decided and failed: ext_authz ok/denied/error/failure_mode_allowed, the answers
by class, and the authz cluster's failures (connect failures, resets, timeouts, 5xx gRPC calls)."""
DEFAULT_OUT = REPO / "benchmarks" / "results" / "soak"


# -- the sidecar's processes, Envoy's view of them, metrics ------------------------------------------------


@dataclass
class Instance:
    """One `serve --workers 2` (the supervisor and its workers), on grpc_port (+1)."""

    name: str
    grpc_port: int
    exits: ExitStack
    process: SidecarProcess

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.process.admin_port}"

    @property
    def ports(self) -> set[int]:
        return {self.grpc_port + k for k in range(WORKERS)}


def start_instance(name: str, config_text: str, grpc_port: int, env: dict[str, str] | None = None) -> Instance:
    exits = ExitStack()
    process = exits.enter_context(sidecar(config_text, grpc_port, workers=WORKERS, env=env))
    return Instance(name, grpc_port, exits, process)


def stable_ports(count: int, attempts: int = 200) -> int:
    """The first of `count` consecutive ports free now and below the kernel's ephemeral range, for what the soak
    binds again minutes later (Redis and the JWKS issuer after their faults, instance B's workers): a port of the
    ephemeral range can meanwhile become some client connection's local port (it did: B's worker could not
    bind)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(attempts):
        first = random.randrange(max(1024, low - 12_000), low - count)
        with ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise OSError(f"no {count} consecutive free ports below {low}")


def get_json(url: str) -> dict[str, Any]:
    """A JSON answer, whatever its status (a supervisor's /readyz is 503 while a worker restarts); {} on failure."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read() or b"{}"))
    except (OSError, ValueError):
        return {}


def workers_of(instance: Instance) -> list[int]:
    """The worker pids the supervisor reports (alive ones)."""
    body = get_json(f"{instance.admin}/readyz")
    return [int(w["pid"]) for w in body.get("workers", []) if w.get("alive") and w.get("pid")]


def metric_sum(instance: Instance, name: str, **labels: str) -> float:
    """The sum over every worker (the supervisor's multiprocess /metrics) of `name`'s samples with `labels`."""
    try:
        with urllib.request.urlopen(f"{instance.admin}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def healthy_ports(envoy: EnvoyProcess) -> set[int]:
    """The authz cluster's endpoints Envoy's health check calls healthy now."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/clusters", timeout=2) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return set()
    out = set()
    for line in lines:
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "authz" and parts[2] == "health_flags" and parts[3] == "healthy":
            out.add(int(parts[1].rsplit(":", 1)[1]))
    return out


def envoy_counters(envoy: EnvoyProcess) -> dict[str, int]:
    try:
        stats = envoy.stats()
    except OSError:
        return {}
    return {k: v for k, v in stats.items() if k.startswith(ENVOY_COUNTERS)}


async def poll(condition: Callable[[], Any], within: float, interval: float = 0.1) -> bool:
    """Poll `condition` (run in a thread: it may do I/O) until truthy or `within` seconds; whether it became true."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return True
        await asyncio.sleep(interval)
    return False


# -- the run ---------------------------------------------------------------------------------------------


@dataclass
class Soak:
    """Everything one run starts, what it injects, and what it observes."""

    directory: Path
    minutes: float
    rate: float
    material: Material = field(init=False)
    redis: RedisControl = field(init=False)
    jwks: JwksIssuer = field(init=False)
    envoy: EnvoyProcess = field(init=False)
    instances: list[Instance] = field(default_factory=list)
    listen_port: int = 0
    first_grpc: int = 0
    state: State = field(default_factory=State)
    spans: list[PhaseSpan] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    rss: list[tuple[float, int, int]] = field(default_factory=list)
    expected_deaths: set[int] = field(default_factory=set)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    origin: float = 0.0
    authz_retries: int = 0
    """Not the shipped bootstrap: ext_authz's gRPC service retries a Check this many times on a refused or reset
    connection (`with_authz_retries`), to measure what that does to the SIGKILLed worker's 503s."""
    logs: Path | None = None
    heap: HeapTrace | None = None
    """Allocation tracing in the workers, and the diff between the warm-up's end and the rolling restart
    (`soak_heap.py`); None: not traced."""
    """Where each instance's log (filtered: `keep_log`) is written at the end."""
    exits: ExitStack = field(default_factory=ExitStack)

    @property
    def phase_seconds(self) -> float:
        return max(MIN_PHASE, self.minutes * 60 / len(PHASES))

    @property
    def current(self) -> Instance:
        return self.instances[-1]

    def now(self) -> float:
        return time.perf_counter() - self.origin

    def phase(self) -> str:
        return self.spans[-1].name if self.spans else "setup"

    def config_text(self, instance_port: int, admin_port: int, marker: int = 0) -> str:
        text = self.material.config(self.redis.port, self.jwks.port, marker)
        return config_with_ports(text, instance_port, admin_port)

    # -- setup and teardown ------------------------------------------------------------------------------

    def start(self) -> None:
        self.material = Material(self.directory)
        self.redis = RedisControl(stable_ports(1), self.directory)
        self.redis.start()
        self.exits.callback(self.redis.close)
        self.jwks = JwksIssuer(self.material.jwks(rotated=False), stable_ports(1))
        self.jwks.up()
        self.exits.callback(self.jwks.down)
        self.first_grpc = stable_ports(2 * WORKERS)  # instance A on the first two, B on the next two
        self.instances.append(self.new_instance("A", self.first_grpc))
        self.listen_port = free_port()
        text, admin_port = self.envoy_text()
        self.envoy = self.exits.enter_context(EnvoyProcess(text, admin_port))
        if not _wait_sync(lambda: self.current.ports <= healthy_ports(self.envoy), 30):
            raise RuntimeError(f"Envoy's health check never saw instance A's workers:\n{self.envoy.log()}")

    def new_instance(self, name: str, port: int) -> Instance:
        text = self.material.config(self.redis.port, self.jwks.port)
        instance = start_instance(name, text, port, self.heap.env if self.heap is not None else None)
        self.exits.callback(instance.exits.close)
        self.exits.callback(self.keep_log, instance)  # runs first: before the instance's files go
        return instance

    def keep_log(self, instance: Instance) -> None:
        """The instance's log without decision lines and key fetches (what went wrong, restarts, reloads)."""
        if self.logs is None:
            return
        lines = instance.process.log(tail=None).splitlines()
        kept = [line for line in lines if not line.startswith('{"time"') and " INFO httpx" not in line]
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.logs / f"sidecar-{instance.name}.log").write_text("\n".join(kept) + "\n")

    def envoy_text(self) -> tuple[str, int]:
        """The shipped mTLS bootstrap (Envoy terminating TLS, asking for client certificates) with its TLS files
        made here (`Material`: server.crt, server.key), its authz cluster listing both instances' worker ports,
        answering from Envoy itself; and its admin port."""
        ports = envoy_ports(self.listen_port, self.first_grpc, "envoy-mtls.yaml")
        ports = dataclasses.replace(ports, authz_workers=2 * WORKERS, private_port=free_port())
        text = envoy_config(ports, True, "envoy-mtls.yaml").replace(f"{TLS_DIR}/", f"{self.directory}/")
        if self.authz_retries:
            text = with_authz_retries(text, self.authz_retries)
        return text, ports.admin_port

    # -- the loop ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        kinds = self.material.kinds()
        driver = Driver(self.listen_port, self.directory, schedule(kinds), self.rate, self.state, self.phase)
        stop = asyncio.Event()
        self.origin = time.perf_counter()
        driving = asyncio.create_task(driver.run(stop, self.origin))
        watching = asyncio.create_task(self.watch(stop))
        try:
            for index, name in enumerate(PHASES):
                if name == "rolling-restart" and self.heap is not None:  # the long-lived workers' last moment
                    self.heap.last = await asyncio.to_thread(self.heap.snapshot, self.heap.first)
                await self.phase_run(name)
                if index == 0 and self.heap is not None:  # the warm-up's end
                    self.heap.first = await asyncio.to_thread(self.heap.snapshot, self.worker_pids())
        finally:
            stop.set()
            await driving
            await watching
        self.records.extend(driver.records)

    async def phase_run(self, name: str) -> None:
        span = PhaseSpan(name, self.now())
        span.envoy = await asyncio.to_thread(envoy_counters, self.envoy)
        fallbacks = await asyncio.to_thread(self.all_fallbacks)
        self.spans.append(span)
        action: Callable[[PhaseSpan, float], Awaitable[None]] = getattr(self, "phase_" + name.replace("-", "_"))
        await action(span, self.phase_seconds)
        after = await asyncio.to_thread(envoy_counters, self.envoy)
        span.envoy = {k: v - span.envoy.get(k, 0) for k, v in after.items() if v - span.envoy.get(k, 0)}
        span.end = self.now()
        after_fallbacks = await asyncio.to_thread(self.all_fallbacks)
        span.fallbacks = int(sum(max(0.0, n - fallbacks.get(k, 0.0)) for k, n in after_fallbacks.items()))
        span.notes["load_1m"] = procs.load_average()  # the machine's: p99 on a shared box moves with it
        print(f"[{span.end:7.1f}s] {name:<20} {json.dumps(span.notes)}", flush=True)

    async def watch(self, stop: asyncio.Event) -> None:
        """Every half second, `observe` (in a thread: it reads /proc and the supervisors' /readyz)."""
        known: dict[int, str] = {}
        while not stop.is_set():
            await asyncio.to_thread(self.observe, known)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    def worker_pids(self) -> list[int]:
        """Every live instance's workers."""
        live = [instance for instance in self.instances if instance.pid not in self.expected_deaths]
        return [pid for instance in live for pid in workers_of(instance)]

    def observe(self, known: dict[int, str]) -> None:
        """Each instance's supervisor alive and its workers' RSS; a supervisor or worker gone that the soak did not
        stop or kill is a crash."""
        for instance in list(self.instances):
            proc = instance.process.proc
            if proc is None or instance.pid in self.expected_deaths:
                continue
            if proc.poll() is not None:
                self.crashes.append({"t": round(self.now(), 1), "what": f"supervisor {instance.name} exited"})
                self.expected_deaths.add(instance.pid)
                continue
            t = self.now()
            for pid in workers_of(instance):
                known.setdefault(pid, instance.name)
                self.rss.append((round(t, 2), pid, procs.rss_bytes(pid)))
        for pid in list(known):
            if not os.path.exists(f"/proc/{pid}"):
                if pid not in self.expected_deaths:
                    what = f"worker {pid} of {known[pid]} died"
                    self.crashes.append({"t": round(self.now(), 1), "what": what, "phase": self.phase()})
                del known[pid]

    # -- phases -----------------------------------------------------------------------------------------

    async def hold(self, seconds: float) -> None:
        """The schedule itself: a phase lasts this long (the driver keeps sending meanwhile)."""
        await asyncio.sleep(max(0.0, seconds))

    def all_fallbacks(self) -> dict[str, float]:
        """Gate decisions taken without Redis so far, per running instance (any phase may have some: a busy loop
        outlasts the 50 ms timeout too)."""
        running = [i for i in self.instances if i.process.proc is not None and i.process.proc.poll() is None]
        return {i.name: metric_sum(i, "authz_limit_fallbacks_total") for i in running}

    def fallbacks(self) -> float:
        return metric_sum(self.current, "authz_limit_fallbacks_total")

    async def phase_quiet(self, span: PhaseSpan, length: float) -> None:
        await self.hold(length)

    phase_quiet_end = phase_quiet

    async def redis_fault(
        self, span: PhaseSpan, length: float, inject: Callable[[], None], undo: Callable[[], None]
    ) -> None:
        before = await asyncio.to_thread(self.fallbacks)
        await asyncio.to_thread(inject)
        began = time.monotonic()
        felt = await poll(lambda: self.fallbacks() > before, length * 2 + 5)
        await self.hold(length * 0.6 - (time.monotonic() - began))
        await asyncio.to_thread(undo)
        span.notes["fault_felt"] = felt
        span.notes["gate_fallbacks"] = int(await asyncio.to_thread(self.fallbacks) - before)
        span.notes["redis_back"] = await poll(lambda: port_accepts(self.redis.port), 10)
        await self.hold(length * 0.4)

    async def phase_redis_kill(self, span: PhaseSpan, length: float) -> None:
        await self.redis_fault(span, length, self.redis.kill, self.redis.restore)

    async def phase_redis_pause(self, span: PhaseSpan, length: float) -> None:
        await self.redis_fault(span, length, self.redis.pause, self.redis.resume)

    async def phase_redis_garbage(self, span: PhaseSpan, length: float) -> None:
        await self.redis_fault(span, length, self.redis.garbage, self.redis.restore)

    def jwks_fetches(self, outcome: str) -> float:
        return metric_sum(self.current, "authz_jwks_fetches_total", outcome=outcome)

    async def jwks_fault(self, span: PhaseSpan, length: float, mode: str) -> None:
        errors = await asyncio.to_thread(self.jwks_fetches, "error")
        if mode == "down":
            await asyncio.to_thread(self.jwks.down)
        else:
            self.jwks.mode = mode
        began = time.monotonic()
        span.notes["fault_felt"] = await poll(lambda: self.jwks_fetches("error") >= errors + WORKERS, length * 2 + 10)
        await self.hold(length * 0.7 - (time.monotonic() - began))
        span.notes["jwks_fetch_errors"] = int(await asyncio.to_thread(self.jwks_fetches, "error") - errors)
        ok = await asyncio.to_thread(self.jwks_fetches, "ok")
        if mode == "down":
            await asyncio.to_thread(self.jwks.up)
        self.jwks.mode = "ok"
        span.notes["recovered"] = await poll(lambda: self.jwks_fetches("ok") >= ok + WORKERS, 15)
        await self.hold(length * 0.3)

    async def phase_jwks_down(self, span: PhaseSpan, length: float) -> None:
        await self.jwks_fault(span, length, "down")

    async def phase_jwks_slow(self, span: PhaseSpan, length: float) -> None:
        await self.jwks_fault(span, length, "slow")

    async def phase_jwks_oversized(self, span: PhaseSpan, length: float) -> None:
        await self.jwks_fault(span, length, "oversized")

    async def phase_jwks_garbage(self, span: PhaseSpan, length: float) -> None:
        await self.jwks_fault(span, length, "garbage")

    async def phase_jwks_rotation(self, span: PhaseSpan, length: float) -> None:
        """The issuer publishes a new key beside the old one; from now on the mix's rotated tokens use it."""
        self.jwks.document = self.material.jwks(rotated=True)
        self.state.rotated = True
        await self.hold(length)

    async def phase_config_reloads(self, span: PhaseSpan, length: float) -> None:
        """Every few seconds a config file, valid and invalid in turn, and SIGHUP: the valid ones swap (a harmless
        change), the invalid ones are rejected and the last good config serves on."""
        instance = self.current
        valid = self.config_text(instance.grpc_port, instance.process.admin_port, 1)
        variants = [
            ("ok", valid),
            ("rejected", valid[: len(valid) // 2] + "\n  - [unclosed\n"),
            ("ok", self.config_text(instance.grpc_port, instance.process.admin_port, 0)),
            ("rejected", valid + "no_such_setting: 1\n"),
        ]
        count = max(4, int(length / 2.5))
        seen: dict[str, int] = {"ok": 0, "rejected": 0}
        began = time.monotonic()
        for i in range(count):
            outcome, text = variants[i % len(variants)]
            before = metric_sum(instance, "authz_config_reloads_total", source="config", outcome=outcome)
            instance.process.config_path.write_text(text)
            os.kill(instance.pid, signal.SIGHUP)
            target = before + WORKERS
            got = await poll(
                lambda o=outcome, t=target: (
                    metric_sum(instance, "authz_config_reloads_total", source="config", outcome=o) >= t
                ),
                10,
            )  # type: ignore[misc]
            seen[outcome] += int(got)
            await self.hold(began + (i + 1) * length / count - time.monotonic())
        instance.process.config_path.write_text(variants[2][1])  # the config it started with, back in place
        span.notes["reloads_observed"] = seen

    async def phase_credentials_rewrite(self, span: PhaseSpan, length: float) -> None:
        """The credential file rewritten in place, half of it first (the poller may read it so: rejected, the
        last good credentials serve on), then whole."""
        source = "credentials:iam"
        text = self.material.credentials_text()
        path = self.material.credentials
        rejected = await asyncio.to_thread(
            metric_sum, self.current, "authz_config_reloads_total", source=source, outcome="rejected"
        )
        await asyncio.to_thread(write_partially, path, text[: len(text) // 2])
        began = time.monotonic()
        span.notes["half_file_rejected"] = await poll(
            lambda: (
                metric_sum(self.current, "authz_config_reloads_total", source=source, outcome="rejected")
                >= rejected + WORKERS
            ),
            length + 10,
        )
        await self.hold(length * 0.5 - (time.monotonic() - began))
        ok_before = await asyncio.to_thread(self.credential_reloads)
        path.write_text(text)
        span.notes["whole_file_loaded"] = await poll(lambda: self.credential_reloads() >= ok_before + WORKERS, 15)
        await self.hold(length * 0.5)

    def credential_reloads(self) -> float:
        source = "credentials:iam"
        ok = metric_sum(self.current, "authz_config_reloads_total", source=source, outcome="ok")
        return ok + metric_sum(self.current, "authz_config_reloads_total", source=source, outcome="unchanged")

    async def phase_worker_kill(self, span: PhaseSpan, length: float) -> None:
        """SIGKILL one worker; the supervisor must restart it and Envoy's health check take it back."""
        instance = self.current
        before = await asyncio.to_thread(workers_of, instance)
        victim = before[0]
        self.expected_deaths.add(victim)
        began = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replaced = await poll(
            lambda: (
                len(set(workers_of(instance)) - set(before)) == 1 and get_json(f"{instance.admin}/readyz").get("ready")
            ),
            30,
        )
        span.notes["restarted_s"] = round(time.monotonic() - began, 2) if replaced else None
        healthy = await poll(lambda: instance.ports <= healthy_ports(self.envoy), 15)
        span.notes["envoy_healthy_again_s"] = round(time.monotonic() - began, 2) if healthy else None
        await self.hold(length - (time.monotonic() - began))

    async def phase_side_load(self, span: PhaseSpan, length: float) -> None:
        """A slowloris client (Envoy's listener and every worker's gRPC port) and a flood of invalid credentials
        at the mix's own rate, beside the mix."""
        stop = asyncio.Event()
        slow = Slowloris(self.listen_port, sorted(self.current.ports), per_target=16)
        flood_kinds = self.material.flood()
        flood = Driver(self.listen_port, self.directory, schedule(flood_kinds), self.rate, self.state, self.phase)
        tasks = [asyncio.create_task(slow.run(stop)), asyncio.create_task(flood.run(stop, self.origin))]
        await self.hold(length)
        stop.set()
        await asyncio.gather(*tasks)
        self.records.extend(flood.records)
        span.notes["flood_requests"] = len(flood.records)
        span.notes["slowloris"] = {
            "opened": slow.opened,
            "closed_by_peer": slow.closed_by_peer,
            "refused": slow.refused,
        }

    async def phase_rolling_restart(self, span: PhaseSpan, length: float) -> None:
        """A second instance on the other two endpoints; once Envoy's health check sees it, SIGTERM to the first
        while the mix keeps coming. The first must drain and exit 0."""
        old = self.current
        began = time.monotonic()
        try:
            new = await asyncio.to_thread(self.new_instance, "B", self.first_grpc + WORKERS)
        except RuntimeError as exc:  # B never ready: A keeps serving; the phase (and the run's checks) say so
            span.notes["second_start_error"] = str(exc)[-2000:]
            span.notes["envoy_sees_second_s"] = None
            await self.hold(length - (time.monotonic() - began))
            return
        self.instances.append(new)
        span.notes["second_ready_s"] = round(time.monotonic() - began, 2)
        seen = await poll(lambda: new.ports <= healthy_ports(self.envoy), 15)
        span.notes["envoy_sees_second_s"] = round(time.monotonic() - began, 2) if seen else None
        self.expected_deaths.update([old.pid, *await asyncio.to_thread(workers_of, old)])
        terminated = time.monotonic()
        assert old.process.proc is not None
        old.process.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(old.process.proc.wait, 30)
        except subprocess.TimeoutExpired:
            code = None
        span.notes["first_exit_code"] = code
        span.notes["first_drained_s"] = round(time.monotonic() - terminated, 2)
        await self.hold(length - (time.monotonic() - began))

    # -- results ----------------------------------------------------------------------------------------

    def results(self, kinds: dict[str, Kind]) -> dict[str, Any]:
        summary = summarize(self.records, kinds, self.spans)
        total = summary["total"]
        allowances = budgets(self.spans, WORKERS)
        over = {name: max(0, n - int(allowances[name])) for name, n in summary["allowed"].items()}
        warm = self.spans[0].end
        per_pid = rss_growth(self.rss, warm)
        growth = headline_growth(per_pid, self.spans[-1].end - warm)
        return {
            "started_utc": self.started_utc,
            "authz_retries": self.authz_retries,
            "commit": _commit(),
            "minutes": self.minutes,
            "seconds": round(self.spans[-1].end, 1),
            "rate": self.rate,
            "requests": len(self.records),
            "wrong_allows": total["wrong_allow"] + sum(over.values()),
            "wrong_denies": total["wrong_deny"],
            "reason_mismatches": total["reason_mismatch"],
            "errors_5xx": total["unexplained_5xx"],
            "expected_503": total["expected_503"],
            "fail_closed_503": total["fail_closed"],
            "transport_errors": total["error"],
            "degraded": total["degraded"],
            "crashes": len(self.crashes),
            "faults_not_felt": faults_not_felt(self.spans),
            "crash_details": self.crashes,
            "limit_allows": summary["allowed"],
            "allowances": {k: round(v, 1) for k, v in allowances.items()},
            "limit_allows_over_allowance": over,
            "rss_growth_pct": growth,
            "rss_per_worker": {str(k): v for k, v in per_pid.items()},
            "phases": summary["phases"],
            "examples": summary["examples"],
            "tracemalloc_growth": self.heap.growth() if self.heap is not None else None,
        }

    started_utc: str = ""


AUTHZ_RETRY_ON = "connect-failure,refused-stream,reset,unavailable"


def with_authz_retries(text: str, retries: int) -> str:
    """The bootstrap with a retry policy on ext_authz's gRPC service (another endpoint is tried, round robin)."""
    doc = yaml.safe_load(text)
    for listener in doc["static_resources"]["listeners"]:
        for f in listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]:
            if f["name"] == "envoy.filters.http.ext_authz":
                policy = {"retry_on": AUTHZ_RETRY_ON, "num_retries": retries}
                f["typed_config"]["grpc_service"]["retry_policy"] = policy | {
                    "retry_back_off": {"base_interval": "0.01s"}
                }
    return str(yaml.safe_dump(doc, sort_keys=False))


def write_partially(path: Path, text: str) -> None:
    """Rewrite `path` in place (truncate, write, fsync) with `text`: what a reader sees mid-write."""
    with open(path, "w") as partial:
        partial.write(text)
        partial.flush()
        os.fsync(partial.fileno())


def _wait_sync(condition: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        )
    except OSError:
        return ""
    return out.stdout.strip()


def passed(results: dict[str, Any]) -> bool:
    return (
        results["wrong_allows"] == 0
        and results["wrong_denies"] == 0
        and results["reason_mismatches"] == 0
        and results["errors_5xx"] == 0
        and results["transport_errors"] == 0
        and results["crashes"] == 0
        and results["rss_growth_pct"] <= RSS_LIMIT_PCT
        and not results["faults_not_felt"]
    )


FELT = ("fault_felt", "redis_back", "recovered", "half_file_rejected", "whole_file_loaded", "restarted_s")
FELT_TOO = ("envoy_healthy_again_s", "envoy_sees_second_s")


def faults_not_felt(spans: list[PhaseSpan]) -> list[str]:
    """Phases whose fault (or recovery from it) the sidecar never showed: the run proves nothing about them."""
    out = []
    for span in spans:
        notes = span.notes
        missing = [k for k in (*FELT, *FELT_TOO) if k in notes and notes[k] in (False, None)]
        if missing or "second_start_error" in notes or span.notes.get("first_exit_code", 0) != 0:
            out.append(span.name)
    return out


def soak(minutes: float, rate: float, out: Path, authz_retries: int = 0, trace: bool = False) -> dict[str, Any]:
    """One run; the results (also written to `out`)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="authz-soak-") as directory:
        heap = HeapTrace(Path(directory) / "tracemalloc") if trace else None
        run = Soak(Path(directory), minutes, rate, authz_retries=authz_retries, logs=out / "logs", heap=heap)
        run.started_utc = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with run.exits:
            run.start()
            uvloop.run(run.run())
        kinds = {k.name: k for k in run.material.kinds() + run.material.flood()}
        results = run.results(kinds)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(out / "results.md", results)
    plot(out / "soak.png", run.records, run.spans, bucket=max(1.0, run.spans[-1].end / 120))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fault-injection soak of the sidecar behind a real Envoy")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=120.0, help="requests per second of the mix")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--authz-retries", type=int, default=0, help="not shipped: ext_authz gRPC retries (0: none)")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="workers trace allocations and the results say where memory grew (slower workers: a leak hunt)",
    )
    args = parser.parse_args(argv)
    results = soak(args.minutes, args.rate, args.out, args.authz_retries, trace=args.tracemalloc)
    keys = ("requests", "wrong_allows", "wrong_denies", "reason_mismatches", "errors_5xx", "expected_503")
    print(json.dumps({k: results[k] for k in (*keys, "fail_closed_503", "crashes", "rss_growth_pct")}))
    if results["rss_growth_pct"] > RSS_LIMIT_PCT and results["tracemalloc_growth"] is None:
        print("RSS grew past the limit: run again with --tracemalloc to see where (results.md lists the lines)")
    return 0 if passed(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
