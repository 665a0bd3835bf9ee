"""`authz-sidecar demo`: the sidecar, a real Envoy and a small upstream on loopback, a scripted set of requests.

It runs the embedded default config (or the one given), prints what each request got, and leaves no process
behind. Each authorizer adds its scenarios to `SCENARIOS`; a scenario states what it expects, so the demo
doubles as a smoke test (exit 1 when any expectation fails). With its own identity providers (no config given)
Envoy terminates TLS with certificates made at run time (`demo_certs.py`) and asks clients for one, so the table
also shows mutual TLS: a scenario names the client certificate it presents.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import yaml

from ..config import default_config_text
from ..limits.apikeys import digest_of, new_key_value
from .demo_certs import DemoCertificates
from .envoy import DownstreamTls, EnvoyPorts, EnvoyProcess, free_port, render_envoy_config, stop_process, wait_for_http


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers every request with JSON describing what reached the upstream."""

    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        body = self._body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():  # a repeated header shows every value, joined as HTTP would
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        payload = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body_bytes": len(body),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        """The request body, by its length or in chunks: Envoy passes a chunked client body on chunked, and one left
        unread on a keep-alive connection would be parsed as the next request (a 400 and a closed connection,
        which Envoy can answer its next request on with a 502)."""
        if "chunked" not in self.headers.get("transfer-encoding", "").lower():
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""
        parts = []
        while True:
            size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline(16)  # the CRLF after the chunk
        while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):  # trailers, up to the blank line
            pass
        return b"".join(parts)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _echo

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""


class EchoUpstream:
    """A threaded HTTP server on loopback that echoes each request as JSON; a context manager."""

    def __init__(self, port: int = 0) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _EchoHandler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="echo-upstream", daemon=True)

    def __enter__(self) -> EchoUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class SidecarProcess:
    """`authz-sidecar serve` in a child process with the given config text; a context manager."""

    def __init__(
        self,
        config_text: str,
        admin_port: int,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        log_level: str | None = None,
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="authz-sidecar-")
        self.config_path = Path(self._dir.name) / "config.yaml"
        self.config_path.write_text(config_text, encoding="utf-8")
        self.log_path = Path(self._dir.name) / "sidecar.log"
        self.admin_port = admin_port
        self.extra_args = extra_args
        self.env = env
        self.log_level = log_level
        """`--log-level` (e.g. DEBUG, to show that nothing secret is logged even then); None: the command's default."""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> SidecarProcess:
        """Start and wait for /readyz."""
        level = ("--log-level", self.log_level) if self.log_level else ()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", *level, "serve", "--config", str(self.config_path), *self.extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if self.env is None else {**os.environ, **self.env},
            )
        try:
            wait_for_http(f"http://127.0.0.1:{self.admin_port}/readyz", timeout, proc=self.proc)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise RuntimeError(f"sidecar did not become ready:\n{self.log()}") from None
        return self

    def log(self, tail: int | None = 8000) -> str:
        """What the sidecar has printed so far (the last `tail` characters; None: all of it)."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return text if tail is None else text[-tail:]
        return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait (kill after `timeout`); returns the exit code."""
        return stop_process(self.proc, timeout)

    def cleanup(self) -> None:
        """Remove the temporary config and log."""
        self._dir.cleanup()

    def __enter__(self) -> SidecarProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()


