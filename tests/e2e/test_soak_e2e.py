"""The fault-injection soak, short (`benchmarks/soak.py --minutes 1`): a real Envoy, `serve --workers 2`, Redis and
a JWKS issuer, every fault in its own phase. Each request's answer is judged against the one its kind must get;
this asserts the run's verdicts and that every fault was really felt (a phase whose fault never reached the
sidecar would pass for the wrong reason)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.soak import PHASES
from tests.conftest import REPO

pytestmark = pytest.mark.e2e
Soaked = tuple[dict[str, Any], Path]


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> Soaked:
    out = tmp_path_factory.mktemp("soak")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--minutes", "1", "--rate", "60", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    assert results, done.stdout + done.stderr
    return results, out


def test_nothing_wrongly_decided_nothing_crashed(soaked: Soaked) -> None:
    results, out = soaked
    verdicts = {k: results[k] for k in ("wrong_allows", "wrong_denies", "reason_mismatches", "errors_5xx")}
    assert verdicts == {"wrong_allows": 0, "wrong_denies": 0, "reason_mismatches": 0, "errors_5xx": 0}, results[
        "examples"
    ]
    assert results["transport_errors"] == 0
    assert results["crashes"] == 0, results["crash_details"]
    assert results["faults_not_felt"] == []
    assert results["limit_allows_over_allowance"] == {"throttle": 0, "rule": 0}
    assert results["requests"] >= 60 * 50  # a minute at 60 rps, and the flood beside it
    assert results["rss_growth_pct"] <= 5.0, results["rss_per_worker"]
    assert (out / "results.md").exists() and (out / "soak.png").stat().st_size > 10_000


def test_every_phase_ran_and_its_fault_was_felt(soaked: Soaked) -> None:
    results, _ = soaked
    phases = {p["name"]: p for p in results["phases"]}
    assert list(phases) == list(PHASES)
    assert all(p["requests"] > 0 for p in phases.values())
    for name in ("redis-kill", "redis-pause", "redis-garbage"):
        assert phases[name]["notes"]["fault_felt"] and phases[name]["notes"]["redis_back"], name
    for name in ("jwks-down", "jwks-slow", "jwks-oversized", "jwks-garbage"):
        assert phases[name]["notes"]["fault_felt"] and phases[name]["notes"]["recovered"], name
    assert phases["config-reloads"]["notes"]["reloads_observed"] == {"ok": 2, "rejected": 2}
    assert phases["credentials-rewrite"]["notes"]["half_file_rejected"]
    assert phases["credentials-rewrite"]["notes"]["whole_file_loaded"]
    assert phases["worker-kill"]["notes"]["restarted_s"] is not None
    assert phases["worker-kill"]["notes"]["envoy_healthy_again_s"] is not None
    assert phases["side-load"]["notes"]["flood_requests"] > 0
    rolling = phases["rolling-restart"]
    assert rolling["notes"]["first_exit_code"] == 0 and rolling["notes"]["envoy_sees_second_s"] is not None
    assert rolling["fail_closed_503"] == 0 and rolling["errors"] == 0  # server.drain_delay: nothing refused
