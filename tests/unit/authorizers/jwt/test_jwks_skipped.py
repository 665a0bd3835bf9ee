"""Skipped JWKs are counted and logged once per fetched document, never per request; an EC key with short
(unpadded, out of RFC 7518 6.2.1.2) coordinates is still skipped, but at WARNING with its kid, since the issuer's
tokens signed with it fail as `UnknownKey`. A real P-256 key whose coordinate has a leading zero byte, served by a
real JWKS server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.authorizers.jwt import errors as jwterrors
from sidecar.authorizers.jwt.authorizer import JwtAuthorizer
from sidecar.authorizers.jwt.claims import ClaimRules
from sidecar.authorizers.jwt.jwks import CachePolicy, JwksCache, StaticKeySource
from sidecar.authorizers.jwt.keys import SKIP_REASONS, SKIP_SHORT_EC, SKIP_SYMMETRIC, parse_jwk
from sidecar.metrics import REGISTRY
from sidecar.reasons import Denied
from tests.unit.authorizers.jwt.jwt_testkit import (
    AUDIENCE,
    NOW,
    FakeClock,
    Issuer,
    JwksServer,
    b64,
    jwks_server,
    request,
    rsa_key,
)

POLICY = CachePolicy(refresh_min=60, refresh_max=3600, max_staleness=7200, unknown_kid_interval=30)


def key_with_a_leading_zero() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A real P-256 key exactly one of whose coordinates starts with exactly one zero byte (about 1 key in 128),
    and which coordinate that is."""
    for _ in range(100_000):
        private = ec.generate_private_key(ec.SECP256R1())
        numbers = private.public_key().public_numbers()
        x, y = numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")
        if (x[0] == 0) != (y[0] == 0):
            short = x if x[0] == 0 else y
            if short[1] != 0:
                return private, "x" if short is x else "y"
    raise AssertionError("no P-256 key with a leading zero byte in 100,000")  # probability ~ e^-780


SHORT_KEY, SHORT_COORDINATE = key_with_a_leading_zero()


def ec_jwk(private: ec.EllipticCurvePrivateKey, kid: str, short: bool) -> dict[str, Any]:
    numbers = private.public_key().public_numbers()

    def coordinate(value: int) -> str:
        raw = value.to_bytes(32, "big")
        return b64(raw.lstrip(b"\0") if short else raw)  # the out-of-spec encoding drops leading zero bytes

    return {"kty": "EC", "crv": "P-256", "x": coordinate(numbers.x), "y": coordinate(numbers.y), "kid": kid}


def skipped_count(authorizer: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("authz_jwks_keys_skipped_total", {"authorizer": authorizer, "reason": reason})
    return value or 0.0


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    async with jwks_server() as srv:
        yield srv


def test_short_coordinates_have_their_own_reason() -> None:
    with pytest.raises(ValueError, match=f"coordinate {SHORT_COORDINATE} is 31 bytes") as info:
        parse_jwk(ec_jwk(SHORT_KEY, "short", short=True))
    assert getattr(info.value, "reason", None) == SKIP_SHORT_EC
    assert parse_jwk(ec_jwk(SHORT_KEY, "padded", short=False)).algorithms == {"ES256"}  # the same key, in spec


async def test_a_short_key_is_skipped_warned_and_counted_once_per_fetch(
    server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = "short-ec"
    issuer = Issuer(server.base, {"rsa": (rsa_key(0), "RS256")})
    document = issuer.jwks()
    document["keys"] += [ec_jwk(SHORT_KEY, "short-1", short=True), {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]
    server.serve(document)
    before_short, before_oct = skipped_count(name, SKIP_SHORT_EC), skipped_count(name, SKIP_SYMMETRIC)
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="sidecar.authorizers.jwt.jwks")
    cache = JwksCache(jwks_uri=server.jwks_uri, policy=POLICY, clock=clock, background=False, name=name)
    await cache.start()
    try:
        assert cache.keyset is not None and [k.kid for k in cache.keyset.keys] == ["rsa"]
        auth = JwtAuthorizer(
            name,
            rules=ClaimRules(issuer=issuer.url, audiences=frozenset({AUDIENCE}), leeway=30),
            keys=cache,
            algorithms=frozenset({"RS256", "ES256"}),
            clock=clock,
        )
        token = pyjwt.encode(issuer.claims(NOW), SHORT_KEY, algorithm="ES256", headers={"kid": "short-1"})
        for _ in range(5):  # the first asks for one refetch (an unknown kid); the rest are inside the interval
            with pytest.raises(Denied) as info:
                await auth.authenticate(request(token))
            assert info.value.reason == jwterrors.UNKNOWN_KEY  # still skipped: out of spec
        assert cache.fetch_count == 2
    finally:
        await cache.stop()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == cache.fetch_count  # one per fetched document, none per request
    assert all("'short-1'" in r.getMessage() and "31 bytes" in r.getMessage() for r in warnings)
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "skipped" in r.getMessage()]
    assert len(infos) == cache.fetch_count and all("'hmac'" in r.getMessage() for r in infos)  # usual skips: INFO
    assert skipped_count(name, SKIP_SHORT_EC) - before_short == cache.fetch_count
    assert skipped_count(name, SKIP_SYMMETRIC) - before_oct == cache.fetch_count


def test_a_jwks_file_counts_its_skipped_keys(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    document = {"keys": [ec_jwk(SHORT_KEY, "short-1", short=True), ec_jwk(SHORT_KEY, "padded", short=False)]}
    path.write_text(json.dumps(document))
    before = skipped_count("from-file", SKIP_SHORT_EC)
    source = StaticKeySource.from_file(str(path), "from-file")
    assert source.keyset is not None and [k.kid for k in source.keyset.keys] == ["padded"]
    assert skipped_count("from-file", SKIP_SHORT_EC) - before == 1
    assert {skip.reason for skip in source.keyset.skipped} <= SKIP_REASONS
