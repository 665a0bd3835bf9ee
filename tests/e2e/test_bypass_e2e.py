"""The adversarial review's wrong allows, through the real proxies: a real Envoy rendered from our templates (gRPC
and HTTP mode, normalization on as shipped and off as docs/sigv4.md allows for S3), Debian's nginx running
deploy/nginx/nginx-authz.conf, and the echo upstream. Each test names the finding of issue #17 it holds closed
(docs/security.md lists them).

Requests are written on a raw socket: HTTP clients normalize dot segments and fragments before sending, which
is exactly what an attacker does not do.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.test_proxies_e2e import NginxStackFactory, nginx_stack  # noqa: F401 - the fixture
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, Issuer, rsa_key

pytestmark = pytest.mark.e2e

PATH_CONFIG = """\
server: {watch_config: false}
authorizers:
  open: {type: none}
  closed: {type: deny}
routes:
  - {match: "ANY /admin/{proxy+}", authorizer: closed}
  - {match: "ANY /public/{proxy+}", authorizer: open}
  - {match: "DELETE /items/{id}", authorizer: closed}
  - {match: "ANY /items/{id}", authorizer: open}
  - {match: "ANY /users/public/{proxy+}", authorizer: open}
  - {match: "GET /users/{id}/profile", authorizer: closed}
"""

# Finding 1: each of these is served by the upstream's /admin handler when the proxy does not normalize.
BYPASS_PATHS = [
    "/admin/secret/../../public/x",
    "/admin/secret#/../../public/x",
    "/admin/secret%23/../../public/x",
    "/public/..;/admin/x",
    "/public/x/%2e%2e/%2e%2e/admin/x",
    "/public//../admin/x",
]


def raw_request(port: int, target: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One HTTP/1.1 request written byte for byte; the status and the JSON body (empty when there is none)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        parsed = json.loads(body) if body.strip() else {}
    except ValueError:
        parsed = {"raw": body.decode("latin-1")}
    return status, parsed


def without_normalization(text: str) -> str:
    """The shipped Envoy file with path normalization off (what docs/sigv4.md allows for S3-style keys)."""
    for key in ("normalize_path", "merge_slashes"):
        assert f"{key}: true" in text
        text = text.replace(f"{key}: true", f"{key}: false")
    return text


def port_of(stack: Stack) -> int:
    return stack.ports.listen_port


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-http.yaml"])
def test_envoy_without_normalization_never_serves_a_path_we_did_not_judge(
    authz_stack: StackFactory, template: str
) -> None:
    stack = authz_stack(PATH_CONFIG, template=template, envoy_edit=without_normalization)
    for path in BYPASS_PATHS:
        status, body = raw_request(port_of(stack), path)
        if status != 400:
            print(stack.logs())
        assert status == 400, (path, status, body)
        assert body.get("reason", "MalformedRequest") == "MalformedRequest", (path, body)
    status, body = raw_request(port_of(stack), "/public/x")
    assert status == 200 and body["path"] == "/public/x"


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-http.yaml"])
def test_shipped_envoy_judges_the_path_it_forwards(shared_authz_stack: StackFactory, template: str) -> None:
    stack = shared_authz_stack(PATH_CONFIG, template=template)
    for path in BYPASS_PATHS:
        status, body = raw_request(port_of(stack), path)
        # Envoy normalizes first: whatever it lets through, the upstream serves the very path we judged.
        if status == 200:
            assert body["path"].startswith("/public/"), (path, body)
        else:
            assert status in (400, 403, 404), (path, status, body)


def test_nginx_never_serves_a_path_we_did_not_judge(nginx_stack: NginxStackFactory) -> None:  # noqa: F811
    stack = nginx_stack(PATH_CONFIG)
    port = int(stack.base_url.rsplit(":", 1)[1])
    for path in BYPASS_PATHS:
        before = len(stack.sidecar.seen)
        status, body = raw_request(port, path)
        # nginx relays only 401/403 from auth_request; our 400 reaches the client as nginx's 500.
        assert status in (400, 500), (path, status, body, stack.proxy.log())
        if len(stack.sidecar.seen) > before:
            assert stack.sidecar.seen[-1].raw_path == path  # judged on exactly what the upstream would get
    status, body = raw_request(port, "/public/x")
    assert status == 200 and body["path"] == "/public/x"


def nghttp_status(port: int, path: str, method: str) -> tuple[int, str]:
    """A request over HTTP/2 (h2c, prior knowledge) with a pseudo-header method no HTTP/1 client can send."""
    result = subprocess.run(
        ["nghttp", "-v", "-H", f":method: {method}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    for line in result.stdout.splitlines():
        if ":status:" in line:
            return int(line.rsplit(":status:", 1)[1].strip()), result.stdout
    raise AssertionError(f"no :status in nghttp's output:\n{result.stdout}\n{result.stderr}")


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-http.yaml"])
def test_lower_case_method_over_http2_is_refused(shared_authz_stack: StackFactory, template: str) -> None:
    """Finding 3: `delete` must not dodge the closed `DELETE /items/{id}` by landing on the open `ANY` route."""
    stack = shared_authz_stack(PATH_CONFIG, template=template)
    status, output = nghttp_status(port_of(stack), "/items/1", "delete")
    assert status == 400, output
    upper, output = nghttp_status(port_of(stack), "/items/1", "DELETE")
    assert upper == 403, output
    ok, output = nghttp_status(port_of(stack), "/items/1", "GET")
    assert ok == 200, output


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-http.yaml"])
def test_full_match_beats_a_greedy_route(shared_authz_stack: StackFactory, template: str) -> None:
    """Finding 6: `GET /users/public/profile` is the closed full match, not the open `{proxy+}` route."""
    stack = shared_authz_stack(PATH_CONFIG, template=template)
    status, body = raw_request(port_of(stack), "/users/public/profile")
    assert status == 403, body
    status, body = raw_request(port_of(stack), "/users/public/other")
    assert status == 200, body


IDENTITY_CONFIG = """\
api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
server: {{watch_config: false}}
upstream_headers: {{route: x-authz-route}}
authorizers:
  open: {{type: none}}
  corp:
    type: jwt
    issuer: "{issuer}"
    audiences: [{audience}]
    algorithms: [RS256]
    jwks_file: {jwks}
    claim_to_headers: {{sub: x-user-id, email: x-user-email}}
  iam:
    type: sigv4
    credentials: {{file: {credentials}}}
    upstream_headers: {{principal_arn: x-principal-arn}}
