"""What the soak sends and what each request must get: its keys, tokens, certificates and files, the sidecar config
serving every landed authorizer and gate, and the request kinds of the mix, each with its answer known in advance.

A `Kind` is one request shape with the status and reasons it must get while nothing is wrong. Two kinds are
refused by a limit rather than by their credential (`budget`): the key of a deliberately exceeded throttle and
the client a rate-based rule blocks; a few of their requests are allowed by design (the bucket's burst, the
rule's limit, and more while Redis is away: `docs/limits.md`), and the report holds those allows to the
allowance the documented behaviour gives (`soak_report.budgets`) instead of calling each a wrong allow.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sidecar.limits.apikeys import digest_of, new_key_value

from .certs import BenchPki
from .scenarios import SIGV4_KEY_ID, SIGV4_SECRET, UNREFUSED_PLAN, _sigv4_headers, mtls_settings
from .soak_lambda import HANDLER

ISSUER = "https://issuer.soak.local"
AUDIENCE = "soak-api"
HOST = "api.soak.local"
"""The Host every request carries (SigV4 signs it)."""
KEY_HEADER = "x-api-key"
CLIENT_HEADER = "x-client-id"
"""The header the rate-based rule counts by (requests without it are not counted, as WAF does)."""
TIGHT_PLAN = {"throttle": {"rate": 0.2, "burst": 2}}
"""The throttled key's plan: 2 back to back, then one per 5 s; the soak sends it far faster."""
RULE = {"name": "hog", "key": [f"header:{CLIENT_HEADER}"], "window": 60, "limit": 10, "action": "block"}
KEY_SECRET = "soak-rate-rule-key-secret-0123456789"
SIGNING_KEY = "soak-cache-signing-key-0123456789abcdef"
REDIS_TIMEOUT_MS = 50
"""The gates' and the decision cache's Redis timeout (the shipped 50 ms): a SIGSTOPped Redis outlasts it."""

Headers = tuple[tuple[str, str], ...]


@dataclass
class State:
    """What the faults change in the requests themselves: after the key rotation, new tokens use the new key."""

    rotated: bool = False


@dataclass(frozen=True)
class Kind:
    """One request shape of the mix and the answer it must get while nothing is wrong."""

    name: str
    weight: int
    status: int
    reasons: frozenset[str]
    """Acceptable reason codes of a deny (empty for an allow)."""
    build: Callable[[State], tuple[str, Headers]]
    cert: str = ""
    """The client certificate the connection presents ("" none, "good", "stranger")."""
    budget: str = ""
    """"throttle" or "rule": allows are counted against that limit's documented allowance."""
    also: frozenset[tuple[int, str]] = frozenset()
    """Other (status, reason) answers that are right too (a flood's first requests, before its rule blocks)."""

    @property
    def allow(self) -> bool:
        return self.status == 200


def _rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {
        **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())),
        "kid": kid,
        "alg": "RS256",
        "use": "sig",
    }


def _tampered(token: str) -> str:
    """`token` with one signature character changed (still base64url, so it fails as a bad signature)."""
    head, _, signature = token.rpartition(".")
    middle = len(signature) // 2
    swapped = "A" if signature[middle] != "A" else "B"
    return f"{head}.{signature[:middle]}{swapped}{signature[middle + 1 :]}"


