"""VPC endpoint policies in the pipeline's policy stage: the endpoint's policy must also allow a request through it,
a private API refuses one through no endpoint, and no verdict (memo or decision cache) crosses endpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sidecar.config import parse_config
from sidecar.explanation import text_lines
from sidecar.pipeline import Pipeline
from sidecar.request import EMPTY_MAP, Request
from sidecar.runtime import RuntimeHolder, compile_runtime

ARN = "arn:aws:execute-api:us-east-1:000000000000:local/prod"
NO_CACHE = "cache: {ttl: 0, deny_ttl: 0}\n"


def _statement(effect: str, resource: str, sid: str = "", **extra: Any) -> dict[str, Any]:
    statement = {"Effect": effect, "Principal": "*", "Action": "execute-api:Invoke", "Resource": resource, **extra}
    return {"Sid": sid, **statement} if sid else statement


def _write(path: Path, *statements: dict[str, Any]) -> str:
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}))
    return str(path)


def pipeline(tmp_path: Path, extra: str = "", private: bool = True, resource: bool = True, **kw: Any) -> Pipeline:
    pets = _write(
        tmp_path / "pets.json",
        _statement("Allow", f"{ARN}/GET/pets/*", "PetsOnly"),
        _statement("Deny", f"{ARN}/*/pets/secret", "NoSecret"),
    )
    orders = _write(tmp_path / "orders.json", _statement("Allow", f"{ARN}/*/orders/*", "Orders"))
    text = (
        "authorizers:\n  open: {type: none}\nroutes:\n  - {match: 'ANY /{proxy+}', authorizer: open}\n"
        f"policy:\n  private_api: {str(private).lower()}\n"
        f"  vpc_endpoint_policies: {{vpce-aaa: {pets}, vpce-bbb: {orders}}}\n"
    ) + extra
    if resource:
        text += f"resource_policy: {_write(tmp_path / 'resource.json', _statement('Allow', f'{ARN}/*'))}\n"
    return Pipeline(RuntimeHolder(compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))), **kw)


def request(path: str = "/pets/1", vpce: str | None = "vpce-aaa", method: str = "GET") -> Request:
    """A CheckRequest's Request (gRPC mode), through `vpce` (None: through no endpoint)."""
    origin = {"vpce": vpce, "vpc": "vpc-1"} if vpce is not None else EMPTY_MAP
    return Request(method, path, path, {"host": "h"}, protocol="HTTP/1.1", source_address="10.0.0.7", origin=origin)


