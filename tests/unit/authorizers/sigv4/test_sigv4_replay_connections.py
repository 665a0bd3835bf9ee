"""The SigV4 replay guard on the config's named Redis connections (house issue #18's `redis:` map)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.authorizers.sigv4.replay import LocalReplayGuard, RedisReplayGuard
from sidecar.config import ConfigError, parse_config
from sidecar.runtime import compile_runtime
from tests.conftest import RedisServer


def config(tmp_path: Path, redis: str, sigv4: str = "") -> str:
    credentials = tmp_path / "credentials.yaml"
    credentials.write_text("credentials: []\n")
    return (
        f"{redis}authorizers:\n"
        f"  iam: {{type: sigv4, replay_guard: true, credentials: {{file: {credentials}}}{sigv4}}}\n"
        "routes:\n  - {match: 'ANY /{proxy+}', authorizer: iam}\n"
    )


def guard_of(text: str, tmp_path: Path) -> object:
    runtime = compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))
    return runtime.authorizers["iam"].replay_guard  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("redis", "sigv4"),
    [
        ("redis: {default: {url: 'redis://127.0.0.1:1/0'}}\n", ""),  # names none: `default`
        ("redis: {guards: {url: 'redis://127.0.0.1:1/0'}}\n", ", replay_redis: guards"),
        ("", ", replay_redis_url: 'redis://127.0.0.1:1/0'"),  # the inline short form
    ],
)
def test_the_guard_is_shared_through_the_connection_it_names(tmp_path: Path, redis: str, sigv4: str) -> None:
    assert isinstance(guard_of(config(tmp_path, redis, sigv4), tmp_path), RedisReplayGuard)


def test_without_any_connection_the_guard_stays_in_the_process(tmp_path: Path) -> None:
    guard = guard_of(config(tmp_path, ""), tmp_path)
    assert isinstance(guard, LocalReplayGuard)


def test_a_connection_redis_does_not_define_is_a_located_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(tmp_path, "", ", replay_redis: nowhere"), "c.yaml")
    assert any(i.field == "authorizers.iam.replay_redis" and i.line > 0 for i in caught.value.issues)


async def test_two_replicas_on_one_named_connection_refuse_a_replay(tmp_path: Path, redis_server: RedisServer) -> None:
    text = config(tmp_path, f"redis: {{default: {{url: '{redis_server.url}', timeout_ms: 1000}}}}\n")
    first, second = guard_of(text, tmp_path), guard_of(text, tmp_path)
    assert isinstance(first, RedisReplayGuard) and isinstance(second, RedisReplayGuard)
    try:
        assert await first.first_use("sig", 60, now=0) is True
        assert await second.first_use("sig", 60, now=0) is False  # another replica: only Redis knew
    finally:
        await first.close()
        await second.close()


async def test_a_failing_redis_opens_the_breaker_and_the_guard_stays_local(tmp_path: Path) -> None:
    text = config(tmp_path, "redis: {default: {url: 'redis://127.0.0.1:1/0', timeout_ms: 50, breaker_threshold: 2}}\n")
    guard = guard_of(text, tmp_path)
    assert isinstance(guard, RedisReplayGuard)
    try:
        for i in range(3):
            assert await guard.first_use(f"k{i}", 60, now=0) is True
        assert guard.breaker.is_open
        assert await guard.first_use("k0", 60, now=0) is False  # the local guard still remembers
    finally:
        await guard.close()
