"""Metrics and decision logs in-process: the dashboard uses real metric names; the logger samples and bounds."""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram

from sidecar import metrics
from sidecar.logs import FIELDS, DecisionLogger
from sidecar.reasons import Denied
from sidecar.request import Decision, Request

REQUEST = Request(method="GET", raw_path="/a?token=secret", path="/a", headers={"authorization": "Bearer x"})
ALLOW = Decision(allowed=True, status=200, reason="Anonymous", route="GET /a", authorizer="open")
DENY = Denied("RouteDeny", "closed", 403).decision(route="GET /a", authorizer="closed")


def known_metric_names() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():
        names |= {sample.name for sample in family.samples} | {family.name}
    return names


def test_dashboard_uses_only_metrics_we_export(repo_root: Path) -> None:
    metrics.RECORDER.check("x", True, "Allowed", 0.001)  # make labelled families produce samples
    metrics.RECORDER.stage("adapter", 0.001)
    metrics.CACHE_REQUESTS.labels("local", "hit").inc(0)
    metrics.JWKS_FETCHES.labels("x", "ok").inc(0)
    metrics.REDIS_ERRORS.labels("get").inc(0)
    metrics.CONFIG_RELOADS.labels("config", "ok").inc(0)
    dashboard = (repo_root / "deploy" / "grafana" / "authz-sidecar.json").read_text()
    used = set(re.findall(r"\b(authz_[a-z_]+)", dashboard))
    assert used
    assert used <= known_metric_names(), used - known_metric_names()


def test_exposition_is_prometheus_text() -> None:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    assert b"# TYPE authz_check_duration_seconds histogram" in body


def test_local_timings_and_tallies_fold_into_exactly_what_observe_and_inc_record() -> None:
    """The hot path's `Timings`/`Tally` must expose the same series as prometheus_client's own `observe`/`inc`,
    bounds included (`le` is inclusive); this also pins the private child attributes the fold relies on."""
    registry = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", ("k",), buckets=metrics.LATENCY_BUCKETS, registry=registry)
    folded = Histogram("folded_seconds", "f", ("k",), buckets=metrics.LATENCY_BUCKETS, registry=registry)
    direct_count = Counter("direct_things", "d", registry=registry)
    folded_count = Counter("folded_things", "f", registry=registry)
    values = [0.0, 1e-7, *metrics.LATENCY_BUCKETS, *(b * 1.0001 for b in metrics.LATENCY_BUCKETS), 99.0, 3e-4] * 3
    timings, tally = metrics.Timings(folded.labels("a")), metrics.Tally(folded_count)
    for value in values:
        direct.labels("a").observe(value)
        direct_count.inc()
        timings.observe(value)
        tally.inc()

    def series(name: str) -> list[tuple[str, dict[str, str], float]]:
        family = next(f for f in registry.collect() if f.name == name)
        return [(s.name.split("_", 1)[1], s.labels, s.value) for s in family.samples if not s.name.endswith("_created")]

    assert all(value == 0 for _, _, value in series("folded_seconds"))  # nothing reaches prometheus before the fold
    metrics.flush()
    timings.fold()  # a second fold adds nothing
    assert series("direct_seconds") == series("folded_seconds")
    assert series("direct_things") == series("folded_things") == [("things_total", {}, len(values))]


def test_logger_samples_allows_keeps_denials() -> None:
    stream = io.StringIO()
    logger = DecisionLogger(stream, allow_sample_rate=0.5, rng=random.Random(7))
    for _ in range(200):
        logger.record(REQUEST, ALLOW, 0.0001)
    logger.record(REQUEST, DENY, 0.0001)
    logger.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    allows = sum(entry["decision"] == "allow" for entry in lines)
    assert 60 < allows < 140
    assert lines[-1]["decision"] == "deny"
    assert all(tuple(entry) == FIELDS for entry in lines)
    assert "secret" not in stream.getvalue()
    assert "Bearer" not in stream.getvalue()


def test_logger_bounds_its_buffer() -> None:
    logger = DecisionLogger(io.StringIO(), allow_sample_rate=1.0)
    for _ in range(5000):
        logger.record(REQUEST, DENY, 0.0001)
    assert logger.dropped == 5000 - 4096


def test_logger_survives_a_closed_stream() -> None:
    stream = io.StringIO()
    logger = DecisionLogger(stream)
    logger.record(REQUEST, DENY, 0.0001)
    stream.close()
    logger.flush()
    assert logger.dropped == 1


def test_log_lines_are_json_whatever_the_client_put_in_the_request() -> None:
    tricky = '/a"b\\c\n\x00\u2028é/"}, "decision": "allow'
    request = Request(
        method="GET",
        raw_path=tricky,
        path=tricky,
        headers={},
        request_id='id"\r\n',
        source_address="10.0.0.1",
        time=1_700_000_000.2504,
    )
    stream = io.StringIO()
    logger = DecisionLogger(stream)
    logger.record(request, DENY, 0.000123456)
    logger.flush()
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert tuple(entry) == FIELDS
    assert entry["path"] == tricky and entry["request_id"] == 'id"\r\n'
    assert entry["decision"] == "deny" and entry["principal"] is None and entry["status"] == 403
    assert entry["time"] == "2023-11-14T22:13:20.250Z"
    assert entry["latency_us"] == 123.5


def test_logger_writes_in_slices() -> None:
    stream = io.StringIO()
    logger = DecisionLogger(stream)
    for _ in range(10):
        logger.record(REQUEST, DENY, 0.0001)
    logger.flush(limit=4)
    assert len(stream.getvalue().splitlines()) == 4
    logger.flush()
    assert len(stream.getvalue().splitlines()) == 10


def test_log_lines_stay_exact_when_their_repeating_fields_are_reused() -> None:
    """The formatter memoizes runs of repeating fields: every line must still carry its own values."""
    stream = io.StringIO()
    logger = DecisionLogger(stream)
    cases = []
    for i in range(60):
        method = ("GET", 'P"ST\n', "DELETE")[i % 3]
        decision = Decision(
            allowed=i % 5 != 0,  # an allow and a deny with the same authorizer, status and reason
            status=(200, 401, 403)[i % 3],
            reason=("Allowed", "ExpiredToken", 'Odd"\u2028reason')[i % 3],
            route=f"route-{i % 5}",
            authorizer=("jwt", "sigv4")[i % 2],
            statement=("", "Sid1")[i % 7 % 2],
        )
        request = Request(
            method=method,
            raw_path=f"/p/{i}",
            path=f"/p/{i}",
            headers={},
            source_address="10.0.0.1",
            time=1.0 + i // 2 + (i % 2) * 0.25,  # two lines per second, the second 250 ms in
        )
        cache = ("", "local", "redis")[i % 3]
        logger.record(request, decision, i / 1e6, cache)
        cases.append((method, decision, cache, i))
    logger.flush()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(entries) == len(cases)
    for entry, (method, decision, cache, i) in zip(entries, cases, strict=True):
        assert tuple(entry) == FIELDS
        assert (entry["method"], entry["route"], entry["path"]) == (method, decision.route, f"/p/{i}")
        assert entry["decision"] == ("allow" if decision.allowed else "deny")
        assert (entry["status"], entry["reason"], entry["statement"]) == (
            decision.status,
            decision.reason,
            decision.statement,
        )
        assert (entry["authorizer"], entry["cache"], entry["latency_us"]) == (decision.authorizer, cache, float(i))
        second = 1 + i // 2
        assert entry["time"] == f"1970-01-01T00:00:{second:02d}.{(i % 2) * 250:03d}Z"