async def test_a_request_through_an_endpoint_is_allowed_only_where_its_policy_allows(tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    assert (await p.decide(request("/pets/1"))).allowed
    refused = await p.decide(request("/orders/1"))
    assert (refused.allowed, refused.status, refused.reason) == (False, 403, "AccessDenied")
    assert refused.message == (
        f"User: anonymous is not authorized to perform: execute-api:Invoke on resource: {ARN}/GET/orders/1 "
        "because no VPC endpoint policy allows the execute-api:Invoke action"
    )
    assert (await p.decide(request("/orders/1", "vpce-bbb"))).allowed  # another endpoint, another policy
    assert not (await p.decide(request("/pets/1", "vpce-bbb"))).allowed


async def test_an_explicit_deny_in_the_endpoint_policy_denies_and_is_named(tmp_path: Path) -> None:
    refused = await pipeline(tmp_path).decide(request("/pets/secret"))
    assert (refused.status, refused.reason, refused.statement) == (403, "AccessDenied", "NoSecret")
    assert refused.message.endswith(f"{ARN}/GET/pets/secret with an explicit deny in a VPC endpoint policy")


async def test_an_endpoint_no_policy_is_configured_for_is_denied(tmp_path: Path) -> None:
    refused = await pipeline(tmp_path).decide(request("/pets/1", "vpce-ccc"))
    assert (refused.status, refused.reason) == (403, "AccessDenied")
    assert "no VPC endpoint policy allows" in refused.message


async def test_a_private_api_denies_a_request_through_no_endpoint(tmp_path: Path) -> None:
    refused = await pipeline(tmp_path).decide(request("/pets/1", vpce=None))
    assert (refused.status, refused.reason) == (403, "AccessDenied")
    assert refused.message.endswith("because the request did not come through a VPC endpoint")


async def test_a_public_api_judges_a_request_through_no_endpoint_as_before(tmp_path: Path) -> None:
    p = pipeline(tmp_path, private=False)
    assert (await p.decide(request("/orders/1", vpce=None))).allowed  # the resource policy allows it
    assert not (await p.decide(request("/orders/1"))).allowed  # through vpce-aaa, whose policy does not


async def test_the_endpoint_policy_applies_where_no_other_policy_does(tmp_path: Path) -> None:
    p = pipeline(tmp_path, private=False, resource=False)  # an open route and no resource policy
    assert (await p.decide(request("/pets/1"))).allowed
    assert not (await p.decide(request("/orders/1"))).allowed
    assert (await p.decide(request("/orders/1", vpce=None))).allowed  # no endpoint: the authorizer's word


async def test_the_resource_policys_explicit_deny_is_reported_first(tmp_path: Path) -> None:
    deny = _statement("Deny", f"{ARN}/GET/pets/secret", "ResourceSaysNo")
    extra = f"resource_policy: {_write(tmp_path / 'deny.json', _statement('Allow', f'{ARN}/*'), deny)}\n"
    refused = await pipeline(tmp_path, extra, resource=False).decide(request("/pets/secret"))
    assert refused.statement == "ResourceSaysNo"
    assert refused.message.endswith("with an explicit deny")


async def test_the_outcome_memo_never_reuses_a_verdict_across_endpoints(tmp_path: Path) -> None:
    p = pipeline(tmp_path, NO_CACHE)  # no decision cache: every request reaches the policy stage
    verdicts = [
        (await p.decide(request("/pets/1", vpce))).allowed for vpce in ("vpce-aaa", "vpce-bbb", None, "vpce-aaa")
    ]
    assert verdicts == [True, False, False, True]
    assert len(p._outcomes) == 3  # one verdict per endpoint (and none), the last one taken from the memo
    assert [(await p.decide(request("/pets/1", vpce))).allowed for vpce in ("vpce-bbb", None)] == [False, False]


async def test_the_decision_cache_never_reuses_a_decision_across_endpoints(tmp_path: Path) -> None:
    p = pipeline(tmp_path)  # the default local decision cache
    runtime = p.holder.current
    assert runtime.cache is not None and runtime.cache.local is not None
    plan = runtime.routes.match("GET", "/pets/1").target.cache_plan  # type: ignore[union-attr]
    assert plan is not None and "aws:sourcevpce" in plan.request_keys
    for _ in range(2):
        assert [(await p.decide(request("/pets/1", vpce))).allowed for vpce in ("vpce-aaa", "vpce-bbb", None)] == [
            True,
            False,
            False,
        ]


async def test_an_endpoint_policy_that_reads_the_request_keeps_every_verdict_fresh(tmp_path: Path) -> None:
    near = _statement("Allow", f"{ARN}/*", Condition={"IpAddress": {"aws:VpcSourceIp": "10.0.0.0/24"}})
    extra = f"  vpc_endpoint_policies: {{vpce-aaa: {_write(tmp_path / 'near.json', near)}}}\n"
    text = (
        "authorizers:\n  open: {type: none}\nroutes:\n  - {match: 'ANY /{proxy+}', authorizer: open}\n"
        f"policy:\n{extra}" + NO_CACHE
    )
    p = Pipeline(RuntimeHolder(compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))))
    assert (await p.decide(request())).allowed
    assert not (await p.decide(request()._replace(source_address="10.0.1.7"))).allowed
    assert len(p._outcomes) == 0


async def test_the_explanation_names_the_endpoint_policy(tmp_path: Path) -> None:
    refused = await pipeline(tmp_path, explain=True).decide(request("/orders/1"))
    lines = text_lines(refused.explanation)
    assert any("no statement of its VPC endpoint policy of vpce-aaa" in line for line in lines), lines
    assert any("(decided by vpc-endpoint)" in line for line in lines), lines
    unlisted = text_lines((await pipeline(tmp_path, explain=True).decide(request(vpce="vpce-ccc"))).explanation)
    assert any("VPC endpoint vpce-ccc, which policy.vpc_endpoint_policies does not list" in x for x in unlisted)
    none = text_lines((await pipeline(tmp_path, explain=True).decide(request(vpce=None))).explanation)
    assert any("came through no VPC endpoint" in line for line in none), none
