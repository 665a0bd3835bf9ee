"""The fuzzers' inputs as ordinary tests: every target's seeds and checked-in corpus pass its oracle, and each
minimized crash in `tests/fuzz/regressions/<name>/` is a test of its own (named after the file), so a parser that
regresses fails here on every run, with no fuzzing engine involved. The short coverage-guided run itself is
`make fuzz` (`make test` runs it with a fixed budget per fuzzer)."""

from __future__ import annotations

from functools import cache

import pytest

from .harness import REGRESSIONS, OneInput, checked_in
from .targets import NAMES, load
from .world import shared_world


@cache
def _one_input(name: str) -> OneInput:
    return load(name).prepare()


def _regressions() -> list[tuple[str, str]]:
    return [
        (name, path.name)
        for name in NAMES
        if (REGRESSIONS / name).is_dir()
        for path in sorted((REGRESSIONS / name).iterdir())
        if path.is_file()
    ]


@pytest.mark.parametrize("name", NAMES)
def test_seeds_and_corpus_pass_the_oracle(name: str) -> None:
    target = load(name)
    inputs = target.corpus()
    assert inputs, f"{name} has no seeds"
    one_input = _one_input(name)
    for data in inputs:
        one_input(data)


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("jwt", "jwt"),
        ("sigv4", "iam"),
        ("check_request", "jwt"),
        ("check_request", "iam"),
        ("http1", "jwt"),
        ("http1", "iam"),
        ("grpc_lean", "jwt"),
        ("grpc_lean", "iam"),
    ],
)
def test_the_seeds_reach_real_allows(name: str, family: str) -> None:
    """The oracle's allow branch is exercised: the built seeds carry credentials the pipeline accepts."""
    world = shared_world()
    before = world.allowed[family]
    one_input = _one_input(name)
    for data in load(name).seeds():
        one_input(data)
    assert world.allowed[family] > before


def test_the_custom_authorizer_seeds_reach_allows() -> None:
    from .targets import custom_response

    one_input = _one_input("custom_response")
    before = custom_response._custom().allowed
    for data in custom_response.seeds():
        one_input(data)
    assert custom_response._custom().allowed >= before + 4


@pytest.mark.parametrize(("name", "file"), _regressions())
def test_regression(name: str, file: str) -> None:
    _one_input(name)((REGRESSIONS / name / file).read_bytes())


def test_every_target_is_documented() -> None:
    """Each target names its parser family and its oracle (printed by `make fuzz`, in docs/reliability.md)."""
    for name in NAMES:
        target = load(name)
        assert target.name == name and "oracle" in target.summary
    assert {path.parent.name for path in REGRESSIONS.glob("*/*")} <= set(NAMES)
    assert all(path in checked_in(path.parent.name) for path in REGRESSIONS.glob("*/*"))


LOG = """INFO: Seed: 1
#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 40Mb
#4096\tpulse  cov: 120 ft: 300 corp: 12/300b lim: 40 exec/s: 2048 rss: 60Mb
#9000\tDONE   cov: 130 ft: 333 corp: 14/310b lim: 80 exec/s: 3000 rss: 61Mb
stat::number_of_executed_units: 9001
stat::average_exec_per_sec:     3000
"""


def test_the_runner_reads_libfuzzers_last_status_and_final_stats() -> None:
    from .__main__ import parse_log

    result = parse_log("x", LOG, 3.0)
    assert (result.executions, result.coverage, result.features, result.corpus) == (9001, 130, 333, 14)
    assert round(result.rate) == 3000
    crashed = parse_log("x", LOG.replace("DONE  ", "NEW   ").split("stat::")[0], 3.0)
    assert crashed.executions == 9000 and crashed.coverage == 130
