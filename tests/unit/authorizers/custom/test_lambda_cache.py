"""The result cache, API Gateway's semantics: the whole result is reused by identity (and route), denies too;
the cached policy is evaluated again for each later request's ARN (the `cache_key: identity` pitfall)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.authorizers.custom.authorizer import cache_key
from sidecar.pipeline import Pipeline

from . import handlers
from .lambda_testkit import HANDLERS, Clock, pipeline, request, token

TOKEN = f"handler: {HANDLERS}:token_handler\nevent_format: token\n"


@pytest.fixture(autouse=True)
def _reset() -> None:
    handlers.reset()


async def test_a_repeated_identity_skips_the_handler(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, TOKEN)
    first = await pipe.check(request(headers=token("allow-alice")))
    second = await pipe.check(request(headers=token("allow-alice")))
    assert first.allowed and second.allowed
    assert second is first  # the same cached principal: the pipeline's allow memo answers too
    assert len(handlers.CALLS) == 1
    await pipe.check(request(headers=token("allow-bob")))
    assert len(handlers.CALLS) == 2


async def test_a_deny_is_cached_too(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, TOKEN)
    for _ in range(3):
        assert (await pipe.check(request(headers=token("deny-bob")))).status == 403
    assert len(handlers.CALLS) == 1


async def test_a_simple_false_is_cached(tmp_path: Path) -> None:
    settings = (
        f"handler: {HANDLERS}:v2_simple_handler\nevent_format: http-2.0\nsimple_responses: true\n"
        "identity_sources: [$request.header.Authorization]\n"
    )
    pipe = pipeline(tmp_path, settings)
    for _ in range(2):
        assert (await pipe.check(request(headers=token("no")))).status == 403
    assert len(handlers.CALLS) == 1


async def test_failures_are_not_cached(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, TOKEN)
    for _ in range(2):
        assert (await pipe.check(request(headers=token("crash")))).status == 500
    assert len(handlers.CALLS) == 2


async def test_cache_key_identity_reproduces_api_gateways_pitfall(tmp_path: Path) -> None:
    """The handler allowed exactly the ARN it was asked about; with `cache_key: identity` its cached policy is
    evaluated for the next route's ARN too, and denies it without asking again, as on API Gateway."""
    pipe = pipeline(tmp_path, TOKEN + "cache_key: identity\n")
    assert (await pipe.check(request("/pets/7", headers=token("allow-alice")))).allowed
    other = await pipe.check(request("/owners/1", headers=token("allow-alice")))
    assert (other.status, other.message) == (403, "User is not authorized to access this resource")
    assert len(handlers.CALLS) == 1
    assert (await pipe.check(request("/pets/7", headers=token("allow-alice")))).allowed


async def test_cache_key_identity_with_a_broad_policy_allows_everywhere(tmp_path: Path) -> None:
    """The fix the docs give for the pitfall: a handler that returns a policy for every route it allows."""
    pipe = pipeline(tmp_path, TOKEN + "cache_key: identity\n")
    assert (await pipe.check(request("/pets/7", headers=token("broad-alice")))).allowed
    assert (await pipe.check(request("/owners/1", headers=token("broad-alice")))).allowed
    assert len(handlers.CALLS) == 1


async def test_cache_key_identity_and_route_asks_again_on_another_route(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, TOKEN)  # the default: identity+route
    assert (await pipe.check(request("/pets/7", headers=token("allow-alice")))).allowed
    assert (await pipe.check(request("/owners/1", headers=token("allow-alice")))).allowed
    assert len(handlers.CALLS) == 2
    assert [event["methodArn"].rsplit("/prod/", 1)[1] for event in handlers.CALLS] == ["GET/pets/7", "GET/owners/1"]
    # Within one route the cached policy still meets each request's ARN: /pets/8 is the same route as /pets/7,
    # and a policy for exactly /pets/7 denies it (the route key, not the path, is in the key, as on API Gateway).
    same_route = await pipe.check(request("/pets/8", headers=token("allow-alice")))
    assert same_route.status == 403 and len(handlers.CALLS) == 2


