"""The harness's target checks (benchmarks/report.py) read the right rows and give the right verdicts."""

from __future__ import annotations

from benchmarks.harness import PROFILES, Row, RunResult
from benchmarks.load import LoadResult
from benchmarks.report import _targets


def _row(scenario: str, transport: str, rps: float) -> Row:
    result = LoadResult(requests=int(rps * 3), seconds=3.0, errors=0, p50_us=500, p90_us=700, p99_us=900, max_us=1e3)
    return Row(scenario, scenario, transport, "saturation", result)


def test_http_mode_throughput_is_checked_against_both_grpc_engines() -> None:
    run = RunResult(
        PROFILES["quick"],
        rows=[
            _row("jwt-warm-http", "envoy-http", 24_000),
            _row("jwt-warm-grpcio", "envoy", 6_000),
            _row("jwt-warm", "envoy", 18_000),
        ],
    )
    lines = "\n".join(_targets(run))
    assert (
        "| jwt-warm-http: rps vs jwt-warm-grpcio, the gRPC mode on grpc.aio (saturation) | >= 2.50x | 4.00x | met |"
        in lines
    )
    assert (
        "rps vs jwt-warm, the gRPC mode on the lean listener (default) (saturation) | >= 2.50x | 1.33x"
        " | missed (by 47%) |" in lines
    )


def test_a_relative_target_without_both_rows_says_not_run() -> None:
    lines = "\n".join(_targets(RunResult(PROFILES["quick"], rows=[_row("jwt-warm-http", "envoy-http", 24_000)])))
    assert (
        "| jwt-warm-http: rps vs jwt-warm-grpcio, the gRPC mode on grpc.aio (saturation) | >= 2.50x | - | not run |"
        in lines
    )
