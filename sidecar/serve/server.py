"""The serving process: the transports (`sidecar.transports`' table), the admin listener, reloads and graceful
shutdown.

Lifecycle: load and compile the config (a bad one stops start-up with file:line errors), bind every listener
(a taken port is a clear error, never a silently shared one), mark SERVING once every authorizer is ready,
reload on SIGHUP or file change (a bad reload is logged and the old runtime keeps serving), and on SIGTERM/SIGINT
turn NOT_SERVING, stop accepting, let in-flight Checks finish within the grace period, and exit 0.

Every reload says what it did, the config's and those an authorizer does of its own files alike: a log line, a
count in `authz_config_reloads_total{source, outcome}` and /readyz's reload fields (`reload_fields`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from ..config import Config, ConfigError, default_config, load_config
from ..lint import lint
from ..logs import DecisionLogger
from ..metrics import HTTP_RECORDER, ReloadStatus, exposition
from ..metrics import flush as flush_metrics
from ..pipeline import Pipeline
from ..runtime import Runtime, RuntimeHolder, compile_runtime
from ..transports import Checker, Transport, load
from ..transports.listener import (
    SocketFile,
    bind_listener,
    is_unix,
    socket_file,
    split_hostport,
    unix_path,
    worker_address,
)
from .admin import AdminResponse, AdminServer, json_response, usage_handler
from .heap import settle, trace_allocations_if_asked

log = logging.getLogger(__name__)

_READY_POLL = 0.1
_READY_POLL_SERVING = 1.0
"""Once ready, readiness is re-checked once a second: a ten-times-a-second timer showed up in profiles of a
loaded server (docs/performance.md), and losing readiness (keys gone stale) is a matter of minutes."""
_METRICS_FOLD = 1.0
"""Seconds between folds of the hot path's local metric counts into prometheus_client (see sidecar/metrics.py)."""


_RECOVERED = "authorizer files recovered"
"""Why a reload runs that retries a rejected config reload once an authorizer's own files load again."""


class BindError(RuntimeError):
    """A listener could not bind its address (taken, or not an address of this host)."""


@dataclass(slots=True)
class _ConfigSource:
    """Where the config comes from, and what the watcher last saw of the files it depends on."""

    path: Path | None
    seen: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def read(self) -> Config:
        return load_config(self.path) if self.path is not None else default_config()

    def changed_on_disk(self, extra: tuple[Path, ...] = ()) -> bool:
        """Whether the config file or any `extra` file (e.g. the resource policy) changed since last asked."""
        if self.path is None:
            return False
        current = self.snapshot(extra)
        if current == self.seen:
            return False
        self.seen = current
        return True

    def snapshot(self, extra: tuple[Path, ...]) -> dict[Path, tuple[int, int]]:
        """The files as they are now (size and mtime), taken just before a reload reads them."""
        return {p: _stat(p) for p in (self.path, *extra)} if self.path is not None else {}

    def read_as(self, before: dict[Path, tuple[int, int]], watched: tuple[Path, ...]) -> None:
        """After a reload (whatever it asked for and however it ended): the watcher counts the files it read as
        seen, so an edit followed by SIGHUP is one reload, not a second "file change" one. The stats are the ones
        taken before reading: an edit that lands while the reload runs still differs, and is reloaded next."""
        if self.path is not None:
            self.seen = {p: before[p] if p in before else _stat(p) for p in (self.path, *watched)}


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


