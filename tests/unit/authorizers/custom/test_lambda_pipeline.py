"""The `lambda` authorizer through the real pipeline (config loader, runtime, policy stage): API Gateway's answers
for each thing a handler can say, and for requests it is never asked about."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sidecar.authorizers.custom.authorizer import LambdaPrincipal, identity_id
from sidecar.pipeline import first_phase_policy
from sidecar.policy import parse_policy

from . import handlers
from .lambda_testkit import ARN, HANDLERS, pipeline, request, token

TOKEN = f"handler: {HANDLERS}:token_handler\nevent_format: token\n"
HEADERS = "context_to_headers: {tenant: x-tenant, admin: x-admin, level: x-level, missing: x-missing}\n"


@pytest.fixture(autouse=True)
def _reset() -> None:
    handlers.reset()


async def test_an_allow_sends_the_context_upstream_and_names_the_principal(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, TOKEN + HEADERS)
    decision = await pipe.check(request(headers={**token("allow-alice"), "x-missing": "forged by the client"}))
    assert (decision.allowed, decision.status, decision.reason) == (True, 200, "Allowed")
    headers = dict(decision.all_headers())
    assert headers["x-tenant"] == "acme"
    assert headers["x-admin"] == "true"  # booleans as API Gateway renders $context.authorizer.admin
    assert headers["x-level"] == "3"
    assert headers["x-authz-principal"] == "alice"
    assert "x-missing" in decision.headers_to_remove  # a key the handler left out: the client's copy goes
    assert decision.principal is not None and decision.principal.kind == "lambda"
    assert not isinstance(decision.principal, LambdaPrincipal)  # decisions keep no usage key or policy
    assert decision.statement == "Statement[0]"
    assert len(handlers.CALLS) == 1
    assert handlers.CALLS[0]["authorizationToken"] == "allow-alice"
    context = handlers.CONTEXTS[0]
    assert context.function_name == "auth"
    assert context.invoked_function_arn == "arn:aws:lambda:us-east-1:123456789012:function:auth"
    assert context.log_group_name == "/aws/lambda/auth"
    assert 0 < context.get_remaining_time_in_millis() <= 1000


async def test_the_authorizers_principal_carries_policy_context_and_usage_key(tmp_path: Path) -> None:
    handlers.MALFORMED["response"] = {**handlers.generate_policy("u", "Allow", "*"), "usageIdentifierKey": "k-123"}
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:malformed\nevent_format: token\n")
    route = pipe.holder.current.routes.match("GET", "/pets/7")
    assert route is not None
    principal = await route.target.authorizer.authenticate(request(headers=token("t")))
    assert isinstance(principal, LambdaPrincipal)
    assert principal.usage_identifier_key == "k-123" and "k-123" not in repr(principal)
    assert principal.context == {"lambda:stringKey": "value", "lambda:numberKey": 123, "lambda:booleanKey": True}
    assert len(principal.policies) == 1 and principal.policies[0].kind == "identity"


async def test_plain_dict_handler_in_aws_documented_style(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:plain_token_handler\nevent_format: token\n")
    allowed = await pipe.check(request(headers=token("allow")))
    assert allowed.allowed and dict(allowed.all_headers())["x-authz-principal"] == "user"
    denied = await pipe.check(request(headers=token("deny")))
    assert (denied.status, denied.reason) == (403, "AccessDenied")
    assert denied.message == "User is not authorized to access this resource with an explicit deny"
    refused = await pipe.check(request(headers=token("unauthorized")))
    assert (refused.status, refused.reason, refused.message) == (401, "Unauthorized", "Unauthorized")
    assert "www-authenticate" not in dict(refused.all_headers())  # API Gateway sends a Lambda's 401 bare
    failed = await pipe.check(request(headers=token("something else")))
    assert (failed.status, failed.reason) == (500, "AuthorizerConfigurationException")


async def test_an_implicit_deny_has_api_gateways_message(tmp_path: Path) -> None:
    decision = await pipeline(tmp_path, TOKEN).check(request(headers=token("neither-x")))
    assert (decision.status, decision.reason) == (403, "AccessDenied")
    assert decision.message == "User is not authorized to access this resource"
    assert decision.principal is not None and decision.principal.id == "x"  # who was refused, for the logs


async def test_a_crash_is_a_500_logged_by_type_never_with_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    decision = await pipeline(tmp_path, TOKEN).check(request(headers=token("crash-secret-token-42")))
    assert (decision.allowed, decision.status, decision.reason) == (False, 500, "AuthorizerConfigurationException")
    assert "exception:KeyError" in caplog.text
    assert "secret-token-42" not in caplog.text


async def test_system_exit_in_a_handler_is_a_500_and_the_sidecar_goes_on(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:system_exit\nevent_format: token\n")
    for _ in range(2):
        decision = await pipe.check(request(headers=token("t")))
        assert (decision.status, decision.reason) == (500, "AuthorizerConfigurationException")
    assert len(handlers.CALLS) == 2


async def test_unauthorized_is_not_cached(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, TOKEN)
    for _ in range(3):
        decision = await pipe.check(request(headers=token("unauthorized")))
        assert (decision.status, decision.reason) == (401, "Unauthorized")
    assert len(handlers.CALLS) == 3


async def test_a_timeout_is_a_500_and_does_not_wait_for_the_handler(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:sleepy_handler\nevent_format: token\ntimeout: 0.2\n")
    try:
        decision = await pipe.check(request(headers=token("t")))
        assert (decision.status, decision.reason) == (500, "AuthorizerConfigurationException")
        assert handlers.STARTED.is_set() and not handlers.RELEASE.is_set()  # answered while the handler still ran
        assert 0 < handlers.CONTEXTS[0] <= 200  # the context counted down to this call's deadline
    finally:
        handlers.RELEASE.set()


MISSING = [
    (TOKEN, {}),  # no Authorization header
    (TOKEN, token("")),  # an empty one
    (
        f"handler: {HANDLERS}:plain_request_handler\nidentity_sources: "
        "[method.request.header.HeaderAuth1, method.request.querystring.QueryString1]\n",
        {"headerauth1": "headerValue1"},  # the query parameter is missing
    ),
    (
        f"handler: {HANDLERS}:plain_request_handler\nidentity_sources: ['$stageVariables.absent']\n",
        {"headerauth1": "headerValue1"},
    ),
]


@pytest.mark.parametrize(("settings", "headers"), MISSING)
async def test_a_missing_identity_source_is_401_without_a_call(
    tmp_path: Path, settings: str, headers: dict[str, str]
) -> None:
    decision = await pipeline(tmp_path, settings).check(request(headers=headers))
    assert (decision.status, decision.reason, decision.message) == (401, "Unauthorized", "Unauthorized")
    assert handlers.CALLS == []


async def test_token_validation_refuses_without_a_call(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, TOKEN + "token_validation: '^allow-[a-z]+$'\n")
    refused = await pipe.check(request(headers=token("allow-alice; drop table")))
    assert (refused.status, refused.reason) == (401, "Unauthorized")
    assert handlers.CALLS == []
    assert (await pipe.check(request(headers=token("allow-alice")))).allowed
    assert len(handlers.CALLS) == 1


async def test_the_raw_header_is_the_token(tmp_path: Path) -> None:
    """Unlike JWT's identity source, `Bearer ` is not stripped: the handler gets what API Gateway would pass."""
    await pipeline(tmp_path, f"handler: {HANDLERS}:plain_token_handler\nevent_format: token\n").check(
        request(headers=token("Bearer allow"))
    )
    assert handlers.CALLS[0]["authorizationToken"] == "Bearer allow"


