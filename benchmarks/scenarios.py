"""What the benchmark measures: the floors and the scenarios, and the key material and sidecar config they need.

A `Scenario` names the request that is sent (path and headers, or a header whose value rotates over a file of
fresh credentials) and what it adds to the one sidecar config every scenario shares (authorizers and routes).
To add a scenario, write a function `(Fixtures) -> Scenario` and append it to `SCENARIOS`; a scenario that cannot
run yet sets `pending` to say what it waits for, and is listed in the report instead of being measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.limits.apikeys import digest_of

from .certs import BenchPki, envoy_value
from .lambda_handlers import ASYNC_HANDLER as LAMBDA_ASYNC_HANDLER
from .lambda_handlers import HANDLER as LAMBDA_HANDLER
from .load import Rotation

ISSUER = "https://issuer.bench.local"
AUDIENCE = "bench-api"
SIGV4_KEY_ID = "AKIDBENCHMARK0000001"
SIGV4_SECRET = "bench/secret/0123456789abcdefghijklmnopqrstuv"

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One measured request shape. `stack` says what serves it: a floor or the sidecar."""

    name: str
    title: str
    stack: str  # "envoy-only" | "envoy-native" | "noop-grpc" | "noop-http" | "sidecar"
    path: str = "/anon/item"
    headers: Callable[[], Headers] = lambda: ()
    rotation: Rotation | None = None
    authorizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: tuple[dict[str, Any], ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    """Top-level config settings this scenario needs (scenarios with different settings get their own sidecar)."""
    pending: str = ""
    fixed_rate: bool = True
    """Also measured at the fixed rate (benchmarks/paced.py)."""
    direct: bool = True
    """Also measured straight at the gRPC port (a constant pre-encoded CheckRequest, so not with a rotation)."""
    through_envoy: bool = True
    """False: measured straight at the gRPC port only. For a request Envoy would only send from a TLS listener
    (a client certificate), which neither wrk nor h2load can present."""
    peer_certificate: str = ""
    """The CheckRequest's `attributes.source.certificate` (URL-encoded PEM, as Envoy sends a TLS peer's)."""
    transport: str = "envoy"
    """How Envoy asks: "envoy" (gRPC ext_authz) or "envoy-http" (HTTP ext_authz, the sidecar's listen.http)."""
    redis: str = ""
    """"up": the harness runs `redis-server` on `Fixtures.redis_port` for this sidecar; "down": it stops that
    Redis before measuring this scenario (which must follow an "up" one with the same settings)."""
    spin_us: float = 0.0
    """For the "noop-grpc" stack: microseconds of pure-Python busy work per Check (a calibration row)."""
    module: str = "benchmarks.noop_grpc_authz"
    """For the "noop-grpc" stack: the no-op server's module."""
    unix: bool = False
    """Envoy asks the sidecar over Unix domain sockets (`deploy/envoy/envoy-uds.yaml`; HTTP mode: one socket)
    instead of loopback TCP. Not straight at gRPC (h2load has no Unix sockets)."""
    lambda_serve: str = ""
    """A handler's import string: the harness runs `authz-sidecar lambda-serve` with it on `Fixtures.lambda_port`
    before starting this scenario's sidecar (its CPU is measured beside the sidecar's)."""

    native: str = ""
    """For the "envoy-native" stack: Envoy's own jwt_authn filter instead of ext_authz, with its JWT cache
    ("cached") or without it ("uncached")."""
    offload: bool = False
    """For a sidecar scenario: Envoy runs what `authz-sidecar envoy-config --offload` renders for the sidecar's
    config (its routes decided by Envoy where they can be), instead of the shipped bootstrap."""

    @property
    def is_floor(self) -> bool:
        return self.stack != "sidecar"

    @property
    def metered(self) -> bool:
        """Its sidecar meters API keys by usage plan: the harness reads that sidecar's gate metrics around it."""
        return bool(self.settings.get("usage_plans"))


@dataclass
class Fixtures:
    """Keys, tokens and files every scenario draws on, created once per run in `directory`."""

    directory: Path
    envoy_host: str
    cold_tokens: int
    redis_port: int = 0
    """Where the Redis scenarios' `redis-server` listens (picked by the harness)."""
    lambda_port: int = 0
    """Where the remote custom-authorizer scenario's `lambda-serve` listens (picked by the harness)."""
    rsa_key: rsa.RSAPrivateKey = field(init=False)
    ec_key: ec.EllipticCurvePrivateKey = field(init=False)
    jwks_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.jwks_file = self.directory / "jwks.json"
        keys = [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key())), "kid": "rsa", "alg": "RS256"},
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key())), "kid": "ec", "alg": "ES256"},
        ]
        self.jwks_file.write_text(json.dumps({"keys": [{**k, "use": "sig"} for k in keys]}))

    @cached_property
    def pki(self) -> BenchPki:
        """The private CA of the mTLS rows (RSA 2048), made on first use."""
        return BenchPki(self.directory)

    @cached_property
    def warm_token(self) -> str:
        """The one RS256 token of the warm JWT rows and of the floors sent the same request."""
        return self.token("RS256", "warm-user")

    def token(self, alg: str, subject: str) -> str:
        """A valid JWT for the benchmark issuer, signed with the RSA (RS256) or EC (ES256) key."""
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 6 * 3600, "scope": "read"}
        key, kid = (self.rsa_key, "rsa") if alg == "RS256" else (self.ec_key, "ec")
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    def token_file(self, alg: str, count: int | None = None) -> Path:
        """`count` (default `cold_tokens`) distinct tokens, one a line."""
        count = self.cold_tokens if count is None else count
        path = self.directory / f"tokens-{alg}-{count}.txt"
        if not path.exists():
            path.write_text("\n".join(self.token(alg, f"user-{i}") for i in range(count)) + "\n")
        return path

    def credentials_file(self) -> Path:
        """The SigV4 credential store: one access key."""
        path = self.directory / "credentials.yaml"
        entry = {
            "access_key_id": SIGV4_KEY_ID,
            "secret_access_key": SIGV4_SECRET,
            "principal_arn": "arn:aws:iam::000000000000:user/bench",
            "policies": [
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"}],
                }
            ],
        }
        path.write_text(yaml.safe_dump({"credentials": [entry]}))
        return path

    def api_key_file(self, plan: str, keys: dict[str, str]) -> Path:
        """An API key file (`limits/apikeys.py`: digests only) with one entry per `keys` id -> value, each in
        `plan`."""
        path = self.directory / f"api-keys-{plan}.yaml"
        entries = [
            {"id": key_id, "name": key_id, "sha256": digest_of(value), "plan": plan} for key_id, value in keys.items()
        ]
        path.write_text(yaml.safe_dump(entries, sort_keys=False))
        return path


