"""Lambda results shared by replicas through a real `redis-server` (`cache.redis`): signed like the decision
cache's entries, never kept past their expiry, and Redis trouble means calling the handler, never an allow."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sidecar.authorizers.custom.authorizer import LambdaAuthorizer, cache_key, shared_result
from sidecar.cache import SignedBlobStore
from sidecar.cache.remote import Signer
from sidecar.config import parse_config
from sidecar.metrics import CACHE_REQUESTS, flush
from sidecar.pipeline import Pipeline
from sidecar.runtime import RuntimeHolder, compile_runtime
from tests.conftest import RedisServer

from . import handlers
from .lambda_testkit import HANDLERS, T0, Clock, config_text, request, token

KEY = "replicas-share-this-signing-key"
TOKEN = f"handler: {HANDLERS}:token_handler\nevent_format: token\nresult_ttl: 60\n"


@pytest.fixture(autouse=True)
def _reset() -> None:
    handlers.reset()


def replica(tmp_path: Path, redis: RedisServer, clock: Clock, signing_key: str = KEY) -> Pipeline:
    """One sidecar's pipeline: the `auth` lambda authorizer and a `cache.redis` on the test's Redis."""
    extra = f"cache:\n  redis:\n    url: {redis.url}\n    signing_key: {signing_key}\n    timeout_ms: 200\n"
    config = parse_config(config_text(TOKEN, extra=extra), str(tmp_path / "config.yaml"))
    return Pipeline(RuntimeHolder(compile_runtime(config, clock=clock)))


def store_of(pipe: Pipeline) -> SignedBlobStore:
    store = pipe.holder.current.blob_store
    assert store is not None
    return store


async def settle(*pipes: Pipeline) -> None:
    """Wait for the background writes to Redis (no sleeping: the write tasks themselves)."""
    for pipe in pipes:
        pending = store_of(pipe)._pending
        while pending:
            await asyncio.wait(set(pending))


async def stop(*pipes: Pipeline) -> None:
    for pipe in pipes:
        await pipe.holder.current.stop()


def redis_name(pipe: Pipeline, value: str, path: str = "/pets/7") -> str:
    """The Redis key under which `pipe`'s authorizer shares the result for token `value` on `path`'s route."""
    route = pipe.holder.current.routes.match("GET", path)
    assert route is not None
    authorizer = route.target.authorizer
    assert isinstance(authorizer, LambdaAuthorizer) and authorizer.cache is not None
    key = cache_key(authorizer.version, (value,), authorizer.route.key)
    return store_of(pipe).redis_key(authorizer.cache.namespace + key)


def counted(result: str) -> float:
    """`authz_cache_requests_total{layer="results",result=...}` as /metrics would show it now."""
    flush()
    return CACHE_REQUESTS.labels("results", result)._value.get()  # type: ignore[attr-defined, no-any-return]


async def test_two_replicas_call_the_handler_once_between_them(tmp_path: Path, redis_server: RedisServer) -> None:
    clock = Clock()
    one, two = replica(tmp_path, redis_server, clock), replica(tmp_path, redis_server, clock)
    first = await one.check(request(headers=token("allow-alice")))
    await settle(one)
    hits = counted("hit")
    second = await two.check(request(headers=token("allow-alice")))
    assert first.allowed and second.allowed
    assert dict(second.all_headers())["x-authz-principal"] == "alice"
    assert len(handlers.CALLS) == 1 and counted("hit") == hits + 1
    raw = aioredis.Redis.from_url(redis_server.url)
    names = [name.decode() for name in await raw.keys("*")]
    assert names == [redis_name(one, "allow-alice")] and names[0].startswith("authz:r:")
    assert "alice" not in names[0]  # the key reveals neither the token nor the caller
    await raw.aclose()
    await stop(one, two)


async def test_a_deny_is_shared_too(tmp_path: Path, redis_server: RedisServer) -> None:
    clock = Clock()
    one, two = replica(tmp_path, redis_server, clock), replica(tmp_path, redis_server, clock)
    assert (await one.check(request(headers=token("deny-bob")))).status == 403
    await settle(one)
    assert (await two.check(request(headers=token("deny-bob")))).status == 403
    assert len(handlers.CALLS) == 1
    await stop(one, two)


async def test_unauthorized_and_failures_are_not_shared(tmp_path: Path, redis_server: RedisServer) -> None:
    clock = Clock()
    one, two = replica(tmp_path, redis_server, clock), replica(tmp_path, redis_server, clock)
    for answer, status in (("unauthorized", 401), ("crash", 500)):
        assert (await one.check(request(headers=token(answer)))).status == status
        await settle(one)
        assert (await two.check(request(headers=token(answer)))).status == status
    assert len(handlers.CALLS) == 4
    raw = aioredis.Redis.from_url(redis_server.url)
    assert await raw.keys("*") == []
    await raw.aclose()
    await stop(one, two)


async def test_an_entry_signed_with_another_key_is_ignored_and_counted(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A forged allow for a token the handler denies, sealed with a key the replicas do not share: ignored
    (counted as rejected), the handler is called and its deny stands."""
    clock = Clock()
    pipe = replica(tmp_path, redis_server, clock)
    authorizer = pipe.holder.current.authorizers["auth"]
    assert isinstance(authorizer, LambdaAuthorizer)
    name = redis_name(pipe, "deny-mallory")
    document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    allow = authorizer.reader.read({"principalId": "mallory", "policyDocument": document})
    forged = Signer(b"not-the-cluster-key").seal(name, shared_result(authorizer.reader, allow, T0 + 60))
    raw = aioredis.Redis.from_url(redis_server.url)
    await raw.set(name, forged)
    rejected = counted("rejected")
    assert (await pipe.check(request(headers=token("deny-mallory")))).status == 403
    assert len(handlers.CALLS) == 1 and counted("rejected") == rejected + 1
    await raw.aclose()
    await stop(pipe)


