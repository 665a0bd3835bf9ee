"""The harness's target checks (benchmarks/report.py) read the right rows and give the right verdicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from benchmarks import report, scenarios
from benchmarks.harness import PROFILES, Harness, Row, RunResult, add_ratios, check_request
from benchmarks.limits_admission import Admission
from benchmarks.load import LoadResult
from benchmarks.micro_limits import pipeline_for
from benchmarks.report import _table, _targets, admission_table, custom_table, limits_table, metered_lines, mtls_table
from benchmarks.scenarios import Scenario
from sidecar.transports.ext_authz import to_request


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


def test_a_floor_measured_beside_each_round_gives_the_median_ratio_of_the_pairs() -> None:
    """`Profile.floor_beside` at saturation: each round of a row follows a round of the floor sent the same
    requests; the row's `rps_beside` is the median over rounds of ours / the floor's just before it."""
    ours = iter([20_000, 21_000, 18_000])
    floors = iter([25_000, 21_000, 24_000])

    def load(rps: float) -> LoadResult:
        return LoadResult(int(rps), 1.0, 0, 500, 700, 900, 1_000)

    harness = Harness(PROFILES["quick"], log=lambda line: None)
    scenario = Scenario("jwt-warm-http", "JWT warm, HTTP", "sidecar", transport="envoy-http")
    row = harness.row(
        scenario, "envoy-http", "saturation", lambda: load(next(ours)), None, None, lambda: load(next(floors))
    )
    assert row.beside_rps == 24_000
    assert row.beside_rps_ratio == 0.8  # pairs 0.8, 1.0, 0.75
    assert [r["floor_beside_rps"] for r in row.rounds] == [25_000, 21_000, 24_000]
    add_ratios([_row("noop-http", "envoy-http", 30_000), row])
    assert row.ratios["rps_beside"] == 0.8 and row.ratios["rps"] == round(20_000 / 30_000, 3)
    assert "| JWT warm, HTTP | 20000 | 0.67x |" in "\n".join(_table([row], fixed=False, beside_rps=True))
    assert "| 24000 | 0.80x |" in "\n".join(_table([row], fixed=False, beside_rps=True))


def _cpu_row(scenario: str, mode: str, cpu_us: float, p99_us: float = 900, helper_us: float | None = None) -> Row:
    row = _row(scenario, "envoy", 1000)
    assert row.result is not None
    row.mode, row.sidecar_cpu_us, row.helper_cpu_us = mode, cpu_us, helper_us
    row.result = dataclasses.replace(row.result, p99_us=p99_us)
    return row


def test_custom_authorizer_targets_read_cpu_against_other_rows() -> None:
    """Issue 20: a cached lambda decision's CPU over the warm JWT row's (<= 1.10x), and the uncached in-process
    row's CPU minus the cached one's (<= 40 us); the remote row is reported against the cached one."""
    run = RunResult(
        PROFILES["quick"],
        rows=[
            _cpu_row("jwt-warm", "saturation", 40.0),
            _cpu_row("lambda-cached", "saturation", 46.0),
            _cpu_row("lambda-uncached", "saturation", 80.0),
            _cpu_row("lambda-cached", "fixed-rate", 100.0, p99_us=800),
            _cpu_row("lambda-remote", "fixed-rate", 300.0, p99_us=2000, helper_us=150.0),
        ],
    )
    lines = "\n".join(_targets(run))
    assert (
        "| lambda-cached: sidecar CPU per Check vs jwt-warm (saturation) | <= 1.10x | 1.15x | missed (by 5%) |" in lines
    )
    assert (
        "| lambda-uncached: sidecar CPU per Check minus lambda-cached's (saturation) | <= 40 us | 34.0 us | met |"
        in (lines)
    )
    table = "\n".join(custom_table(run))
    assert "| lambda-remote | fixed-rate | 1000 | 2.00 | 2.50x | 300 | 3.00x | 150 | 0 |" in table
    assert custom_table(RunResult(PROFILES["quick"], rows=[_cpu_row("jwt-warm", "saturation", 40.0)])) == []


def test_usage_plan_rows_are_held_against_their_references_and_p99_against_the_warm_jwt_row() -> None:
    """Issue 21: counted in Redis <= 1.25x the Redis L2-hit row's CPU, in process <= 1.10x the warm JWT row's;
    both rows' p99 at the fixed rate is read against the warm JWT row's."""
    run = RunResult(
        PROFILES["quick"],
        rows=[
            _cpu_row("jwt-warm", "saturation", 40.0),
            _cpu_row("redis-l2-hit", "saturation", 60.0),
            _cpu_row("apikey-plan-redis", "saturation", 81.0),
            _cpu_row("apikey-plan-local", "saturation", 42.0),
            _cpu_row("jwt-warm", "fixed-rate", 90.0, p99_us=800),
            _cpu_row("apikey-plan-redis", "fixed-rate", 120.0, p99_us=1200),
        ],
        metered={"apikey-plan-redis": {"fallbacks": 0.0, "ok": 123_456.0, "throttled": 0.0}},
    )
    run.rows[-1].ratios["p99_beside"] = 1.4
    lines = "\n".join(_targets(run))
    assert (
        "| apikey-plan-redis: sidecar CPU per Check vs redis-l2-hit (saturation) | <= 1.25x | 1.35x | missed (by 8%) |"
        in lines
    )
    assert "| apikey-plan-local: sidecar CPU per Check vs jwt-warm (saturation) | <= 1.10x | 1.05x | met |" in lines
    table = "\n".join(limits_table(run))
    assert "| apikey-plan-redis | saturation | 1000 | 0.90 | 1.00x |  | 81 | 1.35x redis-l2-hit | 0 |" in table
    assert "| apikey-plan-redis | fixed-rate | 1000 | 1.20 | 1.50x | 1.40x | 120 |  | 0 |" in table  # no L2 row here
    assert "| jwt-warm | fixed-rate | 1000 | 0.80 |  |  | 90 |  | 0 |" in table
    assert metered_lines(run) == [
        "- `apikey-plan-redis`: 123,456 requests metered and admitted by the plan, 0 refused, 0 decided without Redis."
    ]
    run.metered["apikey-plan-redis"] = {"fallbacks": 81_775.0, "ok": 90_056.0}
    assert metered_lines(run)[0].endswith(
        "81,775 decided without Redis (91%: its figures are partly of the in-process fallback, not of counting in"
        " Redis)."
    )
    assert limits_table(RunResult(PROFILES["quick"], rows=[_cpu_row("jwt-warm", "saturation", 40.0)])) == []


def test_the_admission_table_gives_admitted_over_the_allowance_and_the_one_percent_verdict() -> None:
    exact = Admission(2, 200.0, 100, 5.0, 400.0, 2000, 1098, 902, 0, 0, 1098)
    over = Admission(2, 200.0, 100, 5.0, 400.0, 2000, 1200, 800, 0, 37, 1200)
    run = RunResult(PROFILES["quick"], admission=[exact.as_dict(), over.as_dict()])
    assert exact.allowance == 1100 and exact.as_dict()["ratio"] == 0.9982
    table = admission_table(run)
    assert table[2] == (
        "| 2 | 200/s, burst 100 | 2000 (400) | 5.000 | 1098 | 1100.0 | 0.9982 (-0.18%) | 902 | 0 | 0 | yes |"
    )
    assert table[3].endswith("| 1200 | 1100.0 | 1.0909 (+9.09%) | 800 | 0 | 37 | no (+9.09%) |")
    assert admission_table(RunResult(PROFILES["quick"])) == []
    assert "## API keys and usage plans" in "\n".join(report._limits_section(run))


def _direct_row(scenario: str, rps: float, cpu_us: float) -> Row:
    row = _row(scenario, "grpc-direct", rps)
    row.sidecar_cpu_us = cpu_us
    return row


def test_the_warm_mtls_row_is_held_against_the_warm_jwt_row_straight_at_grpc() -> None:
    """Issue 22: warm mTLS CPU per Check <= 1.10x the warm JWT one, read on the gRPC-direct rows (the only ones
    an mTLS row has), never against the JWT row through Envoy."""
    run = RunResult(
        PROFILES["quick"],
        rows=[
            _cpu_row("jwt-warm", "saturation", 20.0),  # through Envoy: not the reference
            _direct_row("jwt-warm", 10_000, 40.0),
            _direct_row("mtls-warm", 9_000, 46.0),
        ],
    )
    lines = "\n".join(_targets(run))
    assert (
        "| mtls-warm: sidecar CPU per Check vs jwt-warm (saturation, grpc-direct) | <= 1.10x | 1.15x | missed (by 5%) |"
        in lines
    )
    assert "| lambda-cached: sidecar CPU per Check vs jwt-warm (saturation) | <= 1.10x | - | not run |" in lines
    table = mtls_table(run)
    assert table[2] == "| jwt-warm | 10000 |  | 0.90 | 40 |  | 0 | 0.00 |"
    assert table[3] == "| mtls-warm | 9000 | 0.90x | 0.90 | 46 | 1.15x | 0 | 0.00 |"
    assert "## Client certificates (mTLS)" in report.markdown(run, _HOST)
    assert mtls_table(RunResult(PROFILES["quick"], rows=[_direct_row("jwt-warm", 10_000, 40.0)])) == []


def test_an_mtls_row_that_could_not_be_measured_says_why() -> None:
    missing = Row("mtls-warm", "mTLS warm", "grpc-direct", "saturation", note="grpc status 16")
    run = RunResult(PROFILES["quick"], rows=[_direct_row("jwt-warm", 10_000, 40.0), missing])
    assert mtls_table(run)[3] == "| mTLS warm | not measured: grpc status 16 | | | | | | |"
    assert "| mtls-warm: sidecar CPU per Check vs jwt-warm (saturation, grpc-direct) | <= 1.10x | - | not run |" in (
        "\n".join(_targets(run))
    )


_HOST = {
    key: "x"
    for key in ("cpu_model", "cores", "cores_usable", "kernel", "python", "grpcio", "protobuf", "uvloop", "envoy")
} | {"wrk": "wrk", "h2load": "h2load", "commit": "abc1234", "date": "today"}


async def test_the_mtls_check_request_carries_the_certificate_as_envoy_sends_it_and_its_config_allows_it(
    tmp_path: Path,
) -> None:
    """The pre-encoded CheckRequest h2load sends for `mtls-warm` holds the client certificate in
    `attributes.source.certificate` (URL-encoded PEM), and the scenario's own config (its CA, truststore and CRL
    made by `benchmarks/certs.py`) allows it with the certificate's SPIFFE ID as the principal: the row measures
    allowed Checks, not refusals."""
    fx = scenarios.Fixtures(tmp_path, "127.0.0.1:10000", 0)
    scenario = scenarios.mtls_warm(fx)
    check = CheckRequest.FromString(check_request(scenario, fx.envoy_host))
    assert check.attributes.source.certificate == scenario.peer_certificate
    assert scenario.peer_certificate.startswith("-----BEGIN%20CERTIFICATE-----")
    assert not scenario.through_envoy and scenario.direct
    request = to_request(check)
    pipe = await pipeline_for(tmp_path, scenario)
    try:
        decision = await pipe.check(request)
        assert decision.allowed, decision
        assert decision.principal is not None
        assert decision.principal.id == fx.pki.spiffe_id("warm-client")
        missing = await pipe.check(request._replace(peer_certificate=""))
        assert not missing.allowed and missing.reason == "ClientCertMissing"
    finally:
        await pipe.holder.current.stop()