def config_with_ports(config_text: str, grpc_port: int, admin_port: int, http_port: int | None = None) -> str:
    """The config text with its listeners moved to the given loopback ports (`http_port`: HTTP mode too)."""
    data = yaml.safe_load(config_text) or {}
    listen = dict(data.get("listen") or {})
    listen.update({"grpc": f"127.0.0.1:{grpc_port}", "admin": f"127.0.0.1:{admin_port}"})
    if http_port is not None:
        listen["http"] = f"127.0.0.1:{http_port}"
        data["http"] = {**(data.get("http") or {}), "path_prefix": "/authz"}  # as the shipped envoy-http.yaml
    data["listen"] = listen
    return yaml.safe_dump(data, sort_keys=False)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One scripted request and what it should get."""

    title: str
    method: str
    path: str
    expect_status: int
    expect_reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sign: Callable[[str, str, bytes], dict[str, str]] | None = None
    """Given (method, url, body), the headers that authenticate the request (SigV4 signs the final URL)."""
    expect_header: str = ""
    """A response header that must come back (e.g. a 429's `retry-after`), shown in the table."""
    client_cert: str = ""
    """The client certificate presented over TLS (`DemoCertificates.CLIENTS`; "": none)."""


SCENARIOS: list[Scenario] = [
    Scenario("anonymous route", "GET", "/public/hello", 200),
    Scenario("anonymous route, POST with a body", "POST", "/public/orders", 200, body=b'{"item": 1}'),
    Scenario("closed route", "GET", "/admin/users", 403, "RouteDeny"),
    Scenario("dot segments cannot dodge a route", "GET", "/public/../admin/users", 403, "RouteDeny"),
    Scenario("unknown route", "GET", "/nothing/here", 403, "MissingAuthenticationToken"),
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one scenario got."""

    scenario: Scenario
    status: int
    reason: str
    principal: str
    headers: dict[str, str] = field(default_factory=dict)
    """The response's headers, names in lower case."""

    @property
    def ok(self) -> bool:
        s = self.scenario
        return (
            self.status == s.expect_status
            and (not s.expect_reason or self.reason == s.expect_reason)
            and (not s.expect_header or s.expect_header in self.headers)
        )

    @property
    def shown_reason(self) -> str:
        """The reason, with the expected header's value when the scenario names one."""
        name = self.scenario.expect_header
        return f"{self.reason}, {name}: {self.headers.get(name, '(none)')}" if name else self.reason


ClientContexts = Callable[[str], ssl.SSLContext]
"""A client certificate's name ("" for none) -> the TLS client context presenting it."""


def send(base: str, scenario: Scenario, contexts: ClientContexts | None = None) -> Outcome:
    """Send one scenario through Envoy (over TLS with `contexts`, presenting the scenario's client certificate)."""
    url = base + scenario.path
    headers = dict(scenario.headers)
    if scenario.sign is not None:
        headers.update(scenario.sign(scenario.method, url, scenario.body))
    request = urllib.request.Request(  # noqa: S310 - loopback URL we built
        url, data=scenario.body or None, method=scenario.method, headers=headers
    )
    try:
        context = contexts(scenario.client_cert) if contexts is not None else None
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            status, body, answered = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, body, answered = exc.code, exc.read(), exc.headers
    reason, principal = "", ""
    with contextlib.suppress(ValueError):
        payload = json.loads(body or b"{}")
        reason = str(payload.get("reason", ""))
        principal = str(payload.get("headers", {}).get("x-authz-principal", "")) if status == 200 else ""
    return Outcome(scenario, status, reason, principal, {k.lower(): v for k, v in answered.items()})


class _JwksHandler(BaseHTTPRequestHandler):
    """Serves the demo issuer's JWKS document."""

    jwks: bytes = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.jwks)))
        self.end_headers()
        self.wfile.write(self.jwks)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""


LAMBDA_AUTHORIZER = {
    "type": "lambda",
    "handler": "sidecar.examples.lambda_authorizer:handler",
    "event_format": "token",
    "timeout": 0.4,  # below the shipped Envoy's 0.5 s ext_authz timeout: a slow handler is our 500, not Envoy's 503
    "context_to_headers": {"stringKey": "x-demo-string-key"},
}
"""A Lambda authorizer written for API Gateway, run in process: the shipped example handler (AWS's style)."""
LAMBDA_SCENARIOS = [
    Scenario("Lambda authorizer (AWS-style handler) allows", "GET", "/pets/7", 200, headers={"authorization": "allow"}),
    Scenario("Lambda authorizer denies", "GET", "/pets/7", 403, "AccessDenied", headers={"authorization": "deny"}),
    Scenario(
        "Lambda authorizer says Unauthorized",
        "GET",
        "/pets/7",
        401,
        "Unauthorized",
        headers={"authorization": "unauthorized"},
    ),
]


