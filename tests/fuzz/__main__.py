"""`python -m tests.fuzz`: run the coverage-guided fuzzers (`make fuzz FUZZ_SECONDS=N` calls `run`).

    run [--seconds N] [--runs R] [--only a,b]     every target N seconds (or R inputs, whichever first), one
        [--work DIR] [--json FILE]                process each; a line per target, then the table
    child NAME --seconds N [--runs R] --work DIR  (internal) one target under atheris
    minimize NAME CRASH OUT                       shrink a crashing input, keeping where it fails
    compare [--seconds N] [--only a,b]            atheris vs hypothesis: sidecar lines reached in N seconds

A crash is minimized into `tests/fuzz/regressions/<name>/` (replayed by `test_fuzzers.py` from then on) and the
run exits 1. The run's own corpus grows under `--work` (default: a folder in the temp dir), outside git.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import harness
from .targets import NAMES

REPO = Path(__file__).resolve().parents[2]
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", re.MULTILINE)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Result:
    """One target's run, as libFuzzer reported it."""

    name: str
    executions: int = 0
    seconds: float = 0.0
    coverage: int = 0
    """libFuzzer's `cov`: edges of the instrumented code reached."""
    features: int = 0
    """libFuzzer's `ft`: edges and their hit counts, what it keeps new inputs for."""
    corpus: int = 0
    crashes: int = 0
    regression: str = ""
    error: str = ""

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


def _child_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.fuzz", *args]


def parse_log(name: str, log: str, seconds: float) -> Result:
    """Executions, coverage (libFuzzer's `cov`: edges of the instrumented code) and features from the output."""
    result = Result(name, seconds=seconds)
    statuses = _STATUS.findall(log)
    if statuses:
        last = statuses[-1]
        result.executions, result.coverage, result.features, result.corpus = map(int, last)
    stats = dict(_STAT.findall(log))
    if "number_of_executed_units" in stats:
        result.executions = int(stats["number_of_executed_units"])
    return result


