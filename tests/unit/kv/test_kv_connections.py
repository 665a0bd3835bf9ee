"""The top-level `redis:` map of named connections, and the decision cache naming one (house issue #18)."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, parse_config
from sidecar.request import Decision
from sidecar.runtime import compile_runtime
from tests.conftest import RedisServer

ROUTES = "authorizers:\n  open: {type: none}\nroutes:\n  - {match: 'ANY /{proxy+}', authorizer: open}\n"
ALLOW = Decision(allowed=True, status=200, reason="Allowed")


@pytest.mark.parametrize(
    "cache",
    [
        "cache: {redis: {signing_key: k}}",  # names none: `default`
        "cache: {redis: {connection: shared, signing_key: k}}",
    ],
)
async def test_the_cache_uses_a_named_connection(redis_server: RedisServer, cache: str) -> None:
    url = f"{{url: '{redis_server.url}', timeout_ms: 1000}}"  # a first connection can take longer than 5 ms
    text = f"redis:\n  default: {url}\n  shared: {url}\n{cache}\n"
    runtime = compile_runtime(parse_config(text + ROUTES))
    assert runtime.cache is not None and runtime.cache.remote is not None
    remote = runtime.cache.remote
    try:
        remote.put(("v", "r", b"k"), ALLOW, ttl=30)
        await remote.close()  # waits for the write
        reader = compile_runtime(parse_config(text + ROUTES)).cache
        assert reader is not None and reader.remote is not None
        found = await reader.remote.get(("v", "r", b"k"))
        assert found is not None and found[0].allowed
        await reader.remote.close()
    finally:
        await remote.close()


def test_the_short_form_still_works_and_the_two_forms_do_not_mix() -> None:
    config = parse_config("cache: {redis: {url: 'redis://127.0.0.1:1/0', signing_key: k}}\n" + ROUTES)
    assert config.cache.redis is not None and config.cache.redis.inline() is not None
    with pytest.raises(ConfigError, match="not both"):
        parse_config("redis: {a: {url: 'redis://x:1'}}\ncache: {redis: {url: 'redis://x:1', connection: a}}\n")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("cache: {redis: {signing_key: k}}\n", "cache.redis.url"),
        ("redis: {a: {url: 'redis://x:1'}}\ncache: {redis: {connection: b}}\n", "cache.redis.connection"),
    ],
)
def test_a_connection_that_is_not_defined_is_a_located_error(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text + ROUTES, "c.yaml")
    assert any(issue.field == where and issue.line > 0 for issue in caught.value.issues), str(caught.value)
    assert "does not define" in str(caught.value)
