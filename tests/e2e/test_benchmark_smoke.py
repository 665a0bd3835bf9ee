"""The load harness in smoke mode against the real stack (sidecar, Envoy, wrk, h2load): the run completes and
writes its three outputs with a row per floor and scenario. Nothing here is about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_smoke_run_writes_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--smoke", "--output", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["scenario"], r["transport"], r["mode"]): r for r in data["rows"]}
    for key in [
        ("envoy-only", "envoy", "saturation"),
        ("noop-grpc", "envoy", "saturation"),
        ("noop-grpc", "envoy", "fixed-rate"),
        ("noop-grpc", "grpc-direct", "saturation"),
        ("noop-grpc-spin", "envoy", "saturation"),  # the calibration floor: the no-op plus 20 us of Python
        ("anonymous", "envoy", "saturation"),
        ("anonymous", "envoy", "fixed-rate"),
        ("anonymous", "grpc-direct", "saturation"),
        ("redis-l2-hit", "envoy", "fixed-rate"),
        ("redis-down", "envoy", "fixed-rate"),  # Redis stopped under the running sidecar: still no errors
        ("lambda-cached", "envoy", "saturation"),
        ("lambda-uncached", "envoy", "saturation"),
        ("lambda-remote", "envoy", "fixed-rate"),  # through a lambda-serve the harness started
        ("apikey-plan-redis", "envoy", "saturation"),  # errors 0: the plan refused none of them
        ("apikey-plan-redis", "envoy", "fixed-rate"),
        ("apikey-plan-redis", "grpc-direct", "saturation"),
        ("apikey-plan-local", "envoy", "saturation"),
        ("apikey-plan-local", "envoy", "fixed-rate"),
        ("jwt-warm", "grpc-direct", "saturation"),
        ("mtls-warm", "grpc-direct", "saturation"),  # a client certificate in source.certificate, straight at gRPC
        ("envoy-jwt-authn", "envoy", "saturation"),  # the native floors: a 200 from Envoy's own jwt_authn
        ("envoy-jwt-authn-cold", "envoy", "saturation"),
        ("jwt-offload", "envoy", "saturation"),  # envoy-config --offload's rendering: Envoy decides the JWT route
    ]:
        assert key in rows, key
        assert rows[key]["requests"] > 0 and rows[key]["errors"] == 0, rows[key]
    anonymous = rows[("anonymous", "envoy", "saturation")]
    assert anonymous["sidecar_cpu_us_per_check"] > 0 and anonymous["envoy_cpu_us_per_check"] > 0
    assert set(anonymous["ratios"]) == {"rps", "p99", "sidecar_cpu"}
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu_model"]
    assert data["pending"] == []
    report = (tmp_path / "results.md").read_text()
    assert "anonymous route" in report and "Targets" in report
    assert "| redis-down: p99 vs redis-l2-hit (fixed-rate) | <= 1.20x | " in report
    assert rows[("lambda-remote", "envoy", "fixed-rate")]["helper_cpu_us_per_check"] > 0  # lambda-serve's CPU
    assert "## Custom authorizers" in report
    assert "| lambda-uncached: sidecar CPU per Check minus lambda-cached's (saturation) | <= 40 us | " in report
    for name in ("apikey-plan-redis", "apikey-plan-local"):  # every request was metered by the plan, none refused
        metered = data["metered"][name]
        assert metered["ok"] >= sum(r["requests"] for r in data["rows"] if r["scenario"] == name), metered
        assert not any(count for outcome, count in metered.items() if outcome not in ("ok", "fallbacks")), metered
    (admission,) = data["admission"]  # two sidecars sharing one Redis, offered twice the throttle's rate
    assert admission["offered"] == 800 and admission["errors"] == 0, admission  # 400 rps for 2 s
    assert admission["throttled"] > 0 and admission["fallbacks"] == 0, admission
    assert 0.9 <= admission["ratio"] <= 1.01, admission  # never above the exact allowance by more than 1%
    assert "| apikey-plan-redis: sidecar CPU per Check vs redis-l2-hit (saturation) | <= 1.25x | " in report
    assert "## API keys and usage plans" in report and "| 2 | 200/s, burst 100 | 800 (400) |" in report
    assert not [key for key in rows if key[0] == "mtls-warm" and key[1] != "grpc-direct"]  # never through Envoy
    assert "## Client certificates (mTLS)" in report
    assert "| mtls-warm: sidecar CPU per Check vs jwt-warm (saturation, grpc-direct) | <= 1.10x | " in report
    assert "| mtls-warm: sidecar CPU per Check vs jwt-warm (saturation, grpc-direct) | <= 1.10x | - |" not in report
    for key in [("jwt-warm", "envoy", "saturation"), ("envoy-jwt-authn", "envoy", "fixed-rate")]:
        assert rows[key]["added_cpu_us"] is not None and rows[key]["added_vs_envoy"] is not None, rows[key]
    assert rows[("jwt-warm", "grpc-direct", "saturation")]["added_cpu_us"] is None  # no Envoy in that row
    assert "## What authorizing adds to Envoy" in report
    assert "| jwt-offload: CPU added over Envoy alone, vs Envoy alone's (saturation) | <= 0.25x | " in report
    assert "| jwt-cold-rs256: CPU added over Envoy alone vs what envoy-jwt-authn-cold adds" in report
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
