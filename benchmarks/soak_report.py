"""Judging a soak: each request against the answer its kind must get and the degraded answers its phase documents,
the limits' allowances, RSS growth, and the results (results.json, results.md, a plot of p99 and errors over time).

Categories of a request (`judge`):
- `ok`: the answer its kind must get;
- `expected_503`: 503 `KeysUnavailable` on a JWT route (docs/jwt.md: no keys, or keys older than
  `jwks_max_staleness`), the one documented 5xx;
- `fail_closed`: Envoy's own 503 (`status_on_error`, no reason code) while a SIGKILLed worker's endpoint is gone
  and Envoy's health check has not yet said so (`FAIL_CLOSED_PHASES`; docs/envoy.md's "sidecar down" row).
  Counted and reported; never an allow;
- `degraded`: a documented transient refusal of a valid request (a token of the new key refused `UnknownKey`
  during the rotation, before the refetch its `kid` triggers: docs/jwt.md);
- `budget`: an allow of a kind a limit refuses, counted against the limit's allowance (`budgets`);
- `wrong_allow`, `wrong_deny`, `reason_mismatch` (a deny, but for another reason), `unexplained_5xx`, `error`
  (no HTTP answer).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .load import percentile
from .soak_driver import Record
from .soak_mix import RULE, TIGHT_PLAN, Kind

FAIL_CLOSED_PHASES = frozenset({"worker-kill"})
"""A SIGKILLed worker cannot drain: Envoy's Checks on its endpoint fail until the health check takes it out. The
rolling restart is not among them: with `server.drain_delay` it must lose nothing."""
REDIS_EMPTIED_PHASES = frozenset({"redis-kill", "redis-garbage"})
"""Phases after which Redis comes back empty (its counts gone)."""
OWN_WARMUP = 10.0
JWT_ROUTES = ("jwt-", "apikey-", "rule-", "flood-keyed", "flood-token")


@dataclass
class PhaseSpan:
    """One phase as it ran: its bounds (seconds since the start), what the soak saw happen, Envoy's counters."""

    name: str
    start: float
    end: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    envoy: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0
    """Gate decisions the sidecar took without Redis in this phase (`authz_limit_fallbacks_total`)."""


def judge(record: Record, kind: Kind) -> str:
    """The category of one request (see the module's docstring)."""
    if record.status == 0:
        return "error"
    if record.status == 503 and record.reason == "KeysUnavailable" and kind.name.startswith(JWT_ROUTES):
        return "expected_503"
    if record.status >= 500:
        fail_closed = record.phase in FAIL_CLOSED_PHASES and not record.reason
        return "fail_closed" if fail_closed else "unexplained_5xx"
    if kind.allow:
        if record.status == 200:
            return "ok"
        rotating = record.phase == "jwks-rotation" and kind.name == "jwt-rotated" and record.reason == "UnknownKey"
        return "degraded" if rotating else "wrong_deny"
    if record.status == 200:
        return "budget" if kind.budget else "wrong_allow"
    right = record.status == kind.status and record.reason in kind.reasons
    return "ok" if right or (record.status, record.reason) in kind.also else "reason_mismatch"


def budgets(phases: Sequence[PhaseSpan], workers: int) -> dict[str, float]:
    """How many allows each limit may give over the run, by docs/limits.md: the throttle's burst and rate (the
    rule's limit) counted once in Redis; the burst (limit) again each time Redis comes back empty; and, in each
    phase in which the gates decided without Redis (`on_redis_error: local`: each worker counts alone, from
    nothing), a whole burst plus that phase's rate (the whole limit) per worker."""
    run = phases[-1].end - phases[0].start
    burst, rate = float(TIGHT_PLAN["throttle"]["burst"]), float(TIGHT_PLAN["throttle"]["rate"])
    limit = float(RULE["limit"])  # type: ignore[arg-type]
    emptied = sum(1 for p in phases if p.name in REDIS_EMPTIED_PHASES)
    fallback = [p for p in phases if p.fallbacks]
    throttle = burst * (1 + emptied) + rate * run + sum(workers * (burst + rate * (p.end - p.start)) for p in fallback)
    rule = limit * (1 + emptied) + workers * limit * len(fallback)
    return {"throttle": throttle, "rule": rule}


