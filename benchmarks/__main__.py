"""`python -m benchmarks run --smoke|--quick|--full [--output DIR] [--only NAME,...]`: the load benchmark.

--smoke runs in about a minute (the floors, the anonymous and warm JWT routes, the Redis rows, the custom-authorizer
rows, the usage-plan rows and the warm mTLS row, one second per measurement, and two seconds of the two-sidecar
over-admission measurement) to keep the harness working in CI; it says nothing about speed. --quick takes a few
minutes, --full much longer. Results go to `benchmarks/results/<profile>/` unless --output says otherwise. Besides
scenario names, --only takes `memory` (the memory step) and `limits-admission` (the over-admission measurement,
also run with `apikey-plan-redis`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .harness import PROFILES, REPO, Harness
from .report import write


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="authz-sidecar load benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start everything on loopback, measure, write results")
    level = run.add_mutually_exclusive_group()
    for name in PROFILES:
        level.add_argument(f"--{name}", dest="profile", action="store_const", const=name)
    run.add_argument("--output", type=Path, help="directory for results.{md,json} and latency.png")
    run.add_argument("--only", help="comma-separated sidecar scenario names (the floors always run)")
    run.add_argument(
        "--floors", help="comma-separated floors to measure (default all; e.g. noop-grpc), for quick iterations"
    )
    run.add_argument("--seconds", type=float, help="override the seconds per measurement")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile or "quick"]
    if args.only:
        profile = dataclasses.replace(profile, only=frozenset(n.strip() for n in args.only.split(",") if n.strip()))
    if args.floors:
        profile = dataclasses.replace(profile, floors=frozenset(n.strip() for n in args.floors.split(",") if n.strip()))
    if args.seconds:
        profile = dataclasses.replace(profile, seconds=args.seconds)
    output = args.output or REPO / "benchmarks" / "results" / profile.name
    started = time.monotonic()
    print(f"benchmark profile {profile.name}: everything on 127.0.0.1", flush=True)
    try:
        result = Harness(profile, log=lambda line: print(line, flush=True)).run()
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    paths = write(result, output)
    print(f"done in {time.monotonic() - started:.0f} s; wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
