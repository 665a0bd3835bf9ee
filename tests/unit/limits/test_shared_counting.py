"""Two processes sharing one Redis (and one Redis Cluster) drive one key at once: together they are admitted what
one exact GCRA bucket allows over the time they ran (within 1%), and a quota of N with 2N attempts admits N."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import REPO, RedisServer
from tests.unit.limits.cluster_testkit import RedisClusterServers
from tests.unit.limits.hammer import THROTTLE

SECONDS = 3.0
ATTEMPTS = 500  # per process: 2N attempts at a quota of N


def replicas(url: str, cluster: bool, key: str) -> list[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "tests.unit.limits.hammer", url, "1" if cluster else "0", key]
    return [
        subprocess.Popen(
            [*command, str(SECONDS), str(ATTEMPTS)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]


def drive(url: str, cluster: bool) -> dict[str, float]:
    """Start both replicas, release them together, and add up what they admitted; `start` and `end` are the Redis
    times of the first one's start and the last one's end."""
    processes = replicas(url, cluster, f"plan:shared:key:{uuid.uuid4().hex[:12]}")
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        reports = [json.loads(process.communicate(timeout=SECONDS + 30)[0]) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert all(process.returncode == 0 for process in processes)
    total = {name: sum(report[name] for report in reports) for name in ("admitted", "attempts", "quota")}
    total["start"] = min(report["start"] for report in reports)
    total["end"] = max(report["end"] for report in reports)
    return total


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_two_processes_share_one_exact_bucket_and_one_quota(
    kind: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url, cluster = server.url, False
    else:
        nodes: RedisClusterServers = request.getfixturevalue("redis_cluster")
        url, cluster = nodes.url, True
    begun = time.monotonic()
    total = drive(url, cluster)
    elapsed = total["end"] - total["start"]
    allowance = THROTTLE.burst + elapsed * 1_000_000 / THROTTLE.interval_us  # exact GCRA over the run
    error = (total["admitted"] - allowance) / allowance
    with capsys.disabled():
        print(
            f"\n[{kind}] two processes, {total['attempts']:.0f} throttle attempts over {elapsed:.3f} s of Redis time:"
            f" admitted {total['admitted']:.0f}, GCRA allowance {allowance:.1f}, {error:+.3%}"
            f" ({'over' if error > 0 else 'under'}-admission); quota {ATTEMPTS} of {2 * ATTEMPTS} attempts:"
            f" admitted {total['quota']:.0f} ({time.monotonic() - begun:.1f} s)"
        )
    assert total["attempts"] > 2 * allowance  # the key was driven well past its limit
    assert abs(error) <= 0.01
    assert total["quota"] == ATTEMPTS
