"""Lambda authorizer handlers as teams write them for API Gateway, named by import string in the tests' configs:
(a) with powertools' event classes and response builders, (b) as plain dicts in AWS's documented style.

The token says what to answer (`allow-alice`, `deny-bob`, `broad-carol`, `unauthorized`, `crash`, `block`, ...);
every call is recorded in `CALLS` (the event, and the token or identity) so tests can assert how often the handler
ran. `RELEASE` / `STARTED` let a test hold a handler inside its call without sleeping.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerEventV2,
    APIGatewayAuthorizerRequestEvent,
    APIGatewayAuthorizerResponse,
    APIGatewayAuthorizerResponseV2,
    APIGatewayAuthorizerTokenEvent,
)

CALLS: list[dict[str, Any]] = []
"""Every event a handler received, in order (appended from pool threads: list.append is atomic)."""
CONTEXTS: list[Any] = []
STARTED = threading.Event()
RELEASE = threading.Event()
FINISHED = threading.Event()
"""Set when a handler that answers late (`stubborn_handler`) has answered."""
MALFORMED: dict[str, Any] = {"response": None}
"""What `malformed` returns (a test sets it)."""
CONTEXT = {"tenant": "acme", "admin": True, "level": 3, "ratio": 0.5}


def reset() -> None:
    CALLS.clear()
    CONTEXTS.clear()
    STARTED.clear()
    RELEASE.clear()
    FINISHED.clear()
    MALFORMED["response"] = None


def _block() -> None:
    STARTED.set()
    if not RELEASE.wait(10):  # never a hang: a test that forgets to release fails here
        raise RuntimeError("the test never released the handler")


# -- (a) powertools ----------------------------------------------------------------------------------------------


def _powertools_answer(token: str, arn: str) -> dict[str, Any]:
    verb, _, who = token.partition("-")
    if verb == "unauthorized":
        raise Exception("Unauthorized")
    if verb == "crash":
        raise KeyError("boom")
    if verb == "block":
        _block()
        verb, who = "allow", "blocked"
    parsed = APIGatewayAuthorizerTokenEvent({"methodArn": arn}).parsed_arn
    policy = APIGatewayAuthorizerResponse.from_route_arn(arn, principal_id=who or "someone", context=dict(CONTEXT))
    if verb == "allow":  # only the route this request is for, as the powertools docs show
        policy.allow_route(http_method=parsed.http_method or "*", resource=parsed.resource or "/")
    elif verb == "broad":
        policy.allow_all_routes()
    elif verb == "deny":
        policy.deny_all_routes()
    elif verb == "neither":  # allows another route only: an implicit deny for this one
        policy.allow_route(http_method="GET", resource="/somewhere-else")
    else:
        raise Exception("Unauthorized")
    return policy.asdict()


def token_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A TOKEN authorizer written with powertools."""
    parsed = APIGatewayAuthorizerTokenEvent(event)
    CALLS.append(event)
    CONTEXTS.append(context)
    return _powertools_answer(parsed.authorization_token, parsed.method_arn)


def request_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A REQUEST authorizer (REST or HTTP API 1.0) written with powertools; the token is the `x-token` header."""
    parsed = APIGatewayAuthorizerRequestEvent(event)
    CALLS.append(event)
    CONTEXTS.append(context)
    return _powertools_answer(parsed.headers.get("x-token", ""), parsed.method_arn)


def v2_simple_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """An HTTP API 2.0 authorizer with simple responses, written with powertools."""
    parsed = APIGatewayAuthorizerEventV2(event)
    CALLS.append(event)
    token = parsed.identity_source[0] if parsed.identity_source else ""
    if token == "unauthorized":
        raise Exception("Unauthorized")
    return APIGatewayAuthorizerResponseV2(authorize=token.startswith("allow"), context=dict(CONTEXT)).asdict()


def v2_policy_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """An HTTP API 2.0 authorizer answering IAM policies (powertools), for the route it was asked about."""
    parsed = APIGatewayAuthorizerEventV2(event)
    CALLS.append(event)
    return _powertools_answer(parsed.identity_source[0], parsed.route_arn)


async def async_token_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """An async handler (run on the event loop)."""
    CALLS.append(event)
    return _powertools_answer(event["authorizationToken"], event["methodArn"])


async def stubborn_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """An async handler that catches its cancellation at the timeout and answers afterwards, once the test
    releases it: its late answer must be neither returned nor cached."""
    CALLS.append(event)
    STARTED.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await asyncio.to_thread(RELEASE.wait, 10)
    try:
        return _powertools_answer("broad-late", event["methodArn"])
    finally:
        FINISHED.set()


# -- (b) plain dicts, AWS's documented style ---------------------------------------------------------------------


def generate_policy(principal_id: str, effect: str, resource: str) -> dict[str, Any]:
    """As in API Gateway's developer guide (`generatePolicy`)."""
    return {
        "principalId": principal_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
        "context": {"stringKey": "value", "numberKey": 123, "booleanKey": True},
    }


def plain_token_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The developer guide's TOKEN example: `allow`, `deny`, `unauthorized`, anything else fails."""
    CALLS.append(event)
    token = event["authorizationToken"]
    if token == "allow":
        return generate_policy("user", "Allow", event["methodArn"])
    if token == "deny":
        return generate_policy("user", "Deny", event["methodArn"])
    if token == "unauthorized":
        raise Exception("Unauthorized")
    raise Exception("Error: Invalid token")


def plain_request_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The developer guide's REQUEST example: allow when the header, query parameter and stage variable match."""
    CALLS.append(event)
    headers = event["headers"]
    query = event["queryStringParameters"] or {}
    stage = event["stageVariables"]
    if (
        headers.get("headerauth1") == "headerValue1"
        and query.get("QueryString1") == "queryValue1"
        and stage.get("StageVar1") == "stageValue1"
    ):
        return generate_policy("me", "Allow", event["methodArn"])
    raise Exception("Unauthorized")


def blocking_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Blocks its thread until the test releases it when the path is /slow; answers at once elsewhere."""
    CALLS.append(event)
    if event["path"] == "/slow":
        _block()
    return generate_policy("user", "Allow", "*")


def sleepy_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Blocks until released (the timeout test releases it after the 500 arrived)."""
    CALLS.append(event)
    CONTEXTS.append(context.get_remaining_time_in_millis())
    _block()
    return generate_policy("user", "Allow", "*")


def malformed(event: dict[str, Any], context: Any) -> Any:
    """Returns whatever the test put in `MALFORMED`."""
    CALLS.append(event)
    return MALFORMED["response"]


def system_exit(event: dict[str, Any], context: Any) -> Any:
    """Calls `sys.exit` (a BaseException): must be a 500, and must not stop the sidecar."""
    CALLS.append(event)
    raise SystemExit(3)


NOT_CALLABLE = 42


def sid_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Allows reading pets and denies deleting them, each statement named (for `check --explain`)."""
    CALLS.append(event)
    base = event["methodArn"].split("/", 2)[0] + "/" + event["methodArn"].split("/", 2)[1]
    return {
        "principalId": "explained-user",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadPets",
                    "Effect": "Allow",
                    "Action": "execute-api:Invoke",
                    "Resource": f"{base}/GET/pets/*",
                },
                {"Sid": "NoDeletes", "Effect": "Deny", "Action": "execute-api:Invoke", "Resource": f"{base}/DELETE/*"},
            ],
        },
    }
