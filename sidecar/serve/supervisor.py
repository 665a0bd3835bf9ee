"""`authz-sidecar serve --workers N`: N serving processes on one gRPC port, watched by a supervisor.

Each worker is a fresh interpreter (multiprocessing "spawn": gRPC's core must never be forked) running the same
`Sidecar` with `reuse_port=True`, so the kernel spreads incoming connections over the workers (SO_REUSEPORT).
SO_REUSEPORT does not balance Unix domain sockets: a `unix:` listener shared by every worker is bound once,
here, and its socket passed to each worker (which accept from the one queue); with `listen.grpc_per_worker`
each worker binds its own gRPC address instead (port + index, or the path's `{worker}`), and Envoy lists one
endpoint per worker (docs/performance.md, "Reaching the workers").
Workers do not bind the admin listener: the supervisor serves `/healthz` (it is alive) and `/readyz` (every
worker is alive and ready), so probes see the group. The supervisor, modelled on uvicorn's multiprocess
supervisor, keeps N workers running:

- a worker that exits before it ever became ready during start-up means the config or the port is bad for
  everyone: all workers are stopped and `serve` exits 1 instead of crash-looping;
- a worker that dies later is restarted (after a short back-off when it keeps dying);
- SIGTERM/SIGINT drains every worker (each finishes in-flight Checks within the grace period) and exits 0;
  SIGHUP is passed on, so every worker reloads its config.

State a config keeps in one process is not shared by N of them: a config that relies on it being whole is
refused with more than one worker (`check_workers`), at start-up and on every worker's reload. Today that is
the sigv4 replay guard without `replay_redis_url`, which would accept a signed request once per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from ..authorizers.sigv4 import SigV4Settings
from ..config import (
    DEFAULT_CONFIG_NAME,
    Config,
    ConfigError,
    YamlLocator,
    default_config,
    default_config_text,
    load_config,
    parse_yaml,
)
from ..runtime import compile_runtime
from ..transports.listener import BoundSocket, bind_listener, is_unix, split_hostport, worker_address
from .admin import AdminResponse, AdminServer, json_response

log = logging.getLogger(__name__)

_POLL = 0.1
_STOP_MARGIN = 5.0
_BACKOFF_MAX = 10.0
_STABLE_AFTER = 30.0

WorkerTarget = Callable[[str | None, Any, str, int, int, dict[str, socket.socket]], None]
"""A worker's entry point: (config path, shared ready flag, log level, number of workers, this worker's index,
the listening sockets the supervisor shares by listener name)."""


def _ctx() -> Any:
    return multiprocessing.get_context("spawn")


def worker_main(
    config_path: str | None,
    ready: Synchronized[int],
    log_level: str,
    workers: int,
    index: int = 0,
    sockets: dict[str, socket.socket] | None = None,
) -> None:
    """Entry point of one worker process: serve with SO_REUSEPORT (or on the supervisor's shared `sockets`, or
    per-worker addresses), report readiness through `ready`."""
    import uvloop

    logging.basicConfig(
        level=log_level, format=f"%(asctime)s %(levelname)s %(name)s[worker {os.getpid()}]: %(message)s"
    )
    path = Path(config_path) if config_path else None
    code = uvloop.run(_serve_worker(path, ready, workers, index, sockets or {}))
    raise SystemExit(code)


def local_replay_guards(config: Config) -> dict[tuple[str | int, ...], str]:
    """Where `config` turns on a sigv4 replay guard that lives in the process only (no Redis connection)
    for at least one route: the route's own `replay_guard: true`, or the authorizer's `replay_guard` that a
    route inherits. Each setting's location maps to the authorizer's name."""
    sites: dict[tuple[str | int, ...], str] = {}
    for index, route in enumerate(config.routes):
        settings = config.authorizers.get(route.authorizer)
        if not isinstance(settings, SigV4Settings) or settings.replay_connection(config.redis) is not None:
            continue
        if route.replay_guard:
            sites[("routes", index, "replay_guard")] = route.authorizer
        elif route.replay_guard is None and settings.replay_guard:
            sites[("authorizers", route.authorizer, "replay_guard")] = route.authorizer
    return sites


def check_workers(config: Config, workers: int) -> None:
    """Refuse (`ConfigError`, located like every config error) what `config` cannot do right with `workers`
    processes: a replay guard only one process sees would accept a signed request once per worker, and limits
    counted in process would be multiplied by the number of workers."""
    if workers <= 1:
        return
    sites = local_replay_guards(config)
    gates = local_gates(config)
    shared_grpcio = _grpcio_shared_unix(config)
    if not sites and not gates and not shared_grpcio and not _per_worker_collisions(config, workers):
        return
    locator = _locator(config)
    issues = []
    for loc, other in _per_worker_collisions(config, workers):
        message = (
            f"with --workers {workers} and grpc_per_worker, worker gRPC ports run from listen.grpc's up to "
            f"{workers - 1} more, which takes listen.{other}'s: move one of them"
        )
        issues.append(locator.issue(loc, message))
    if shared_grpcio:
        message = (
            f"with --workers {workers} a Unix socket is bound once and shared, which the grpcio engine cannot "
            "serve (it binds its own); use server.grpc_engine: lean, or listen.grpc_per_worker: true with "
            "{worker} in the path"
        )
        issues.append(locator.issue(("listen", "grpc"), message))
    for loc, name in sites.items():
        message = (
            f"with --workers {workers} every worker keeps its own replay guard, so a signed request would be "
            f"accepted once per worker; set authorizers.{name}.replay_redis_url to share the guard through "
            "Redis, or serve with one worker"
        )
        issues.append(locator.issue(loc, message))
    for loc in gates:
        message = (
            f"with --workers {workers} every worker counts usage plans and rate rules on its own, so every limit "
            f"would be {workers} times what it says; define redis.{config.limits.connection} to count in Redis, "
            "or serve with one worker"
        )
        issues.append(locator.issue(loc, message))
    raise ConfigError(issues)


def _per_worker_collisions(config: Config, workers: int) -> list[tuple[tuple[str | int, ...], str]]:
    """The other TCP listeners a per-worker gRPC port range (listen.grpc's port + 0..workers-1) would take."""
    listen = config.listen
    if not listen.grpc_per_worker or listen.grpc is None or is_unix(listen.grpc):
        return []
    taken = [worker_address(listen.grpc, k) for k in range(1, workers)]
    found: list[tuple[tuple[str | int, ...], str]] = []
    for other in ("http", "admin"):
        address = getattr(listen, other)
        if address is not None and not is_unix(address) and address in taken:
            found.append((("listen", other), other))
    return found


def _grpcio_shared_unix(config: Config) -> bool:
    listen = config.listen
    unix = listen.grpc is not None and is_unix(listen.grpc)
    return unix and not listen.grpc_per_worker and config.server.grpc_engine == "grpcio"


def local_gates(config: Config) -> list[tuple[str | int, ...]]:
    """Where the config asks for limits that would be counted in process (no `redis.<limits.connection>`): the
    `usage_plans` and `rate_limits` sections."""
    if config.redis.get(config.limits.connection) is not None:
        return []
    sites: list[tuple[str | int, ...]] = []
    if config.usage_plans and config.api_keys is not None:
        sites.append(("usage_plans",))
    if config.rate_limits:
        sites.append(("rate_limits",))
    return sites


def _locator(config: Config) -> YamlLocator:
    """Line numbers for a check made after the config was loaded: its text is parsed again (an edit made in
    between could only move them; the setting named stays exact)."""
    if config.source == DEFAULT_CONFIG_NAME:
        text = default_config_text()
    elif config.source.startswith("<"):
        return YamlLocator(config.source, None)
    else:
        try:
            text = Path(config.source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return YamlLocator(config.source, None)
    try:
        return parse_yaml(text, config.source)[1]
    except ConfigError:
        return YamlLocator(config.source, None)


def worker_config(config: Config) -> Config:
    """The config a worker serves: the same, without the admin listener (the supervisor owns it)."""
    return config.model_copy(update={"listen": config.listen.model_copy(update={"admin": None})})


async def _serve_worker(
    config_path: Path | None,
    ready: Synchronized[int],
    workers: int,
    index: int,
    sockets: dict[str, socket.socket],
) -> int:
    from .server import start_sidecar

    def vet(config: Config) -> None:
        check_workers(config, workers)

    sidecar = await start_sidecar(
        config_path, reuse_port=True, adjust=worker_config, vet=vet, worker=index, inherited=sockets
    )
    if sidecar is None:
        return 1
    parent = os.getppid()
    orphaned: asyncio.Future[None] | None = None
    stopped = asyncio.ensure_future(sidecar.wait_stopped())
    while not stopped.done():
        ready.value = 1 if sidecar.state.ready and not sidecar.state.draining else 0
        if orphaned is None and os.getppid() != parent and not sidecar.state.draining:
            log.warning("supervisor %d is gone; draining", parent)  # never outlive it holding the port
            orphaned = asyncio.ensure_future(sidecar.drain_and_stop())
        await asyncio.wait({stopped}, timeout=_POLL)
    ready.value = 0
    return 0


@dataclass
class Worker:
    """One supervised worker process."""

    index: int
    process: multiprocessing.process.BaseProcess
    ready: Synchronized[int]
    started: float
    became_ready: bool = False
    failures: int = 0
    generation: int = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid


class StartupFailed(RuntimeError):
    """A worker exited before it ever became ready: the config or the port is unusable."""


class Supervisor:
    """Runs `workers` processes of `target` and keeps them running; see the module docstring."""

    def __init__(
        self,
        config_path: Path | None,
        workers: int,
        admin_address: str | None,
        *,
        grace_period: float = 10.0,
        log_level: str = "INFO",
        target: WorkerTarget = worker_main,
        sockets: Mapping[str, socket.socket] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.config_path = config_path
        self.count = workers
        self.admin_address = admin_address
        self.grace_period = grace_period
        self.log_level = log_level
        self.target = target
        self.sockets = dict(sockets or {})
        """Listening sockets every worker serves (a shared Unix socket: `shared_sockets`), by listener."""
        self.workers: list[Worker] = []
        self.restarts = 0
        self.admin: AdminServer | None = None
        self._stopping = asyncio.Event()
        self._hup = False

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def run(self, install_signals: bool = True) -> int:
        """Start the workers, supervise until asked to stop, drain them; returns the exit code."""
        if install_signals:
            self._install_signal_handlers()
        try:
            await self._start_admin()
        except OSError as exc:
            log.error("cannot listen on %s (admin): %s", self.admin_address, exc.strerror or exc)
            return 1
        self.workers = [self._spawn(i) for i in range(self.count)]
        log.info("supervisor %d: started %d workers %s", os.getpid(), self.count, [w.pid for w in self.workers])
        code = 0
        try:
            await self._supervise()
        except StartupFailed as exc:
            log.error("%s; stopping", exc)
            code = 1
        await self._stop_workers()
        if self.admin is not None:
            await self.admin.stop()
        log.info("supervisor: all workers stopped")
        return code

    def stop(self) -> None:
        """Ask the supervisor to drain every worker and return (what SIGTERM does)."""
        self._stopping.set()

    def reload(self) -> None:
        """Ask every worker to reload its config (what SIGHUP does)."""
        self._hup = True

    def is_ready(self) -> bool:
        """Every worker alive and ready, and not stopping."""
        workers = self.workers
        return (
            not self._stopping.is_set()
            and len(workers) == self.count
            and all(w.process.is_alive() and w.ready.value for w in workers)
        )

    # -- internals ------------------------------------------------------------------------------------------

    def _spawn(self, index: int, failures: int = 0, generation: int = 0) -> Worker:
        ctx = _ctx()
        ready = ctx.Value("b", 0, lock=False)
        path = str(self.config_path) if self.config_path is not None else None
        process = ctx.Process(
            target=self.target,
            args=(path, ready, self.log_level, self.count, index, self.sockets),
            name=f"authz-worker-{index}",
            daemon=False,
        )
        process.start()
        return Worker(index, process, ready, time.monotonic(), failures=failures, generation=generation)

    async def _supervise(self) -> None:
        restart_at: dict[int, float] = {}
        while not self._stopping.is_set():
            if self._hup:
                self._hup = False
                self._signal_workers(signal.SIGHUP)
            now = time.monotonic()
            for i, worker in enumerate(self.workers):
                if worker.ready.value:
                    worker.became_ready = True
                if worker.process.is_alive():
                    continue
                if not worker.became_ready and worker.generation == 0:
                    raise StartupFailed(f"worker {worker.index} exited with {worker.process.exitcode} while starting")
                if i not in restart_at:
                    stable = now - worker.started > _STABLE_AFTER
                    failures = 0 if stable else worker.failures + 1
                    delay = 0.0 if failures <= 1 else min(_BACKOFF_MAX, 0.5 * 2 ** (failures - 2))
                    log.warning(
                        "worker %d (pid %s) exited with %s; restarting in %.1fs",
                        worker.index,
                        worker.pid,
                        worker.process.exitcode,
                        delay,
                    )
                    restart_at[i] = now + delay
                    worker.failures = failures
                if now >= restart_at[i]:
                    del restart_at[i]
                    _forget_worker_metrics(worker.pid)
                    worker.process.join(0)
                    self.workers[i] = self._spawn(worker.index, worker.failures, worker.generation + 1)
                    self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _POLL)

    def _signal_workers(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process.is_alive() and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, sig)

    async def _stop_workers(self) -> None:
        """SIGTERM every worker, wait for them to drain, kill what is left after the grace period."""
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_period + _STOP_MARGIN
        for worker in self.workers:
            await asyncio.to_thread(worker.process.join, max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            if worker.process.is_alive():
                log.warning("worker %d (pid %s) did not drain in time; killing it", worker.index, worker.pid)
                worker.process.kill()
            worker.process.join(5)

    async def _start_admin(self) -> None:
        if not self.admin_address:
            return
        self.admin = AdminServer({"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": _metrics})
        host, port = split_hostport(self.admin_address)
        await self.admin.start(host, port)

    def _healthz(self) -> AdminResponse:
        return json_response(200, {"status": "alive", "workers": self.count})

    def _readyz(self) -> AdminResponse:
        workers = [{"pid": w.pid, "alive": w.process.is_alive(), "ready": bool(w.ready.value)} for w in self.workers]
        ready = self.is_ready()
        body: dict[str, object] = {
            "ready": ready,
            "draining": self._stopping.is_set(),
            "workers": workers,
            "restarts": self.restarts,
        }
        return json_response(200 if ready else 503, body)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)


def _metrics() -> AdminResponse:
    """Every worker's metrics in one scrape (prometheus-client's multiprocess collector over their files)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return AdminResponse(200, generate_latest(registry), CONTENT_TYPE_LATEST)


def _forget_worker_metrics(pid: int | None) -> None:
    """A dead worker's live gauges (in-flight) must not linger in the sum."""
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _metrics_dir() -> tempfile.TemporaryDirectory[str] | None:
    """Point workers (spawned with this environment) at a fresh directory for their metric files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None  # the operator chose one (it must be emptied between runs, as prometheus-client documents)
    directory = tempfile.TemporaryDirectory(prefix="authz-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory.name
    return directory


def run_supervisor(config_path: Path | None, workers: int, log_level: str = "INFO") -> int:
    """`serve --workers N`: validate the config once here (so a bad one fails fast), then supervise."""
    import uvloop

    try:
        config = load_config(config_path) if config_path is not None else default_config()
        check_workers(config, workers)
        compile_runtime(config)
    except ConfigError as exc:
        log.error("invalid config:\n%s", exc)
        return 1
    try:
        bound = shared_sockets(config)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    supervisor = Supervisor(
        config_path,
        workers,
        config.listen.admin,
        grace_period=config.server.drain_delay + config.server.grace_period,
        log_level=log_level,
        sockets={name: b.sock for name, b in bound.items()},
    )
    directory = _metrics_dir()
    try:
        return uvloop.run(supervisor.run())
    finally:
        for b in bound.values():
            b.sock.close()
            b.file.remove()
        if directory is not None:
            directory.cleanup()


def shared_sockets(config: Config) -> dict[str, BoundSocket]:
    """The Unix listeners every worker shares, bound here once (by listener name; raises `OSError` naming the
    address): a worker binding the path itself would unlink and replace its siblings' socket."""
    listen = config.listen
    wanted = {"http": listen.http}
    if not listen.grpc_per_worker:
        wanted["grpc"] = listen.grpc
    bound: dict[str, BoundSocket] = {}
    for name, address in wanted.items():
        if address is None or not is_unix(address):
            continue
        try:
            bound[name] = bind_listener(address, mode=listen.socket_mode)
        except OSError as exc:
            for b in bound.values():
                b.sock.close()
                b.file.remove()
            raise OSError(f"cannot listen on {address} ({name}): {exc.strerror or exc}") from None
    return bound
