"""HTTP mode behind a real nginx (Debian's, `auth_request`) running the shipped deploy/nginx/nginx-authz.conf.

The sidecar is the real HTTP listener with `http.flavor: nginx` and the real pipeline, in a thread of the test
process (as in test_http_mode_e2e.py) so each test also sees the `Request` the adapter built from what nginx sent.
Usage plans and WAF rules count in process here: their refusals (429, a rule's own status) reach the client
through the config's `@authz_denied` with Retry-After and the RateLimit headers.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sidecar.harness.demo import EchoUpstream
from sidecar.harness.envoy import free_port, stop_process, wait_for_http
from sidecar.settings import HttpModeSettings
from tests.conftest import REPO
from tests.e2e.limits_testkit import KEY_HEADER, KeyFile, limits_config
from tests.e2e.test_http_mode_e2e import (
    JWT_CONFIG,
    POLICY_CONFIG,
    HttpStack,
    ThreadedSidecar,
    ip_deny_policy,
    sigv4_config,
    sigv4_request,
)
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, Issuer, rsa_key

pytestmark = pytest.mark.e2e

SHIPPED_NGINX = REPO / "deploy" / "nginx" / "nginx-authz.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    assert found, "nginx is required (scripts/ensure-system-deps.sh installs Debian's nginx-light)"
    return found


def render_nginx(listen: int, authz: int, upstream: int, work: Path) -> str:
    """The shipped config on loopback ports, with its pid, logs and temp files kept in `work`."""
    text = SHIPPED_NGINX.read_text(encoding="utf-8")
    replacements = {
        "listen 0.0.0.0:10000;": f"listen 127.0.0.1:{listen};",
        "server 127.0.0.1:9192;": f"server 127.0.0.1:{authz};",
        "proxy_pass http://127.0.0.1:8080;": f"proxy_pass http://127.0.0.1:{upstream};",
        "worker_processes 1;": f"worker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log info;",
        "access_log off;": (
            "access_log off;\n"
            + "".join(f"    {kind}_temp_path {work}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi"))
            + "".join(f"    {kind}_temp_path {work}/{kind};\n" for kind in ("uwsgi", "scgi"))
        ),
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"shipped nginx config changed shape: {old!r}"
        text = text.replace(old, new)
    return text


class NginxProcess:
    """nginx in the foreground (`daemon off`) with a rendered config; stopped (and reaped) on exit."""

    def __init__(self, config: str, work: Path, port: int) -> None:
        self.work = work
        self.port = port
        self.config_path = work / "nginx.conf"
        self.config_path.write_text(config, encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self, *extra: str) -> list[str]:
        return [nginx_binary(), "-p", str(self.work), "-c", str(self.config_path), "-e", "stderr", *extra]

    def start(self) -> NginxProcess:
        with open(self.work / "stderr.log", "wb") as log:
            self.proc = subprocess.Popen(self.args("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT)
        # /_authz is `internal`: nginx answers 404 itself, without asking the sidecar, once it listens.
        wait_for_http(f"http://127.0.0.1:{self.port}/_authz", 15, ok=(404,), proc=self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        parts = [p.read_text(errors="replace")[-4000:] for p in (self.work / "stderr.log", self.work / "error.log")]
        return "\n".join(p for p in parts)


NginxStackFactory = Callable[[str], HttpStack]


def nginx_of(stack: HttpStack) -> NginxProcess:
    assert isinstance(stack.proxy, NginxProcess)
    return stack.proxy


@pytest.fixture
def nginx_stack(tmp_path: Path) -> Iterator[NginxStackFactory]:
    stacks: list[tuple[HttpStack, EchoUpstream]] = []

    def start(config_text: str) -> HttpStack:
        sidecar = ThreadedSidecar(config_text, tmp_path, HttpModeSettings(flavor="nginx")).__enter__()
        upstream = EchoUpstream().__enter__()
        work = tmp_path / f"nginx-{len(stacks)}"
        work.mkdir()
        listen = free_port()
        nginx = NginxProcess(render_nginx(listen, sidecar.port, upstream.port, work), work, listen)
        stack = HttpStack(sidecar, nginx, f"http://127.0.0.1:{listen}")
        stacks.append((stack, upstream))
        nginx.start()
        return stack

    yield start
    for stack, upstream in reversed(stacks):
        for client in stack.clients:
            client.close()
        nginx_of(stack).stop()
        upstream.__exit__(None, None, None)
        stack.sidecar.__exit__(None, None, None)


def test_shipped_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = NginxProcess(render_nginx(free_port(), free_port(), free_port(), tmp_path), tmp_path, 0)
    result = subprocess.run(nginx.args("-t"), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def jwt_nginx_stack(nginx_stack: NginxStackFactory, tmp_path: Path) -> tuple[HttpStack, Issuer]:
    issuer = Issuer("https://idp.example.test", {"rsa": (rsa_key(0), "RS256")})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    return nginx_stack(JWT_CONFIG.format(issuer=issuer.url, audience=AUDIENCE, jwks=jwks)), issuer


def test_nginx_jwt_allow_passes_the_identity_upstream(nginx_stack: NginxStackFactory, tmp_path: Path) -> None:
    stack, issuer = jwt_nginx_stack(nginx_stack, tmp_path)
    token = issuer.token(issuer.claims(time.time()))
    response = stack.client().get(
        "/orders/7?expand=items",
        headers={"authorization": f"Bearer {token}", "x-authz-principal": "spoofed", "x-original-uri": "/x"},
    )
    assert response.status_code == 200, stack.proxy.log()
    upstream = response.json()
    assert upstream["path"] == "/orders/7?expand=items"
    assert upstream["headers"]["x-authz-principal"] == "user-123"  # nginx replaced the client's copy
    assert upstream["headers"]["x-authz-authorizer"] == "corp"
    request = stack.sidecar.seen[-1]
    assert (request.method, request.raw_path, request.path) == ("GET", "/orders/7?expand=items", "/orders/7")
    assert request.host == stack.base_url.removeprefix("http://")  # $http_host: the port survives
    assert request.source_address == "127.0.0.1"
    assert request.body == b""  # auth_request never carries the body


def test_nginx_relays_denial_statuses_and_the_challenge(nginx_stack: NginxStackFactory, tmp_path: Path) -> None:
    stack, issuer = jwt_nginx_stack(nginx_stack, tmp_path)
    client = stack.client()
    missing = client.get("/orders/7")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"  # nginx copies it from a 401 subrequest
    token = issuer.token(issuer.claims(time.time()))
    scope = client.post("/orders", headers={"authorization": f"Bearer {token}"}, content=b'{"item": 1}')
    assert scope.status_code == 403
    assert stack.sidecar.seen[-1].method == "POST"  # from X-Original-Method; nginx asks with GET
    # A client cannot choose the URI that is judged: nginx overwrites X-Original-URI with the real one.
    forged = client.post("/orders", headers={"authorization": f"Bearer {token}", "x-original-uri": "/orders/7"})
    assert forged.status_code == 403
    assert stack.sidecar.seen[-1].raw_path == "/orders"


def test_nginx_forwards_the_client_address_for_ip_policies(nginx_stack: NginxStackFactory, tmp_path: Path) -> None:
    policy = ip_deny_policy(tmp_path, "127.0.0.2/32")
    stack = nginx_stack(POLICY_CONFIG.format(policy=policy))
    assert stack.client("127.0.0.1").get("/items/1").status_code == 200, stack.proxy.log()
    blocked = stack.client("127.0.0.2")
    forged = blocked.get("/items/1", headers={"x-authz-source-address": "127.0.0.1"})
    assert forged.status_code == 403
    assert stack.sidecar.seen[-1].source_address == "127.0.0.2"


def test_nginx_sigv4_without_a_body(nginx_stack: NginxStackFactory, tmp_path: Path) -> None:
    stack = nginx_stack(sigv4_config(tmp_path))
    client = stack.client()
    headers = {"x-tenant": "acme"}
    ok = client.send(sigv4_request(client, stack.base_url, "GET", "/orders/7?b=2&a=1", b"", headers))
    assert ok.status_code == 200, stack.proxy.log()
    assert ok.json()["headers"]["x-authz-principal"] == "arn:aws:iam::123456789012:user/alice"
    tampered = sigv4_request(client, stack.base_url, "GET", "/orders/7?b=2&a=1", b"", headers)
    tampered.headers["x-tenant"] = "evil"
    assert client.send(tampered).status_code == 403


OPEN = {"open": {"type": "none"}}
PLANS = {
    "gold": {"throttle": {"rate": 0.1, "burst": 2}},  # a token every 10 s: nothing refills during a test's burst
    "bronze": {"quota": {"limit": 1, "period": "DAY"}},
}
WAF_RULES = [
    {"name": "per-ip", "key": ["ip"], "window": 60, "limit": 10, "routes": ["ANY /ip/{proxy+}"]},
    {"name": "calm", "key": ["ip"], "window": 60, "limit": 10, "status": 429, "routes": ["ANY /calm/{proxy+}"]},
    {"name": "teapot", "key": ["ip"], "window": 60, "limit": 10, "status": 418, "routes": ["ANY /tea/{proxy+}"]},
]


def limits_nginx_stack(nginx_stack: NginxStackFactory, tmp_path: Path) -> tuple[HttpStack, KeyFile]:
    """nginx in front of a config with an API key route metered by usage plans and WAF rules, counted in process."""
    keys = KeyFile.write(tmp_path / "api-keys.yaml", [("k-gold", "gold", True), ("k-bronze", "bronze", True)])
    routes: list[dict[str, object]] = [{"match": "ANY /pets/{proxy+}", "authorizer": "open", "api_key_required": True}]
    routes += [{"match": f"ANY /{name}/{{proxy+}}", "authorizer": "open"} for name in ("ip", "calm", "tea")]
    text = limits_config(keys, None, authorizers=OPEN, usage_plans=PLANS, rate_limits=WAF_RULES, routes=routes)
    return nginx_stack(text), keys


def assert_refusal_headers(response: httpx.Response, policy: str) -> None:
    """Retry-After and the RateLimit headers of a refusal under the RateLimit-Policy `policy`, as the client sees
    them (their exact figures are the limits e2e tests' business; here: that nginx lets them through)."""
    assert int(response.headers["retry-after"]) >= 1, response.headers
    assert response.headers["ratelimit-policy"] == policy
    assert re.fullmatch(r'"[a-z-]+";r=0;t=\d+', response.headers["ratelimit"]), response.headers
    assert response.headers["ratelimit"].startswith(policy.partition(";")[0])
    assert "x-authz-status" not in response.headers  # the sidecar's note to nginx stays between them


def test_nginx_answers_a_throttled_api_key_429_with_retry_after_and_ratelimit(
    nginx_stack: NginxStackFactory, tmp_path: Path
) -> None:
    stack, keys = limits_nginx_stack(nginx_stack, tmp_path)
    client = stack.client()
    unknown = client.get("/pets/1", headers={KEY_HEADER: "not-a-key"})
    assert unknown.status_code == 403, stack.proxy.log()
    assert "retry-after" not in unknown.headers and "ratelimit" not in unknown.headers  # empty: never sent
    began = time.monotonic()
    for _ in range(2):
        allowed = client.get("/pets/1", headers=keys.header("k-gold"))
        assert allowed.status_code == 200, stack.proxy.log()
    throttled = client.get("/pets/1", headers=keys.header("k-gold"))
    elapsed = time.monotonic() - began
    assert throttled.status_code == 429, stack.proxy.log()  # not nginx's 500: the flavor sent 403 + x-authz-status
    # GCRA at 0.1/s, burst 2: the third request is one interval (10 s) short of a token, the bucket 20 s from full.
    assert math.ceil(10 - elapsed) <= int(throttled.headers["retry-after"]) <= 10
    assert_refusal_headers(throttled, '"throttle";q=2;w=20')
    assert client.get("/pets/1", headers=keys.header("k-bronze")).status_code == 200
    spent = client.get("/pets/1", headers=keys.header("k-bronze"))
    assert spent.status_code == 429
    assert_refusal_headers(spent, '"quota";q=1;w=86400')


def test_nginx_answers_waf_blocks_403_a_rule_status_429_as_it_is_and_others_403(
    nginx_stack: NginxStackFactory, tmp_path: Path
) -> None:
    stack, _ = limits_nginx_stack(nginx_stack, tmp_path)
    client = stack.client()
    ambiguous = client.get("/ip/a%2Fb")  # an encoded separator: MalformedRequest, 400 (nginx's 500 before)
    assert ambiguous.status_code == 400, stack.proxy.log()
    assert stack.sidecar.seen[-1].raw_path == "/ip/a%2Fb"
    for prefix, refused in (("ip", 403), ("calm", 429), ("tea", 403)):  # a rule's 418 has no `if`: 403
        statuses = [client.get(f"/{prefix}/{i}").status_code for i in range(11)]
        assert statuses == [200] * 10 + [refused], (prefix, stack.proxy.log())
        blocked = client.get(f"/{prefix}/again")
        assert blocked.status_code == refused
        name = {"ip": "per-ip", "calm": "calm", "tea": "teapot"}[prefix]
        assert_refusal_headers(blocked, f'"{name}";q=10;w=60')
