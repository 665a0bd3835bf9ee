"""Micro-benchmark: a `type: lambda` Check in process, through the real config loader, runtime and pipeline.

Run: `python -m benchmarks.micro_lambda [--profile ROW]`. Prints the median microseconds per `Pipeline.check`
(no transport, no Envoy) of: a cached result (with and without a resource policy, which a Lambda authorizer's
route evaluates before the handler and again with the handler's policy), the trivial handler called for every
Check as a sync handler (the authorizer's threads) and as an async one (on the loop), and the warm JWT
Check for reference. `--profile ROW` runs that row under cProfile and prints the top of its profile. No
assertions: figures go in notes and docs/performance.md.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.request import Request
from sidecar.runtime import RuntimeHolder, compile_runtime

from .lambda_handlers import ASYNC_HANDLER, HANDLER

BATCH = 500
ROUNDS = 15
TOKEN = "Bearer bench-lambda-token"
ALLOW_ALL = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "*"}
DENY_NETWORK = {
    "Effect": "Deny",
    "Principal": "*",
    "Action": "execute-api:Invoke",
    "Resource": "*",
    "Condition": {"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}},
}


def _config(directory: Path, authorizer: str, resource_policy: tuple[dict[str, Any], ...]) -> str:
    lines = [
        "api: {id: a1b2c3d4e5, stage: prod, account: '123456789012', region: us-east-1}",
        "decision_log: {enabled: false}",
        "authorizers:",
        f"  auth: {authorizer}",
        "routes:",
        "  - {match: 'ANY /bench/{proxy+}', authorizer: auth}",
    ]
    if resource_policy:
        path = directory / f"resource-policy-{len(resource_policy)}.json"
        path.write_text(json.dumps({"Version": "2012-10-17", "Statement": list(resource_policy)}))
        lines.append(f"resource_policy: {path}")
    return "\n".join(lines) + "\n"


def _jwt_authorizer(directory: Path) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "k", "alg": "RS256"}
    (directory / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    claims = {"iss": "https://issuer.bench", "aud": "bench", "sub": "u", "iat": now, "exp": now + 3600}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k"})
    settings = (
        "{type: jwt, issuer: 'https://issuer.bench', audiences: [bench], algorithms: [RS256],"
        f" jwks_file: {directory / 'jwks.json'}}}"
    )
    return settings, f"Bearer {token}"


Row = tuple[str, tuple[dict[str, Any], ...], str]
"""(authorizer settings, resource policy statements (none: no resource policy), Authorization header)"""


def rows(directory: Path) -> dict[str, Row]:
    """The rows by name."""
    lam = "{{type: lambda, event_format: token, handler: '{handler}', result_ttl: {ttl}}}"
    cached = lam.format(handler=HANDLER, ttl=300)
    jwt_settings, jwt_token = _jwt_authorizer(directory)
    return {
        "cached": (cached, (), TOKEN),
        "cached, resource policy: allow": (cached, (ALLOW_ALL,), TOKEN),
        "cached, resource policy: allow + IP deny": (cached, (ALLOW_ALL, DENY_NETWORK), TOKEN),
        "uncached, sync handler": (lam.format(handler=HANDLER, ttl=0), (), TOKEN),
        "uncached, async handler": (lam.format(handler=ASYNC_HANDLER, ttl=0), (), TOKEN),
        "jwt warm (reference)": (jwt_settings, (), jwt_token),
    }


def _request(authorization: str) -> Request:
    headers = {"host": "api.bench", "authorization": authorization, "user-agent": "bench"}
    return Request(
        method="GET",
        raw_path="/bench/item",
        path="/bench/item",
        headers=headers,
        host="api.bench",
        source_address="203.0.113.9",
        protocol="HTTP/1.1",
        request_id="00000000-0000-4000-8000-000000000001",  # Envoy's x-request-id
    )


async def _pipeline(directory: Path, authorizer: str, resource_policy: tuple[dict[str, Any], ...]) -> Pipeline:
    text = _config(directory, authorizer, resource_policy)
    runtime = compile_runtime(parse_config(text, str(directory / "config.yaml")))
    await runtime.start()
    return Pipeline(RuntimeHolder(runtime))


async def median_us(pipe: Pipeline, request: Request) -> float:
    """Median microseconds per Check over ROUNDS batches of BATCH Checks (after one warm-up batch)."""
    samples = []
    for i in range(ROUNDS + 1):
        start = time.perf_counter_ns()
        for _ in range(BATCH):
            decision = await pipe.check(request)
        elapsed = (time.perf_counter_ns() - start) / BATCH / 1000
        assert decision.allowed, decision
        if i:
            samples.append(elapsed)
    return statistics.median(samples)


async def main(profile: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="authz-micro-lambda-") as tmp:
        found = rows(Path(tmp))
        if profile is not None:
            authorizer, policy, authorization = found[profile]
            pipe = await _pipeline(Path(tmp), authorizer, policy)
            await median_us(pipe, _request(authorization))
            profiler = cProfile.Profile()
            profiler.enable()
            await median_us(pipe, _request(authorization))
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            await pipe.holder.current.stop()
            return
        width = max(len(name) for name in found)
        print(f"{'row':<{width}}  median us per Check")
        for name, (authorizer, policy, authorization) in found.items():
            pipe = await _pipeline(Path(tmp), authorizer, policy)
            print(f"{name:<{width}}  {await median_us(pipe, _request(authorization)):8.2f}", flush=True)
            await pipe.holder.current.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_lambda")
    parser.add_argument("--profile", help="run this row under cProfile (a row name as printed)")
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.profile))
