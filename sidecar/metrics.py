"""Prometheus metrics: names, buckets and the cheap per-request recording the hot path uses.

Label values come only from config (authorizer names, route keys) and from closed sets (decision, reason codes,
cache layers), never from request data, so cardinality is bounded by the config. Names and meanings are
documented in docs/metrics.md.

The hot path does not call `prometheus_client` at all. Its `observe` and `inc` take a lock and walk the buckets
in Python (a measurable share of a warm Check: docs/performance.md); here a Check adds to plain Python numbers
held by a `Tally` or `Timings` per labelled child (a bisect and two additions), and `flush()` folds what has
accumulated into the real metrics: before every `/metrics` exposition and once a second from the server (so the
files other workers' scrapes read, in multiprocess mode, are at most a second behind).

With `--workers N` the supervisor sets `PROMETHEUS_MULTIPROC_DIR` before workers import this module, and
`/metrics` aggregates every worker's files (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from . import __version__

# Sub-millisecond resolution where our work lives, up to the seconds a remote authorizer might take.
LATENCY_BUCKETS = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

REGISTRY = CollectorRegistry(auto_describe=True)
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

CHECK_DURATION = Histogram(
    "authz_check_duration_seconds",
    "Time to decide one Check, from request in to decision out, by authorizer, decision and transport.",
    ("authorizer", "decision", "transport"),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "authz_stage_duration_seconds",
    "Time spent in each stage of a Check (adapter, authenticate, policy, cache).",
    ("stage",),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
DECISIONS = Counter(
    "authz_decisions_total",
    "Decisions by outcome, reason code and transport (grpc, http).",
    ("decision", "reason", "transport"),
    registry=REGISTRY,
)
CACHE_REQUESTS = Counter(
    "authz_cache_requests_total",
    "Decision cache lookups by layer (local, redis) and result (hit, miss, error, rejected).",
    ("layer", "result"),
    registry=REGISTRY,
)
JWKS_FETCHES = Counter(
    "authz_jwks_fetches_total",
    "JWKS document fetches by authorizer and outcome.",
    ("authorizer", "outcome"),
    registry=REGISTRY,
)
JWKS_KEYS_SKIPPED = Counter(
    "authz_jwks_keys_skipped_total",
    "JWKs left out of a fetched or loaded key set, by authorizer and reason (a closed set), counted per document.",
    ("authorizer", "reason"),
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "authz_redis_errors_total",
    "Redis operations that failed or timed out.",
    ("operation",),
    registry=REGISTRY,
)
REDIS_BREAKER_OPEN = Gauge(
    "authz_redis_breaker_open",
    "1 while the Redis circuit breaker is open (decisions computed locally), else 0.",
    registry=REGISTRY,
    multiprocess_mode="max",
)
LIMIT_FALLBACKS = Counter(
    "authz_limit_fallbacks_total",
    "Usage-plan and rate-rule decisions taken without Redis, by on_redis_error mode (local, allow, deny).",
    ("mode",),
    registry=REGISTRY,
)
LIMIT_DEGRADED = Gauge(
    "authz_limit_degraded",
    "1 while usage plans and rate-based rules decide without Redis (on_redis_error), else 0.",
    registry=REGISTRY,
    multiprocess_mode="max",
)
LIMIT_EVICTIONS = Counter(
    "authz_limit_evictions_total",
    "In-process usage-plan and rate-rule state forgotten before it expired, to stay within its bound, by store"
    " (usage_plan, rate_limit:RULE).",
    ("store",),
    registry=REGISTRY,
)
GATE_DECISIONS = Counter(
    "authz_gate_decisions_total",
    "Requests judged by a gate, by gate (usage_plan, rate_limit), its plan or rule, and outcome (ok, throttled,"
    " quota, blocked, counted; for API keys missing, unknown, disabled, expired, or ok in no plan).",
    ("gate", "name", "outcome"),
    registry=REGISTRY,
)
USAGE_KEY_DECISIONS = Counter(
    "authz_usage_key_decisions_total",
    "Usage-plan outcomes per API key id (only with limits.key_id_labels: one series per key).",
    ("plan", "key_id", "outcome"),
    registry=REGISTRY,
)
AUTHORIZER_BREAKER_OPEN = Gauge(
    "authz_authorizer_breaker_open",
    "1 while a remote custom authorizer's circuit breaker is open (its calls denied with a 500 at once), else 0.",
    ("authorizer",),
    registry=REGISTRY,
    multiprocess_mode="max",
)
REMOTE_AUTHORIZER_CALLS = Counter(
    "authz_remote_authorizer_calls_total",
    "Calls to remote custom authorizers by authorizer and outcome (ok, unauthorized, exception, timeout, "
    "malformed, overloaded, unavailable; shed, breaker_open and stopped: refused without a call).",
    ("authorizer", "outcome"),
    registry=REGISTRY,
)
MTLS_HEADERS_IGNORED = Counter(
    "authz_mtls_headers_ignored_total",
    "Client certificate headers (xfcc, client-cert-header) ignored because the peer that sent them is not trusted.",
    ("source",),
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "authz_config_reloads_total",
    "Reloads by source (config, or a file an authorizer reloads itself: credentials:NAME) and outcome (ok, "
    "unchanged, rejected).",
    ("source", "outcome"),
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "authz_checks_in_flight",
    "Checks being decided right now.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
BUILD_INFO = Gauge(
    "authz_build_info",
    "Always 1; the labels say which build is running.",
    ("version",),
    registry=REGISTRY,
    multiprocess_mode="max",
)
BUILD_INFO.labels(__version__).set(1)


_BOUNDS = (*LATENCY_BUCKETS, float("inf"))
"""Upper bounds as prometheus_client keeps them per child (`le` is inclusive, so `bisect_left` finds the bucket)."""


class Tally:
    """Increments of one counter child, summed locally until `flush()` adds them to the child."""

    __slots__ = ("_child", "n")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.n = 0
        _ACCUMULATORS.append(self)

    def inc(self) -> None:
        """Count one."""
        self.n += 1

    def fold(self) -> None:
        """Move the local count into the prometheus child."""
        n = self.n
        if n:
            self.n = 0
            self._child.inc(n)


class Timings:
    """Observations of one histogram child, bucketed locally until `flush()` adds them to the child.

    Folding uses the child's per-bucket values (`_buckets`, `_sum`: non-cumulative counts, exactly what
    `Histogram.observe` increments); tests/unit/test_observability.py compares the exposition with the real
    `observe`, so a prometheus_client that changes them fails there, not in production.
    """

    __slots__ = ("_child", "counts", "total")

    def __init__(self, child: Any) -> None:
        if len(child._upper_bounds) != len(_BOUNDS):
            raise ValueError("Timings needs a histogram with LATENCY_BUCKETS")
        self._child = child
        self.counts = [0] * len(_BOUNDS)
        self.total = 0.0
        _ACCUMULATORS.append(self)

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.counts[bisect_left(_BOUNDS, seconds)] += 1
        self.total += seconds

    def fold(self) -> None:
        """Move the local buckets and sum into the prometheus child."""
        counts = self.counts
        if not any(counts):
            return
        self.counts = [0] * len(_BOUNDS)
        total, self.total = self.total, 0.0
        buckets = self._child._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
        self._child._sum.inc(total)


_ACCUMULATORS: list[Tally | Timings] = []


_TALLIES: dict[tuple[int, tuple[str, ...]], Tally] = {}


def tally(counter: Counter, *labels: str) -> Tally:
    """The hot-path `Tally` for `counter`'s child with these label values (one per child, however many
    runtimes a reload builds)."""
    key = (id(counter), labels)
    found = _TALLIES.get(key)
    if found is None:
        found = _TALLIES[key] = Tally(counter.labels(*labels) if labels else counter)
    return found


class Recorder:
    """Hot-path recording for one transport (`grpc`, `http`): labelled children resolved once, counts local."""

    def __init__(self, transport: str = "grpc") -> None:
        self.transport = transport
        self.in_flight = 0
        """Checks being decided now; the pipeline counts, `flush()` sets the gauge."""
        self._check: dict[tuple[str, str], Timings] = {}
        self._decisions: dict[tuple[str, str], Tally] = {}
        self._stages: dict[str, Timings] = {}
        _RECORDERS.append(self)

    def check(self, authorizer: str, allowed: bool, reason: str, seconds: float) -> None:
        """Record one decided Check."""
        decision = "allow" if allowed else ("error" if reason == "InternalError" else "deny")
        key = (authorizer, decision)
        timings = self._check.get(key)
        if timings is None:
            child = CHECK_DURATION.labels(authorizer or "none", decision, self.transport)
            timings = self._check[key] = Timings(child)
        timings.observe(seconds)
        counted = (decision, reason)
        count = self._decisions.get(counted)
        if count is None:
            count = self._decisions[counted] = tally(DECISIONS, decision, reason, self.transport)
        count.n += 1

    def stage(self, stage: str, seconds: float) -> None:
        """Record the time one stage took."""
        timings = self._stages.get(stage)
        if timings is None:
            timings = self._stages[stage] = Timings(STAGE_DURATION.labels(stage))
        timings.observe(seconds)


_RECORDERS: list[Recorder] = []


def flush() -> None:
    """Fold every local count into the prometheus metrics (runs on the event loop, like the hot path)."""
    for accumulator in _ACCUMULATORS:
        accumulator.fold()
    IN_FLIGHT.set(sum(recorder.in_flight for recorder in _RECORDERS))


RECORDER = Recorder("grpc")
HTTP_RECORDER = Recorder("http")


def exposition() -> tuple[bytes, str]:
    """The `/metrics` body and content type (all workers' metrics in multiprocess mode)."""
    flush()
    registry: Any = REGISTRY
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


ReloadOutcome = Literal["ok", "unchanged", "rejected"]
"""`ok`: the new content serves; `unchanged`: it was read and changes nothing (a comment, a touched file), so
the old one serves on; `rejected`: it is broken, and the old one serves on."""


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """One reload attempt of one source, as /readyz shows it."""

    outcome: ReloadOutcome
    why: str
    """What asked for it (`SIGHUP`, `file change`)."""
    at: float
    """When it ended, in seconds since the epoch."""
    version: str
    """The public fingerprint serving once it ended (the previous one's when rejected or unchanged)."""
    error: str = ""
    """Why it was rejected: file:line: field: why, never a secret value ("" unless rejected)."""

    def as_json(self) -> dict[str, object]:
        """`{outcome, why, at, version}`, `at` in ISO 8601 UTC (the error is reported apart, while it lasts)."""
        at = datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"outcome": self.outcome, "why": self.why, "at": at, "version": self.version}


