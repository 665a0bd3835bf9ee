"""The protected world several fuzzers attack: a runtime compiled from a config file as in production, started on the
run's one loop, and the credentials minted for it (real keys; tokens and SigV4 signatures made at start).

Routes: `/open/` (no authorizer, but a resource policy that denies `/open/private/` outside loopback), `/jwt/`
(JWT from a JWKS file, scope `orders.read`), `/iam/` (SigV4 from a credential file, a skew of an hour so a signature
made at start stays valid for a long run). `genuine_jwt` and `genuine_sigv4` are the oracles' differential half:
whether a request carries exactly a credential this run minted.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.request import Decision, Request
from sidecar.runtime import RuntimeHolder, compile_runtime
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, ISSUER, Issuer

from .harness import Loop, known_reasons

AKID = "AKIDFUZZEXAMPLE"
SECRET = "fuzz/secret/key/0123456789abcdefghijklmn"
HOST = "api.example.test"
ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"
USER_ARN = "arn:aws:iam::123456789012:user/alice"
SIGNED_PATH = "/iam/orders/1?a=b&c=%20d"
SIGNED_BODY = b'{"x": 1}'
STATUSES = frozenset({400, 401, 403, 404, 429, 500, 503})
"""Every status a deny may carry (docs/reasons.md)."""


def _policy() -> dict[str, object]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*"},
            {
                "Sid": "LoopbackOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "execute-api:Invoke",
                "Resource": f"{ARN}/*/open/private/*",
                "Condition": {"NotIpAddress": {"aws:SourceIp": ["127.0.0.0/8", "::1/128"]}},
            },
        ],
    }


def config_text(folder: Path, issuer: Issuer) -> str:
    """The config (and the files it names, written into `folder`)."""
    (folder / "jwks.json").write_text(json.dumps(issuer.jwks()))
    (folder / "credentials.yaml").write_text(
        f"credentials:\n  - access_key_id: {AKID}\n    secret_access_key: {SECRET}\n"
        f"    principal_arn: {USER_ARN}\n"
        "    policies:\n      - {Version: '2012-10-17', Statement: [{Effect: Allow, Action: '*', Resource: '*'}]}\n"
    )
    (folder / "policy.json").write_text(json.dumps(_policy()))
    return f"""
api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
authorizers:
  open: {{type: none}}
  jwt:
    type: jwt
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    algorithms: [RS256, ES256, EdDSA]
    jwks_file: {folder / "jwks.json"}
    claim_to_headers: {{sub: x-user, scope: x-scope}}
  iam: {{type: sigv4, clock_skew: 3600, credentials: {{file: {folder / "credentials.yaml"}}}}}
routes:
  - {{match: "ANY /open/{{proxy+}}", authorizer: open}}
  - {{match: "ANY /jwt/{{proxy+}}", authorizer: jwt, scopes: [orders.read]}}
  - {{match: "ANY /iam/{{proxy+}}", authorizer: iam}}
resource_policy: {folder / "policy.json"}
"""


SIGNED_AT = 1_767_225_600.0
"""2026-01-01T00:00:00Z: every signature is made at this instant and every request the targets build is stamped
with it, so signatures are the same in every process (a corpus stays valid) and never go stale."""


def _at(when: float) -> Any:
    return mock.patch(
        "botocore.auth.get_current_datetime", lambda: datetime.fromtimestamp(when, UTC).replace(tzinfo=None)
    )


def sign(method: str, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers botocore's SigV4 signer adds at `SIGNED_AT` (lower-cased, `host` included)."""
    all_headers = {"host": HOST, **(headers or {})}
    request = AWSRequest(method=method, url=f"https://{HOST}{path}", data=body, headers=all_headers)
    with _at(SIGNED_AT):
        SigV4Auth(Credentials(AKID, SECRET), "execute-api", "us-east-1").add_auth(request)
    return {k.lower(): v for k, v in request.headers.items()}


def presign(path: str, expires: int = 3600) -> str:
    """A path and query botocore presigned (GET, `host` signed) at `SIGNED_AT`."""
    request = AWSRequest(method="GET", url=f"https://{HOST}{path}", headers={"host": HOST})
    with _at(SIGNED_AT):
        SigV4QueryAuth(Credentials(AKID, SECRET), "execute-api", "us-east-1", expires=expires).add_auth(request)
    return str(request.url).split(HOST, 1)[1]


_AUTH_PART = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]*)")


