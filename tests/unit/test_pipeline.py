"""The pipeline's combination of authorizers, scopes and policies, with in-memory authorizers and real policies."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.request import Request
from sidecar.runtime import RuntimeHolder, compile_runtime

ARN = "arn:aws:execute-api:us-east-1:000000000000:local/prod"


def pipeline(tmp_path: Path, extra: str = "", policy: dict[str, object] | None = None) -> Pipeline:
    text = "authorizers:\n  open: {type: none}\nroutes:\n  - {match: 'ANY /{proxy+}', authorizer: open}\n" + extra
    if policy is not None:
        path = tmp_path / "policy.json"
        path.write_text(json.dumps(policy))
        text += f"resource_policy: {path}\n"
    return Pipeline(RuntimeHolder(compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))))


def request(path: str = "/x", source: str = "127.0.0.1") -> Request:
    return Request(method="GET", raw_path=path, path=path, headers={"host": "h"}, source_address=source, time=1e9)


async def test_open_route_without_policy_allows(tmp_path: Path) -> None:
    decision = await pipeline(tmp_path).decide(request())
    assert decision.allowed
    assert dict(decision.headers)["x-authz-principal"] == "anonymous"
    assert decision.headers_to_remove == ("x-authz-route",)  # off by default: a client's copy is removed


async def test_switched_off_identity_headers_are_removed(tmp_path: Path) -> None:
    p = pipeline(tmp_path, "upstream_headers: {principal: null, authorizer: null}\n")
    decision = await p.decide(request())
    assert decision.headers == ()
    assert set(decision.headers_to_remove) == {"x-authz-principal", "x-authz-authorizer", "x-authz-route"}


async def test_private_api_without_resource_policy_denies(tmp_path: Path) -> None:
    decision = await pipeline(tmp_path, "policy: {private_api: true}\n").decide(request())
    assert not decision.allowed
    assert (decision.status, decision.reason) == (403, "AccessDenied")


async def test_private_api_with_allowing_policy(tmp_path: Path) -> None:
    statement = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*"}
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    p = pipeline(tmp_path, "policy: {private_api: true}\n", policy)
    assert (await p.decide(request())).allowed


async def test_policy_deny_names_statement_and_keeps_principal(tmp_path: Path) -> None:
    allow = {"Sid": "All", "Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*"}
    deny = {
        "Sid": "NoTen",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "*",
        "Resource": f"{ARN}/*",
        "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
    }
    p = pipeline(tmp_path, policy={"Version": "2012-10-17", "Statement": [allow, deny]})
    denied = await p.decide(request(source="10.1.2.3"))
    assert (denied.allowed, denied.statement, denied.reason) == (False, "NoTen", "AccessDenied")
    assert denied.principal is not None and denied.principal.id == "anonymous"
    allowed = await p.decide(request(source="192.0.2.1"))
    assert (allowed.allowed, allowed.statement) == (True, "All")
    assert await p.decide(request(source="192.0.2.1")) is allowed  # warm: the same Decision object


async def test_explain_mode_attaches_explanations(tmp_path: Path) -> None:
    statement = {"Sid": "All", "Effect": "Allow", "Principal": "*", "Action": "*", "Resource": f"{ARN}/*"}
    p = pipeline(tmp_path, policy={"Version": "2012-10-17", "Statement": [statement]})
    p.explain = True
    decision = await p.decide(request())
    assert decision.allowed
    assert any("All" in line for line in decision.explanation)


async def test_ambiguous_path_is_a_malformed_request(tmp_path: Path) -> None:
    for path in ("/admin/x%2F..%2F..%2Fpublic/a", "/a/%2e%2e/b", "/a%5Cb"):
        decision = await pipeline(tmp_path).decide(request(path))
        assert (decision.allowed, decision.status, decision.reason) == (False, 400, "MalformedRequest")


async def test_a_reload_empties_the_allow_memo_of_the_old_runtimes_routes(tmp_path: Path) -> None:
    p = pipeline(tmp_path, "cache: {ttl: 0, deny_ttl: 0}\n")  # no decision cache: every Check computes
    old = p.holder.current
    assert (await p.decide(request())).allowed
    assert p._allowed and all(key[0].authorizer is old.authorizers["open"] for key in p._allowed)
    new = compile_runtime(old.config)
    await p.holder.swap(new)
    assert (await p.decide(request())).allowed
    assert p._allowed and all(key[0].authorizer is new.authorizers["open"] for key in p._allowed)
