"""Security finding 12 through a real Envoy, in gRPC mode and in HTTP mode: issuer-signed tokens whose claims the
sidecar cannot pass on as they are get a 401 `InvalidClaim` deny with the reason in the JSON body, where they were
a 503 (Envoy refusing the `x-authz-principal` value: CR/LF/NUL in `sub`) or a 500 (a Cognito `token_use` list).
Keys are real (`cryptography`, and `joserfc` for an RFC 9864 `Ed25519` token), served over HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt as josejwt
from joserfc.jwk import OKPKey

from tests.e2e.conftest import StackFactory
from tests.e2e.test_jwt_e2e import KeyServer, bearer
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, Issuer, rsa_key

pytestmark = pytest.mark.e2e

POOL_ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Abc123"
CLIENT = "app-client-1"

CONFIG = """\
server: {{watch_config: false}}
authorizers:
  corp:
    type: jwt
    issuer: "{issuer}"
    audiences: [{audience}]
    claim_to_headers: {{name: x-name}}
  pool:
    type: cognito
    region: us-east-1
    user_pool_id: us-east-1_Abc123
    client_ids: [{client}]
    jwks_uri: "{issuer}/jwks.json"
routes:
  - {{match: "GET /orders/{{id}}", authorizer: corp}}
  - {{match: "GET /pool", authorizer: pool}}
"""


@pytest.fixture
def issuer_keys() -> Iterator[KeyServer]:
    server = KeyServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def cognito_claims(now: float, **overrides: Any) -> dict[str, Any]:
    return {
        "iss": POOL_ISSUER,
        "sub": "5f1c-uuid",
        "token_use": "access",
        "client_id": CLIENT,
        "username": "alice",
        "iat": int(now) - 5,
        "exp": int(now) + 300,
        **overrides,
    }


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-http.yaml"], ids=["grpc", "http"])
def test_odd_claims_are_a_401_invalid_claim_not_a_503_or_500(
    authz_stack: StackFactory, issuer_keys: KeyServer, template: str
) -> None:
    ed = OKPKey.generate_key("Ed25519")
    corp = Issuer(issuer_keys.url, {"rsa": (rsa_key(0), "RS256")})
    pool = Issuer(POOL_ISSUER, corp.keys)
    issuer_keys.jwks = {"keys": [*corp.jwks()["keys"], {**ed.as_dict(private=False), "kid": "ed", "use": "sig"}]}
    stack = authz_stack(CONFIG.format(issuer=issuer_keys.url, audience=AUDIENCE, client=CLIENT), template=template)
    now = time.time()

    refused = {
        "sub with CR/LF": ("/orders/1", corp.token(corp.claims(now, sub="alice\r\nx-admin: 1"))),
        "sub with NUL": ("/orders/1", corp.token(corp.claims(now, sub="alice\x00"))),
        "sub with a trailing space": ("/orders/1", corp.token(corp.claims(now, sub="alice "))),
        "claim_to_headers value with LF": ("/orders/1", corp.token(corp.claims(now, name="Bob\nx-admin: 1"))),
        "cognito token_use a list": ("/pool", pool.token(cognito_claims(now, token_use=["access"]))),
        "cognito username an object": ("/pool", pool.token(cognito_claims(now, username={"a": 1}))),
    }
    for title, (path, token) in refused.items():
        response = stack.client.get(path, headers=bearer(token))
        assert response.status_code == 401, (title, response.status_code, response.text, stack.logs())
        assert response.json()["reason"] == "InvalidClaim", title
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', title

    # the lines drawn are not wider than they must be: other text passes unchanged (UTF-8 bytes, which the echo
    # upstream reads as latin-1), and the same routes allow their ordinary tokens
    allowed = stack.client.get("/orders/1", headers=bearer(corp.token(corp.claims(now, sub="José", name="Zoë"))))
    assert allowed.status_code == 200, stack.logs()
    seen = allowed.json()["headers"]
    assert seen["x-authz-principal"] == "José".encode().decode("latin-1")
    assert seen["x-name"] == "Zoë".encode().decode("latin-1")
    assert stack.client.get("/pool", headers=bearer(pool.token(cognito_claims(now)))).status_code == 200

    # RFC 9864: an Ed25519 token from joserfc, accepted under the default algorithms
    token = josejwt.encode({"alg": "Ed25519", "kid": "ed"}, corp.claims(now, sub="ed-user"), ed, algorithms=["Ed25519"])
    ed_allowed = stack.client.get("/orders/1", headers=bearer(token))
    assert ed_allowed.status_code == 200, stack.logs()
    assert ed_allowed.json()["headers"]["x-authz-principal"] == "ed-user"