def _jwt_authorizer(fx: Fixtures, cache_size: int) -> dict[str, Any]:
    return {
        "type": "jwt",
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "algorithms": ["RS256", "ES256"],
        "jwks_file": str(fx.jwks_file),
        "token_cache_size": cache_size,
    }


def _bearer(token: str) -> Callable[[], Headers]:
    return lambda: (("authorization", f"Bearer {token}"),)


def envoy_only(fx: Fixtures) -> Scenario:
    """Envoy alone, sent the warm JWT rows' bearer token (its ~700 bytes are work for Envoy too), so what a row
    adds over it (`added_cpu_us`) is what authorizing costs, not the header."""
    title = "floor: Envoy alone (no ext_authz; the warm JWT's bearer token sent)"
    return Scenario("envoy-only", title, "envoy-only", path="/jwt/item", headers=_bearer(fx.warm_token), direct=False)


def envoy_jwt_authn(fx: Fixtures) -> Scenario:
    """The native floor of a warm JWT: Envoy's jwt_authn with its JWT cache, the same token every request."""
    title = "floor: Envoy's own jwt_authn, its JWT cache on (the warm JWT every request)"
    return Scenario(
        "envoy-jwt-authn",
        title,
        "envoy-native",
        path="/jwt/item",
        headers=_bearer(fx.warm_token),
        direct=False,
        native="cached",
    )