@dataclass(slots=True)
class ServerState:
    """What probes report."""

    draining: bool = False
    ready: bool = False
    reloads_ok: int = 0
    reloads_failed: int = 0
    config_reloads: ReloadStatus = field(default_factory=lambda: ReloadStatus("config"))
    """The config's reloads: counted, the newest kept for /readyz."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def last_reload_error(self) -> str:
        """Why the newest config reload was rejected; "" once one succeeds (or finds nothing changed)."""
        return self.config_reloads.problem


class _ReloadsOwnFiles(Protocol):
    """A part of the serving config that reloads files of its own (an authorizer, the API key store)."""

    def reload_statuses(self) -> tuple[ReloadStatus, ...]: ...

    async def recheck_files(self, why: str) -> None: ...


def self_reloading(runtime: Runtime) -> list[tuple[str, _ReloadsOwnFiles]]:
    """Every part of `runtime` that reloads files of its own, with how logs name it: the authorizers, the API
    key store (`api_keys.file`) and the truststore of the `require_client_cert` routes. /readyz reports their
    reloads, a SIGHUP asks them to look at their files."""
    parts: list[tuple[str, _ReloadsOwnFiles]] = [(f"authorizer {a.name}", a) for a in runtime.authorizers.values()]
    if runtime.gates is not None and runtime.gates.keys is not None:
        parts.append(("the api key store", runtime.gates.keys))
    if runtime.client_certs is not None:
        parts.append(("the require_client_cert truststore", runtime.client_certs))
    return parts


def reload_fields(config: ReloadStatus, owned: Iterable[ReloadStatus]) -> dict[str, object]:
    """/readyz's account of reloads: the config's and those the serving config's parts do of their own files
    (`Authorizer.reload_statuses`, the API key store's).

    - `last_reload`: the config's newest reload attempt, `{outcome, why, at, version}` (null before the first);
    - `authorizer_reloads`: the same per self-reloading source (`credentials:NAME`, `api_keys`) that has reloaded
      since the serving config loaded;
    - `reload_errors`: `{source: error}` for every source whose newest attempt was rejected, config included
      (`{}` when none): each entry goes once that source loads again;
    - `last_reload_error`: the config's entry of `reload_errors`, only while it is there (the older field).
    """
    owned = tuple(owned)
    newest = {status.source: status.last for status in owned}
    body: dict[str, object] = {
        "last_reload": config.last.as_json() if config.last is not None else None,
        "authorizer_reloads": {source: last.as_json() for source, last in newest.items() if last is not None},
        "reload_errors": {s.source: s.problem for s in (config, *owned) if s.problem},
    }
    if config.problem:
        body["last_reload_error"] = config.problem
    return body


async def _fold_metrics() -> None:
    """Fold the hot path's local counts into the metrics once a second (`sidecar/metrics.py`)."""
    while True:
        await asyncio.sleep(_METRICS_FOLD)
        try:
            flush_metrics()
        except Exception:  # a failed fold must not end the folding (workers' counts would stop reaching scrapes)
            log.exception("folding metrics failed; trying again in %.0f s", _METRICS_FOLD)


def _metrics() -> AdminResponse:
    body, content_type = exposition()
    return AdminResponse(200, body, content_type)


def _decision_logger(config: Config) -> DecisionLogger | None:
    """The decision logger `decision_log` asks for (None when disabled)."""
    settings = config.decision_log
    if not settings.enabled:
        return None
    if settings.output in ("stdout", "stderr"):
        stream: IO[str] = sys.stdout if settings.output == "stdout" else sys.stderr
    else:
        path = Path(settings.output)
        if not path.is_absolute():
            path = config.base_dir / path
        stream = path.open("a", encoding="utf-8")
    return DecisionLogger(stream, settings.allow_sample_rate, settings.flush_interval)


class Sidecar:
    """One sidecar process's servers around one `RuntimeHolder`."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        reuse_port: bool = False,
        vet: Callable[[Config], None] | None = None,
        worker: int = 0,
        inherited: Mapping[str, socket.socket] | None = None,
    ) -> None:
        self.source = _ConfigSource(config_path)
        self.worker = worker
        """This process's worker index under `serve --workers` (0 alone): `listen.grpc_per_worker` addresses."""
        self.inherited = dict(inherited or {})
        """Listening sockets the supervisor bound and shares with every worker, by listener (`grpc`, `http`):
        a Unix socket, which SO_REUSEPORT cannot share (`sidecar/serve/supervisor.py`)."""
        self._socket_files: list[SocketFile] = []
        """The Unix socket files this process made, removed when it stops."""
        self.vet = vet
        """Checks a config must also pass to be served here (raising `ConfigError`), here and on every reload:
        `serve --workers N` passes the rules that depend on N (`sidecar/serve/supervisor.py`)."""
        if vet is not None:
            vet(config)
        self.holder = RuntimeHolder(compile_runtime(config))
        self.decision_log = _decision_logger(config)
        self.pipeline = Pipeline(self.holder, self.decision_log)
        self.state = ServerState()
        self.reuse_port = reuse_port
        self.transports: dict[str, Transport] = {}
        """The running transports by listener (`grpc`, `http`), in the order they started."""
        self.admin: AdminServer | None = None
        self.grpc_port = 0
        self._stopped = asyncio.Event()
        self._signal_tasks: set[asyncio.Future[object]] = set()
        self._readiness_changed = asyncio.Event()
        """Set by a reload: the readiness watcher looks at the new runtime at once instead of at its next poll."""
        self._reloader: asyncio.Task[None] | None = None
        """The one task that runs reloads, one after another (see `reload`)."""
        self._next_reload: asyncio.Future[bool] | None = None
        """The result of the reload that will run next; every request made before it reads the file shares it."""
        self._next_why: list[str] = []

    @property
    def runtime(self) -> Runtime:
        """The runtime currently serving."""
        return self.holder.current

    async def start(self) -> None:
        """Start authorizers and listeners; raises `BindError` if a port is taken."""
        config = self.runtime.config
        self.source.changed_on_disk(self.runtime.watched)  # remember the files as they are now
        await self.runtime.start()
        if self.decision_log is not None:
            self.decision_log.start()
        if config.listen.grpc:
            address = config.listen.grpc
            own = config.listen.grpc_per_worker  # an address of its own: never shared through SO_REUSEPORT
            address = worker_address(address, self.worker) if own else address
            await self._start_transport("grpc", address, config.server.grpc_engine, self.pipeline, shared=not own)
            self.grpc_port = self.transports["grpc"].port
        if config.listen.http:
            # Same runtime and decision log, its own metric children: every series carries transport="http".
            pipeline = Pipeline(self.holder, self.decision_log, recorder=HTTP_RECORDER)
            await self._start_transport("http", config.listen.http, "http", pipeline)
        if config.listen.admin:
            routes = {"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": _metrics}
            self.admin = AdminServer(routes, {"/usage": usage_handler(lambda: self.runtime.gates)})
            host, port = split_hostport(config.listen.admin)
            try:
                await self.admin.start(host, port)
            except OSError as exc:
                raise BindError(f"cannot listen on {config.listen.admin} (admin): {exc.strerror or exc}") from None
        self.state.tasks.append(asyncio.create_task(self._watch_readiness()))
        self.state.tasks.append(asyncio.create_task(_fold_metrics()))
        if config.server.watch_config and self.source.path is not None:
            self.state.tasks.append(asyncio.create_task(self._watch_file(config.server.watch_interval)))

    async def _start_transport(
        self, listener: str, address: str, name: str, checker: Checker, shared: bool = True
    ) -> None:
        """Start the transport `name` of `sidecar.transports.TRANSPORTS` on `address`: on the socket the supervisor
        shares for it, or one bound here (grpc.aio binds its own)."""
        start = load(name)
        config = self.runtime.config
        reuse_port = self.reuse_port and shared
        try:
            sock = self.inherited.get(listener)
            if sock is None and name != "grpcio":
                bound = bind_listener(address, reuse_port=reuse_port, mode=config.listen.socket_mode)
                self._socket_files.append(bound.file)
                sock = bound.sock
            transport = await start(address, checker, config, reuse_port=reuse_port, sock=sock)
            if name == "grpcio" and is_unix(address):
                self._socket_files.append(socket_file(unix_path(address)))
        except OSError as exc:
            raise BindError(f"cannot listen on {address} ({listener}): {exc.strerror or exc}") from None
        self.transports[listener] = transport

    async def _watch_readiness(self) -> None:
        """Flip health to SERVING when every authorizer is ready, and back if one stops being ready."""
        while not self.state.draining:
            ready = self.runtime.is_ready()
            if ready != self.state.ready:
                self.state.ready = ready
                for transport in self.transports.values():
                    await transport.set_serving(ready)
                log.info("readiness: %s", "ready" if ready else "not ready")
            if self._recovered_since_rejection():
                self._spawn(self.reload(_RECOVERED), f"a retry ({_RECOVERED})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._readiness_changed.wait(), _READY_POLL_SERVING if ready else _READY_POLL)
            self._readiness_changed.clear()

    def _recovered_since_rejection(self) -> bool:
        """Whether the newest config reload was rejected and a file an authorizer reloads on its own has loaded
        since: the config reload most likely failed on that file (a broken credentials file rejects both), so it is
        tried again at once rather than leaving a stale `reload_errors.config` until the next SIGHUP. A retry
        records a newer outcome, so one recovery asks once."""
        rejected = self.state.config_reloads.last
        if rejected is None or rejected.outcome != "rejected" or (self._reloader and not self._reloader.done()):
            return False
        return any(
            status.last is not None and status.last.outcome != "rejected" and status.last.at > rejected.at
            for _, part in self_reloading(self.runtime)
            for status in part.reload_statuses()
        )

    async def _watch_file(self, interval: float) -> None:
        while not self.state.draining:
            await asyncio.sleep(interval)
            if self.source.changed_on_disk(self.runtime.watched):
                await self.reload("file change")

    async def reload(self, why: str) -> bool:
        """Reload the config file: load, compile and swap it in; on any error keep serving the old one.

        Reloads run one at a time, in one task. A reload requested while one runs is coalesced with every other
        request made meanwhile into one more reload after it, and each reload reads the file when it begins: the
        newest content always wins, and a slow reload (a JWKS fetch while the new runtime starts) can never
        install an older read over a newer one. Returns whether the reload that served this request succeeded
        (False, too, once draining has begun).
        """
        if self.state.draining:
            return False
        waiter = self._next_reload
        if waiter is None:
            waiter = self._next_reload = asyncio.get_running_loop().create_future()
        self._next_why.append(why)
        if self._reloader is None or self._reloader.done():
            self._reloader = asyncio.create_task(self._run_reloads(), name="config-reload")
        else:
            log.info("reload (%s) requested while another runs; reloading again once it is done", why)
        # shield: a caller that stops waiting (the file watcher, cancelled at drain) must not cancel the reload
        return await asyncio.shield(waiter)

    async def _run_reloads(self) -> None:
        while self._next_reload is not None and not self.state.draining:
            # Taken in the step that reads the file (`_reload_once` reads before it first awaits): a request
            # made after this line gets a later read.
            waiter, self._next_reload = self._next_reload, None
            why, self._next_why = ", ".join(dict.fromkeys(self._next_why)), []
            try:
                ok = await self._reload_once(why)
            except asyncio.CancelledError:
                waiter.set_result(False)  # drained mid-reload
                raise
            waiter.set_result(ok)
        if self._next_reload is not None:  # draining began: nothing more is loaded
            self._next_reload.set_result(False)
            self._next_reload = None

    async def _reload_once(self, why: str) -> bool:
        before = self.source.snapshot(self.runtime.watched)
        try:
            return await self._reload_read(why)
        finally:
            self.source.read_as(before, self.runtime.watched)

    async def _reload_read(self, why: str) -> bool:
        try:
            config = self.source.read()
            if self.vet is not None:
                self.vet(config)
            runtime = compile_runtime(config)
        except ConfigError as exc:
            return self._rejected(why, str(exc))
        except Exception as exc:
            return self._rejected(why, repr(exc), exc_info=True)
        if runtime.cache_version == self.runtime.cache_version:
            # Nothing that matters changed (e.g. only a comment, or a bad edit reverted).
            return await self._unchanged(why)
        try:
            await self.holder.swap(runtime)
        except asyncio.CancelledError:
            if self.holder.current is not runtime:
                await runtime.stop()  # started in part: stop what it began
            raise
        except Exception as exc:
            if self.holder.current is not runtime:  # starting the new config failed
                with contextlib.suppress(Exception):
                    await runtime.stop()
                return self._rejected(why, repr(exc), exc_info=True)
            log.exception("reload (%s): stopping the old config failed", why)  # the new one serves already
        self._readiness_changed.set()
        settle(config.server, reloading=True)
        if self.decision_log is not None:
            self.decision_log.allow_sample_rate = config.decision_log.allow_sample_rate
        self.state.reloads_ok += 1
        self.state.config_reloads.record("ok", why, runtime.version)
        log.info("reload (%s): now serving config %s", why, runtime.version)
        self._spawn_quietly(_log_warnings(runtime))  # advice: the reload's answer does not wait for it
        return True

    async def _unchanged(self, why: str) -> bool:
        self.state.config_reloads.record("unchanged", why, self.runtime.version)
        log.info("reload (%s): unchanged, still serving config %s", why, self.runtime.version)
        # The config did not change, but a SIGHUP means "reload everything": the files authorizers and the API key
        # store reload on their own (a SigV4 credentials file, api_keys.file) are looked at now, not at their next poll.
        for name, part in self_reloading(self.runtime):
            try:
                await part.recheck_files(why)
            except Exception:  # one part's failure must not stop the others' (or the reload's answer)
                log.exception("reload (%s): %s could not re-check its files", why, name)
        return True

    def _rejected(self, why: str, error: str, exc_info: bool = False) -> bool:
        self.state.reloads_failed += 1
        self.state.config_reloads.record("rejected", why, self.runtime.version, error)
        log.error(
            "reload (%s) rejected; still serving config %s:\n%s", why, self.runtime.version, error, exc_info=exc_info
        )
        return False

    def _healthz(self) -> AdminResponse:
        return json_response(200, {"status": "alive"})

    def _readyz(self) -> AdminResponse:
        runtime = self.runtime
        waiting = sorted(name for name, a in runtime.authorizers.items() if not a.is_ready())
        ready = not self.state.draining and not waiting
        body: dict[str, object] = {
            "ready": ready,
            "draining": self.state.draining,
            "config_version": runtime.version,
            "waiting_for": waiting,
        }
        owned = (status for _, part in self_reloading(runtime) for status in part.reload_statuses())
        body.update(reload_fields(self.state.config_reloads, owned))
        return json_response(200 if ready else 503, body)

    async def drain_and_stop(self) -> None:
        """Stop accepting Checks, finish in-flight ones within the grace period, then close everything."""
        if self.state.draining:
            return
        self.state.draining = True
        grace = self.runtime.config.server.grace_period
        log.info("draining: finishing in-flight checks (grace %.1fs)", grace)
        for transport in self.transports.values():
            await transport.enter_graceful_shutdown()
        delay = self.runtime.config.server.drain_delay
        if delay:  # health says NOT_SERVING; keep deciding until Envoy's health check has moved traffic away
            log.info("draining: NOT_SERVING, still accepting for %.1fs (server.drain_delay)", delay)
            await asyncio.sleep(delay)
        await asyncio.gather(*(transport.shutdown(grace) for transport in self.transports.values()))
        self._remove_socket_files()
        if self.admin is not None:
            await self.admin.stop()
        for task in self.state.tasks:
            task.cancel()
        for task in self.state.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._reloader is not None:  # a reload still starting its runtime must not outlive the drain
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        try:
            await self.runtime.stop()
            if self.decision_log is not None:
                await self.decision_log.stop()
        finally:
            flush_metrics()  # the last second of counts reaches the multiprocess files before this worker exits
            self._stopped.set()

    def _remove_socket_files(self) -> None:
        """The Unix socket files this process bound go with it (the supervisor's shared ones go with the
        supervisor); one replaced since by another process is left alone (`SocketFile.remove`)."""
        for file in self._socket_files:
            file.remove()
        self._socket_files.clear()

    async def wait_stopped(self) -> None:
        """Return once `drain_and_stop` has finished."""
        await self._stopped.wait()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT drain and stop; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_signal, signal.SIGHUP)

    def _on_signal(self, sig: signal.Signals) -> None:
        coro = self.reload(sig.name) if sig == signal.SIGHUP else self.drain_and_stop()
        self._spawn(coro, sig.name)

    def _spawn(self, coro: Coroutine[object, object, object], why: str) -> None:
        log.info("received %s", why)
        self._spawn_quietly(coro)

    def _spawn_quietly(self, coro: Coroutine[object, object, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._signal_tasks.add(task)  # keep a reference until done, or the task may be collected mid-flight
        task.add_done_callback(self._signal_tasks.discard)


async def start_sidecar(
    config_path: Path | None,
    reuse_port: bool = False,
    adjust: Callable[[Config], Config] | None = None,
    vet: Callable[[Config], None] | None = None,
    worker: int = 0,
    inherited: Mapping[str, socket.socket] | None = None,
) -> Sidecar | None:
    """Load the config (optionally `adjust` it), start serving and install signal handlers; `vet` checks it
    (and every reload) beyond its own validation. `worker` and `inherited`: see `Sidecar`.

    A bad config or a taken port is logged and gives None: the caller exits 1.
    """
    try:
        config = load_config(config_path) if config_path is not None else default_config()
        config = adjust(config) if adjust else config
        sidecar = Sidecar(config, config_path, reuse_port=reuse_port, vet=vet, worker=worker, inherited=inherited)
    except ConfigError as exc:
        log.error("invalid config:\n%s", exc)
        return None
    try:
        await sidecar.start()
    except BindError as exc:
        log.error("%s", exc)
        await sidecar.drain_and_stop()
        return None
    sidecar.install_signal_handlers()
    trace_allocations_if_asked()
    settle(sidecar.runtime.config.server)
    await _log_warnings(sidecar.runtime)
    return sidecar


_LINT_BUDGET = 20_000
"""Resource-policy statements x routes past which `serve` leaves the warnings to `validate`: the analysis is
pairwise (a 600-statement policy over 50 routes takes about a second of CPU), and a serving process shares it."""


async def _log_warnings(runtime: Runtime) -> None:
    """What `validate` warns about (`sidecar.lint`: routes nothing can allow, statements no route matches), logged
    once per config served: an operator who skipped `validate` still learns why a route denies everyone. Run in a
    thread, so the event loop keeps answering Checks meanwhile."""
    policy = runtime.resource_policy
    work = (len(policy.statements) if policy is not None else 0) * len(runtime.config.routes)
    if work > _LINT_BUDGET:
        log.info(
            "config %s: too large to check for warnings while serving; `authz-sidecar validate` reports them",
            runtime.version,
        )
        return
    try:
        issues = await asyncio.to_thread(lint, runtime)
    except Exception:  # the analysis is advice: it must never stop a config from serving
        log.exception("config %s: checking for warnings failed", runtime.version)
        return
    for issue in issues:
        log.warning("config %s: %s", runtime.version, issue)


async def serve(config_path: Path | None, reuse_port: bool = False) -> int:
    """Run one sidecar until SIGTERM/SIGINT. Returns the process exit code."""
    sidecar = await start_sidecar(config_path, reuse_port)
    if sidecar is None:
        return 1
    config = sidecar.runtime.config
    log.info(
        "authz-sidecar serving config %s (%s): grpc=%s (%s) http=%s admin=%s",
        sidecar.runtime.version,
        config.source,
        config.listen.grpc,
        config.server.grpc_engine,
        config.listen.http,
        config.listen.admin,
    )
    await sidecar.wait_stopped()
    log.info("stopped")
    return 0