routes:
  - {{match: "GET /me", authorizer: corp}}
  - {{match: "ANY /iam/{{proxy+}}", authorizer: iam}}
  - {{match: "$default", authorizer: open}}
"""

FORGED = {
    "x-user-id": "admin",
    "x-user-email": "root@example.com",
    "x-principal-arn": "arn:aws:iam::123456789012:root",
    "x-authz-principal": "admin",
    "x-authz-route": "forged",
}


def identity_config(tmp_path: Path) -> tuple[str, Issuer]:
    issuer = Issuer("https://idp.example.test", {"rsa": (rsa_key(0), "RS256")})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    credentials = tmp_path / "credentials.yaml"
    credentials.write_text("credentials: []\n")
    text = IDENTITY_CONFIG.format(issuer=issuer.url, audience=AUDIENCE, jwks=jwks, credentials=credentials)
    return text, issuer


def assert_no_forged_identity(upstream_headers: dict[str, str], allowed: dict[str, str]) -> None:
    for name, forged in FORGED.items():
        seen = upstream_headers.get(name)
        assert seen != forged, f"the client's {name} reached the upstream"
        if name in allowed:
            assert seen == allowed[name], (name, seen)


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-http.yaml"])
def test_identity_headers_of_other_authorizers_never_pass(
    authz_stack: StackFactory, tmp_path: Path, template: str
) -> None:
    """Finding 2: on the anonymous catch-all and on a JWT route, no identity header comes from the client."""
    text, issuer = identity_config(tmp_path)
    stack = authz_stack(text, template=template)
    anonymous = stack.client.get("/anything", headers=FORGED)
    assert anonymous.status_code == 200, stack.logs()
    assert_no_forged_identity(anonymous.json()["headers"], {"x-authz-route": "$default"})
    token = issuer.token(issuer.claims(time.time()))  # has `sub`, no `email`
    me = stack.client.get("/me", headers={**FORGED, "authorization": f"Bearer {token}"})
    assert me.status_code == 200, stack.logs()
    assert_no_forged_identity(me.json()["headers"], {"x-user-id": "user-123", "x-authz-route": "GET /me"})


def test_identity_headers_behind_nginx(
    nginx_stack: NginxStackFactory,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 2 behind the shipped nginx file, with one pair per identity header as its comment asks: on every
    route the client's copies are overwritten or removed."""
    import tests.e2e.test_proxies_e2e as proxies

    shipped = proxies.render_nginx
    anchor = "proxy_set_header X-Authz-Route $authz_route;"

    def with_pairs(*args: object) -> str:
        text = shipped(*args)  # type: ignore[arg-type]
        assert text.count(anchor) == 1
        pairs = "".join(
            f"\n            auth_request_set ${v} $upstream_http_{v};\n            proxy_set_header {n} ${v};"
            for n, v in (("X-User-Id", "x_user_id"), ("X-User-Email", "x_user_email"), ("X-Principal-Arn", "x_arn"))
        )
        return text.replace(anchor, anchor + pairs.replace("$upstream_http_x_arn", "$upstream_http_x_principal_arn"))

    monkeypatch.setattr(proxies, "render_nginx", with_pairs)
    text, issuer = identity_config(tmp_path)
    stack = nginx_stack(text)
    anonymous = stack.client().get("/anything", headers=FORGED)
    assert anonymous.status_code == 200, stack.proxy.log()
    assert_no_forged_identity(anonymous.json()["headers"], {"x-authz-authorizer": "open", "x-authz-route": "$default"})
    token = issuer.token(issuer.claims(time.time()))
    me = stack.client().get("/me", headers={**FORGED, "authorization": f"Bearer {token}"})
    assert me.status_code == 200, stack.proxy.log()
    assert_no_forged_identity(me.json()["headers"], {"x-user-id": "user-123", "x-authz-route": "GET /me"})