def envoy_jwt_authn_cold(fx: Fixtures) -> Scenario:
    """The native floor of a cold JWT: jwt_authn without its cache, a new RS256 token every request (as
    `jwt-cold-rs256`), so Envoy verifies each one."""
    return Scenario(
        "envoy-jwt-authn-cold",
        "floor: Envoy's own jwt_authn, no cache (a new RS256 token each request)",
        "envoy-native",
        path="/jwt-cold/item",
        rotation=Rotation("Authorization", "Bearer ", fx.token_file("RS256")),
        direct=False,
        native="uncached",
    )


def noop_grpc(fx: Fixtures) -> Scenario:
    return Scenario("noop-grpc", "floor: Envoy + no-op grpc.aio ext_authz (uvloop)", "noop-grpc")


SPIN_US = 20.0


def noop_grpc_spin(fx: Fixtures) -> Scenario:
    """Calibration: the gRPC floor plus SPIN_US of pure Python per Check. The difference between its CPU per
    Check and the floor's shows what that much in-process work costs inside grpc.aio under load (the same work
    in a tight loop costs exactly SPIN_US)."""
    return Scenario(
        "noop-grpc-spin",
        f"calibration: no-op grpc.aio + {SPIN_US:.0f} us of Python per Check",
        "noop-grpc",
        spin_us=SPIN_US,
        direct=False,
    )


def noop_lean(fx: Fixtures) -> Scenario:
    """The no-op server on the sidecar's own gRPC transport (`sidecar/transports/grpc_lean/`): the framework cost the
    sidecar's gRPC rows carry, beside the grpc.aio floor every ratio divides by."""
    return Scenario(
        "noop-lean",
        "no-op on the lean gRPC listener (sidecar/transports/grpc_lean/)",
        "noop-grpc",
        module="benchmarks.noop_lean_grpc",
    )


def noop_http(fx: Fixtures) -> Scenario:
    here = Path(__file__).with_name("noop_http_authz.py")
    template = Path(__file__).parents[1] / "sidecar" / "defaults" / "envoy-http.yaml"
    pending = "" if here.exists() and template.exists() else "needs benchmarks/noop_http_authz.py + envoy-http.yaml"
    return Scenario(
        "noop-http",
        "floor: Envoy + no-op HTTP authz (httptools)",
        "noop-http",
        pending=pending,
        direct=False,
        transport="envoy-http",
    )


def anonymous_http(fx: Fixtures) -> Scenario:
    """The anonymous route in HTTP mode (Envoy http_service -> the sidecar's httptools listener)."""
    return replace(
        anonymous(fx), name="anonymous-http", title="anonymous route, HTTP mode", direct=False, transport="envoy-http"
    )


def jwt_warm_http(fx: Fixtures) -> Scenario:
    """Warm JWT in HTTP mode."""
    return replace(
        jwt_warm(fx), name="jwt-warm-http", title="JWT RS256 warm, HTTP mode", direct=False, transport="envoy-http"
    )


def policy_1000(fx: Fixtures) -> Scenario:
    """A 1,000-statement resource policy evaluated on every request (route cache_ttl 0: no decision cache)."""
    arn = "arn:aws:execute-api:us-east-1:000000000000:local/prod"
    statements: list[dict[str, Any]] = [
        {
            "Sid": f"Other{i}",
            "Effect": "Deny" if i % 3 == 0 else "Allow",
            "Principal": "*",
            "Action": "execute-api:Invoke",
            "Resource": f"{arn}/GET/service{i}/*",
            "Condition": {"IpAddress": {"aws:SourceIp": f"10.{i % 250}.0.0/16"}},
        }
        for i in range(999)
    ]
    statements.append(
        {
            "Sid": "Policy",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "execute-api:Invoke",
            "Resource": f"{arn}/*/policy/*",
        }
    )
    path = fx.directory / "policy-1000.json"
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": statements}))
    return Scenario(
        "policy-1000",
        "1,000-statement resource policy (evaluated every request)",
        "sidecar",
        path="/policy/item",
        authorizers={"public": {"type": "none"}},
        routes=({"match": "ANY /policy/{proxy+}", "authorizer": "public", "cache_ttl": 0},),
        settings={"resource_policy": str(path), "policy": {"max_resource_policy_size": 1_000_000}},
    )


