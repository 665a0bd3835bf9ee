"""The JWKS cache against a real HTTP server on 127.0.0.1: rotation, single-flight refetch, staleness, bounds.

Time is a `FakeClock` the tests move; the server's own delays only simulate a slow network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from sidecar.authorizers.jwt import errors as jwterrors
from sidecar.authorizers.jwt.authorizer import JwtAuthorizer
from sidecar.authorizers.jwt.claims import ClaimRules
from sidecar.authorizers.jwt.jwks import CachePolicy, JwksCache, refresh_interval, shared_cache
from sidecar.reasons import Denied
from tests.unit.authorizers.jwt.jwt_testkit import (
    AUDIENCE,
    NOW,
    FakeClock,
    Issuer,
    JwksServer,
    ec_key,
    jwks_server,
    request,
    rsa_key,
)

POLICY = CachePolicy(refresh_min=60, refresh_max=3600, max_staleness=7200, unknown_kid_interval=30)


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    async with jwks_server() as srv:
        yield srv


def issuer_for(server: JwksServer) -> Issuer:
    return Issuer(server.base, {"k1": (rsa_key(0), "RS256")})


async def started(server: JwksServer, clock: FakeClock, policy: CachePolicy = POLICY) -> JwksCache:
    cache = JwksCache(jwks_uri=server.jwks_uri, policy=policy, clock=clock, background=False)
    await cache.start()
    return cache


def authorizer(cache: JwksCache, issuer: Issuer, clock: FakeClock) -> JwtAuthorizer:
    return JwtAuthorizer(
        "corp",
        rules=ClaimRules(issuer=issuer.url, audiences=frozenset({AUDIENCE}), leeway=30),
        keys=cache,
        algorithms=frozenset({"RS256", "ES256"}),
        clock=clock,
    )


async def deny_reason(auth: JwtAuthorizer, token: str) -> tuple[str, int]:
    with pytest.raises(Denied) as info:
        await auth.authenticate(request(token))
    return info.value.reason, info.value.status


async def test_keys_fetched_at_start_and_ready(server: JwksServer) -> None:
    clock = FakeClock()
    iss = issuer_for(server)
    server.serve(iss.jwks())
    cache = await started(server, clock)
    try:
        assert cache.is_ready() and cache.fetch_count == 1
        principal = await authorizer(cache, iss, clock).authenticate(request(iss.token(iss.claims(), kid="k1")))
        assert principal.id == "user-123"
    finally:
        await cache.stop()


async def test_rotation_new_key_passes_after_one_refetch(server: JwksServer) -> None:
    clock = FakeClock()
    iss = issuer_for(server)
    server.serve(iss.jwks())
    cache = await started(server, clock)
    auth = authorizer(cache, iss, clock)
    try:
        old_token = iss.token(kid="k1")
        await auth.authenticate(request(old_token))
        iss.keys["k2"] = (ec_key(0), "ES256")  # the issuer rotates in a new key and starts signing with it
        server.serve(iss.jwks())
        new_token = iss.token(kid="k2")
        principal = await auth.authenticate(request(new_token))
        assert principal.id == "user-123"
        assert cache.fetch_count == 2  # exactly one refetch
        await auth.authenticate(request(new_token))
        await auth.authenticate(request(old_token))
        assert cache.fetch_count == 2
    finally:
        await cache.stop()


async def test_unknown_kid_refetch_is_single_flight_and_rate_limited(server: JwksServer) -> None:
    clock = FakeClock()
    iss = issuer_for(server)
    server.serve(iss.jwks(), delay=0.05)
    cache = await started(server, clock)
    auth = authorizer(cache, iss, clock)
    try:
        iss.keys["k2"] = (rsa_key(1), "RS256")
        server.serve(iss.jwks(), delay=0.05)
        tokens = [iss.token(iss.claims(jti=str(i)), kid="k2") for i in range(20)]
        results = await asyncio.gather(*(auth.authenticate(request(t)) for t in tokens))
        assert {p.id for p in results} == {"user-123"}
        assert cache.fetch_count == 2  # twenty waiting requests, one fetch

        iss.keys["ghost"] = (rsa_key(2), "RS256")  # signed with a key the server does not publish
        forged = [iss.token(iss.claims(jti=f"g{i}"), kid="ghost") for i in range(50)]
        assert await deny_reason(auth, forged[0]) == (jwterrors.UNKNOWN_KEY, 401)
        assert cache.fetch_count == 2  # the k2 refetch was a moment ago: inside the interval, no fetch
        clock.advance(POLICY.unknown_kid_interval)
        for token in forged[1:25]:
            assert await deny_reason(auth, token) == (jwterrors.UNKNOWN_KEY, 401)
        assert cache.fetch_count == 3  # the first unknown kid refetched once; the rest are inside the interval
        clock.advance(POLICY.unknown_kid_interval)
        for token in forged[25:]:
            assert await deny_reason(auth, token) == (jwterrors.UNKNOWN_KEY, 401)
        assert cache.fetch_count == 4
    finally:
        await cache.stop()


async def test_server_down_keeps_old_keys_until_the_staleness_limit(server: JwksServer) -> None:
    clock = FakeClock()
    iss = issuer_for(server)
    server.serve(iss.jwks(), cache_control="max-age=600")
    cache = await started(server, clock)
    auth = authorizer(cache, iss, clock)
    assert cache.next_refresh_at == NOW + 600
    port = server.port
    try:
        await server.stop()
        clock.advance(600)
        assert await cache.tick() is False  # the scheduled refresh fails ...
        assert "GET" in cache.last_error
        token = iss.token(iss.claims(clock.now, exp=int(clock.now) + 10_000))
        assert (await auth.authenticate(request(token))).id == "user-123"  # ... and the old keys keep serving
        assert cache.next_refresh_at == clock.now + POLICY.retry_min  # retry soon, backing off
        clock.advance(POLICY.retry_min)
        await cache.tick()
        assert cache.next_refresh_at == clock.now + 2 * POLICY.retry_min

        clock.advance(POLICY.max_staleness - 600 - 1)  # just inside the limit (fetched at NOW)
        other = iss.token(iss.claims(clock.now, exp=int(clock.now) + 10_000, jti="2"))
        await auth.authenticate(request(other))
        cached = token
        clock.advance(2)  # past it: keys too old to trust, even for a cached token
        assert not cache.is_ready()
        assert await deny_reason(auth, cached) == (jwterrors.KEYS_UNAVAILABLE, 503)
        fresh = iss.token(iss.claims(clock.now, jti="3"))
        assert await deny_reason(auth, fresh) == (jwterrors.KEYS_UNAVAILABLE, 503)

        revived = JwksServer()
        revived.serve(iss.jwks())
        revived.port = port
        revived._server = await asyncio.start_server(revived._handle, "127.0.0.1", port)
        try:
            clock.advance(POLICY.refresh_min)
            assert await cache.tick() is True
            assert cache.is_ready()
            await auth.authenticate(request(iss.token(iss.claims(clock.now, jti="4"))))
        finally:
            await revived.stop()
    finally:
        await cache.stop()


async def test_http_errors_and_bad_documents_keep_the_last_good_keys(server: JwksServer) -> None:
    clock = FakeClock()
    iss = issuer_for(server)
    server.serve(iss.jwks())
    cache = await started(server, clock)
    try:
        good = cache.keyset
        for change in (
            {"status": 500},
            {"body": b"<html>"},
            {"body": b'{"keys": [{"kty": "oct", "k": "AAAA"}]}'},
            {"body": b'{"nokeys": 1}'},
        ):
            server.behaviour = server.behaviour.__class__(**{"body": server.behaviour.body, **change})
            assert await cache.refresh() is False
            assert cache.keyset is good
        assert "no usable key" in cache.last_error or "not a JWKS" in cache.last_error
    finally:
        await cache.stop()


async def test_slow_response_is_abandoned_at_the_default_bound_without_blocking_requests(server: JwksServer) -> None:
    clock = FakeClock()
    iss = issuer_for(server)
    server.serve(iss.jwks())
    cache = await started(server, clock, CachePolicy())  # the real bounds: 1.5 s, 150 KB
    auth = authorizer(cache, iss, clock)
    try:
        assert cache.policy.fetch_timeout == 1.5 and cache.policy.max_bytes == 150 * 1024
        server.serve(iss.jwks(), drip=10, delay=0.4)  # each chunk in time, the whole far too late
        started_at = time.monotonic()
        refresh = asyncio.ensure_future(cache.refresh())
        token = iss.token(kid="k1")
        principal = await auth.authenticate(request(token))  # served from the current keys meanwhile
        assert principal.id == "user-123" and not refresh.done()
        assert await refresh is False
        elapsed = time.monotonic() - started_at
        assert 1.4 <= elapsed < 3.0
        assert "within 1.5s" in cache.last_error
        assert cache.is_ready()
    finally:
        await cache.stop()


@pytest.mark.parametrize("declare_length", [True, False])
async def test_oversized_response_is_abandoned(server: JwksServer, declare_length: bool) -> None:
    clock = FakeClock()
    iss = issuer_for(server)
    server.serve(iss.jwks())
    cache = await started(server, clock, CachePolicy())
    try:
        server.serve(iss.jwks(), extra_bytes=200 * 1024, declare_length=declare_length)
        assert await cache.refresh() is False
        assert "exceeds" in cache.last_error
        server.serve(iss.jwks(), extra_bytes=100 * 1024, declare_length=declare_length)  # large but within bounds
        assert await cache.refresh() is True
    finally:
        await cache.stop()


async def test_cache_control_within_bounds(server: JwksServer) -> None:
    assert refresh_interval("max-age=5", POLICY) == POLICY.refresh_min
    assert refresh_interval("public, max-age=900", POLICY) == 900
    assert refresh_interval("max-age=99999999", POLICY) == POLICY.refresh_max
    assert refresh_interval(None, POLICY) == POLICY.refresh_max
    assert refresh_interval("no-cache", POLICY) == POLICY.refresh_min
    clock = FakeClock()
    iss = issuer_for(server)
    server.serve(iss.jwks(), cache_control="public, max-age=900")
    cache = await started(server, clock)
    try:
        assert cache.next_refresh_at == NOW + 900
        clock.advance(899)
        assert await cache.tick() is False and cache.fetch_count == 1
        clock.advance(1)
        assert await cache.tick() is True and cache.fetch_count == 2
    finally:
        await cache.stop()


async def test_oidc_discovery(server: JwksServer) -> None:
    clock = FakeClock()
    iss = issuer_for(server)
    server.serve(iss.jwks())
    server.discovery = {"issuer": server.base, "jwks_uri": server.jwks_uri}
    cache = JwksCache(issuer=server.base, policy=POLICY, clock=clock, background=False)
    await cache.start()
    try:
        assert cache.is_ready()
        assert server.requests == ["/.well-known/openid-configuration", "/jwks.json"]
        await authorizer(cache, iss, clock).authenticate(request(iss.token(kid="k1")))
    finally:
        await cache.stop()


async def test_discovery_for_another_issuer_is_refused(server: JwksServer) -> None:
    server.discovery = {"issuer": "https://evil.example", "jwks_uri": server.jwks_uri}
    cache = JwksCache(issuer=server.base, policy=POLICY, clock=FakeClock(), background=False)
    await cache.start()
    try:
        assert not cache.is_ready()
        assert "expected" in cache.last_error
    finally:
        await cache.stop()


async def test_start_never_raises_and_readiness_waits_for_keys(server: JwksServer) -> None:
    clock = FakeClock()
    server.serve({"keys": []}, status=503)
    cache = await started(server, clock)
    try:
        assert not cache.is_ready()
        iss = issuer_for(server)
        server.serve(iss.jwks())
        clock.advance(POLICY.retry_min)
        assert await cache.tick() is True and cache.is_ready()
    finally:
        await cache.stop()


async def test_shared_cache_per_issuer_and_background_lifecycle(server: JwksServer) -> None:
    iss = issuer_for(server)
    server.serve(iss.jwks())
    first = shared_cache(jwks_uri=server.jwks_uri, issuer=iss.url, policy=POLICY, allow_http=False)
    second = shared_cache(jwks_uri=server.jwks_uri, issuer=iss.url, policy=POLICY, allow_http=False)
    assert first is second
    await first.start()
    await second.start()  # a second user (e.g. the runtime after a reload) finds the keys loaded
    assert first.fetch_count == 1 and first._task is not None
    await first.stop()
    assert first._task is not None and not first._task.done()  # still one user
    await second.stop()
    assert first._task is None


def test_plain_http_only_to_loopback() -> None:
    with pytest.raises(ValueError, match="plain http"):
        JwksCache(jwks_uri="http://keys.example.test/jwks.json")
    JwksCache(jwks_uri="http://keys.example.test/jwks.json", allow_http=True)
    JwksCache(jwks_uri="http://[::1]:8080/jwks.json")
    JwksCache(jwks_uri="https://keys.example.test/jwks.json")
    with pytest.raises(ValueError):
        JwksCache(jwks_uri="file:///etc/passwd")


async def test_fetches_are_counted_in_metrics(server: JwksServer) -> None:
    from sidecar.metrics import REGISTRY

    def count(outcome: str) -> float:
        labels = {"authorizer": "metrics-test", "outcome": outcome}
        return REGISTRY.get_sample_value("authz_jwks_fetches_total", labels) or 0.0

    before = count("ok"), count("error")
    iss = issuer_for(server)
    server.serve(iss.jwks())
    cache = JwksCache(jwks_uri=server.jwks_uri, policy=POLICY, clock=FakeClock(), background=False, name="metrics-test")
    await cache.start()
    try:
        server.serve(iss.jwks(), status=500)
        await cache.refresh()
        assert (count("ok"), count("error")) == (before[0] + 1, before[1] + 1)
    finally:
        await cache.stop()


async def test_background_refresher_follows_the_clock_and_rotates(server: JwksServer) -> None:
    clock = FakeClock()
    iss = issuer_for(server)
    server.serve(iss.jwks(), cache_control="max-age=600")
    cache = JwksCache(jwks_uri=server.jwks_uri, policy=POLICY, clock=clock, background=True, poll_interval=0.01)
    await cache.start()
    auth = authorizer(cache, iss, clock)
    try:
        assert cache.fetch_count == 1
        iss.keys["k2"] = (ec_key(0), "ES256")
        del iss.keys["k1"]
        server.serve(iss.jwks(), cache_control="max-age=600")
        clock.advance(600)  # the scheduled refresh is due: the background task performs it
        await asyncio.wait_for(cache.wait_for_fetches(2), 10)
        assert cache.keyset is not None and [k.kid for k in cache.keyset.keys] == ["k2"]
        await auth.authenticate(request(iss.token(iss.claims(clock.now), kid="k2")))
        assert cache.fetch_count == 2  # the new key was already there: no refetch on the request path
        assert cache.next_refresh_at == clock.now + 600
    finally:
        await cache.stop()
    assert cache._task is None


async def test_unexpected_fetch_errors_never_escape_start_or_requests() -> None:
    import httpx

    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug in a transport")

    clock = FakeClock()
    cache = JwksCache(
        jwks_uri="https://keys.example.test/jwks.json",
        policy=POLICY,
        clock=clock,
        background=False,
        transport=httpx.MockTransport(broken),
    )
    await cache.start()
    try:
        assert not cache.is_ready()
        iss = Issuer("https://keys.example.test", {"k1": (rsa_key(0), "RS256")})
        assert await deny_reason(authorizer(cache, iss, clock), iss.token()) == (jwterrors.KEYS_UNAVAILABLE, 503)
    finally:
        await cache.stop()