async def test_the_developer_guides_request_authorizer(tmp_path: Path) -> None:
    settings = (
        f"handler: {HANDLERS}:plain_request_handler\n"
        "identity_sources: [method.request.header.HeaderAuth1, method.request.querystring.QueryString1]\n"
        "stage_variables: {StageVar1: stageValue1}\n"
    )
    pipe = pipeline(tmp_path, settings)
    good = request(headers={"headerauth1": "headerValue1"}, query="QueryString1=queryValue1")
    assert (await pipe.check(good)).allowed
    wrong = request(headers={"headerauth1": "other"}, query="QueryString1=queryValue1")
    assert (await pipe.check(wrong)).status == 401
    assert handlers.CALLS[0]["methodArn"] == f"{ARN}/GET/pets/7"
    assert handlers.CALLS[0]["resource"] == "/pets/{id}" and handlers.CALLS[0]["pathParameters"] == {"id": "7"}


async def test_powertools_request_handler_on_the_catch_all_route(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:request_handler\nidentity_sources: [$request.header.x-token]\n")
    decision = await pipe.check(request("/owners/3/pets", method="POST", headers={"x-token": "allow-dana"}))
    assert decision.allowed
    event = handlers.CALLS[0]
    assert event["resource"] == "/{proxy+}" and event["pathParameters"] == {"proxy": "owners/3/pets"}
    assert event["methodArn"] == f"{ARN}/POST/owners/3/pets"


async def test_async_handlers_run_on_the_loop(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:async_token_handler\nevent_format: token\n")
    assert (await pipe.check(request(headers=token("allow-erin")))).allowed
    assert (await pipe.check(request(headers=token("deny-erin")))).status == 403


async def test_http_api_simple_responses(tmp_path: Path) -> None:
    settings = (
        f"handler: {HANDLERS}:v2_simple_handler\nevent_format: http-2.0\nsimple_responses: true\n"
        "identity_sources: [$request.header.Authorization]\ncontext_to_headers: {tenant: x-tenant}\n"
    )
    pipe = pipeline(tmp_path, settings)
    allowed = await pipe.check(request(headers=token("allow")))
    assert allowed.allowed and dict(allowed.all_headers())["x-tenant"] == "acme"
    denied = await pipe.check(request(headers=token("nope")))
    assert (denied.status, denied.reason, denied.message) == (403, "AccessDenied", "Forbidden")
    refused = await pipe.check(request(headers=token("unauthorized")))
    assert refused.status == 401


async def test_a_simple_response_names_each_caller_by_a_digest_of_its_identity_never_its_values(
    tmp_path: Path,
) -> None:
    """A simple response names no principal: each caller is named by a SHA-256 prefix of its identity source
    values, so callers stay apart upstream and in decision logs, and no token reaches either."""
    settings = (
        f"handler: {HANDLERS}:v2_simple_handler\nevent_format: http-2.0\nsimple_responses: true\n"
        "identity_sources: [$request.header.Authorization]\nresult_ttl: 0\n"
    )
    pipe = pipeline(tmp_path, settings)
    first = await pipe.check(request(headers=token("allow-SECRET-1")))
    again = await pipe.check(request(headers=token("allow-SECRET-1")))
    other = await pipe.check(request(headers=token("allow-SECRET-2")))
    assert first.allowed and again.allowed and other.allowed
    named = [decision.principal.id for decision in (first, again, other) if decision.principal is not None]
    assert named[0] == identity_id(("allow-SECRET-1",)) == dict(first.all_headers())["x-authz-principal"]
    assert named[0] == named[1] != named[2]
    assert all(len(name) == 16 and "SECRET" not in name for name in named)
    assert first.principal is again.principal  # the same caller is the same principal (the allow memo holds)


async def test_the_lambda_contexts_request_id_is_the_events_request_id(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, f"handler: {HANDLERS}:request_handler\nidentity_sources: [$request.header.x-token]\n")
    await pipe.check(request(headers={"x-token": "allow-ann"}, request_id="envoy-id-1"))
    await pipe.check(request(headers={"x-token": "allow-ben"}, request_id=""))  # a request Envoy did not name
    for event, context in zip(handlers.CALLS, handlers.CONTEXTS, strict=True):
        assert context.aws_request_id == event["requestContext"]["requestId"]
    assert handlers.CONTEXTS[0].aws_request_id == "envoy-id-1"
    assert len(handlers.CONTEXTS[1].aws_request_id) == 36  # a fresh UUID, the same in both


async def test_http_api_2_0_policy_responses_and_the_route_key_source(tmp_path: Path) -> None:
    settings = (
        f"handler: {HANDLERS}:v2_policy_handler\nevent_format: http-2.0\n"
        "identity_sources: [$request.header.Authorization, $context.routeKey]\n"
    )
    pipe = pipeline(tmp_path, settings)
    assert (await pipe.check(request(headers=token("allow-fay")))).allowed
    event = handlers.CALLS[0]
    assert event["identitySource"] == ["allow-fay", "GET /pets/{id}"]
    assert event["routeKey"] == "GET /pets/{id}"
    assert (await pipe.check(request(headers=token("deny-fay")))).status == 403


DENY_ADMIN = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "Open", "Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*"},
        {
            "Sid": "NoAdmin",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "execute-api:Invoke",
            "Resource": f"{ARN}/*/admin/*",
        },
        {
            "Sid": "NoAcmeTenants",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "execute-api:Invoke",
            "Resource": f"{ARN}/*/tenants/*",
            "Condition": {"StringEquals": {"lambda:tenant": "acme"}},
        },
    ],
}


