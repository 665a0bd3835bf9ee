"""`authz-sidecar usage` (API Gateway's GetUsage), run as a real process against what a real pipeline counted in a
real redis-server: used, remaining and the period's limit (the offset in the key's first period), as text and
JSON; every refusal is exit 2 with a message naming the key by id, and no output ever holds a key's value or
digest. (The admin endpoint's `/usage` and `usage --admin`: tests/unit/serve/test_admin_usage.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from sidecar.config import parse_config
from sidecar.harness.envoy import free_port
from sidecar.limits.apikeys import ApiKey, ApiKeySet, digest_of
from sidecar.limits.counters import Quota, period_bounds
from sidecar.limits.gates import CompiledPlan
from sidecar.limits.usage_cli import UsageError, iso, metered_quota, period_limit
from sidecar.pipeline import Pipeline
from sidecar.request import Request
from sidecar.runtime import RuntimeHolder, compile_runtime
from sidecar.settings import UsagePlanSettings
from tests.conftest import RedisServer

from .usage_testkit import BRONZE, BRONZE_LIMIT, GOLD, GOLD_LIMIT, GOLD_OFFSET, VALUES, config_text, key_file


def usage(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One `usage` command, logging at DEBUG (whatever it logs is in stderr, to be searched for secrets)."""
    command = [sys.executable, "-m", "sidecar", "--log-level", "DEBUG", "usage", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, cwd=config.parent)


def no_secret_in(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    for value in VALUES:
        assert value not in output and digest_of(value) not in output and digest_of(value)[:8] not in output


def write_config(tmp_path: Path, redis_url: str | None = None) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(key_file(tmp_path), redis_url))
    return path


def request(key: str) -> Request:
    headers = {"host": "api.example.test", "x-api-key": key}
    return Request(method="GET", raw_path="/orders/1", path="/orders/1", headers=headers, host="api.example.test")


async def served(path: Path, keys: list[str]) -> list[int]:
    """Decide one request per key with the config's own runtime (its counters: Redis); their statuses."""
    runtime = compile_runtime(parse_config(path.read_text(), str(path)))
    try:
        pipe = Pipeline(RuntimeHolder(runtime))
        return [(await pipe.check(request(key))).status for key in keys]
    finally:
        await runtime.stop()


def day_starts() -> set[str]:
    """The current UTC day's start, as the command may see it (the day may turn while the test runs)."""
    return {iso(period_bounds("DAY", int(time.time()))[0]), iso(period_bounds("DAY", int(time.time()) + 60)[0])}


async def test_usage_reports_what_the_sidecar_counted_in_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, redis_server.url)
    assert await served(path, [GOLD] * 4 + [BRONZE] * 2) == [200] * 6
    starts = day_starts()

    result = usage(path, "--key", "k-gold", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    first_period = GOLD_LIMIT - GOLD_OFFSET  # the key was first metered today: the offset applies
    assert report == {
        "key": "k-gold",
        "plan": "gold",
        "period": "DAY",
        "period_start": report["period_start"],
        "period_end": report["period_end"],
        "used": 4,
        "remaining": first_period - 4,
        "limit": first_period,
        "shared": True,
    }
    assert report["period_start"] in starts
    start = datetime.fromisoformat(report["period_start"].replace("Z", "+00:00"))
    assert report["period_end"] == iso(int(start.timestamp()) + 86_400)
    no_secret_in(result)

    text = usage(path, "--key", "k-bronze")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[:2] == ["key:        k-bronze", "plan:       bronze"]
    assert lines[2].startswith("period:     WEEK ") and lines[3:] == [
        f"used:       2 of {BRONZE_LIMIT}",
        f"remaining:  {BRONZE_LIMIT - 2}",
        "counters:   shared (Redis: every replica)",
    ]
    no_secret_in(text)

    assert await served(path, [GOLD] * 4) == [200, 200, 200, 429]  # the first period's 7 are used up
    exhausted = json.loads(usage(path, "--key", "k-gold", "--json").stdout)
    assert (exhausted["used"], exhausted["remaining"], exhausted["limit"]) == (first_period, 0, first_period)


def test_in_process_counters_cannot_be_read_by_another_process(tmp_path: Path) -> None:
    result = usage(write_config(tmp_path), "--key", "k-gold")
    assert result.returncode == 2 and result.stdout == ""
    assert "counts in process" in result.stderr and "usage --admin" in result.stderr
    assert "GET /usage?key=k-gold" in result.stderr
    no_secret_in(result)


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("k-nobody", "error: no api key has this id"),
        (GOLD, "error: no api key has this id"),  # a value given by mistake is not repeated
        ("k-loose", "error: api key k-loose is in no usage plan"),
        ("k-free", "error: usage plan free of api key k-free has no quota"),
        ("not an id!", "error: not an api key id"),
    ],
)
def test_a_key_without_usage_is_exit_2_with_why(tmp_path: Path, key: str, said: str) -> None:
    result = usage(write_config(tmp_path, "redis://127.0.0.1:1/0"), "--key", key)  # refused before Redis is asked
    assert result.returncode == 2 and result.stdout == ""
    assert said in result.stderr
    no_secret_in(result)


def test_redis_that_does_not_answer_is_exit_2(tmp_path: Path) -> None:
    result = usage(write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0"), "--key", "k-gold")
    assert result.returncode == 2 and result.stdout == ""
    assert "error: cannot read the counts of api key k-gold: redis usage: " in result.stderr


def test_a_bad_config_or_key_file_is_exit_2_at_its_line(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("period: WEEK", "period: FORTNIGHT"))
    line = path.read_text().splitlines().index("    quota: {limit: 5, period: FORTNIGHT}") + 1
    result = usage(path, "--key", "k-gold")
    assert result.returncode == 2 and f"config.yaml:{line}:" in result.stderr
    assert "usage_plans.bronze.quota.period" in result.stderr
    path = write_config(tmp_path, "redis://127.0.0.1:1/0")
    (tmp_path / "api-keys.yaml").write_text("- id: k-gold\n  name: gold\n  sha256: nothex\n")
    result = usage(path, "--key", "k-gold")
    assert result.returncode == 2 and "api-keys.yaml:3:" in result.stderr and "sha256" in result.stderr


def test_a_key_naming_an_undefined_plan_is_refused() -> None:
    keys = ApiKeySet([ApiKey("k-plat", plan="platinum", sha256=digest_of("v" * 30))])
    gold = UsagePlanSettings.model_validate({"quota": {"limit": 5, "period": "DAY"}})
    plans = {"gold": CompiledPlan.of("gold", gold)}
    with pytest.raises(UsageError, match="names usage plan platinum, which the config does not define") as caught:
        metered_quota(keys, plans, "k-plat")
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("used", "remaining", "limit"),
    [(0, 7, 7), (4, 3, 7), (7, 0, 7), (4, 6, 10), (10, 0, 10), (12, 0, 10)],
)
def test_the_period_limit_tells_the_first_period_from_a_later_one(used: int, remaining: int, limit: int) -> None:
    assert period_limit(Quota(10, "DAY", offset=3), used, remaining) == limit
    assert period_limit(Quota(10, "DAY"), min(used, 10), 10 - min(used, 10)) == 10