def test_nginx_never_lets_a_body_ride_on_a_signature_over_none(
    nginx_stack: NginxStackFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Review finding D: nginx never sends the body to auth_request, so a signature over an empty body was
    accepted with any body. The shipped config now passes the body's length, and SigV4 refuses (PartialBody)."""
    from tests.e2e.test_http_mode_e2e import sigv4_config, sigv4_request

    stack = nginx_stack(sigv4_config(tmp_path))
    client = stack.client()
    signed = sigv4_request(client, stack.base_url, "DELETE", "/orders/7", b"", {})
    assert client.send(signed).status_code == 200, stack.proxy.log()  # the honest, bodyless request
    for forged in ({}, {"x-envoy-auth-partial-body": "false"}):
        headers = {k: v for k, v in signed.headers.items() if k.lower() != "content-length"} | forged
        riding = client.build_request("DELETE", "/orders/7", headers=headers, content=b'{"cascade": true}')
        response = client.send(riding)
        assert response.status_code != 200, forged
        assert stack.sidecar.seen[-1].headers.get("x-envoy-auth-partial-body") == "true"


def secure_config(tmp_path: Path) -> str:
    arn = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"
    statements = [
        {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{arn}/*"},
        {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "execute-api:Invoke",
            "Resource": f"{arn}/*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
    ]
    policy = tmp_path / "resource.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": statements}))
    issuer = Issuer("https://idp.example.test", {"rsa": (rsa_key(0), "RS256")})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    return SECURE_CONFIG.format(policy=policy, issuer=issuer.url, audience=AUDIENCE, jwks=jwks)


def test_a_client_cannot_claim_https_with_its_own_scheme(authz_stack: StackFactory, tmp_path: Path) -> None:
    """Review finding A: over h2c, `:scheme: https` from the client reached `aws:SecureTransport`."""
    stack = authz_stack(secure_config(tmp_path))
    for scheme in ("https", "http"):
        result = subprocess.run(
            ["nghttp", "-v", "-H", f":scheme: {scheme}", f"http://127.0.0.1:{port_of(stack)}/anything"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert ":status: 403" in result.stdout, (scheme, result.stdout[-2000:])


OPEN_CONFIG = """\
server: {{watch_config: false}}
authorizers:
  open: {{type: none}}
  corp:
    type: jwt
    issuer: "{issuer}"
    audiences: [{audience}]
    algorithms: [RS256]
    jwks_file: {jwks}
routes:
  - {{match: "GET /reports/{{id}}", authorizer: corp}}
  - {{match: "ANY /admin/{{proxy+}}", authorizer: corp}}
  - {{match: "$default", authorizer: open}}
"""
SECURE_CONFIG = (
    'api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}\n'
    "resource_policy: {policy}\n" + OPEN_CONFIG
)


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-http.yaml"])
def test_head_and_a_trailing_slash_reach_no_handler_their_route_would_not(
    authz_stack: StackFactory, tmp_path: Path, template: str
) -> None:
    """Review findings B and C: `/admin/` (Flask's admin index) fell out of `ANY /admin/{proxy+}` onto the open
    `$default`, and HEAD (served by the GET handler) skipped the protected `GET /reports/{id}`."""
    issuer = Issuer("https://idp.example.test", {"rsa": (rsa_key(0), "RS256")})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    stack = authz_stack(OPEN_CONFIG.format(issuer=issuer.url, audience=AUDIENCE, jwks=jwks), template=template)
    assert raw_request(port_of(stack), "/admin/")[0] == 401
    assert raw_request(port_of(stack), "/reports/42", method="HEAD")[0] == 401
    assert raw_request(port_of(stack), "/elsewhere/")[0] == 200
    token = issuer.token(issuer.claims(time.time()))
    status, _ = raw_request(port_of(stack), "/reports/42", method="HEAD", headers={"authorization": f"Bearer {token}"})
    assert status == 200
