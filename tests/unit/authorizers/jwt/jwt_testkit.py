"""Shared pieces for the JWT tests: an OIDC-style issuer made of real `cryptography` keys, a controllable clock,
request builders and a real JWKS HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from sidecar.request import Request

DATA = Path(__file__).resolve().parents[3] / "data" / "jose"
ISSUER = "https://idp.example.test"
AUDIENCE = "orders-api"
NOW = 1_800_000_000.0


class FakeClock:
    """Wall time that only moves when a test says so."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@cache
def rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key(index: int = 0) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def ed_key(index: int = 0) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key, as an issuer publishes it."""
    public = private.public_key()
    if isinstance(private, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk = {k: v for k, v in jwk.items() if k in ("kty", "n", "e", "crv", "x", "y")}
    return {**jwk, "kid": kid, "use": "sig", **extra}


@dataclass
class Issuer:
    """A small OIDC-style issuer: named signing keys and a JWKS of their public halves."""

    url: str = ISSUER
    keys: dict[str, tuple[Any, str]] = field(default_factory=dict)  # kid -> (private key, alg)

    @classmethod
    def default(cls, url: str = ISSUER) -> Issuer:
        return cls(url, {"rsa-1": (rsa_key(0), "RS256"), "ec-1": (ec_key(0), "ES256"), "ed-1": (ed_key(0), "EdDSA")})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(priv, kid, alg=alg) for kid, (priv, alg) in self.keys.items()]}

    def claims(self, now: float = NOW, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "iss": self.url,
            "sub": "user-123",
            "aud": AUDIENCE,
            "iat": int(now) - 10,
            "exp": int(now) + 300,
            "scope": "orders.read orders.write",
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def token(
        self, claims: dict[str, Any] | None = None, kid: str | None = None, alg: str | None = None, **headers: Any
    ) -> str:
        kid = kid or next(iter(self.keys))
        private, key_alg = self.keys[kid]
        return pyjwt.encode(
            claims if claims is not None else self.claims(),
            private,
            algorithm=alg or key_alg,
            headers={"kid": kid, **headers},
        )


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand (for headers no honest signer would write)."""
    return f"{b64(json.dumps(header))}.{b64(json.dumps(claims))}.{b64(signature)}"


def request(token: str | None = None, *, headers: dict[str, str] | None = None, path: str = "/orders/1") -> Request:
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    return Request(method="GET", raw_path=path, path=path.partition("?")[0], headers=all_headers, host="api.test")


@dataclass
class JwksBehaviour:
    """What the test JWKS server does on its next responses."""

    body: bytes = b'{"keys": []}'
    status: int = 200
    cache_control: str | None = "max-age=600"
    delay: float = 0.0
    """Seconds to wait before sending the body (per chunk when `drip` is set)."""
    drip: int = 0
    """Send the body in this many pieces, `delay` apart (a slow-drip response)."""
    declare_length: bool = True
    extra_bytes: int = 0
    """Pad the body beyond its JSON with this many spaces (an oversized response)."""


class JwksServer:
    """A real HTTP/1.1 server on 127.0.0.1 serving a JWKS (and an OIDC discovery document) as told."""

    def __init__(self) -> None:
        self.behaviour = JwksBehaviour()
        self.requests: list[str] = []
        self.discovery: dict[str, Any] | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.base}/jwks.json"

    def serve(self, jwks: dict[str, Any], **changes: Any) -> None:
        self.behaviour = JwksBehaviour(body=json.dumps(jwks).encode(), **changes)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            path = line.split(" ")[1] if " " in line else "/"
            self.requests.append(path)
            if path.endswith("/.well-known/openid-configuration") and self.discovery is not None:
                await self._send(writer, JwksBehaviour(body=json.dumps(self.discovery).encode()))
            else:
                await self._send(writer, self.behaviour)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, b: JwksBehaviour) -> None:
        body = b.body + b" " * b.extra_bytes
        head = [f"HTTP/1.1 {b.status} X", "Content-Type: application/json", "Connection: close"]
        if b.cache_control:
            head.append(f"Cache-Control: {b.cache_control}")
        if b.declare_length:
            head.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if b.drip:
            step = max(1, len(body) // b.drip)
            for start in range(0, len(body), step):
                await asyncio.sleep(b.delay)
                writer.write(body[start : start + step])
                await writer.drain()
        else:
            if b.delay:
                await asyncio.sleep(b.delay)
            writer.write(body)
        await writer.drain()


@contextlib.asynccontextmanager
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
