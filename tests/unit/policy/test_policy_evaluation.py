"""Evaluation tables written from AWS's documented IAM evaluation logic and API Gateway's resource-policy examples."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from policy_support import (
    API,
    ARN_BASE,
    NOON,
    allow,
    deny,
    effect,
    evaluate,
    iam_user,
    jwt_user,
    policy,
    request,
)

from sidecar.policy import ContextSettings, Effect, EvalContext
from sidecar.request import ANONYMOUS, Principal
from sidecar.routes import AmbiguousPath

OTHER_ACCOUNT = "444455556666"

# --- API Gateway: "Allow roles or users in another AWS account to use an API" ---------------------------------

ACCOUNT_ALLOW_LIST = policy(
    {
        "Effect": "Allow",
        "Principal": {"AWS": [f"arn:aws:iam::{OTHER_ACCOUNT}:root", "arn:aws:iam::777788889999:user/alice"]},
        "Action": "execute-api:Invoke",
        "Resource": "execute-api:/prod/GET/pets",
    }
)


@pytest.mark.parametrize(
    ("principal", "path", "expected"),
    [
        (iam_user("bob", OTHER_ACCOUNT), "/pets", "Allow"),  # any identity in the listed account
        (iam_user("alice", "777788889999"), "/pets", "Allow"),  # the listed user
        (iam_user("mallory", "777788889999"), "/pets", "Neither"),  # another user of that account
        (iam_user("bob", OTHER_ACCOUNT), "/pets/1", "Neither"),  # resource is exact
        (ANONYMOUS, "/pets", "Neither"),
    ],
)
def test_account_allow_list(principal: Principal, path: str, expected: str) -> None:
    assert effect(ACCOUNT_ALLOW_LIST, req=request(path=path), principal=principal) == expected


def test_role_principal_matches_its_sessions() -> None:
    compiled = policy(allow(Principal={"AWS": f"arn:aws:iam::{OTHER_ACCOUNT}:role/Deployer"}))
    session = Principal(
        kind="sigv4",
        id="AROA:ci",
        arn=f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/Deployer/ci-run-7",
        account="",
    )
    other_role = Principal(kind="sigv4", id="AROB:x", arn=f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/Other/x")
    assert effect(compiled, principal=session) == "Allow"
    assert effect(compiled, principal=other_role) == "Neither"


def test_bare_account_id_principal_equals_root_arn() -> None:
    compiled = policy(allow(Principal={"AWS": OTHER_ACCOUNT}))
    assert effect(compiled, principal=iam_user("x", OTHER_ACCOUNT)) == "Allow"
    assert effect(compiled, principal=iam_user("x")) == "Neither"


def test_federated_principal_matches_token_issuer() -> None:
    compiled = policy(allow(Principal={"Federated": "idp.example.com"}))
    assert effect(compiled, principal=jwt_user()) == "Allow"
    other = jwt_user(iss="https://evil.example.net")
    assert effect(compiled, principal=other) == "Neither"


def test_not_principal_excludes_listed_identity() -> None:
    not_principal = {k: v for k, v in deny().items() if k != "Principal"} | {"NotPrincipal": {"AWS": "123456789012"}}
    compiled = policy(allow(), not_principal)
    root = Principal(kind="sigv4", id="r", arn="arn:aws:iam::123456789012:root", account="123456789012")
    assert effect(compiled, principal=root) == "Allow"
    assert effect(compiled, principal=iam_user()) == "Deny"  # an account in NotPrincipal is not its users
    assert effect(compiled, principal=iam_user("x", OTHER_ACCOUNT)) == "Deny"


# --- API Gateway: "Deny API traffic based on source IP address or range" ---------------------------------------

IP_DENY_LIST = policy(
    allow(),
    deny(Condition={"IpAddress": {"aws:SourceIp": ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"]}}),
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("192.0.2.1", "Deny"),
        ("192.0.2.255", "Deny"),
        ("198.51.100.77", "Deny"),
        ("192.0.3.0", "Allow"),
        ("203.0.113.10", "Allow"),
        ("2001:db8::1", "Deny"),
        ("2001:db9::1", "Allow"),
        ("::ffff:192.0.2.9", "Deny"),  # IPv4-mapped IPv6 folds to IPv4
    ],
)
def test_ip_deny_list(source: str, expected: str) -> None:
    assert effect(IP_DENY_LIST, req=request(source=source)) == expected


# --- API Gateway: "Allow API traffic only from a source IP range" (Deny with NotIpAddress) ----------------------

IP_ALLOW_LIST = policy(allow(), deny(Condition={"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "127.0.0.1"]}}))


@pytest.mark.parametrize(
    ("source", "expected"),
    [("10.1.2.3", "Allow"), ("127.0.0.1", "Allow"), ("127.0.0.2", "Deny"), ("203.0.113.10", "Deny")],
)
def test_ip_allow_list(source: str, expected: str) -> None:
    assert effect(IP_ALLOW_LIST, req=request(source=source)) == expected


def test_ip_allow_list_behind_trusted_proxies() -> None:
    hops = ContextSettings(trusted_proxy_hops=1)
    spoofed = request(source="10.0.0.5", headers={"x-forwarded-for": "10.9.9.9, 203.0.113.50"})
    trusted = request(source="10.0.0.5", headers={"x-forwarded-for": "203.0.113.50, 10.2.2.2"})
    assert effect(IP_ALLOW_LIST, req=spoofed, settings=hops) == "Deny"  # the client-supplied entry is ignored
    assert effect(IP_ALLOW_LIST, req=trusted, settings=hops) == "Allow"
    assert effect(IP_ALLOW_LIST, req=spoofed) == "Allow"  # without trusted hops XFF is not read at all


# --- API Gateway: private API restricted to one VPC endpoint ---------------------------------------------------

VPCE_ONLY = policy(
    deny(Condition={"StringNotEquals": {"aws:SourceVpce": "vpce-1a2b3c4d"}}),
    allow(),
)
VPCE_SETTINGS = ContextSettings(vpce_header="x-amzn-vpce-id")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-amzn-vpce-id": "vpce-1a2b3c4d"}, "Allow"),
        ({"x-amzn-vpce-id": "vpce-99999999"}, "Deny"),
        ({}, "Deny"),  # a negated operator on a missing key is true, so the Deny applies
    ],
)
def test_vpc_endpoint_restriction(headers: dict[str, str], expected: str) -> None:
    assert effect(VPCE_ONLY, req=request(headers=headers, trusted_peer=True), settings=VPCE_SETTINGS) == expected


def test_vpce_header_is_ignored_unless_configured() -> None:
    assert effect(VPCE_ONLY, req=request(headers={"x-amzn-vpce-id": "vpce-1a2b3c4d"})) == "Deny"


# --- Time windows --------------------------------------------------------------------------------------------

WINDOW = policy(
    allow(
        Condition={
            "DateGreaterThan": {"aws:CurrentTime": "2026-01-01T08:00:00Z"},
            "DateLessThan": {"aws:CurrentTime": "2026-01-01T18:00:00Z"},
        }
    )
)


@pytest.mark.parametrize(
    ("when", "expected"),
    [(NOON, "Allow"), (NOON - 5 * 3600, "Neither"), (NOON + 7 * 3600, "Neither"), (NOON + 86400, "Neither")],
)
def test_time_window(when: float, expected: str) -> None:
    assert effect(WINDOW, req=request(time=when)) == expected


def test_epoch_time_numeric_window() -> None:
    compiled = policy(allow(Condition={"NumericLessThan": {"aws:EpochTime": int(NOON) + 1}}))
    assert effect(compiled, req=request(time=NOON)) == "Allow"
    assert effect(compiled, req=request(time=NOON + 1)) == "Neither"


# --- IAM evaluation logic: explicit deny wins, then allow, else implicit deny ----------------------------------


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        ([allow()], "Allow"),
        ([deny()], "Deny"),
        ([allow(), deny()], "Deny"),
        ([deny(), allow()], "Deny"),
        ([allow(Resource="execute-api:/prod/POST/*")], "Neither"),
        ([deny(Resource="execute-api:/prod/POST/*"), allow()], "Allow"),
        ([allow(Action="execute-api:ManageConnections")], "Neither"),
        ([allow(Action="*")], "Allow"),
        ([allow(Action="execute-api:*")], "Allow"),
        ([allow(Action="EXECUTE-API:invoke")], "Allow"),  # actions are case-insensitive
        ([allow(Action="execute-api:Inv?ke")], "Allow"),
        ([allow(Action=None) | {"NotAction": "execute-api:ManageConnections"}], "Allow"),
        ([allow(Action=None) | {"NotAction": "execute-api:*"}], "Neither"),
        ([allow(Resource=None) | {"NotResource": "execute-api:/prod/POST/*"}], "Allow"),
        ([allow(Resource=None) | {"NotResource": "execute-api:/prod/GET/*"}], "Neither"),
        ([allow(Resource="execute-api:/prod/GET/Pets")], "Neither"),  # resources are case-sensitive
        ([allow(Resource="execute-api:/prod/GET/pets")], "Allow"),
        ([allow(Resource="execute-api:/prod/*/pets")], "Allow"),
        ([allow(Resource="execute-api:/*/GET/*")], "Allow"),
        ([allow(Resource="execute-api:/dev/GET/*")], "Neither"),
        ([allow(Resource=f"{ARN_BASE}/GET/pets")], "Allow"),
        ([allow(Resource="arn:aws:execute-api:us-east-1:123456789012:otherapi/prod/GET/pets")], "Neither"),
        ([allow(Resource="arn:aws:execute-api:*:*:*/prod/GET/p?ts")], "Allow"),
        ([allow(Resource="arn:aws:execute-api:*")], "Allow"),
        ([allow(Resource="arn:aws:execute-api:us-*:123456789012:a1b2c3d4e5/*")], "Allow"),
        ([allow(Resource="arn:aws:execute-api:eu-*:123456789012:a1b2c3d4e5/*")], "Neither"),
        ([allow(Resource="*")], "Allow"),
        ([allow(Resource=["execute-api:/prod/POST/x", "execute-api:/prod/GET/pets"])], "Allow"),
    ],
)
def test_iam_evaluation_logic(statements: list[dict[str, Any]], expected: str) -> None:
    cleaned = [{k: v for k, v in s.items() if v is not None} for s in statements]
    assert effect(policy(*cleaned)) == expected


def test_wildcard_in_account_segment_does_not_cross_colons() -> None:
    compiled = policy(allow(Resource="arn:aws:execute-api:us-east-1:*a1b2c3d4e5/*"))
    assert effect(compiled) == "Neither"  # `*` in the account part cannot swallow the `:` before the API id


def test_deciding_statement_is_first_matching_deny_then_first_allow() -> None:
    compiled = policy(allow(Sid="A1"), deny(Sid="D1", Resource="execute-api:/x/*"), deny(Sid="D2"), deny(Sid="D3"))
    result = evaluate(compiled)
    assert result.effect is Effect.DENY
    assert result.deciding is not None and result.deciding.sid == "D2"
    assert [m.sid for m in result.matched] == ["A1", "D2", "D3"]


def test_root_path_and_encoded_path() -> None:
    compiled = policy(allow(Resource="execute-api:/prod/GET/"), allow(Resource="execute-api:/prod/GET/a b"))
    assert effect(compiled, req=request(path="/")) == "Allow"
    assert effect(compiled, req=request(path="/a%20b")) == "Allow"  # decoded like the route table decodes it
    assert effect(compiled, req=request(path="/ab")) == "Neither"


@pytest.mark.parametrize("path", ["/admin/x", "/%61dmin/x", "/admin/x/"])
def test_path_tricks_do_not_dodge_a_deny(path: str) -> None:
    compiled = policy(allow(), deny(Resource="execute-api:/prod/*/admin/*"))
    assert effect(compiled, req=request(path=path)) == "Deny"


@pytest.mark.parametrize(
    "path",
    [
        "/public/%2e%2e/admin/x",
        "/admin/x%2F..%2F..%2Fpublic/a",
        "/a%5Cb",
        "/a%FFb",
        "/public/../admin/x",
        "//admin//x",
        "/./admin/x",
    ],
)
def test_ambiguous_paths_are_refused_before_evaluation(path: str) -> None:
    compiled = policy(allow(), deny(Resource="execute-api:/prod/*/admin/*"))
    with pytest.raises(AmbiguousPath):
        effect(compiled, req=request(path=path))


def test_query_string_is_not_part_of_the_resource() -> None:
    compiled = policy(allow(Resource="execute-api:/prod/GET/pets"))
    assert effect(compiled, req=request(path="/pets?type=dog")) == "Allow"


# --- Condition operators -------------------------------------------------------------------------------------


def _cond(operator: str, key: str, values: Any, **kwargs: Any) -> str:
    return effect(policy(allow(Condition={operator: {key: values}})), **kwargs)


H = "request:header/x-v"


def _hdr(value: str | None) -> dict[str, Any]:
    return {"req": request(headers={} if value is None else {"x-v": value})}


@pytest.mark.parametrize(
    ("operator", "values", "header", "expected"),
    [
        ("StringEquals", "abc", "abc", "Allow"),
        ("StringEquals", "abc", "ABC", "Neither"),
        ("StringEquals", ["x", "abc"], "abc", "Allow"),  # values are ORed
        ("StringEquals", "abc", None, "Neither"),
        ("StringNotEquals", "abc", "abd", "Allow"),
        ("StringNotEquals", "abc", "abc", "Neither"),
        ("StringNotEquals", ["a", "b"], "b", "Neither"),
        ("StringNotEquals", "abc", None, "Allow"),  # negated operator, missing key: true
        ("StringEqualsIgnoreCase", "AbC", "aBc", "Allow"),
        ("StringNotEqualsIgnoreCase", "AbC", "aBc", "Neither"),
        ("StringNotEqualsIgnoreCase", "AbC", None, "Allow"),
        ("StringLike", "ab*", "abzzz", "Allow"),
        ("StringLike", "a?c", "abc", "Allow"),
        ("StringLike", "a?c", "abbc", "Neither"),
        ("StringLike", "*", "", "Allow"),
        ("StringLike", "a.c", "abc", "Neither"),  # regex metacharacters are literal
        ("StringNotLike", "ab*", "xyz", "Allow"),
        ("StringNotLike", "ab*", "abc", "Neither"),
        ("StringLikeIfExists", "ab*", None, "Allow"),
        ("StringEqualsIfExists", "abc", "abd", "Neither"),
        ("NumericEquals", 10, "10", "Allow"),
        ("NumericEquals", "10", "10.0", "Allow"),
        ("NumericEquals", 10, "ten", "Neither"),
        ("NumericNotEquals", 10, "11", "Allow"),
        ("NumericNotEquals", 10, "10", "Neither"),
        ("NumericLessThan", 10, "9.5", "Allow"),
        ("NumericLessThan", 10, "10", "Neither"),
        ("NumericLessThanEquals", 10, "10", "Allow"),
        ("NumericGreaterThan", 10, "10", "Neither"),
        ("NumericGreaterThan", 10, "11", "Allow"),
        ("NumericGreaterThanEquals", 10, "10", "Allow"),
        ("NumericGreaterThanEquals", 10, None, "Neither"),
        ("NumericGreaterThanEqualsIfExists", 10, None, "Allow"),
        ("DateEquals", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00", "Allow"),
        ("DateEquals", "2026-01-01T00:00:00Z", "1767225600", "Allow"),  # epoch seconds
        ("DateNotEquals", "2026-01-01T00:00:00Z", "2026-01-02", "Allow"),
        ("DateLessThan", "2026-01-01", "2025-12-31T23:59:59Z", "Allow"),
        ("DateLessThanEquals", "2026-01-01", "2026-01-01T00:00:00Z", "Allow"),
        ("DateGreaterThan", "2026-01-01", "2025-12-31T23:59:59Z", "Neither"),
        ("DateGreaterThanEquals", "2026-01-01", "2026-01-01", "Allow"),
        ("DateGreaterThan", "2026-01-01", "not a date", "Neither"),
        ("Bool", "true", "true", "Allow"),
        ("Bool", True, "TRUE", "Allow"),
        ("Bool", "true", "false", "Neither"),
        ("BoolIfExists", "false", None, "Allow"),
        ("BinaryEquals", base64.b64encode(b"\x00\x01").decode(), base64.b64encode(b"\x00\x01").decode(), "Allow"),
        ("BinaryEquals", base64.b64encode(b"\x00\x01").decode(), base64.b64encode(b"\x00\x02").decode(), "Neither"),
        ("ArnEquals", "arn:aws:iam::123456789012:user/*", "arn:aws:iam::123456789012:user/alice", "Allow"),
        ("ArnLike", "arn:aws:iam::*:user/alice", "arn:aws:iam::999999999999:user/alice", "Allow"),
        ("ArnLike", "arn:aws:iam::*:user/alice", "arn:aws:iam::99:99:user/alice", "Neither"),
        ("ArnNotEquals", "arn:aws:iam::123456789012:user/*", "arn:aws:iam::123456789012:user/bob", "Neither"),
        ("ArnNotLike", "arn:aws:iam::123456789012:user/*", "arn:aws:iam::123456789012:role/x", "Allow"),
        ("ArnNotLike", "arn:aws:iam::123456789012:user/*", None, "Allow"),
        ("IpAddress", "10.0.0.0/8", "10.1.1.1", "Allow"),
        ("IpAddress", "10.0.0.0/8", "garbage", "Neither"),
        ("NotIpAddress", "10.0.0.0/8", "11.1.1.1", "Allow"),
        ("NotIpAddress", "10.0.0.0/8", None, "Allow"),
        ("Null", "true", None, "Allow"),
        ("Null", "true", "x", "Neither"),
        ("Null", "false", "x", "Allow"),
        ("Null", False, None, "Neither"),
    ],
)
def test_operator(operator: str, values: Any, header: str | None, expected: str) -> None:
    assert _cond(operator, H, values, **_hdr(header)) == expected


def test_several_keys_in_one_operator_are_anded() -> None:
    compiled = policy(allow(Condition={"StringEquals": {"request:header/a": "1", "request:header/b": "2"}}))
    assert effect(compiled, req=request(headers={"a": "1", "b": "2"})) == "Allow"
    assert effect(compiled, req=request(headers={"a": "1", "b": "3"})) == "Neither"


def test_several_operators_are_anded() -> None:
    compiled = policy(
        allow(Condition={"StringEquals": {"request:header/a": "1"}, "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})
    )
    assert effect(compiled, req=request(headers={"a": "1"}, source="10.0.0.1")) == "Allow"
    assert effect(compiled, req=request(headers={"a": "1"}, source="11.0.0.1")) == "Neither"


def test_condition_keys_are_case_insensitive() -> None:
    compiled = policy(allow(Condition={"IpAddress": {"AWS:SOURCEIP": "10.0.0.0/8"}}))
    assert effect(compiled, req=request(source="10.0.0.1")) == "Allow"


# --- Set operators on multi-valued keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "values", "groups", "expected"),
    [
        ("ForAnyValue:StringEquals", ["admins", "ops"], ["devs", "ops"], "Allow"),
        ("ForAnyValue:StringEquals", ["admins"], ["devs", "ops"], "Neither"),
        ("ForAnyValue:StringEquals", ["admins"], None, "Neither"),
        ("ForAnyValue:StringEquals", ["admins"], [], "Neither"),
        ("ForAllValues:StringEquals", ["devs", "ops"], ["devs", "ops"], "Allow"),
        ("ForAllValues:StringEquals", ["devs"], ["devs", "ops"], "Neither"),
        ("ForAllValues:StringEquals", ["devs"], None, "Allow"),  # vacuously true, as AWS documents
        ("ForAllValues:StringEquals", ["devs"], [], "Allow"),
        ("ForAllValues:StringLike", ["team-*"], ["team-a", "team-b"], "Allow"),
        ("ForAllValues:StringNotEquals", ["admins"], ["devs", "ops"], "Allow"),
        ("ForAllValues:StringNotEquals", ["admins"], ["devs", "admins"], "Neither"),
        ("ForAnyValue:StringNotEquals", ["admins"], ["devs", "admins"], "Allow"),
        ("ForAnyValue:StringNotEquals", ["admins"], ["admins"], "Neither"),
        ("ForAnyValue:StringEqualsIfExists", ["admins"], None, "Allow"),
        ("StringEquals", ["ops"], ["devs", "ops"], "Allow"),  # plain operator: any value may match
        ("StringNotEquals", ["ops"], ["devs", "ops"], "Neither"),  # negated: no value may match
        ("StringNotEquals", ["ops"], ["devs"], "Allow"),
    ],
)
def test_set_operators(operator: str, values: list[str], groups: list[str] | None, expected: str) -> None:
    claims: dict[str, Any] = {} if groups is None else {"cognito:groups": groups}
    compiled = policy(allow(Condition={operator: {"cognito:groups": values}}))
    assert effect(compiled, principal=jwt_user(**claims)) == expected


def test_jwt_scope_is_multi_valued() -> None:
    compiled = policy(allow(Condition={"ForAnyValue:StringEquals": {"jwt:scope": "orders.write"}}))
    assert effect(compiled, principal=jwt_user(scope="orders.read orders.write")) == "Allow"
    assert effect(compiled, principal=jwt_user(scope="orders.read")) == "Neither"


# --- Policy variables ----------------------------------------------------------------------------------------


def test_username_variable_in_resource() -> None:
    compiled = policy(allow(Resource="execute-api:/prod/*/home/${aws:username}/*"))
    alice = iam_user("alice")
    assert effect(compiled, req=request(path="/home/alice/notes"), principal=alice) == "Allow"
    assert effect(compiled, req=request(path="/home/bob/notes"), principal=alice) == "Neither"
    assert effect(compiled, req=request(path="/home/alice/notes"), principal=ANONYMOUS) == "Neither"  # unresolved


def test_variable_value_is_literal_not_a_wildcard() -> None:
    compiled = policy(allow(Resource="execute-api:/prod/GET/t/${jwt:tenant}"))
    star = jwt_user(tenant="*")
    assert effect(compiled, req=request(path="/t/acme"), principal=star) == "Neither"
    assert effect(compiled, req=request(path="/t/*"), principal=star) == "Allow"


def test_variable_default_and_claims() -> None:
    compiled = policy(allow(Condition={"StringEquals": {"request:header/x-tenant": "${jwt:tenant, 'public'}"}}))
    with_claim = jwt_user(tenant="acme")
    assert effect(compiled, req=request(headers={"x-tenant": "acme"}), principal=with_claim) == "Allow"
    assert effect(compiled, req=request(headers={"x-tenant": "public"}), principal=jwt_user()) == "Allow"
    assert effect(compiled, req=request(headers={"x-tenant": "public"}), principal=with_claim) == "Neither"


def test_variable_escapes() -> None:
    compiled = policy(allow(Condition={"StringLike": {"request:header/x-v": "a${*}b${?}${$}*"}}))
    assert effect(compiled, req=request(headers={"x-v": "a*b?$zz"})) == "Allow"
    assert effect(compiled, req=request(headers={"x-v": "aXbY$zz"})) == "Neither"


def test_version_2008_takes_variables_literally() -> None:
    compiled = policy(allow(Resource="execute-api:/prod/GET/${aws:username}"), version="2008-10-17")
    assert effect(compiled, req=request(path="/${aws:username}"), principal=iam_user("alice")) == "Allow"
    assert effect(compiled, req=request(path="/alice"), principal=iam_user("alice")) == "Neither"


def test_principal_arn_variable_in_arn_condition() -> None:
    compiled = policy(allow(Condition={"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::${aws:PrincipalAccount}:*"}}))
    assert effect(compiled, principal=iam_user()) == "Allow"
    assert effect(compiled, principal=ANONYMOUS) == "Neither"


# --- Identity policies --------------------------------------------------------------------------------------


def test_identity_policy_has_no_principal_and_applies_to_its_owner() -> None:
    compiled = policy(
        {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": f"{ARN_BASE}/GET/*"}, kind="identity"
    )
    assert effect(compiled, principal=iam_user()) == "Allow"
    assert effect(compiled, req=request(method="POST"), principal=iam_user()) == "Neither"


def test_other_actions_use_their_own_index() -> None:
    compiled = policy(allow(Action="execute-api:ManageConnections"), deny(Action="execute-api:Invoke"))
    ctx = EvalContext(request(), ANONYMOUS, API, action="execute-api:ManageConnections")
    assert compiled.evaluate(ctx).effect is Effect.ALLOW
    assert effect(compiled) == "Deny"


# --- The index: few candidates whatever the policy size, and never a wrong answer ----------------------------


def _big_policy(size: int) -> Any:
    statements = []
    for i in range(size):
        shape = i % 4
        if shape == 0:
            statements.append(allow(Sid=f"P{i}", Resource=f"execute-api:/prod/GET/items/{i}/*"))
        elif shape == 1:
            statements.append(allow(Sid=f"S{i}", Resource=f"execute-api:/prod/*/orders/{i}"))
        elif shape == 2:
            statements.append(deny(Sid=f"E{i}", Resource=f"{ARN_BASE}/DELETE/items/{i}"))
        else:
            statements.append(
                deny(Sid=f"M{i}", Resource=[f"execute-api:/prod/POST/items/{i}/*", f"execute-api:/*/PUT/x{i}"])
            )
    return policy(*statements, max_size=None)


BIG = _big_policy(4000)


@pytest.mark.parametrize(
    ("method", "path", "expected", "sid"),
    [
        ("GET", "/items/400/a", "Allow", "P400"),
        ("GET", "/orders/401", "Allow", "S401"),
        ("PATCH", "/x/y/orders/401", "Allow", "S401"),  # `*` spans segments
        ("DELETE", "/items/402", "Deny", "E402"),
        ("POST", "/items/403/z", "Deny", "M403"),
        ("PUT", "/x403", "Deny", "M403"),
        ("GET", "/items/401/a", "Neither", None),
        ("GET", "/orders/400", "Neither", None),
    ],
)
def test_index_finds_the_one_statement_among_thousands(method: str, path: str, expected: str, sid: str | None) -> None:
    ctx = EvalContext(request(method=method, path=path), ANONYMOUS, API)
    result = BIG.evaluate(ctx)
    assert result.effect.value == expected
    assert (result.deciding.sid if result.deciding else None) == sid
    assert len(BIG.candidates(ctx)) <= 2  # not 4,000: cost does not grow with the policy


def test_index_memo_is_bounded_and_stays_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.policy import compile as compile_module

    monkeypatch.setattr(compile_module, "MEMO_ENTRIES", 3)
    compiled = _big_policy(40)
    for _ in range(2):
        for i in range(0, 40, 4):
            assert effect(compiled, req=request(path=f"/items/{i}/q")) == "Allow"
            assert effect(compiled, req=request(path=f"/items/{i + 1}/q")) == "Neither"
    index = compiled._indexes["execute-api:invoke"]
    assert len(index._memo) <= 3
    index._memo.clear()
    assert effect(compiled, req=request(path="/items/0/" + "x" * 600)) == "Allow"
    assert index._memo == {}  # long client-chosen paths are not remembered