API_KEY_PLAN = {"throttle": {"rate": 0.2, "burst": 1}, "quota": {"limit": 1000, "period": "DAY"}}
"""The demo's usage plan: one request back to back, then one every 5 s (the second request is throttled)."""
API_KEY_ROUTE = {"match": "GET /widgets/{id}", "authorizer": "public", "api_key_required": True}
"""An open route that still needs an API key (API Gateway's `apiKeyRequired` on a method with no authorizer)."""


def api_key_scenarios(value: str) -> list[Scenario]:
    """A missing key, a good one, and the same key again at once: over the plan's burst of 1, 429."""
    key = {"x-api-key": value}
    return [
        Scenario("API key route without a key", "GET", "/widgets/1", 403, "InvalidApiKey"),
        Scenario("API key in its usage plan", "GET", "/widgets/1", 200, headers=key),
        Scenario(
            "the same key again: throttled (burst 1)",
            "GET",
            "/widgets/1",
            429,
            "Throttled",
            headers=key,
            expect_header="retry-after",
        ),
    ]


MTLS_ROUTES = [
    {"match": "ANY /b2b/{proxy+}", "authorizer": "partners"},
    {"match": "GET /payments/{id}", "authorizer": "corp", "scopes": ["payments.read"], "require_client_cert": True},
]
"""A route whose callers are their client certificates (`type: mtls`), and a JWT route that needs one too
(API Gateway's mutual TLS in front of any authorizer)."""


def mtls_scenarios(token: str) -> list[Scenario]:
    """A partner's certificate, none, a stranger's; and the JWT route without a certificate, then with both."""
    bearer = {"authorization": f"Bearer {token}"}
    return [
        Scenario("mTLS: a partner's client certificate", "GET", "/b2b/orders", 200, client_cert="partner"),
        Scenario("mTLS: no client certificate", "GET", "/b2b/orders", 401, "ClientCertMissing"),
        Scenario(
            "mTLS: a certificate from an unknown CA",
            "GET",
            "/b2b/orders",
            403,
            "ClientCertUntrusted",
            client_cert="stranger",
        ),
        Scenario("JWT + mTLS: the token alone", "GET", "/payments/7", 401, "ClientCertMissing", headers=bearer),
        Scenario("JWT + mTLS: token and certificate", "GET", "/payments/7", 200, headers=bearer, client_cert="partner"),
    ]