async def test_a_resource_policy_deny_refuses_before_the_handler(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, TOKEN, policy=DENY_ADMIN)
    decision = await pipe.check(request("/admin/users", headers=token("allow-alice")))
    assert (decision.status, decision.reason, decision.statement) == (403, "AccessDenied", "NoAdmin")
    assert decision.message.endswith("with an explicit deny") and "anonymous" in decision.message
    assert handlers.CALLS == []
    assert (await pipe.check(request("/pets/7", headers=token("allow-alice")))).allowed
    assert len(handlers.CALLS) == 1


async def test_context_keys_reach_policies_as_lambda_keys(tmp_path: Path) -> None:
    """A resource-policy statement on `lambda:tenant` does not fire for the anonymous caller before the call, and
    fires after it, once the handler said the tenant."""
    pipe = pipeline(tmp_path, TOKEN, policy=DENY_ADMIN)
    decision = await pipe.check(request("/tenants/acme", headers=token("broad-alice")))
    assert len(handlers.CALLS) == 1
    assert (decision.status, decision.statement) == (403, "NoAcmeTenants")
    assert decision.message.startswith("User: alice is not authorized")  # the resource policy's words, IAM's


def statement(sid: str, effect: str, resource: str, condition: dict[str, Any] | None = None) -> dict[str, Any]:
    found = {"Sid": sid, "Effect": effect, "Principal": "*", "Action": "execute-api:Invoke", "Resource": resource}
    return found if condition is None else {**found, "Condition": condition}


