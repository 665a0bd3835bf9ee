"""Micro-benchmark of the JWT authorizer's hot path: cold RS256 / ES256 / EdDSA verification and a cached token.

Run: `.venv/bin/python benchmarks/micro_jwt.py [iterations]`. Prints the median microseconds per
`JwtAuthorizer.authenticate` call. The coroutine is driven by hand (`send(None)`), because with keys loaded the
authorizer never awaits: this measures the authorizer alone, without event-loop overhead. For comparison it also
times PyJWT's own `jwt.decode` on the same token (what a naive authorizer would do per request).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from sidecar.authorizers.jwt.authorizer import JwtAuthorizer
from sidecar.authorizers.jwt.claims import ClaimRules
from sidecar.authorizers.jwt.jwks import StaticKeySource
from sidecar.authorizers.jwt.keys import parse_jwks
from sidecar.request import Principal, Request

ISSUER = "https://idp.example.test"
AUDIENCE = "orders-api"


def run(coro: Any) -> Principal:
    """Drive a coroutine that completes without suspending."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise RuntimeError("the authorizer suspended: keys not loaded?")


def median_us(fn: Callable[[int], object], iterations: int) -> float:
    samples = []
    for i in range(iterations):
        start = time.perf_counter_ns()
        fn(i)
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def main(iterations: int) -> None:
    keys = {
        "RS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
        "ES256": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
        "EdDSA": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
    }
    jwks = {
        "keys": [{**cls.to_jwk(k.public_key(), as_dict=True), "kid": alg, "alg": alg} for alg, (k, cls) in keys.items()]
    }
    now = time.time()

    def authorizer(cache_size: int) -> JwtAuthorizer:
        return JwtAuthorizer(
            "bench",
            rules=ClaimRules(issuer=ISSUER, audiences=frozenset({AUDIENCE}), leeway=60),
            keys=StaticKeySource(parse_jwks(jwks, fetched_at=now)),
            algorithms=frozenset(keys),
            cache_size=cache_size,
        )

    def token(alg: str, i: int) -> str:
        claims = {"iss": ISSUER, "sub": f"user-{i}", "aud": AUDIENCE, "iat": int(now), "exp": int(now) + 3600}
        claims["scope"] = "orders.read orders.write"
        return pyjwt.encode(claims, keys[alg][0], algorithm=alg, headers={"kid": alg})

    def req(tok: str) -> Request:
        return Request(method="GET", raw_path="/orders/1", path="/orders/1", headers={"authorization": "Bearer " + tok})

    print(f"median microseconds per call over {iterations} iterations")
    for alg in keys:
        requests = [req(token(alg, i)) for i in range(iterations)]
        cold = authorizer(cache_size=iterations + 1)
        micros = median_us(lambda i, a=cold, r=requests: run(a.authenticate(r[i])), iterations)
        print(f"  cold {alg:6} (new token each call) : {micros:8.2f}")

    warm = authorizer(cache_size=10_000)
    cached_request = req(token("RS256", 0))
    run(warm.authenticate(cached_request))
    micros = median_us(lambda i: run(warm.authenticate(cached_request)), iterations * 10)
    print(f"  cached token (RS256)              : {micros:8.2f}")

    raw = token("RS256", 1)
    public = keys["RS256"][0].public_key()
    decode = pyjwt.decode
    print(
        "  PyJWT jwt.decode, for comparison  : "
        f"{median_us(lambda i: decode(raw, public, algorithms=['RS256'], audience=AUDIENCE), iterations):8.2f}"
    )
    parse = pyjwt.api_jws.PyJWS()._load
    print(f"  PyJWT parse only (_load)          : {median_us(lambda i: parse(raw), iterations):8.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