def anonymous(fx: Fixtures) -> Scenario:
    return Scenario(
        "anonymous",
        "anonymous route (type: none)",
        "sidecar",
        path="/anon/item",
        authorizers={"public": {"type": "none"}},
        routes=({"match": "ANY /anon/{proxy+}", "authorizer": "public"},),
    )


def anonymous_no_decision_log(fx: Fixtures) -> Scenario:
    """The anonymous route with decision logging off: what logging every allowed request costs."""
    return Scenario(
        "anonymous-nolog",
        "anonymous route, decision_log off",
        "sidecar",
        path="/anon/item",
        authorizers={"public": {"type": "none"}},
        routes=({"match": "ANY /anon/{proxy+}", "authorizer": "public"},),
        settings={"decision_log": {"enabled": False}},
        direct=False,
    )


def jwt_warm(fx: Fixtures) -> Scenario:
    return Scenario(
        "jwt-warm",
        "JWT RS256, warm (token cache hit)",
        "sidecar",
        path="/jwt/item",
        headers=_bearer(fx.warm_token),
        authorizers={"jwt_warm": _jwt_authorizer(fx, 10_000)},
        routes=({"match": "ANY /jwt/{proxy+}", "authorizer": "jwt_warm"},),
    )


def jwt_offload(fx: Fixtures) -> Scenario:
    """The warm JWT route offloaded: Envoy runs `envoy-config --offload`'s rendering of the same sidecar config,
    so jwt_authn + rbac decide the route and the sidecar (still running, health-checked) is not asked."""
    title = "JWT RS256 warm, offloaded (envoy-config --offload: Envoy decides, the sidecar is not asked)"
    return replace(jwt_warm(fx), name="jwt-offload", title=title, direct=False, offload=True)


def jwt_offload_nolog(fx: Fixtures) -> Scenario:
    """The offloaded warm JWT route with the sidecar's decision log off, which the rendering follows (no access log):
    what Envoy's decision-log line costs an offloaded route."""
    title = "JWT RS256 warm, offloaded, decision_log off (no access log)"
    return replace(
        jwt_offload(fx), name="jwt-offload-nolog", title=title, settings={"decision_log": {"enabled": False}}
    )


def jwt_offload_cold(fx: Fixtures) -> Scenario:
    """The cold RS256 route offloaded: a new token each request, verified by Envoy's jwt_authn (no JWT cache, as the
    sidecar's token cache is off) and judged by the rendered rbac; against `envoy-jwt-authn-cold`."""
    title = "JWT RS256 cold, offloaded (a new token each request; Envoy verifies, the sidecar is not asked)"
    return replace(jwt_cold_rs256(fx), name="jwt-offload-cold", title=title, direct=False, offload=True)


def jwt_warm_uds(fx: Fixtures) -> Scenario:
    """Warm JWT with Envoy asking over a Unix domain socket per worker (the shipped envoy-uds.yaml)."""
    return replace(
        jwt_warm(fx), name="jwt-warm-uds", title="JWT RS256 warm, over Unix sockets", direct=False, unix=True
    )


def jwt_warm_http_uds(fx: Fixtures) -> Scenario:
    """Warm JWT in HTTP mode over a Unix domain socket."""
    title = "JWT RS256 warm, HTTP mode over a Unix socket"
    return replace(jwt_warm_http(fx), name="jwt-warm-http-uds", title=title, unix=True)


def jwt_warm_grpcio(fx: Fixtures) -> Scenario:
    """The warm JWT Check served by grpc.aio (`server.grpc_engine: grpcio`) instead of the lean listener."""
    return replace(
        jwt_warm(fx),
        name="jwt-warm-grpcio",
        title="JWT RS256 warm, served by grpc.aio (grpc_engine: grpcio)",
        settings={"server": {"watch_config": False, "grace_period": 2, "grpc_engine": "grpcio"}},
    )


REDIS_SIGNING_KEY = "bench-signing-key-0123456789abcdef"


def _redis_settings(fx: Fixtures) -> dict[str, Any]:
    """L1 off, so every Check asks Redis; a short Redis timeout and a breaker as shipped."""
    return {
        "cache": {
            "local": {"enabled": False},
            "redis": {"url": f"redis://127.0.0.1:{fx.redis_port}/0", "signing_key": REDIS_SIGNING_KEY},
        }
    }


