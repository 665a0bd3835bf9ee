"""Micro-benchmark: policy evaluation cost per request as the policy grows from 1 to 10,000 statements.

Run: `python -m benchmarks.micro_policy`. Prints median microseconds (time.perf_counter_ns, batches of calls so
timer overhead does not dominate; the best median of three sweeps, because the machine is shared). No
assertions: the figures go in notes. Targets from issue 3: <= 10 us for a
20-statement policy; 10,000 statements <= 3x the cost of 10.

The policies mimic real resource policies: a few broad statements (allow everyone, deny bad networks, require TLS)
and then per-resource statements of three shapes (prefix globs per method, `*`-method statements that only a
suffix identifies, denies with IP conditions), so every index path is exercised. Each request is a fresh
`EvalContext` (that is what the pipeline does), measured both with and without building it.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.config import ApiSettings
from sidecar.policy import AUTHENTICATED, CompiledPolicy, EvalContext, authorize, parse_policy
from sidecar.request import Principal, Request

API = ApiSettings(id="a1b2c3d4e5", stage="prod", account="123456789012", region="us-east-1")
SIZES = (1, 10, 20, 100, 1_000, 10_000)
ROUNDS = 25
SWEEPS = 3
DISTINCT = 10_000
"""Distinct request paths cycled through, more than the index memo holds, so candidate lookups really run."""
CALLER = Principal(kind="sigv4", id="AIDAALICE", arn="arn:aws:iam::123456789012:user/alice", account="123456789012")


def _statement(i: int) -> dict[str, Any]:
    shape = i % 3
    if shape == 0:
        return {
            "Sid": f"Items{i}",
            "Effect": "Allow",
            "Principal": {"AWS": "123456789012"},
            "Action": "execute-api:Invoke",
            "Resource": [f"execute-api:/prod/GET/items/{i}/*", f"execute-api:/prod/HEAD/items/{i}/*"],
        }
    if shape == 1:
        return {
            "Sid": f"Orders{i}",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "execute-api:Invoke",
            "Resource": f"execute-api:/prod/*/orders/{i}",
            "Condition": {"StringEquals": {"aws:PrincipalAccount": "123456789012"}},
        }
    return {
        "Sid": f"Admin{i}",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "execute-api:Invoke",
        "Resource": f"execute-api:/prod/POST/admin/{i}/*",
        "Condition": {"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.168.0.0/16"]}},
    }


BROAD = [
    {"Sid": "Everyone", "Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke",
     "Resource": "execute-api:/prod/*"},
    {"Sid": "BadNets", "Effect": "Deny", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "execute-api:/*",
     "Condition": {"IpAddress": {"aws:SourceIp": ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"]}}},
    {"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "execute-api:/*",
     "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
]  # fmt: skip


def build(size: int) -> CompiledPolicy:
    """A policy of `size` statements: the broad ones first, then per-resource ones."""
    statements = BROAD[:size] + [_statement(i) for i in range(max(0, size - len(BROAD)))]
    text = json.dumps({"Version": "2012-10-17", "Statement": statements})
    return parse_policy(text, f"bench-{size}.json", api=API, max_size=None)


def request_for(size: int, leaf: str = "detail") -> Request:
    """A GET that one per-resource statement names (in the middle of the policy)."""
    target = max(0, (size - len(BROAD)) // 2)
    target -= target % 3
    return Request(
        method="GET",
        raw_path=f"/items/{target}/{leaf}",
        path=f"/items/{target}/{leaf}",
        headers={"user-agent": "bench/1.0"},
        scheme="https",
        source_address="10.1.2.3",
        time=1_700_000_000.0,
    )


def median_us(fn: Callable[[], object], batch: int) -> float:
    """Median microseconds per call of `fn`."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
    return statistics.median(samples)


@dataclass
class Case:
    """One policy size and the callables measured for it."""

    size: int
    compile_ms: float
    effect: str
    calls: dict[str, Callable[[], object]]


def prepare(size: int) -> Case:
    """Compile the policy for `size` and build the measured callables."""
    start = time.perf_counter()
    policy = build(size)
    compile_ms = (time.perf_counter() - start) * 1000
    request = request_for(size)
    ctx = EvalContext(request, CALLER, API)
    distinct = [request_for(size, f"leaf{i}") for i in range(DISTINCT)]
    cursor = itertools.cycle(distinct)

    def reused() -> object:
        return policy.evaluate(ctx)

    def fresh() -> object:
        return policy.evaluate(EvalContext(request, CALLER, API))

    def varied() -> object:
        return policy.evaluate(EvalContext(next(cursor), CALLER, API))

    def combined() -> object:
        return authorize(AUTHENTICATED, policy.evaluate(EvalContext(request, CALLER, API)))

    calls = {"evaluate": reused, "ctx+evaluate": fresh, "distinct paths": varied, "+authorize": combined}
    return Case(size, compile_ms, policy.evaluate(ctx).effect.value, calls)


def main() -> None:
    cases = [prepare(size) for size in SIZES]
    best: dict[tuple[int, str], float] = {}
    for _ in range(SWEEPS):  # the machine is shared: keep each figure's best median over a few sweeps
        for case in cases:
            for name, call in case.calls.items():
                value = median_us(call, 1000)
                best[case.size, name] = min(value, best.get((case.size, name), value))
    names = list(cases[0].calls)
    print(f"{'statements':>10}  {'compile ms':>10}  " + "  ".join(f"{n + ' us':>17}" for n in names) + "  effect")
    for case in cases:
        figures = "  ".join(f"{best[case.size, n]:>17.2f}" for n in names)
        print(f"{case.size:>10}  {case.compile_ms:>10.1f}  {figures}  {case.effect}")
    ratio = best[10_000, "ctx+evaluate"] / best[10, "ctx+evaluate"]
    print(f"ratio 10,000 / 10 statements (ctx+evaluate): {ratio:.2f}x")


if __name__ == "__main__":
    main()
