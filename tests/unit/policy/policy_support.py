"""Shared builders for the policy tests: an API, requests, principals and one-call evaluation."""

from __future__ import annotations

import json
from typing import Any

from sidecar.config import ApiSettings
from sidecar.policy import RESOURCE_POLICY_MAX, CompiledPolicy, ContextSettings, EvalContext, Evaluation, parse_policy
from sidecar.request import ANONYMOUS, Principal, Request

API = ApiSettings(id="a1b2c3d4e5", stage="prod", account="123456789012", region="us-east-1")
ARN_BASE = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"
NOON = 1_767_268_800.0  # 2026-01-01T12:00:00Z


def request(
    method: str = "GET",
    path: str = "/pets",
    source: str = "203.0.113.10",
    headers: dict[str, str] | None = None,
    scheme: str = "https",
    time: float = NOON,
    trusted_peer: bool = False,
) -> Request:
    """A request as the adapter would build it (`trusted_peer`: HTTP mode's, from one of `http.trusted_peers`)."""
    return Request(
        method=method,
        raw_path=path,
        path=path.partition("?")[0],
        headers=headers or {},
        scheme=scheme,
        source_address=source,
        time=time,
        trusted_peer=trusted_peer,
    )


def iam_user(name: str = "alice", account: str = "123456789012") -> Principal:
    """An IAM user principal as the SigV4 authorizer would produce it."""
    return Principal(kind="sigv4", id=f"AIDA{name.upper()}", arn=f"arn:aws:iam::{account}:user/{name}", account=account)


def jwt_user(sub: str = "user-1", **claims: Any) -> Principal:
    """A token principal as the JWT authorizer would produce it."""
    merged = {"iss": "https://idp.example.com/", "sub": sub, **claims}
    scopes = frozenset(str(merged.get("scope", "")).split())
    return Principal(kind="jwt", id=sub, claims=merged, scopes=scopes)


def policy(
    *statements: dict[str, Any],
    version: str | None = "2012-10-17",
    kind: str = "resource",
    max_size: int | None = RESOURCE_POLICY_MAX,
) -> CompiledPolicy:
    """Compile a policy made of `statements`."""
    doc: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        doc["Version"] = version
    text = json.dumps(doc, indent=2)
    return parse_policy(text, "test.json", kind=kind, api=API, max_size=max_size)  # type: ignore[arg-type]


def allow(**extra: Any) -> dict[str, Any]:
    """An Allow-everyone-everything statement, with overrides."""
    return {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "execute-api:/*", **extra}


def deny(**extra: Any) -> dict[str, Any]:
    """A Deny-everyone-everything statement, with overrides."""
    return {**allow(**extra), "Effect": "Deny"}


def evaluate(
    compiled: CompiledPolicy,
    req: Request | None = None,
    principal: Principal = ANONYMOUS,
    settings: ContextSettings | None = None,
) -> Evaluation:
    """Evaluate `compiled` for one request."""
    ctx = EvalContext(req or request(), principal, API, settings or ContextSettings())
    return compiled.evaluate(ctx)


def effect(compiled: CompiledPolicy, **kwargs: Any) -> str:
    """The effect as a plain string (`Allow`, `Deny`, `Neither`)."""
    return evaluate(compiled, **kwargs).effect.value
