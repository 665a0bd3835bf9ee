"""JWT through a real Envoy: an OIDC-style issuer (keys made with `cryptography`; discovery document and JWKS
served over HTTP on 127.0.0.1) signs RS256, ES256 and EdDSA tokens; the sidecar discovers and fetches the keys
itself, becomes ready only once it has them, and follows a key rotation. Moto's Cognito issues real Cognito tokens."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.e2e.conftest import StackFactory
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, Issuer, ec_key, ed_key, rsa_key
from tests.unit.authorizers.jwt.moto_cognito import REGION, MotoCognito

pytestmark = pytest.mark.e2e


class KeyServer:
    """An OIDC issuer's discovery document and JWKS on 127.0.0.1, served from a thread (the sidecar under test is
    another process). `hits` counts JWKS fetches."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": outer.url, "jwks_uri": f"{outer.url}/jwks.json"}).encode()
                else:
                    outer.hits += 1
                    body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", "max-age=3600")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@contextlib.contextmanager
def serving_keys() -> Iterator[KeyServer]:
    """A started `KeyServer`, shut down at the end."""
    server = KeyServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    with serving_keys() as server:
        yield server


CONFIG = """\
server: {{watch_config: false}}
authorizers:
  corp:
    type: jwt
    issuer: "{issuer}"
    audiences: [{audience}]
    algorithms: [RS256, ES256, EdDSA]
    claim_to_headers: {{sub: x-user, groups: x-groups}}
    jwks_unknown_kid_interval: 0
routes:
  - {{match: "GET /orders/{{id}}", authorizer: corp, scopes: [orders.read]}}
  - {{match: "POST /orders", authorizer: corp, scopes: [orders.admin]}}
"""


def start(authz_stack: StackFactory, server: KeyServer, issuer: Issuer) -> Any:
    server.jwks = issuer.jwks()
    return authz_stack(CONFIG.format(issuer=server.url, audience=AUDIENCE))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("kid", ["rsa", "ec", "ed"])
def test_tokens_from_an_oidc_style_issuer(authz_stack: StackFactory, key_server: KeyServer, kid: str) -> None:
    issuer = Issuer(
        key_server.url, {"rsa": (rsa_key(0), "RS256"), "ec": (ec_key(0), "ES256"), "ed": (ed_key(0), "EdDSA")}
    )
    stack = start(authz_stack, key_server, issuer)
    token = issuer.token(issuer.claims(time.time(), groups=["a", "b"]), kid=kid)
    response = stack.client.get("/orders/7", headers={**bearer(token), "x-user": "spoofed"})
    assert response.status_code == 200, stack.logs()
    seen = response.json()["headers"]
    assert seen["x-user"] == "user-123"
    assert seen["x-groups"] == "a,b"
    assert seen["x-authz-principal"] == "user-123"
    assert seen["x-authz-authorizer"] == "corp"


def test_denials_through_envoy(authz_stack: StackFactory, key_server: KeyServer) -> None:
    issuer = Issuer(key_server.url, {"rsa": (rsa_key(0), "RS256")})
    stack = start(authz_stack, key_server, issuer)
    now = time.time()

    missing = stack.client.get("/orders/7")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["reason"] == "TokenMissing"

    expired = stack.client.get("/orders/7", headers=bearer(issuer.token(issuer.claims(now - 3600))))
    assert expired.status_code == 401
    assert expired.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert expired.json()["reason"] == "TokenExpired"

    scope = stack.client.post("/orders", headers=bearer(issuer.token(issuer.claims(now))))
    assert scope.status_code == 403
    assert scope.json()["reason"] == "InsufficientScope"

    attacker = Issuer(key_server.url, {"rsa": (rsa_key(5), "RS256")})
    forged = stack.client.get("/orders/7", headers=bearer(attacker.token(attacker.claims(now))))
    assert forged.status_code == 401 and forged.json()["reason"] == "InvalidSignature"


def test_key_rotation_through_envoy(authz_stack: StackFactory, key_server: KeyServer) -> None:
    issuer = Issuer(key_server.url, {"old": (rsa_key(0), "RS256")})
    stack = start(authz_stack, key_server, issuer)
    now = time.time()
    assert stack.client.get("/orders/1", headers=bearer(issuer.token(issuer.claims(now)))).status_code == 200
    fetched = key_server.hits
    issuer.keys["new"] = (ec_key(1), "ES256")
    key_server.jwks = issuer.jwks()
    response = stack.client.get("/orders/1", headers=bearer(issuer.token(issuer.claims(now), kid="new")))
    assert response.status_code == 200, stack.logs()
    assert key_server.hits == fetched + 1  # one refetch for the unknown kid


COGNITO = """\
server: {{watch_config: false}}
authorizers:
  pool:
    type: cognito
    region: {region}
    user_pool_id: {pool_id}
    client_ids: [{client_id}]
    token_use: access
    jwks_uri: "{jwks_uri}"
    claim_to_headers: {{username: x-user, "cognito:groups": x-groups}}
routes:
  - {{match: "ANY /{{proxy+}}", authorizer: pool}}
"""


def test_moto_cognito_tokens_through_envoy(authz_stack: StackFactory) -> None:
    moto = MotoCognito().start()
    try:
        pool = moto.pool()
        stack = authz_stack(
            COGNITO.format(region=REGION, pool_id=pool.id, client_id=pool.client_id, jwks_uri=pool.jwks_uri)
        )
        allowed = stack.client.get("/orders", headers=bearer(pool.access_token))
        assert allowed.status_code == 200, stack.logs()
        seen = allowed.json()["headers"]
        assert seen["x-user"] == "alice" and seen["x-groups"] == "admins"
        refused = stack.client.get("/orders", headers=bearer(pool.id_token))
        assert refused.status_code == 401
        assert refused.json()["reason"] == "InvalidTokenUse"
    finally:
        moto.stop()