def summarize(records: Sequence[Record], kinds: dict[str, Kind], phases: Sequence[PhaseSpan]) -> dict[str, Any]:
    """Per phase and in total: requests, p99, errors and every category; the limits against their allowances."""
    by_phase: dict[str, list[Record]] = {p.name: [] for p in phases}
    categories: dict[str, Counter[str]] = {p.name: Counter() for p in phases}
    allowed: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    for r in records:
        kind = kinds[r.kind]
        category = judge(r, kind)
        by_phase.setdefault(r.phase, []).append(r)
        categories.setdefault(r.phase, Counter())[category] += 1
        if category == "budget":
            allowed[kind.budget] += 1
        if category not in ("ok", "budget", "expected_503", "fail_closed", "degraded") and len(examples) < 20:
            examples.append(
                {"phase": r.phase, "kind": r.kind, "status": r.status, "reason": r.reason, "error": r.error}
            )
    rows = []
    for span in phases:
        rs = by_phase.get(span.name, [])
        c = categories.get(span.name, Counter())
        answered = sorted(int(r.latency_ms * 1000) for r in rs if r.status)
        rows.append(
            {
                "name": span.name,
                "seconds": round(span.end - span.start, 1),
                "requests": len(rs),
                "p50_ms": round(percentile(answered, 50) / 1000, 2),
                "p99_ms": round(percentile(answered, 99) / 1000, 2),
                "max_ms": round(answered[-1] / 1000, 1) if answered else 0.0,
                "errors": c["error"] + c["unexplained_5xx"] + c["fail_closed"],
                "wrong_allows": c["wrong_allow"],
                "wrong_denies": c["wrong_deny"],
                "reason_mismatches": c["reason_mismatch"],
                "transport_errors": c["error"],
                "fail_closed_503": c["fail_closed"],
                "expected_503": c["expected_503"],
                "unexplained_5xx": c["unexplained_5xx"],
                "degraded": c["degraded"],
                "limit_allows": c["budget"],
                "gate_fallbacks": span.fallbacks,
                "notes": span.notes,
                "envoy": span.envoy,
            }
        )
    total = sum(categories.values(), Counter())
    return {"phases": rows, "total": total, "allowed": dict(allowed), "examples": examples}


def rss_growth(samples: Iterable[tuple[float, int, int]], warm_until: float) -> dict[int, dict[str, float]]:
    """Per worker pid: RSS after warm-up (median of its first 3 samples past `warm_until` and past its own first
    `OWN_WARMUP` seconds: a restarted worker imports and fills its caches first) and at its end (median of its
    last 3), and the growth in percent; only pids with at least 10 samples past warm-up."""
    born: dict[int, float] = {}
    series: dict[int, list[tuple[float, int]]] = {}
    for t, pid, rss in samples:
        born.setdefault(pid, t)
        if t >= max(warm_until, born[pid] + OWN_WARMUP) and rss:
            series.setdefault(pid, []).append((t, rss))
    out = {}
    for pid, points in series.items():
        if len(points) < 10:
            continue
        first = statistics.median(r for _, r in points[:3])
        last = statistics.median(r for _, r in points[-3:])
        out[pid] = {
            "from_s": round(points[0][0], 1),
            "to_s": round(points[-1][0], 1),
            "rss_mb_after_warmup": round(first / 2**20, 1),
            "rss_mb_end": round(last / 2**20, 1),
            "growth_pct": round(100 * (last - first) / first, 2),
        }
    return out