def botocore_agrees(request: Request) -> bool:
    """Whether botocore, signing this very request (its method, host, path and query, body, and the headers its
    `Authorization` names, at its `x-amz-date`) with the world's credential, makes the signature it carries."""
    parts = dict(_AUTH_PART.findall(request.headers.get("authorization", "")))
    amz_date = request.headers.get("x-amz-date", "")
    names = parts.get("SignedHeaders", "").split(";")
    if not parts.get("Signature") or len(amz_date) != 16 or "host" not in names:
        return False
    if parts.get("Credential") != f"{AKID}/{amz_date[:8]}/us-east-1/execute-api/aws4_request":
        return False
    sent = {**request.headers, "host": request.headers.get("host") or request.host}
    if any(name not in sent for name in names):
        return False
    try:
        # Empty `&&` segments: the sidecar's canonical query skips them (as parse_qsl, Go's and the servlet
        # parsers do, so the upstream reads the same parameters), botocore signs each as an empty key. The long
        # run found `a=b&&c` allowed with the signature of `a=b&c`; an equivalence, left to this oracle.
        path, sep, query = request.raw_path.partition("?")
        query = "&".join(piece for piece in query.split("&") if piece)
        copy = AWSRequest(
            method=request.method,
            url=f"https://{sent['host']}{path}{sep if query else ''}{query}",
            data=request.body,
            headers={name: sent[name] for name in names},
        )
        copy.context["timestamp"] = amz_date
        auth = SigV4Auth(Credentials(AKID, SECRET), "execute-api", "us-east-1")
        signature = auth.signature(auth.string_to_sign(copy, auth.canonical_request(copy)), copy)
    except Exception:  # botocore cannot even sign it (an unencodable URL, say): it did not sign it
        return False
    return bool(signature == parts["Signature"] and auth.signed_headers(auth.headers_to_sign(copy)) == ";".join(names))


@dataclass(frozen=True)
class Signed:
    """One botocore-signed request: what an allow on `/iam/` must match exactly."""

    method: str
    path: str
    body: bytes
    headers: Mapping[str, str]


class World:
    """The started runtime, its pipeline, and this run's credentials."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="authz-fuzz-world-"))
        self.issuer = Issuer.default()
        self.loop = Loop()
        text = config_text(self.folder, self.issuer)
        self.runtime = compile_runtime(parse_config(text, str(self.folder / "config.yaml")))
        self.loop.run(self.runtime.start())
        self.pipeline = Pipeline(RuntimeHolder(self.runtime))
        self.reasons = known_reasons()
        self.allowed: Counter[str] = Counter()
        """Allows judged, by route family (`jwt`, `iam`, `open`): the seeds must reach the protected ones."""
        now = int(SIGNED_AT)  # tokens too are judged at the world's instant: every target stamps its requests so
        exp = now + 86_400
        claims = self.issuer.claims
        self.tokens = [self.issuer.token(claims(now=now, exp=exp), kid=kid) for kid in self.issuer.keys]
        self.tokens.append(self.issuer.token(claims(now=now, exp=exp, sub="a\u00e9", scope=None, scp=["orders.read"])))
        self.unscoped = self.issuer.token(claims(now=now, exp=exp, scope="orders.write"))
        self.expired = self.issuer.token(claims(now=now - 7200, exp=now - 3600))
        self.presigned = [presign("/iam/reports?x=1"), presign("/iam/a")]
        self.signed = [
            Signed("POST", SIGNED_PATH, SIGNED_BODY, sign("POST", SIGNED_PATH, SIGNED_BODY)),
            Signed("GET", "/iam/a/b", b"", sign("GET", "/iam/a/b", b"")),
        ]

    def genuine_jwt(self, request: Request) -> bool:
        """The request's `Authorization` holds, byte for byte in its signed part (header.payload, what the
        signature covers), a token this run minted with the scope. (How the value around it is spelled, a
        scheme's case or whitespace, is the source's business; the credential must be intact.)"""
        value = request.headers.get("authorization", "")
        return any(minted.rpartition(".")[0] + "." in value for minted in self.tokens)

    def genuine_sigv4(self, request: Request) -> bool:
        """The request is one botocore signed: its `Authorization` signature is the one botocore makes for it
        (`botocore_agrees`), or it is one of the world's presigned requests (query parameters as signed, in any
        order: the signature covers their canonical, sorted form)."""
        if "authorization" in request.headers:
            return botocore_agrees(request)
        query = sorted(pair for pair in parse_qsl(request.query_string, keep_blank_values=True))
        for path in self.presigned:
            signed_path, _, signed_query = path.partition("?")
            same_query = query == sorted(parse_qsl(signed_query, keep_blank_values=True))
            if request.method in ("GET", "HEAD") and request.path == signed_path and same_query:
                return (request.headers.get("host") or request.host) == HOST
        return False

    def judge(self, request: Request, decision: Decision) -> None:
        """The oracle every pipeline-level target shares: a documented reason and status; an allow on a protected
        route only for a genuine credential, with the identity that credential names."""
        assert decision.reason in self.reasons, decision.reason
        assert decision.reason != "InternalError", decision.message
        if not decision.allowed:
            assert decision.status in STATUSES, decision.status
            return
        assert decision.status == 200
        route = decision.route
        self.allowed[route.split("/")[1] if "/" in route else route] += 1
        if "/jwt/" in route:
            assert self.genuine_jwt(request), "JWT route allowed without a minted token"
            assert decision.principal is not None and decision.principal.id in ("user-123", "a\u00e9")
        elif "/iam/" in route:
            assert self.genuine_sigv4(request), "SigV4 route allowed without a botocore-signed request"
            assert decision.principal is not None and decision.principal.arn == USER_ARN
        else:
            assert "/open/" in route, route


@cache
def shared_world() -> World:
    """One world per process: a target's `prepare()` and `seeds()` must see the same keys and signatures."""
    return World()