class DemoIdentities:
    """A JWT issuer, a SigV4 credential, an API key and a CA with client certificates for the demo, made fresh on
    every run (nothing secret is shipped)."""

    ACCESS_KEY = "AKIDDEMO00000000"
    AUDIENCE = "demo-api"

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._secret = secrets.token_urlsafe(30)
        self._api_key = new_key_value()
        self._dir = tempfile.TemporaryDirectory(prefix="authz-demo-idp-")
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        handler = type(
            "Handler",
            (_JwksHandler,),
            {"jwks": json.dumps({"keys": [{**jwk, "kid": "demo-1", "alg": "RS256", "use": "sig"}]}).encode()},
        )
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-jwks", daemon=True)
        self.certs = DemoCertificates()

    def __enter__(self) -> DemoIdentities:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._dir.cleanup()
        self.certs.cleanup()

    def config(self, base_text: str) -> str:
        """`base_text` with a `jwt` authorizer, a `sigv4` authorizer, a `lambda` one (`LAMBDA_AUTHORIZER`), an API
        key file with one key in the `demo` usage plan (in-process counters: the demo has no Redis), the `mtls:`
        section trusting the demo CA with a `type: mtls` authorizer, and their routes added."""
        keys = Path(self._dir.name) / "api-keys.yaml"
        key = {"id": "demo-key", "name": "Demo", "sha256": digest_of(self._api_key), "plan": "demo"}
        keys.write_text(yaml.safe_dump([key]), encoding="utf-8")
        credentials = Path(self._dir.name) / "credentials.yaml"
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"}],
        }
        entry = {
            "access_key_id": self.ACCESS_KEY,
            "secret_access_key": self._secret,
            "principal_arn": "arn:aws:iam::000000000000:user/demo-robot",
            "policies": [policy],
        }
        credentials.write_text(yaml.safe_dump({"credentials": [entry]}), encoding="utf-8")
        data = yaml.safe_load(base_text)
        data["authorizers"]["corp"] = {
            "type": "jwt",
            "issuer": self.issuer,
            "audiences": [self.AUDIENCE],
            "algorithms": ["RS256"],
            "jwks_uri": f"{self.issuer}/jwks.json",
        }
        data["authorizers"]["iam"] = {
            "type": "sigv4",
            "service": "execute-api",
            "region": "us-east-1",
            "credentials": {"file": str(credentials)},
        }
        data["authorizers"]["pets"] = LAMBDA_AUTHORIZER
        data["api_keys"] = {"file": str(keys)}
        data["usage_plans"] = {"demo": API_KEY_PLAN}
        data["mtls"] = {"truststore": str(self.certs.truststore), "principal": "san.uri"}
        data["authorizers"]["partners"] = {"type": "mtls"}
        data["routes"] += [
            {"match": "GET /orders/{id}", "authorizer": "corp", "scopes": ["orders.read"]},
            {"match": "ANY /iam/{proxy+}", "authorizer": "iam"},
            {"match": "GET /pets/{id}", "authorizer": "pets"},
            API_KEY_ROUTE,
            *MTLS_ROUTES,
        ]
        return yaml.safe_dump(data, sort_keys=False)

    def token(self, subject: str, scope: str, lifetime: float = 300) -> str:
        """A token from the demo issuer."""
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.AUDIENCE, "sub": subject, "scope": scope, "iat": now}
        claims["exp"] = now + int(lifetime)
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "demo-1"})

    def sigv4(self, secret: str | None = None) -> Callable[[str, str, bytes], dict[str, str]]:
        """A signer for the demo credential (or, with `secret`, for a wrong secret)."""

        def sign(method: str, url: str, body: bytes) -> dict[str, str]:
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials

            request = AWSRequest(method=method, url=url, data=body)
            SigV4Auth(Credentials(self.ACCESS_KEY, secret or self._secret), "execute-api", "us-east-1").add_auth(
                request
            )
            return dict(request.headers.items())

        return sign

    def scenarios(self) -> list[Scenario]:
        """What the JWT, SigV4, Lambda and mTLS authorizers and the API key add to the demo."""
        bearer = "Bearer "
        out = [
            Scenario(
                "JWT with the route's scope",
                "GET",
                "/orders/42",
                200,
                headers={"authorization": bearer + self.token("alice", "orders.read")},
            ),
            Scenario(
                "JWT without the route's scope",
                "GET",
                "/orders/42",
                403,
                "InsufficientScope",
                headers={"authorization": bearer + self.token("bob", "profile")},
            ),
            Scenario(
                "expired JWT",
                "GET",
                "/orders/42",
                401,
                "TokenExpired",
                headers={"authorization": bearer + self.token("carol", "orders.read", lifetime=-600)},
            ),
            Scenario("no token", "GET", "/orders/42", 401, "TokenMissing"),
            *LAMBDA_SCENARIOS,
            *api_key_scenarios(self._api_key),
            *mtls_scenarios(self.token("dave", "payments.read")),
        ]
        try:
            import botocore  # noqa: F401 - the SigV4 scenarios sign with botocore, AWS's own signer
        except ImportError:
            print("(SigV4 scenarios not run: pip install botocore)")
            return out
        return [
            *out,
            Scenario(
                "SigV4-signed request (botocore)", "POST", "/iam/reports", 200, body=b'{"month": 11}', sign=self.sigv4()
            ),
            Scenario(
                "SigV4 with a wrong secret",
                "GET",
                "/iam/reports",
                403,
                "InvalidSignature",
                sign=self.sigv4(secret="not-the-secret"),
            ),
        ]


