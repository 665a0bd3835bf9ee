"""Prometheus metrics: names, buckets and the cheap per-request recording the hot path uses.

Label values come only from config (authorizer names, route keys) and from closed sets (decision, reason codes,
cache layers), never from request data, so cardinality is bounded by the config. Labelled children are resolved
once and memoized (`prometheus_client`'s `.labels()` takes a lock and builds a key on every call), so recording a
Check costs a dict lookup and an `observe`. Names and meanings are documented in docs/metrics.md.

With `--workers N` the supervisor sets `PROMETHEUS_MULTIPROC_DIR` before workers import this module, and
`/metrics` aggregates every worker's files (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

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
CONFIG_RELOADS = Counter(
    "authz_config_reloads_total",
    "Config reloads by outcome (ok, rejected).",
    ("outcome",),
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


class Recorder:
    """Pre-resolved metric children for the hot path; one per transport (`grpc`, `http`)."""

    def __init__(self, transport: str = "grpc") -> None:
        self.transport = transport
        self._check: dict[tuple[str, str], Callable[[float], None]] = {}
        self._decisions: dict[tuple[str, str], Callable[[], None]] = {}
        self._stages: dict[str, Callable[[float], None]] = {}

    def check(self, authorizer: str, allowed: bool, reason: str, seconds: float) -> None:
        """Record one decided Check."""
        decision = "allow" if allowed else ("error" if reason == "InternalError" else "deny")
        key = (authorizer, decision)
        observe = self._check.get(key)
        if observe is None:
            observe = self._check[key] = CHECK_DURATION.labels(authorizer or "none", decision, self.transport).observe
        observe(seconds)
        counted = (decision, reason)
        inc = self._decisions.get(counted)
        if inc is None:
            inc = self._decisions[counted] = DECISIONS.labels(decision, reason, self.transport).inc
        inc()

    def stage(self, stage: str, seconds: float) -> None:
        """Record the time one stage took."""
        observe = self._stages.get(stage)
        if observe is None:
            observe = self._stages[stage] = STAGE_DURATION.labels(stage).observe
        observe(seconds)


RECORDER = Recorder("grpc")
HTTP_RECORDER = Recorder("http")


def exposition() -> tuple[bytes, str]:
    """The `/metrics` body and content type (all workers' metrics in multiprocess mode)."""
    registry: Any = REGISTRY
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
