"""Property: the compiled, indexed evaluator agrees with the naive reference interpreter on random policies."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from policy_reference import Caller, World
from policy_reference import evaluate as reference_evaluate
from policy_support import API

from sidecar.policy import EvalContext, parse_policy
from sidecar.request import Principal, Request

API_PREFIX = f"arn:aws:execute-api:{API.region}:{API.account}:{API.id}/"

CALLERS = [
    ("anonymous", "", ""),
    ("sigv4", "arn:aws:iam::111111111111:user/alice", "111111111111"),
    ("sigv4", "arn:aws:iam::222222222222:user/bob", "222222222222"),
    ("sigv4", "arn:aws:sts::111111111111:assumed-role/Deployer/run-1", "111111111111"),
    ("sigv4", "arn:aws:iam::111111111111:root", "111111111111"),
]
PRINCIPAL_ENTRIES = [
    "*",
    "111111111111",
    "arn:aws:iam::111111111111:root",
    "arn:aws:iam::222222222222:root",
    "arn:aws:iam::111111111111:user/alice",
    "arn:aws:iam::111111111111:role/Deployer",
    "arn:aws:sts::111111111111:assumed-role/Deployer/run-1",
]
ACTIONS = [
    "execute-api:Invoke",
    "execute-api:*",
    "*",
    "execute-api:inv*",
    "EXECUTE-API:INVOKE",
    "execute-api:Inv?ke",
    "s3:GetObject",
    "execute-api:ManageConnections",
]
STAGES = ["prod", "dev", "*", "pr?d"]
METHODS = ["GET", "POST", "DELETE", "*", "G?T"]
PATHS = ["pets", "pets/*", "*", "pets/1", "orders", "*/1", "${aws:username}/*", "p*", "", "${jwt:tenant}", "*s"]
REGIONS = [API.region, "*", "us-*", "eu-west-1"]
ACCOUNTS = [API.account, "*", "999999999999", "1234567890?2"]
API_IDS = [API.id, "*", "other"]

STRING_OPS = [
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
]
NUMERIC_OPS = ["NumericEquals", "NumericNotEquals", "NumericLessThan", "NumericGreaterThanEquals"]
# key -> (operators, candidate values)
CONDITION_KEYS: dict[str, tuple[list[str], list[str]]] = {
    "aws:SourceIp": (["IpAddress", "NotIpAddress"], ["10.0.0.0/8", "192.0.2.0/24", "10.1.2.3", "2001:db8::/32"]),
    "request:header/x-a": (STRING_OPS, ["abc", "ABC", "a*", "10", "1?", "${aws:username}", "${jwt:tenant, 'a1'}"]),
    "aws:PrincipalArn": (
        ["ArnLike", "ArnNotLike", "ArnEquals", "ArnNotEquals"],
        [
            "arn:aws:iam::111111111111:*",
            "arn:aws:iam::*:user/alice",
            "arn:aws:sts::*:assumed-role/*",
            "arn:aws:iam::${aws:PrincipalAccount}:user/*",
        ],
    ),
    "aws:CurrentTime": (
        ["DateLessThan", "DateGreaterThanEquals", "DateEquals", "DateNotEquals"],
        ["999999999", "1000000000", "2001-09-09T01:46:40Z", "1000000001", "2001-09-09"],
    ),
    "request:header/x-n": (NUMERIC_OPS, ["10", "5", "-1.5"]),
    "cognito:groups": (["StringEquals", "StringNotEquals", "StringLike", "StringNotLike"], ["admins", "devs", "a*"]),
    "jwt:flag": (["Bool"], ["true", "false"]),
}


@st.composite
def resources(draw: st.DrawFn) -> str:
    path = f"{draw(st.sampled_from(STAGES))}/{draw(st.sampled_from(METHODS))}/{draw(st.sampled_from(PATHS))}"
    form = draw(st.sampled_from(["short", "full", "star"]))
    if form == "star":
        return "*"
    if form == "short":
        return f"execute-api:/{path}"
    region, account, api_id = (draw(st.sampled_from(x)) for x in (REGIONS, ACCOUNTS, API_IDS))
    return f"arn:aws:execute-api:{region}:{account}:{api_id}/{path}"


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    block: dict[str, dict[str, Any]] = {}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*CONDITION_KEYS, "request:header/x-a"]))
        if draw(st.integers(0, 5)) == 0:
            block.setdefault("Null", {})[key] = draw(st.sampled_from(["true", "false"]))
            continue
        operators, candidates = CONDITION_KEYS[key]
        operator = draw(st.sampled_from(operators))
        if draw(st.booleans()):
            operator += "IfExists"
        qualifier = draw(st.sampled_from(["", "", "ForAllValues:", "ForAnyValue:"]))
        values = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3))
        block.setdefault(qualifier + operator, {})[key] = values if len(values) > 1 else values[0]
    return block


@st.composite
def statements(draw: st.DrawFn) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Deny"]))}
    principal: Any = (
        "*" if draw(st.booleans()) else {"AWS": draw(st.lists(st.sampled_from(PRINCIPAL_ENTRIES), min_size=1))}
    )
    statement["NotPrincipal" if draw(st.integers(0, 4)) == 0 else "Principal"] = principal
    actions = draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=3))
    statement["NotAction" if draw(st.integers(0, 5)) == 0 else "Action"] = actions
    resource_list = draw(st.lists(resources(), min_size=1, max_size=3))
    statement["NotResource" if draw(st.integers(0, 5)) == 0 else "Resource"] = resource_list
    condition = draw(conditions())
    if condition:
        statement["Condition"] = condition
    return statement


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Request, Principal, World]:
    method = draw(st.sampled_from(["GET", "POST", "DELETE"]))
    path = draw(st.sampled_from(["/pets", "/pets/1", "/orders", "/", "/alice/x", "/acme", "/orders/1", "/cats"]))
    source = draw(st.sampled_from(["10.1.2.3", "192.0.2.7", "203.0.113.9", "2001:db8::5"]))
    header_a = draw(st.sampled_from([None, "abc", "ABC", "10", "a1", "xyz", "alice", "acme"]))
    header_n = draw(st.sampled_from([None, "10", "5", "-1.5", "12", "nan-ish"]))
    groups = draw(st.sampled_from([None, [], ["admins"], ["devs", "admins"], ["ops"]]))
    flag = draw(st.sampled_from([None, True, False]))
    tenant = draw(st.sampled_from([None, "acme"]))
    kind, arn, account = draw(st.sampled_from(CALLERS))
    headers = {k: v for k, v in (("x-a", header_a), ("x-n", header_n)) if v is not None}
    claims: dict[str, Any] = {}
    for name, value in (("cognito:groups", groups), ("flag", flag), ("tenant", tenant)):
        if value is not None:
            claims[name] = value
    request = Request(method=method, raw_path=path, path=path, headers=headers, source_address=source, time=1e9)
    principal = Principal(kind=kind, id=arn or "anonymous", arn=arn, account=account, claims=claims)
    values: dict[str, Any] = {
        "aws:sourceip": source,
        "request:header/x-a": header_a,
        "request:header/x-n": header_n,
        "cognito:groups": groups,
        "jwt:flag": None if flag is None else str(flag).lower(),
        "jwt:tenant": tenant,
        "aws:username": "alice" if arn.endswith(":user/alice") else "bob" if arn.endswith(":user/bob") else None,
        "aws:principalarn": arn or None,
        "aws:principalaccount": account or None,
        "aws:currenttime": "2001-09-09T01:46:40Z",  # time=1e9 below
    }
    resource = f"{API_PREFIX}{API.stage}/{method}{path}"
    return request, principal, World("execute-api:Invoke", resource, Caller(arn, account), values)


# 100 examples in the suite (was 300): tests/fuzz/targets/policy.py drives this code at scale.
@settings(max_examples=100, deadline=None)
@given(st.lists(statements(), min_size=1, max_size=12), st.lists(worlds(), min_size=1, max_size=4))
def test_compiled_evaluator_agrees_with_reference(
    statement_list: list[dict[str, Any]], cases: list[tuple[Request, Principal, World]]
) -> None:
    document = {"Version": "2012-10-17", "Statement": statement_list}
    compiled = parse_policy(json.dumps(document), "random.json", kind="resource", api=API, max_size=None)
    for request, principal, world in cases:
        got = compiled.evaluate(EvalContext(request, principal, API))
        want = reference_evaluate(document, world, API_PREFIX)
        assert got.effect.value == want.effect, (request, principal)
        assert (got.deciding.index if got.deciding else None) == want.deciding
        assert [m.index for m in got.matched] == want.matched
        explained = got.explain()
        matched_lines = [line for line in explained[2:] if line.endswith(": matched")]
        assert len(matched_lines) == len(want.matched)  # the slow explanation path agrees too