@dataclass
class Material:
    """Keys, tokens, certificates and files of one soak run, made in `directory` when it starts."""

    directory: Path
    old_key: rsa.RSAPrivateKey = field(init=False)
    new_key: rsa.RSAPrivateKey = field(init=False)
    pki: BenchPki = field(init=False)
    stranger: BenchPki = field(init=False)
    api_keys: dict[str, str] = field(init=False)
    tokens: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.old_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pki = BenchPki(self.directory)
        (self.directory / "stranger").mkdir(exist_ok=True)
        self.stranger = BenchPki(self.directory / "stranger")
        self.api_keys = {"open": new_key_value(), "tight": new_key_value(), "unknown": new_key_value()}
        now = int(time.time())
        self.tokens = {
            "valid": self.token(self.old_key, "old", "reader", now + 6 * 3600, "read"),
            "expired": self.token(self.old_key, "old", "late", now - 3600, "read"),
            "scope": self.token(self.old_key, "old", "writer", now + 6 * 3600, "write"),
            "rotated": self.token(self.new_key, "new", "rotated", now + 6 * 3600, "read"),
        }
        self.tokens["tampered"] = _tampered(self.tokens["valid"])
        self.write_files()

    @staticmethod
    def token(key: rsa.RSAPrivateKey, kid: str, subject: str, exp: int, scope: str) -> str:
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": int(time.time()) - 60, "exp": exp}
        return jwt.encode({**claims, "scope": scope}, key, algorithm="RS256", headers={"kid": kid})

    def jwks(self, rotated: bool) -> bytes:
        """The issuer's JWKS: the old key, and after the rotation the new one beside it (the usual overlap)."""
        keys = [_rsa_jwk(self.old_key, "old")] + ([_rsa_jwk(self.new_key, "new")] if rotated else [])
        return json.dumps({"keys": keys}).encode()

    # -- files ---------------------------------------------------------------------------------------------

    @property
    def credentials(self) -> Path:
        return self.directory / "credentials.json"

    def credentials_text(self) -> str:
        """The SigV4 credential store as JSON (YAML's flow style: any prefix of it fails to parse, so a reader
        catching the file half written sees a broken file, never a shorter valid one)."""
        arn = "arn:aws:execute-api:*:*:*"
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": f"{arn}/*/GET/iam/*"},
                {"Effect": "Deny", "Action": "execute-api:Invoke", "Resource": f"{arn}/*/GET/iam/admin"},
            ],
        }
        entry = {
            "access_key_id": SIGV4_KEY_ID,
            "secret_access_key": SIGV4_SECRET,
            "principal_arn": "arn:aws:iam::000000000000:user/soak",
            "policies": [policy],
        }
        return json.dumps({"credentials": [entry]}, indent=1)

    def write_files(self) -> None:
        self.credentials.write_text(self.credentials_text())
        entries = [
            {"id": "open-key", "name": "open", "sha256": digest_of(self.api_keys["open"]), "plan": "open"},
            {"id": "tight-key", "name": "tight", "sha256": digest_of(self.api_keys["tight"]), "plan": "tight"},
        ]
        (self.directory / "api-keys.yaml").write_text(yaml.safe_dump(entries, sort_keys=False))
        self.write_pem("good", self.pki, "soak-client")
        self.write_pem("stranger", self.stranger, "stranger-client")
        self.write_pem("server", self.pki, "envoy-server")

    def write_pem(self, name: str, pki: BenchPki, subject: str) -> None:
        """`name`.crt (the leaf and its intermediate) and `name`.key (the PKI's one leaf key)."""
        chain = pki.leaf(subject).public_bytes(Encoding.PEM) + pki.intermediate.public_bytes(Encoding.PEM)
        (self.directory / f"{name}.crt").write_bytes(chain)
        key = pki.leaf_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        (self.directory / f"{name}.key").write_bytes(key)

    # -- the sidecar's config ------------------------------------------------------------------------------

    def config(self, redis_port: int, jwks_port: int, marker: int = 0) -> str:
        """Every landed authorizer and gate on its own route (listeners are set by the harness); `marker` names
        one more route nothing asks for, so reloads can swap a config that decides the mix the same way."""
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        jwt_settings = {
            "type": "jwt",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": ["RS256"],
            "jwks_uri": f"http://127.0.0.1:{jwks_port}/jwks.json",
            "jwks_refresh_min": 1,
            "jwks_refresh_max": 2,
            "jwks_unknown_kid_interval": 1,
        }
        data: dict[str, Any] = {
            "listen": {"grpc": "127.0.0.1:9191", "admin": "127.0.0.1:9190", "grpc_per_worker": True},
            # drain_delay: NOT_SERVING but deciding for 2 s after SIGTERM, past Envoy's health check (1 s + 0.5 s),
            # so the rolling restart's second instance takes over without refused Checks (docs/envoy.md).
            "server": {"watch_config": False, "grace_period": 5, "drain_delay": 2},
            "redis": {"default": {"url": redis_url, "timeout_ms": REDIS_TIMEOUT_MS}},
            "limits": {"key_secret": KEY_SECRET, "timeout_ms": REDIS_TIMEOUT_MS},
            "cache": {"redis": {"url": redis_url, "signing_key": SIGNING_KEY}},
            "api_keys": {"file": str(self.directory / "api-keys.yaml"), "header": KEY_HEADER},
            "usage_plans": {"open": UNREFUSED_PLAN, "tight": TIGHT_PLAN},
            "rate_limits": [RULE],
            **mtls_settings(self.pki),
            "authorizers": {
                "public": {"type": "none"},
                "bearer": jwt_settings,
                "iam": {"type": "sigv4", "region": "us-east-1", "credentials": {"file": str(self.credentials)}},
                "custom": {"type": "lambda", "event_format": "token", "handler": HANDLER, "result_ttl": 300},
                "peers": {"type": "mtls"},
            },
            "routes": [
                {"match": "ANY /public/{proxy+}", "authorizer": "public"},
                {"match": "ANY /jwt/{proxy+}", "authorizer": "bearer", "scopes": ["read"]},
                # Fresh signatures every request: cached decisions would pile up for the run (RSS is measured).
                {"match": "ANY /iam/{proxy+}", "authorizer": "iam", "cache_ttl": 0},
                {"match": "ANY /custom/{proxy+}", "authorizer": "custom"},
                {"match": "ANY /keyed/{proxy+}", "authorizer": "bearer", "api_key_required": True},
                {"match": "ANY /mtls/{proxy+}", "authorizer": "peers"},
                {"match": f"GET /marker/{marker}", "authorizer": "public"},
            ],
        }
        return str(yaml.safe_dump(data, sort_keys=False))

    # -- the mix -------------------------------------------------------------------------------------------

    def bearer(self, name: str) -> Callable[[State], tuple[str, Headers]]:
        def build(state: State) -> tuple[str, Headers]:
            key = name if name != "rotated" or state.rotated else "valid"  # the old key's until the rotation
            token = self.tokens[key]
            return "/jwt/item", (("authorization", f"Bearer {token}"),)

        return build

    def kinds(self) -> list[Kind]:
        """The mix: (name, weight per 100 requests, status, reasons, request)."""
        keys = self.api_keys
        valid = self.tokens["valid"]

        def signed(path: str, bad: bool = False) -> Callable[[State], tuple[str, Headers]]:
            def build(state: State) -> tuple[str, Headers]:
                headers = _sigv4_headers(HOST, path)
                if bad:
                    headers = tuple((k, _flip_signature(v) if k == "authorization" else v) for k, v in headers)
                return path, headers

            return build

        keyed = ("authorization", f"Bearer {valid}")
        one = frozenset
        return [
            Kind("public", 3, 200, one(), _const("/public/item")),
            Kind("unknown-route", 2, 403, one({"MissingAuthenticationToken"}), _const("/nowhere")),
            Kind("jwt-valid", 12, 200, one(), self.bearer("valid")),
            Kind("jwt-rotated", 4, 200, one(), self.bearer("rotated")),
            Kind("jwt-expired", 4, 401, one({"TokenExpired"}), self.bearer("expired")),
            Kind("jwt-tampered", 4, 401, one({"InvalidSignature"}), self.bearer("tampered")),
            Kind("jwt-wrong-scope", 4, 403, one({"InsufficientScope"}), self.bearer("scope")),
            Kind("sigv4-valid", 9, 200, one(), signed("/iam/item")),
            Kind("sigv4-bad-signature", 4, 403, one({"InvalidSignature"}), signed("/iam/item", bad=True)),
            Kind("sigv4-policy-deny", 3, 403, one({"AccessDenied"}), signed("/iam/admin")),
            Kind("lambda-allow", 8, 200, one(), _const("/custom/item", ("authorization", "allow-soak"))),
            Kind("lambda-deny", 4, 403, one({"AccessDenied"}), _const("/custom/item", ("authorization", "deny-soak"))),
            Kind("lambda-unauthorized", 2, 401, one({"Unauthorized"}), _const("/custom/item", ("authorization", "x"))),
            Kind("apikey-valid", 9, 200, one(), _const("/keyed/item", keyed, (KEY_HEADER, keys["open"]))),
            Kind(
                "apikey-unknown",
                4,
                403,
                one({"InvalidApiKey"}),
                _const("/keyed/item", keyed, (KEY_HEADER, keys["unknown"])),
            ),
            Kind(
                "apikey-throttled",
                5,
                429,
                one({"Throttled"}),
                _const("/keyed/item", keyed, (KEY_HEADER, keys["tight"])),
                budget="throttle",
            ),
            Kind(
                "rule-blocked",
                4,
                403,
                one({"RateLimited"}),
                _const("/jwt/item", keyed, (CLIENT_HEADER, "hog")),
                budget="rule",
            ),
            Kind("mtls-valid", 7, 200, one(), _const("/mtls/item"), cert="good"),
            Kind("mtls-untrusted", 3, 403, one({"ClientCertUntrusted"}), _const("/mtls/item"), cert="stranger"),
            Kind("mtls-missing", 2, 401, one({"ClientCertMissing"}), _const("/mtls/item")),
        ]

    def flood(self) -> list[Kind]:
        """The flood of invalid credentials on the side: bad tokens, half from one client the rule blocks (its
        first requests reach the authorizer and fail there), and unknown SigV4 keys."""
        bad = self.tokens["tampered"]
        unknown = tuple((k, v.replace(SIGV4_KEY_ID, "AKIDUNKNOWN000000000")) for k, v in _sigv4_headers(HOST, "/iam/x"))
        rogue = f"flood-{secrets.token_hex(4)}"
        return [
            Kind(
                "flood-keyed",
                1,
                403,
                frozenset({"RateLimited"}),
                _const("/jwt/x", ("authorization", f"Bearer {bad}"), (CLIENT_HEADER, rogue)),
                also=frozenset({(401, "InvalidSignature")}),
            ),
            Kind(
                "flood-token",
                1,
                401,
                frozenset({"InvalidSignature"}),
                _const("/jwt/x", ("authorization", f"Bearer {bad}")),
            ),
            Kind(
                "flood-sigv4", 1, 403, frozenset({"UnrecognizedClient", "SignatureExpired"}), _const("/iam/x", *unknown)
            ),
        ]


def _const(path: str, *headers: tuple[str, str]) -> Callable[[State], tuple[str, Headers]]:
    return lambda state: (path, headers)


def _flip_signature(authorization: str) -> str:
    """An Authorization header whose signature's last hex digit is changed."""
    last = authorization[-1]
    return authorization[:-1] + ("0" if last != "0" else "1")


def schedule(kinds: list[Kind]) -> list[Kind]:
    """The kinds interleaved by weight (smooth weighted round robin): a fixed cycle the driver walks, so every
    stretch of the run sends the whole mix."""
    total = sum(k.weight for k in kinds)
    current = [0] * len(kinds)
    out = []
    for _ in range(total):
        for i, k in enumerate(kinds):
            current[i] += k.weight
        best = max(range(len(kinds)), key=lambda i: current[i])
        current[best] -= total
        out.append(kinds[best])
    return out