def run_one(name: str, seconds: int, work: Path, runs: int = -1) -> Result:
    """Fuzz one target in its own process; on a crash, minimize it into the regressions folder."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "fuzz.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        code = subprocess.run(
            _child_command("child", name, "--seconds", str(seconds), "--runs", str(runs), "--work", str(folder)),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=seconds + 600,
            check=False,
        ).returncode
    text = log_path.read_text(errors="replace")
    result = parse_log(name, text, time.monotonic() - started)
    if code == 0:
        return result
    found = _ARTIFACT.findall(text)
    if not found:
        result.error = f"exit {code} without a crash file; see {log_path}"
        return result
    result.crashes = 1
    crash = Path(found[-1])
    out = harness.REGRESSIONS / name / crash.name
    if not crash.name.startswith("crash-"):  # a timeout or out-of-memory input: each try would hang, keep it whole
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(crash, out)
        result.regression = f"{out.relative_to(REPO)} (not minimized)"
        return result
    shrunk = subprocess.run(
        _child_command("minimize", name, str(crash), str(out)), cwd=REPO, timeout=900, check=False
    ).returncode
    result.regression = str(out.relative_to(REPO)) if shrunk == 0 else f"{crash} (not reproduced: {log_path})"
    return result


def _table(results: list[Result]) -> str:
    rows = [f"{'fuzzer':16} {'executions':>12} {'execs/s':>9} {'cov':>6} {'ft':>7} {'corpus':>7} {'crashes':>8}"]
    for r in results:
        rows.append(
            f"{r.name:16} {r.executions:12d} {r.rate:9.0f} {r.coverage:6d} {r.features:7d} {r.corpus:7d} {r.crashes:8d}"
            + (f"  {r.regression}" if r.regression else "")
            + (f"  ERROR {r.error}" if r.error else "")
        )
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    names = args.only.split(",") if args.only else list(NAMES)
    work = Path(args.work) if args.work else Path(tempfile.gettempdir()) / "authz-sidecar-fuzz"
    results = []
    for name in names:
        result = run_one(name, args.seconds, work, args.runs)
        print(_table([result]).splitlines()[1], flush=True)
        results.append(result)
    print("\n" + _table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) | {"execs_per_s": r.rate} for r in results], indent=2))
    failed = sum(1 for r in results if r.crashes or r.error)
    print(f"fuzz: {len(results) - failed} passed, {failed} failed")  # the plain closing line CI reads
    return 1 if failed else 0


def _timed(command: list[str], log: Path) -> tuple[float, str]:
    """Run a child, its output to `log`; (wall seconds, the output)."""
    started = time.monotonic()
    with log.open("w") as out:
        subprocess.run(command, cwd=Path.cwd(), stdout=out, stderr=subprocess.STDOUT, check=False)
    return time.monotonic() - started, log.read_text(errors="replace")


def compare(args: argparse.Namespace) -> int:
    """Each engine `--seconds` on each target from the same seeds: executions, sidecar lines reached (the inputs
    replayed under one tracer afterwards), and the wall time to the first failure if there was one."""
    from .engine import line_coverage

    names = args.only.split(",") if args.only else ["resp", "policy"]
    work = Path(tempfile.mkdtemp(prefix="authz-fuzz-compare-"))
    rows = []
    for name in names:
        a_work = work / "atheris" / name
        a_work.mkdir(parents=True)
        a_time, a_log = _timed(
            _child_command("child", name, "--seconds", str(args.seconds), "--work", str(a_work)), a_work / "log"
        )
        a_runs = parse_log(name, a_log, a_time).executions
        a_crash = bool(_ARTIFACT.search(a_log))
        h_out = work / "hypothesis" / name
        h_time, h_log = _timed(
            _child_command("hypothesis", name, "--seconds", str(args.seconds), "--out", str(h_out)),
            work / f"{name}.hypothesis.log",
        )
        h_runs, h_crash = json.loads(h_log.strip().splitlines()[-1])
        kept = [
            *sorted((a_work / "corpus").iterdir()),
            *sorted((a_work / "seeds").iterdir()),
            *harness.checked_in(name),
        ]
        a_lines, _ = line_coverage(name, kept)
        h_lines, _ = line_coverage(name, sorted(h_out.iterdir()))
        rows.append(
            (
                name,
                a_runs,
                a_lines,
                f"{a_time:.0f}s" if a_crash else "-",
                h_runs,
                h_lines,
                f"{h_time:.0f}s" if h_crash else "-",
            )
        )
    head = ("target", "atheris execs", "lines", "crash at", "hypothesis execs", "lines", "crash at")
    print("| " + " | ".join(head) + " |")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "10")))
    p_run.add_argument("--runs", type=int, default=int(os.environ.get("FUZZ_RUNS", "-1")))
    p_run.add_argument("--only", default="")
    p_run.add_argument("--work", default="")
    p_run.add_argument("--json", default="")
    p_child = sub.add_parser("child")
    p_child.add_argument("name")
    p_child.add_argument("--seconds", type=int, required=True)
    p_child.add_argument("--runs", type=int, default=-1)
    p_child.add_argument("--work", required=True)
    p_min = sub.add_parser("minimize")
    p_min.add_argument("name")
    p_min.add_argument("crash")
    p_min.add_argument("out")
    p_hyp = sub.add_parser("hypothesis")
    p_hyp.add_argument("name")
    p_hyp.add_argument("--seconds", type=float, required=True)
    p_hyp.add_argument("--out", required=True)
    p_cmp = sub.add_parser("compare")
    p_cmp.add_argument("--seconds", type=int, default=60)
    p_cmp.add_argument("--only", default="")
    args = parser.parse_args(argv)
    logging.getLogger().addHandler(logging.NullHandler())  # hostile input's warnings are expected, not news
    if args.command == "run":
        return run(args)
    if args.command == "child":
        from .engine import fuzz

        fuzz(args.name, args.seconds, Path(args.work), args.runs)
        return 0
    if args.command == "minimize":
        from .engine import minimize

        return 0 if minimize(args.name, Path(args.crash), Path(args.out)) else 1
    if args.command == "hypothesis":
        from .engine import hypothesis_run

        print(json.dumps(hypothesis_run(args.name, args.seconds, Path(args.out))))
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