def headline_growth(per_pid: dict[int, dict[str, float]], span: float) -> float:
    """The largest growth among workers that lived through at least half of the run after warm-up (a restarted
    worker's short life says little about a leak); 0 when none did."""
    long_lived = [v["growth_pct"] for v in per_pid.values() if v["to_s"] - v["from_s"] >= span / 2]
    return max(long_lived, default=0.0)


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    lines = [
        "# Fault-injection soak",
        "",
        f"{results['started_utc']}, {results['minutes']} min requested ({results['seconds']:.0f} s ran), "
        f"{results['rate']} rps of the mix through Envoy (TLS) to `serve --workers 2`, commit {results['commit']}.",
        "",
        f"- requests {results['requests']:,}; wrong allows {results['wrong_allows']}, wrong denies "
        f"{results['wrong_denies']}, reason mismatches {results['reason_mismatches']}; crashes {results['crashes']}",
        f"- 5xx: unexplained {results['errors_5xx']}, expected 503 (no keys) {results['expected_503']}, Envoy's "
        f"fail-closed 503 while a worker or the sidecar was away {results['fail_closed_503']}; transport errors "
        f"{results['transport_errors']}",
        f"- limits: {json.dumps(results['limit_allows'])} allowed of allowances {json.dumps(results['allowances'])}",
        f"- RSS growth after warm-up (largest, long-lived workers): {results['rss_growth_pct']}%",
        "",
        "| phase | s | requests | p50 ms | p99 ms | errors | wrong allows | wrong denies | fail-closed 503 | degraded "
        "| notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in results["phases"]:
        notes = ", ".join(f"{k} {v}" for k, v in p["notes"].items())
        lines.append(
            f"| {p['name']} | {p['seconds']} | {p['requests']} | {p['p50_ms']} | {p['p99_ms']} | {p['errors']} | "
            f"{p['wrong_allows']} | {p['wrong_denies']} | {p['fail_closed_503']} | {p['degraded']} | {notes} |"
        )
    lines += ["", "Envoy's counters per phase (deltas, non-zero):", ""]
    for p in results["phases"]:
        lines.append(f"- {p['name']}: " + ", ".join(f"{k} {v}" for k, v in p["envoy"].items()))
    lines += heap_lines(results.get("tracemalloc_growth"))
    path.write_text("\n".join(lines) + "\n")


def heap_lines(growth: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    """Where traced memory grew most per long-lived worker, between the warm-up's end and the rolling restart."""
    if not growth:
        return []
    out = ["", "Traced allocations that grew most per long-lived worker, warm-up's end to the rolling restart", ""]
    for pid, stats in growth.items():
        shown = "; ".join(f"{s['where']} +{s['size_diff_kb']} KiB ({s['count_diff']:+d} blocks)" for s in stats[:3])
        out.append(f"- worker {pid}: {shown or 'nothing grew'}")
    return out


def plot(path: Path, records: Sequence[Record], phases: Sequence[PhaseSpan], bucket: float) -> None:
    """p99 and the error rate per `bucket` seconds, the phases marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = phases[-1].end
    n = max(1, int(end / bucket) + 1)
    latencies: list[list[int]] = [[] for _ in range(n)]
    failed = [0] * n
    sent = [0] * n
    for r in records:
        i = min(n - 1, int(r.sent / bucket))
        sent[i] += 1
        if r.status == 0 or r.status >= 500:
            failed[i] += 1
        else:
            latencies[i].append(int(r.latency_ms * 1000))
    xs = [i * bucket for i in range(n)]
    p99 = [percentile(sorted(v), 99) / 1000 for v in latencies]
    rate = [100 * f / s if s else 0.0 for f, s in zip(failed, sent, strict=True)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    top.plot(xs, p99, drawstyle="steps-post")
    top.set_ylabel("p99 (ms)")
    top.set_yscale("log")
    bottom.plot(xs, rate, drawstyle="steps-post", color="tab:red")
    bottom.set_ylabel("5xx + errors (%)")
    bottom.set_xlabel("seconds")
    for span in phases:
        for axis in (top, bottom):
            axis.axvline(span.start, color="grey", linewidth=0.5)
        top.text(span.start, 1.02, span.name, rotation=60, fontsize=7, transform=top.get_xaxis_transform())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