class ReloadStatus:
    """The reloads of one source: the config (`config`), or a file an authorizer reloads itself while it serves
    (`credentials:NAME`). Each one is counted in `authz_config_reloads_total{source, outcome}` and the newest is
    kept for /readyz, whose `reload_errors` lists the source only while its newest attempt was rejected.

    The source names come from the config (authorizer names), so the metric's cardinality stays bounded. A
    reload may be recorded from a worker thread (the credential store reads its files in one): `last` is one
    reference, replaced whole, so a reader sees one report or the next, never a mix."""

    __slots__ = ("_clock", "last", "source")

    def __init__(self, source: str, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.last: ReloadReport | None = None
        """The newest reload attempt (None before the first: the initial load is not a reload)."""
        self._clock = clock

    def record(self, outcome: ReloadOutcome, why: str, version: str, error: str = "") -> ReloadReport:
        """Count one reload attempt and keep it as the newest."""
        report = ReloadReport(outcome, why, self._clock(), version, error if outcome == "rejected" else "")
        CONFIG_RELOADS.labels(self.source, outcome).inc()
        self.last = report
        return report

    @property
    def problem(self) -> str:
        """The newest attempt's error if it was rejected, else "": a later good (or unchanged) reload clears it."""
        last = self.last
        return last.error if last is not None else ""
