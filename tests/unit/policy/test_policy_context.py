"""The per-request context: which keys exist, where their values come from, and that they are computed lazily."""

from __future__ import annotations

from typing import Any

import pytest
from policy_support import API, NOON, allow, effect, iam_user, jwt_user, policy, request

from sidecar.policy import ContextSettings, EvalContext
from sidecar.policy.context import parse_ip
from sidecar.request import ANONYMOUS, Principal


def _ctx(principal: Principal = ANONYMOUS, settings: ContextSettings | None = None, **kwargs: Any) -> EvalContext:
    return EvalContext(request(**kwargs), principal, API, settings or ContextSettings())


def test_resource_arn_follows_api_gateway() -> None:
    ctx = _ctx(method="post", path="/orders/7?x=1")
    assert ctx.resource == "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod/POST/orders/7"
    assert ctx.action == "execute-api:invoke"


@pytest.mark.parametrize(
    ("source", "xff", "hops", "expected"),
    [
        ("198.51.100.1", "", 0, "198.51.100.1"),
        ("198.51.100.1", "203.0.113.5", 0, "198.51.100.1"),  # XFF ignored without trusted hops
        ("10.0.0.1", "203.0.113.5", 1, "203.0.113.5"),
        ("10.0.0.1", "1.1.1.1, 203.0.113.5", 1, "203.0.113.5"),  # the client-written entry is skipped
        ("10.0.0.1", "1.1.1.1, 203.0.113.5, 10.0.0.2", 2, "203.0.113.5"),
        ("10.0.0.1", "203.0.113.5", 3, "203.0.113.5"),  # fewer entries than hops: the leftmost
        ("10.0.0.1", "", 1, "10.0.0.1"),
        ("10.0.0.1", "not-an-ip", 1, None),
        ("::ffff:10.0.0.1", "", 0, "10.0.0.1"),
        ("2001:db8::1", "", 0, "2001:db8::1"),
        ("", "", 0, None),
    ],
)
def test_source_ip(source: str, xff: str, hops: int, expected: str | None) -> None:
    headers = {"x-forwarded-for": xff} if xff else {}
    ctx = _ctx(settings=ContextSettings(trusted_proxy_hops=hops), source=source, headers=headers)
    assert ctx.get("aws:sourceip") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", (4, 0x0A000001)),
        (" 10.0.0.1 ", (4, 0x0A000001)),
        ("::ffff:10.0.0.1", (4, 0x0A000001)),
        ("2001:db8::1", (6, 0x20010DB8 << 96 | 1)),
        ("fe80::1%eth0", (6, 0xFE80 << 112 | 1)),
        ("010.0.0.1", None),
        ("10.0.0", None),
        ("300.0.0.1", None),
        ("", None),
        ("example.com", None),
        ("10.0.0.1\x00", None),
        ("::1\x00", None),
    ],
)
def test_parse_ip(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_ip(text) == expected


def test_request_keys() -> None:
    headers = {"referer": "https://example.com/", "user-agent": "curl/8", "x-vpce": "vpce-1", "x-vpc": "vpc-2"}
    settings = ContextSettings(vpce_header="x-vpce", vpc_header="x-vpc")
    ctx = _ctx(headers=headers, scheme="https", settings=settings, trusted_peer=True)
    assert ctx.get("aws:currenttime") == "2026-01-01T12:00:00Z"
    assert ctx.get("aws:epochtime") == str(int(NOON))
    assert ctx.get("aws:securetransport") == "true"
    assert ctx.get("aws:referer") == "https://example.com/"
    assert ctx.get("aws:useragent") == "curl/8"
    assert ctx.get("aws:sourcevpce") == "vpce-1"
    assert ctx.get("aws:sourcevpc") == "vpc-2"
    assert ctx.get("aws:requestedregion") == "us-east-1"
    assert ctx.get("request:header/x-vpce") == "vpce-1"
    assert ctx.get("request:header/missing") is None
    assert _ctx(scheme="http").get("aws:securetransport") == "false"
    assert _ctx(headers={"x-vpce": "vpce-1"}).get("aws:sourcevpce") is None


def test_principal_keys_for_an_iam_user() -> None:
    ctx = _ctx(iam_user("alice"))
    assert ctx.get("aws:principalarn") == "arn:aws:iam::123456789012:user/alice"
    assert ctx.get("aws:principalaccount") == "123456789012"
    assert ctx.get("aws:principaltype") == "User"
    assert ctx.get("aws:userid") == "AIDAALICE"
    assert ctx.get("aws:username") == "alice"


@pytest.mark.parametrize(
    ("arn", "kind", "expected_type"),
    [
        ("arn:aws:iam::123456789012:root", "sigv4", "Account"),
        ("arn:aws:sts::123456789012:assumed-role/R/s", "sigv4", "AssumedRole"),
        ("arn:aws:sts::123456789012:federated-user/f", "sigv4", "FederatedUser"),
        ("", "anonymous", "Anonymous"),
        ("", "mtls", None),
    ],
)
def test_principal_type(arn: str, kind: str, expected_type: str | None) -> None:
    ctx = _ctx(Principal(kind=kind, id="x", arn=arn))
    assert ctx.get("aws:principaltype") == expected_type
    assert ctx.get("aws:username") is None


def test_claim_keys() -> None:
    user = jwt_user("u-1", scope="a b", **{"cognito:groups": ["admins"], "email_verified": True, "n": 3})
    ctx = _ctx(user)
    assert ctx.get("jwt:sub") == "u-1"
    assert ctx.get("jwt:scope") == ("a", "b")
    assert ctx.get("cognito:groups") == ("admins",)
    assert ctx.get("jwt:email_verified") == "true"
    assert ctx.get("jwt:n") == "3"
    assert ctx.get("jwt:nothing") is None
    assert ctx.get("aws:principaltype") == "FederatedUser"


def test_web_identity_provider_keys_read_the_token_of_that_provider() -> None:
    cognito = jwt_user("us-east-1:1234-abcd", iss="https://cognito-identity.amazonaws.com", amr=["authenticated"])
    ctx = _ctx(cognito)
    assert ctx.get("cognito-identity.amazonaws.com:sub") == "us-east-1:1234-abcd"
    assert ctx.get("cognito-identity.amazonaws.com:amr") == ("authenticated",)
    assert ctx.get("accounts.google.com:sub") is None  # another provider's key is absent
    compiled = policy(allow(Resource="execute-api:/prod/GET/users/${cognito-identity.amazonaws.com:sub}"))
    assert effect(compiled, req=request(path="/users/us-east-1:1234-abcd"), principal=cognito) == "Allow"
    assert effect(compiled, req=request(path="/users/someone-else"), principal=cognito) == "Neither"


def test_principal_context_adds_keys_but_cannot_fake_the_network() -> None:
    principal = Principal(
        kind="custom",
        id="p",
        context={"aws:PrincipalOrgID": "o-123", "aws:SourceIp": "10.0.0.1", "custom:tier": "gold", "aws:username": "u"},
    )
    ctx = _ctx(principal, source="203.0.113.1")
    assert ctx.get("aws:principalorgid") is None  # aws: keys come from the sidecar, not from authorizer output
    assert ctx.get("custom:tier") == "gold"
    assert ctx.get("aws:username") == "u"  # an authorizer may name its user
    assert ctx.get("aws:sourceip") == "203.0.113.1"  # but never its network location


def test_absurd_request_time_leaves_time_keys_absent() -> None:
    ctx = _ctx(time=1e300)
    assert ctx.get("aws:currenttime") is None
    assert ctx.get("aws:epochtime") == str(int(1e300))


def test_context_is_lazy_and_memoized() -> None:
    compiled = policy(allow(Condition={"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}))
    assert compiled.context_keys == frozenset({"aws:sourceip"})
    ctx = _ctx()
    assert compiled.evaluate(ctx).effect.value == "Allow"
    assert set(ctx._values) == {"aws:sourceip"}  # aws:CurrentTime and the rest were never computed
    compiled.evaluate(ctx)
    assert set(ctx._values) == {"aws:sourceip"}


def test_context_keys_include_variables() -> None:
    compiled = policy(
        allow(
            Resource="execute-api:/prod/GET/${aws:username}/*",
            Condition={"StringLike": {"request:header/x-t": "${jwt:tenant}-*"}, "Null": {"jwt:sub": "false"}},
        )
    )
    assert compiled.context_keys == frozenset({"aws:username", "request:header/x-t", "jwt:tenant", "jwt:sub"})