HTTP_TEMPLATE = "envoy-http.yaml"


@contextlib.contextmanager
def stack(config_text: str, template: str = "envoy.yaml", tls: DownstreamTls | None = None) -> Iterator[str]:
    """Sidecar + upstream + Envoy on free loopback ports; yields Envoy's base URL. With `HTTP_TEMPLATE`, Envoy
    asks the sidecar's HTTP listener instead of its gRPC one; with `tls`, Envoy's listener is the TLS variant."""
    grpc_port, admin_port = free_port(), free_port()
    http_port = free_port() if template == HTTP_TEMPLATE else None
    with (
        SidecarProcess(config_with_ports(config_text, grpc_port, admin_port, http_port), admin_port),
        EchoUpstream() as upstream,
    ):
        ports = EnvoyPorts(
            listen_port=free_port(),
            authz_port=http_port or grpc_port,
            upstream_port=upstream.port,
            admin_port=free_port(),
        )
        with EnvoyProcess(render_envoy_config(ports, template, tls), ports.admin_port):
            yield f"{'https' if tls else 'http'}://127.0.0.1:{ports.listen_port}"


def format_table(outcomes: list[Outcome]) -> str:
    """A plain-text table of the outcomes."""
    rows = [("", "request", "status", "reason", "upstream saw principal", "scenario")]
    for o in outcomes:
        mark = "ok" if o.ok else "FAIL"
        rows.append(
            (
                mark,
                f"{o.scenario.method} {o.scenario.path}",
                str(o.status),
                o.shown_reason,
                o.principal,
                o.scenario.title,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def run_demo(config_text: str | None = None, scenarios: list[Scenario] | None = None, http: bool = False) -> int:
    """Run the demo and print the table; 0 when every scenario got what it expected.

    With no config, the embedded default runs with demo identity providers added beside it: a JWT issuer (RSA
    key made now, JWKS served on 127.0.0.1), a SigV4 credential with an identity policy, a Lambda authorizer
    (the shipped example handler, `sidecar/examples/lambda_authorizer.py`), an API key whose usage plan
    throttles its second request (429 with Retry-After) and a CA whose client certificates `type: mtls` and
    `require_client_cert` verify; Envoy then terminates TLS (the TLS variant of its template). `http`: Envoy
    asks over HTTP (`http_service`, the sidecar's HTTP listener) instead of gRPC; the table is the same.
    """
    transport = "HTTP" if http else "gRPC"
    print(
        f"starting authz-sidecar ({transport} ext_authz), Envoy{' (TLS)' if config_text is None else ''}, an echo"
        " upstream and demo identity providers on 127.0.0.1 ...",
        flush=True,
    )
    with contextlib.ExitStack() as resources:
        tls: DownstreamTls | None = None
        contexts: ClientContexts | None = None
        if config_text is None:
            idp = resources.enter_context(DemoIdentities())
            config_text = idp.config(default_config_text())
            scenarios = scenarios or [*SCENARIOS, *idp.scenarios()]
            tls, contexts = idp.certs.envoy_tls(), idp.certs.client_context
        base = resources.enter_context(stack(config_text, HTTP_TEMPLATE if http else "envoy.yaml", tls))
        outcomes = [send(base, s, contexts) for s in (scenarios or SCENARIOS)]
    print(format_table(outcomes))
    failed = sum(not o.ok for o in outcomes)
    print(f"\n{len(outcomes) - failed} of {len(outcomes)} scenarios as expected; all processes stopped.")
    return 0 if failed == 0 else 1