def redis_l2_hit(fx: Fixtures) -> Scenario:
    token = fx.token("RS256", "redis-user")
    return Scenario(
        "redis-l2-hit",
        "JWT RS256 warm, decision from Redis (L2 hit, L1 off)",
        "sidecar",
        path="/jwt-redis/item",
        headers=lambda: (("authorization", f"Bearer {token}"),),
        authorizers={"jwt_redis": _jwt_authorizer(fx, 10_000)},
        routes=({"match": "ANY /jwt-redis/{proxy+}", "authorizer": "jwt_redis"},),
        settings=_redis_settings(fx),
        redis="up",
    )


def redis_down(fx: Fixtures) -> Scenario:
    up = redis_l2_hit(fx)
    return replace(
        up,
        name="redis-down",
        title="the same with Redis killed (breaker open, decisions computed locally)",
        redis="down",
    )


def _jwt_cold(fx: Fixtures, alg: str) -> Scenario:
    return Scenario(
        f"jwt-cold-{alg.lower()}",
        f"JWT {alg}, cold (a new token each request, token and decision caches off)",
        "sidecar",
        path="/jwt-cold/item",
        rotation=Rotation("Authorization", "Bearer ", fx.token_file(alg)),
        authorizers={"jwt_cold": _jwt_authorizer(fx, 0)},
        # cache_ttl 0: the decision cache would otherwise answer once the token file has been cycled through
        routes=({"match": "ANY /jwt-cold/{proxy+}", "authorizer": "jwt_cold", "cache_ttl": 0},),
        direct=False,
    )


def jwt_cold_rs256(fx: Fixtures) -> Scenario:
    return _jwt_cold(fx, "RS256")


def jwt_cold_es256(fx: Fixtures) -> Scenario:
    return _jwt_cold(fx, "ES256")


def _sigv4_headers(host: str, path: str) -> Headers:
    """SigV4 header auth for GET http://host/path, signed now (botocore, as an AWS SDK would)."""
    from botocore.auth import SigV4Auth  # type: ignore[import-untyped, unused-ignore]
    from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped, unused-ignore]
    from botocore.credentials import Credentials  # type: ignore[import-untyped, unused-ignore]

    request = AWSRequest(method="GET", url=f"http://{host}{path}", headers={"host": host})
    SigV4Auth(Credentials(SIGV4_KEY_ID, SIGV4_SECRET), "execute-api", "us-east-1").add_auth(request)
    return tuple((k.lower(), str(v)) for k, v in request.headers.items() if k.lower() != "host")


def sigv4_header(fx: Fixtures) -> Scenario:
    from sidecar.authorizers.base import registry

    pending = "" if "sigv4" in registry() else "needs the sigv4 authorizer"
    path = "/sigv4/item"
    return Scenario(
        "sigv4",
        "SigV4 header (HMAC-SHA256, signing key cached)",
        "sidecar",
        path=path,
        headers=lambda: _sigv4_headers(fx.envoy_host, path),
        authorizers={
            "iam": {
                "type": "sigv4",
                "region": "us-east-1",
                "credentials": {"file": str(fx.credentials_file()), "reload_interval": 0},
            }
        },
        routes=({"match": "ANY /sigv4/{proxy+}", "authorizer": "iam"},),
        pending=pending,
        direct=False,  # the signature covers the Host Envoy sees; the direct frame would need its own
    )


