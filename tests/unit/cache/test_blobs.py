"""The signed blob store (`sidecar.cache.blobs`) against a real Redis, and how the runtime builds it from
`cache.redis` beside the decision cache (one signing key for both)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sidecar.cache import SignedBlobStore
from sidecar.cache.remote import Signer
from sidecar.config import parse_config
from sidecar.issues import ConfigError
from sidecar.kv import Breaker
from sidecar.request import Decision
from sidecar.runtime import BLOB_PREFIX, compile_runtime
from tests.conftest import RedisServer


def store(url: str, key: bytes = b"shared-key") -> SignedBlobStore:
    client = aioredis.Redis.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)
    return SignedBlobStore(client, Signer(key), 0.2, "test:b:", Breaker(threshold=2, cooldown=60), layer="test")


async def settle(blobs: SignedBlobStore) -> None:
    while blobs._pending:
        await asyncio.wait(set(blobs._pending))


async def test_values_round_trip_between_stores_sharing_the_key(redis_server: RedisServer) -> None:
    writer, reader, stranger = store(redis_server.url), store(redis_server.url), store(redis_server.url, b"other")
    assert await reader.get(b"k") is None
    await writer.put(b"k", b"\x00value\xff", ttl=30)  # returns before Redis has it: the write is in the background
    await settle(writer)
    assert await reader.get(b"k") == b"\x00value\xff"
    assert await stranger.get(b"k") is None  # sealed with a key it does not share
    assert await reader.get(b"k2") is None
    raw = aioredis.Redis.from_url(redis_server.url)
    (name,) = await raw.keys("*")
    assert name.decode() == writer.redis_key(b"k") and name.startswith(b"test:b:")
    assert 0 < await raw.pttl(name) <= 30_000
    await raw.aclose()
    for blobs in (writer, reader, stranger):
        await blobs.close()


async def test_forged_and_moved_entries_are_ignored(redis_server: RedisServer) -> None:
    blobs = store(redis_server.url)
    raw = aioredis.Redis.from_url(redis_server.url)
    await raw.set(blobs.redis_key(b"a"), b"\x01" + b"0" * 32 + b"allow")
    assert await blobs.get(b"a") is None
    await blobs.put(b"b", b"genuine", ttl=30)
    await settle(blobs)
    await raw.set(blobs.redis_key(b"a"), await raw.get(blobs.redis_key(b"b")))
    assert await blobs.get(b"a") is None  # a real entry, moved under another key
    assert await blobs.get(b"b") == b"genuine"
    await raw.aclose()
    await blobs.close()


async def test_nothing_is_stored_without_a_ttl(redis_server: RedisServer) -> None:
    blobs = store(redis_server.url)
    await blobs.put(b"k", b"v", ttl=0)
    assert not blobs._pending and await blobs.get(b"k") is None
    await blobs.close()


async def test_redis_down_is_nothing_stored_and_the_breaker_stops_asking(redis_server: RedisServer) -> None:
    blobs = store(redis_server.url)
    redis_server.stop()
    for _ in range(2):
        assert await blobs.get(b"k") is None  # a failure is "nothing stored", never an exception
    assert blobs.breaker.is_open
    attempts = 0
    real_get = blobs.client.get

    def counting_get(name: str) -> object:
        nonlocal attempts
        attempts += 1
        return real_get(name)

    blobs.client.get = counting_get  # type: ignore[method-assign]
    for _ in range(50):
        assert await blobs.get(b"k") is None
        await blobs.put(b"k", b"v", ttl=30)
    assert attempts == 0 and not blobs._pending  # open: neither reads nor writes are tried
    redis_server.start()
    blobs.breaker.open_until = 0.0  # the cooldown is over: the next call probes
    assert await blobs.get(b"k") is None and attempts == 1
    assert not blobs.breaker.is_open
    await blobs.close()


def _config(tmp_path: Path, redis: str) -> str:
    return (
        "authorizers:\n  public: {type: none}\nroutes:\n  - {match: 'ANY /{proxy+}', authorizer: public}\n"
        f"cache:\n  redis:\n{redis}"
    )


async def test_the_runtime_shares_one_random_key_between_the_decision_cache_and_the_blob_store(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a configured signing key one random key is drawn per runtime (warned about once), and both users
    of `cache.redis` seal with it: a replica can read what it wrote itself."""
    # 200 ms per command, not the 5 ms default: the first command also opens the connection, which a loaded CI
    # machine can take longer than 5 ms to do (the put would then be dropped, as designed, and the get miss).
    text = _config(tmp_path, f"    url: {redis_server.url}\n    timeout_ms: 200\n")
    with caplog.at_level(logging.WARNING):
        runtime = compile_runtime(parse_config(text, str(tmp_path / "config.yaml")))
    assert [r for r in caplog.records if "signing_key" in r.getMessage()] != []
    assert len([r for r in caplog.records if "signing_key" in r.getMessage()]) == 1
    blobs, cache = runtime.blob_store, runtime.cache
    assert blobs is not None and cache is not None and cache.remote is not None
    assert blobs.prefix == BLOB_PREFIX and blobs.signer is cache.remote.signer
    await blobs.put(b"k", b"v", ttl=30)
    await settle(blobs)
    assert await blobs.get(b"k") == b"v"
    cache.remote.put(("k",), Decision(True, 200, "Allowed"), ttl=30)
    await settle(cache.remote)  # type: ignore[arg-type]  # the same background writes
    assert await cache.remote.get(("k",)) is not None
    await runtime.stop()


def test_no_blob_store_without_cache_redis(tmp_path: Path) -> None:
    text = "authorizers:\n  public: {type: none}\nroutes:\n  - {match: 'ANY /{proxy+}', authorizer: public}\n"
    runtime = compile_runtime(parse_config(text, str(tmp_path / "config.yaml")))
    assert runtime.blob_store is None


@pytest.mark.parametrize(
    "setting, error",
    [
        (
            "signing_key_env: AUTHZ_TEST_UNSET_SIGNING_KEY",
            "8:22: cache.redis.signing_key_env: environment variable AUTHZ_TEST_UNSET_SIGNING_KEY is not set",
        ),
        (
            "signing_key_file: missing.key",
            "8:23: cache.redis.signing_key_file: cannot read the signing key file {tmp}/missing.key: No such file or"
            " directory",
        ),
    ],
)
def test_a_signing_key_that_cannot_be_read_is_an_error_at_its_key(tmp_path: Path, setting: str, error: str) -> None:
    text = _config(tmp_path, f"    url: redis://127.0.0.1:1/0\n    {setting}\n")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        compile_runtime(parse_config(text, str(path)))
    assert str(caught.value) == f"{path}:{error.format(tmp=tmp_path)}"