async def test_a_genuine_entry_moved_under_another_key_is_ignored(tmp_path: Path, redis_server: RedisServer) -> None:
    clock = Clock()
    one, two = replica(tmp_path, redis_server, clock), replica(tmp_path, redis_server, clock)
    assert (await one.check(request(headers=token("broad-alice")))).allowed
    await settle(one)
    raw = aioredis.Redis.from_url(redis_server.url)
    genuine = await raw.get(redis_name(one, "broad-alice"))
    await raw.set(redis_name(one, "deny-mallory"), genuine)  # alice's allow under mallory's key
    rejected = counted("rejected")
    assert (await two.check(request(headers=token("deny-mallory")))).status == 403
    assert len(handlers.CALLS) == 2 and counted("rejected") == rejected + 1
    await raw.aclose()
    await stop(one, two)


async def test_a_replica_with_another_signing_key_does_not_share(tmp_path: Path, redis_server: RedisServer) -> None:
    clock = Clock()
    ours, theirs = replica(tmp_path, redis_server, clock), replica(tmp_path, redis_server, clock, "another-key")
    assert (await theirs.check(request(headers=token("allow-alice")))).allowed
    await settle(theirs)
    assert (await ours.check(request(headers=token("allow-alice")))).allowed
    assert len(handlers.CALLS) == 2
    await stop(ours, theirs)


async def test_redis_down_means_calling_the_handler(tmp_path: Path, redis_server: RedisServer) -> None:
    clock = Clock()
    one, two = replica(tmp_path, redis_server, clock), replica(tmp_path, redis_server, clock)
    assert (await one.check(request(headers=token("allow-alice")))).allowed
    await settle(one)
    redis_server.stop()
    decisions = [await two.check(request(headers=token(f"{verb}-carol"))) for verb in ("allow", "deny", "allow")]
    assert [d.status for d in decisions] == [200, 403, 200]  # decided, neither refused for Redis nor allowed by it
    assert len(handlers.CALLS) == 3  # one for alice, then carol's allow (cached here) and deny: no shared result
    assert (await two.check(request(headers=token("allow-alice")))).allowed  # alice too, by calling
    assert len(handlers.CALLS) == 4
    await stop(one, two)


async def test_a_shared_result_never_outlives_result_ttl(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis keeps an entry for result_ttl; the entry's own sealed expiry bounds it on every replica, and a
    replica that reads it late keeps it only for what it has left."""
    clock = Clock()
    one, two = replica(tmp_path, redis_server, clock), replica(tmp_path, redis_server, clock)
    assert (await one.check(request(headers=token("allow-alice")))).allowed
    await settle(one)
    raw = aioredis.Redis.from_url(redis_server.url)
    name = redis_name(one, "allow-alice")
    assert 0 < await raw.pttl(name) <= 60_000
    blob = await raw.get(name)
    payload = Signer(KEY.encode()).open(name, blob)
    assert payload is not None and json.loads(payload)["expires"] == T0 + 60
    clock.now = T0 + 50
    assert (await two.check(request(headers=token("allow-alice")))).allowed  # read from Redis, 10 s left
    clock.now = T0 + 59
    assert (await two.check(request(headers=token("allow-alice")))).allowed
    assert len(handlers.CALLS) == 1
    clock.now = T0 + 61  # Redis (on its own clock) still holds the entry, but it has expired
    assert await raw.exists(name)
    assert (await two.check(request(headers=token("allow-alice")))).allowed
    assert len(handlers.CALLS) == 2  # two called: neither its copy nor Redis's outlived the 60 s
    await raw.aclose()
    await stop(one, two)


async def test_single_flight_stays_per_process(tmp_path: Path, redis_server: RedisServer) -> None:
    """Concurrent requests with one new token in one replica: one call, stored once."""
    clock = Clock()
    pipe = replica(tmp_path, redis_server, clock)
    decisions = await asyncio.gather(*(pipe.check(request(headers=token("allow-dave"))) for _ in range(8)))
    assert all(d.allowed for d in decisions) and len(handlers.CALLS) == 1
    await settle(pipe)
    raw = aioredis.Redis.from_url(redis_server.url)
    assert len(await raw.keys("*")) == 1
    await raw.aclose()
    await stop(pipe)