def memory_fill(fx: Fixtures, tokens: int, token_cache: int | None = None, policy: bool = False) -> Scenario:
    """Not in SCENARIOS: the harness's memory step sends each of `tokens` distinct ES256 tokens once, so the
    sidecar ends up holding that many cached decisions. `token_cache`: the token cache's size (None: the shipped
    default, 10,000). `policy`: a resource policy (allowing everything) applies, so decisions are keyed by path
    as well and the token cache is filled too; without one, the decision cache alone answers for a token."""
    authorizer = _jwt_authorizer(fx, token_cache or 0)
    if token_cache is None:
        del authorizer["token_cache_size"]
    settings: dict[str, Any] = {"cache": {"local": {"enabled": True, "max_entries": max(100_000, tokens + 1000)}}}
    if policy:
        path = fx.directory / "allow-all.json"
        statement = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "*"}
        path.write_text(json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
        settings["resource_policy"] = str(path)
    return Scenario(
        "memory",
        f"{tokens:,} distinct JWTs cached",
        "sidecar",
        path="/jwt-mem/item",
        rotation=Rotation("Authorization", "Bearer ", fx.token_file("ES256", tokens)),
        authorizers={"jwt_mem": authorizer},
        routes=({"match": "ANY /jwt-mem/{proxy+}", "authorizer": "jwt_mem"},),
        settings=settings,
        direct=False,
    )


LAMBDA_TOKEN = "Bearer bench-lambda-token"
LAMBDA_CONCURRENCY = 64
"""Calls at once for the custom-authorizer rows (sidecar and lambda-serve): above the load's 16 connections, so
no row measures refusals."""


def _lambda_authorizer(**settings: Any) -> dict[str, Any]:
    """A `type: lambda` TOKEN authorizer (the Authorization header) calling the trivial handler."""
    return {"type": "lambda", "event_format": "token", "max_concurrency": LAMBDA_CONCURRENCY, **settings}


def _lambda(name: str, title: str, prefix: str, authorizer: dict[str, Any], **fields: Any) -> Scenario:
    return Scenario(
        name,
        title,
        "sidecar",
        path=f"/{prefix}/item",
        headers=lambda: (("authorization", LAMBDA_TOKEN),),
        authorizers={prefix.replace("-", "_"): authorizer},
        routes=({"match": f"ANY /{prefix}/{{proxy+}}", "authorizer": prefix.replace("-", "_")},),
        **fields,
    )


def lambda_cached(fx: Fixtures) -> Scenario:
    """A custom authorizer's cached result: the same token every request, so the handler ran once and each
    Check reads the identity source, hashes the cache key, finds the result and evaluates its policy for this
    request's ARN. Target: CPU per Check <= 1.10x the warm JWT row's."""
    authorizer = _lambda_authorizer(handler=LAMBDA_HANDLER, result_ttl=300)
    return _lambda("lambda-cached", "custom authorizer in process, cached result", "lambda", authorizer)


def lambda_uncached(fx: Fixtures) -> Scenario:
    """The trivial handler called for every Check (`result_ttl: 0`), in process on the handler's thread pool:
    its excess over `lambda-cached` is what the sidecar spends around a call. Target: <= 40 us per Check."""
    authorizer = _lambda_authorizer(handler=LAMBDA_HANDLER, result_ttl=0)
    return _lambda("lambda-uncached", "custom authorizer in process, uncached", "lambda-nocache", authorizer)


def lambda_uncached_async(fx: Fixtures) -> Scenario:
    """`lambda-uncached` with the handler written `async def`: it runs on the sidecar's event loop, so its
    excess over `lambda-cached` is the call without the hop to a pool thread and back."""
    authorizer = _lambda_authorizer(handler=LAMBDA_ASYNC_HANDLER, result_ttl=0)
    return _lambda(
        "lambda-uncached-async", "custom authorizer in process, uncached, async handler", "lambda-async", authorizer
    )


def lambda_remote(fx: Fixtures) -> Scenario:
    """The same handler behind `authz-sidecar lambda-serve` (`target: grpc://`), called for every Check: CPU
    and p99 at 1,000 rps against `lambda-cached`."""
    authorizer = _lambda_authorizer(target=f"grpc://127.0.0.1:{fx.lambda_port}", result_ttl=0)
    return _lambda(
        "lambda-remote",
        "custom authorizer over lambda-serve, uncached",
        "lambda-remote",
        authorizer,
        lambda_serve=LAMBDA_HANDLER,
    )


API_KEY = "bench-api-key-0123456789abcdefghijklmn"
"""The API key the usage-plan rows send (`x-api-key`); API Gateway's values are 20-128 characters."""
USAGE_PLAN = "bench"
REDIS_METER_TIMEOUT_MS = 100
"""`apikey-plan-redis`'s Redis timeout (see there): far above a loopback round trip, so a call waits out a stall."""
UNREFUSED_PLAN: dict[str, Any] = {
    "throttle": {"rate": 1_000_000, "burst": 1_000_000},
    "quota": {"limit": 10**12, "period": "DAY"},
}
"""A usage plan far above any load here (a throttle of 1,000,000 rps, a quota of 10^12 a day): every request is
metered (the bucket and the quota are read and written) and none is refused, so no figure is of 429s."""


def _usage_plan_settings(fx: Fixtures) -> dict[str, Any]:
    return {
        "api_keys": {"file": str(fx.api_key_file(USAGE_PLAN, {"bench-key": API_KEY}))},
        "usage_plans": {USAGE_PLAN: UNREFUSED_PLAN},
    }


def _apikey_plan(fx: Fixtures, name: str, title: str, prefix: str, settings: dict[str, Any], redis: str) -> Scenario:
    """The warm JWT request plus an API key, on a route requiring it (`api_key_required`) under a usage plan
    with a throttle and a quota: each Check is the warm decision (token and decision cache hits, as `jwt-warm`)
    followed by the key's lookup (a SHA-256 and a constant-time compare) and one meter call on its plan."""
    token = fx.token("RS256", f"{prefix}-user")
    authorizer = prefix.replace("-", "_")
    return Scenario(
        name,
        title,
        "sidecar",
        path=f"/{prefix}/item",
        headers=lambda: (("authorization", f"Bearer {token}"), ("x-api-key", API_KEY)),
        authorizers={authorizer: _jwt_authorizer(fx, 10_000)},
        routes=({"match": f"ANY /{prefix}/{{proxy+}}", "authorizer": authorizer, "api_key_required": True},),
        settings={**_usage_plan_settings(fx), **settings},
        redis=redis,
    )


def apikey_plan_redis(fx: Fixtures) -> Scenario:
    """Counting in Redis (`redis: {default: ...}`, the harness's `redis-server`): one EVALSHA per Check (the
    throttle and the quota judged and counted in one Lua script). The decision cache stays in process (L1), so
    the row's one Redis round trip is the meter's, as `redis-l2-hit`'s one is the decision's. Target: sidecar
    CPU per Check <= 1.25x `redis-l2-hit`'s; its p99 at 1,000 rps is reported against `jwt-warm`'s.

    Redis gets `REDIS_METER_TIMEOUT_MS` per call, not the shipped 5 ms: with 5 ms, a run at 381bf03 on this
    shared VM (about a core of other work) timed out bursts of calls queued behind a stalled loop, the breaker
    opened, and 81,775 of the row's 90,056 Checks were counted in process (`on_redis_error: local`): a figure of
    the fallback, not of counting in Redis. Calls decided without Redis are still counted and reported
    (`RunResult.metered`)."""
    redis = {
        "redis": {"default": {"url": f"redis://127.0.0.1:{fx.redis_port}/0", "timeout_ms": REDIS_METER_TIMEOUT_MS}},
        "limits": {"timeout_ms": REDIS_METER_TIMEOUT_MS},  # the gates' own (the connection's is the cache's)
    }
    title = "JWT RS256 warm + API key + usage plan, counted in Redis"
    return _apikey_plan(fx, "apikey-plan-redis", title, "apikey-redis", redis, "up")


def apikey_plan_local(fx: Fixtures) -> Scenario:
    """The same counting in process (no `redis.default`: exact for one replica). Target: sidecar CPU per Check
    <= 1.10x `jwt-warm`'s."""
    title = "JWT RS256 warm + API key + usage plan, counted in process"
    return _apikey_plan(fx, "apikey-plan-local", title, "apikey-local", {}, "")


def mtls_settings(pki: BenchPki) -> dict[str, Any]:
    """The `mtls:` section: `pki`'s truststore and CRL, the certificate Envoy sends, the SPIFFE ID as principal;
    the verify cache as shipped."""
    return {
        "mtls": {
            "truststore": str(pki.truststore),
            "crls": [str(pki.crl)],
            "sources": ["envoy"],
            "principal": "san.uri",
        }
    }


def mtls_scenario(pki: BenchPki, name: str, title: str) -> Scenario:
    """A `type: mtls` route whose request carries one client certificate of `pki` as `source.certificate`."""
    return Scenario(
        name,
        title,
        "sidecar",
        path="/mtls/item",
        peer_certificate=envoy_value(pki.leaf("warm-client")),
        authorizers={"peers": {"type": "mtls"}},
        routes=({"match": "ANY /mtls/{proxy+}", "authorizer": "peers"},),
        settings=mtls_settings(pki),
        fixed_rate=False,
        through_envoy=False,
    )


def mtls_warm(fx: Fixtures) -> Scenario:
    """The same client certificate every request: after the first, a Check finds the parsed certificate by its
    text, the chain's verdict in the verify cache and the Principal in the authorizer's memo (no cryptography).
    Target: sidecar CPU per Check <= 1.10x `jwt-warm`'s, both straight at the gRPC port (`through_envoy`). The
    cold Check (a new certificate each request) is `benchmarks/micro_mtls.py`'s: h2load sends one body."""
    return mtls_scenario(fx.pki, "mtls-warm", "mTLS client certificate, warm (verify cache hit)")


def jwt_warm_client_cert(fx: Fixtures) -> Scenario:
    """Not in SCENARIOS (`benchmarks/micro_mtls.py` measures it): the warm JWT request on a route that also
    requires a client certificate (`require_client_cert`: mTLS and JWT, as API Gateway combines them)."""
    warm = jwt_warm(fx)
    return replace(
        warm,
        name="jwt-warm-client-cert",
        title="JWT RS256 warm + require_client_cert (warm certificate)",
        path="/jwt-cert/item",
        peer_certificate=envoy_value(fx.pki.leaf("jwt-client")),
        routes=({"match": "ANY /jwt-cert/{proxy+}", "authorizer": "jwt_warm", "require_client_cert": True},),
        settings=mtls_settings(fx.pki),
        fixed_rate=False,
        through_envoy=False,
    )


SCENARIOS: list[Callable[[Fixtures], Scenario]] = [
    envoy_only,
    envoy_jwt_authn,
    envoy_jwt_authn_cold,
    noop_grpc,
    noop_grpc_spin,
    noop_lean,
    noop_http,
    anonymous,
    anonymous_no_decision_log,
    jwt_warm,
    jwt_offload,
    jwt_offload_nolog,
    jwt_offload_cold,
    jwt_warm_uds,
    jwt_warm_grpcio,
    jwt_cold_rs256,
    jwt_cold_es256,
    sigv4_header,
    policy_1000,
    anonymous_http,
    jwt_warm_http,
    jwt_warm_http_uds,
    redis_l2_hit,
    redis_down,
    lambda_cached,
    lambda_uncached,
    lambda_uncached_async,
    lambda_remote,
    apikey_plan_redis,
    apikey_plan_local,
    mtls_warm,
]


def build(fx: Fixtures, only: set[str] | None = None) -> list[Scenario]:
    """The scenarios of this run: every floor, and the sidecar scenarios named in `only` (default: all)."""
    scenarios = [make(fx) for make in SCENARIOS]
    return [s for s in scenarios if only is None or s.is_floor or s.name in only]


def settings_key(scenario: Scenario) -> str:
    """Scenarios with the same key share one sidecar process."""
    return json.dumps(scenario.settings, sort_keys=True)


def sidecar_config(scenarios: list[Scenario]) -> str:
    """The sidecar config serving these scenarios (one settings group; listeners are set by the harness)."""
    authorizers: dict[str, dict[str, Any]] = {}
    routes: list[dict[str, Any]] = []
    for s in scenarios:
        if s.stack == "sidecar" and not s.pending:
            authorizers.update(s.authorizers)
            routes.extend(r for r in s.routes if r not in routes)
    config = {
        # Per-worker gRPC addresses, as the shipped config (the shipped bootstrap lists one endpoint per worker).
        "listen": {"grpc": "127.0.0.1:9191", "admin": "127.0.0.1:9190", "grpc_per_worker": True},
        "server": {"watch_config": False, "grace_period": 2},
        "authorizers": authorizers or {"public": {"type": "none"}},
        "routes": routes or [{"match": "ANY /anon/{proxy+}", "authorizer": "public"}],
    }
    for s in scenarios:
        config.update(s.settings)
    return yaml.safe_dump(config, sort_keys=False)