CALLER_KEYS = {
    "Version": "2012-10-17",
    "Statement": [
        statement("Open", "Allow", f"{ARN}/*"),
        statement("OnlyAcmePets", "Deny", f"{ARN}/*/pets/*", {"StringNotEquals": {"lambda:tenant": "acme"}}),
        statement("TenantRequired", "Deny", f"{ARN}/*", {"Null": {"lambda:tenant": "true"}}),
        statement("OnlyGlobexOwners", "Deny", f"{ARN}/*/owners/*", {"StringNotEquals": {"lambda:tenant": "globex"}}),
        statement("NoUserIds", "Deny", f"{ARN}/*/users/*", {"StringLike": {"aws:userid": "*"}}),
        statement("NoBadNet", "Deny", f"{ARN}/*", {"IpAddress": {"aws:SourceIp": "198.51.100.0/24"}}),
    ],
}


async def test_a_negated_condition_on_lambda_keys_is_judged_after_the_handler(tmp_path: Path) -> None:
    """Before the call no `lambda:` key is known, so a negated operator (or Null) on one would match for everyone:
    such a Deny is judged only with the handler's context; one on what the request alone says still refuses first."""
    pipe = pipeline(tmp_path, TOKEN, policy=CALLER_KEYS)
    assert (await pipe.check(request("/pets/7", headers=token("allow-alice")))).allowed  # tenant acme
    assert len(handlers.CALLS) == 1
    owners = await pipe.check(request("/owners/3", headers=token("allow-alice")))
    assert (owners.status, owners.statement, len(handlers.CALLS)) == (403, "OnlyGlobexOwners", 2)
    assert owners.message.startswith("User: alice is not authorized")
    users = await pipe.check(request("/users/3", headers=token("allow-carol")))
    assert (users.status, users.statement, len(handlers.CALLS)) == (403, "NoUserIds", 3)  # the caller's id: after
    bad = await pipe.check(request("/pets/7", headers=token("allow-bob"), source_address="198.51.100.7"))
    assert (bad.status, bad.statement, len(handlers.CALLS)) == (403, "NoBadNet", 3)  # refused before the handler


def test_the_first_phase_keeps_only_the_denies_the_request_alone_decides() -> None:
    policy = parse_policy(json.dumps(CALLER_KEYS), kind="resource")
    first = first_phase_policy(policy)
    assert first is not None and [s.ref.label for s in first.statements] == ["NoBadNet"]
    assert first.statements[0].ref == policy.statements[5].ref  # named as in the policy itself
    only_callers = {**CALLER_KEYS, "Statement": CALLER_KEYS["Statement"][:5]}
    assert first_phase_policy(parse_policy(json.dumps(only_callers), kind="resource")) is None  # no first phase
    headers = statement("NoBots", "Deny", f"{ARN}/*", {"StringLike": {"request:header/user-agent": "bot*"}})
    templated = statement("Mine", "Deny", f"{ARN}/*", {"StringNotEquals": {"aws:Referer": "${lambda:site}"}})
    mixed = {"Version": "2012-10-17", "Statement": [headers, templated]}
    first = first_phase_policy(parse_policy(json.dumps(mixed), kind="resource"))
    assert first is not None and [s.ref.label for s in first.statements] == ["NoBots"]