async def test_results_expire_after_result_ttl(tmp_path: Path) -> None:
    clock = Clock()
    pipe = pipeline(tmp_path, TOKEN + "result_ttl: 60\n", clock=clock)
    await pipe.check(request(headers=token("allow-alice")))
    clock.now += 59
    await pipe.check(request(headers=token("allow-alice")))
    assert len(handlers.CALLS) == 1
    clock.now += 2
    await pipe.check(request(headers=token("allow-alice")))
    assert len(handlers.CALLS) == 2


async def test_result_ttl_0_calls_for_every_request(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, TOKEN + "result_ttl: 0\n")
    for _ in range(3):
        assert (await pipe.check(request(headers=token("allow-alice")))).allowed
    assert len(handlers.CALLS) == 3


async def test_no_identity_source_means_no_cache(tmp_path: Path) -> None:
    """API Gateway caches REQUEST authorizers only by their identity sources; without any, every call is made."""
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:request_handler\n")
    for _ in range(2):
        assert (await pipe.check(request(headers={"x-token": "allow-gus"}))).allowed
    assert len(handlers.CALLS) == 2


def test_the_decision_cache_never_keys_on_the_credential(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, TOKEN)
    route = pipe.holder.current.routes.match("GET", "/pets/7")
    assert route is not None
    assert route.target.authorizer.fingerprint(request(headers=token("allow-alice"))) is None


def test_cache_keys_separate_versions_routes_and_values() -> None:
    base = cache_key("v1", ("a", "b"), "GET /x")
    assert cache_key("v2", ("a", "b"), "GET /x") != base
    assert cache_key("v1", ("a", "b"), "GET /y") != base
    assert cache_key("v1", ("a", "b"), None) != base
    assert cache_key("v1", ("ab",), "GET /x") != base
    assert cache_key("v1", ("a", "bc"), None) != cache_key("v1", ("ab", "c"), None)  # values are length-prefixed
    assert cache_key("v1", ("a", "b"), "GET /x") == base


async def test_a_reload_with_other_settings_never_reuses_results(tmp_path: Path) -> None:
    first = pipeline(tmp_path, TOKEN)
    second = pipeline(tmp_path, TOKEN + "timeout: 2\n")
    auth_1 = first.holder.current.authorizers["auth"]
    auth_2 = second.holder.current.authorizers["auth"]
    assert auth_1.version != auth_2.version  # type: ignore[attr-defined]


class DictStore:
    """A `ResultStore` in a dict: what replicas sharing one store see (the Redis one: test_shared_results.py)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.ttls: list[float] = []
        self.broken = False

    async def get(self, key: bytes) -> bytes | None:
        if self.broken:
            raise ConnectionError("store down")
        return self.data.get(key)

    async def put(self, key: bytes, value: bytes, ttl: float) -> None:
        if self.broken:
            raise ConnectionError("store down")
        self.data[key] = value
        self.ttls.append(ttl)


def _with_store(pipe: Pipeline, store: DictStore) -> None:
    """Every route's instance shares its authorizer's result cache, so the store is set once."""
    pipe.holder.current.authorizers["auth"].cache.store = store  # type: ignore[attr-defined]


async def test_two_replicas_sharing_a_store_call_the_handler_once(tmp_path: Path) -> None:
    store = DictStore()
    one, two = pipeline(tmp_path, TOKEN), pipeline(tmp_path, TOKEN)
    _with_store(one, store)
    _with_store(two, store)
    assert (await one.check(request(headers=token("allow-alice")))).allowed
    second = await two.check(request(headers=token("allow-alice")))
    assert second.allowed and dict(second.all_headers())["x-authz-principal"] == "alice"
    assert len(handlers.CALLS) == 1 and store.ttls == [300.0]


async def test_a_forged_or_unreadable_stored_result_is_ignored(tmp_path: Path) -> None:
    store = DictStore()
    pipe = pipeline(tmp_path, TOKEN)
    _with_store(pipe, store)
    assert (await pipe.check(request(headers=token("deny-mallory")))).status == 403
    (key,) = store.data
    other = pipeline(tmp_path, TOKEN)
    _with_store(other, store)
    store.data[key] = b'{"principalId": "mallory", "policyDocument": "allow everything"}'
    assert (await other.check(request(headers=token("deny-mallory")))).status == 403  # called again, still denied
    assert len(handlers.CALLS) == 2
    store.broken = True
    third = pipeline(tmp_path, TOKEN)
    _with_store(third, store)
    assert (await third.check(request(headers=token("allow-alice")))).allowed  # a broken store: just call
