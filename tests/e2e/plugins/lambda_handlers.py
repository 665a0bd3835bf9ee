"""Lambda authorizer handlers for the end-to-end tests, written as teams write them for API Gateway: (a) with
powertools' event classes and response builders, (b) as plain dicts in AWS's documented style (with the shipped
example's `generate_policy`). They run in the sidecar's child process (`handler:
tests.e2e.plugins.lambda_handlers:NAME`) and in a real `authz-sidecar lambda-serve` (`--app-dir` the
repository), unchanged either way.

The token says what to answer: `allow-WHO` (a policy for exactly the ARN asked about), `broad-WHO` (a policy for
every route of the stage: the documented fix for the cached-policy pitfall), `deny-WHO`, `unauthorized`, `crash`
and `slow` (runs past its own deadline). Every call first appends its event, as one JSON line, to the file named
by `$AUTHZ_E2E_LAMBDA_CALLS`: the call is on disk before the sidecar answers, so a test in another process counts
calls by reading the file after each response, without waiting for anything.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerEventV2,
    APIGatewayAuthorizerRequestEvent,
    APIGatewayAuthorizerResponse,
    APIGatewayAuthorizerResponseV2,
    APIGatewayAuthorizerTokenEvent,
    parse_api_gateway_arn,
)

from sidecar.examples.lambda_authorizer import generate_policy

PLAIN_CONTEXT = {"stringKey": "value", "numberKey": 123, "booleanKey": True}
"""What the shipped example's `generate_policy` puts in every response (the developer guide's context)."""

CALLS_ENV = "AUTHZ_E2E_LAMBDA_CALLS"
POWERTOOLS_CONTEXT = {"tenant": "acme", "admin": True, "level": 3}


def _record(handler: str, event: dict[str, Any]) -> None:
    path = os.environ.get(CALLS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:  # one write of one line: whole even from several threads
            out.write(json.dumps({"handler": handler, "event": event}) + "\n")


def _verb(handler: str, event: dict[str, Any], token: str, context: Any) -> tuple[str, str]:
    """Record the call, then raise or run long as the token says; else (verb, who) for the handler to answer."""
    _record(handler, event)
    verb, _, who = token.partition("-")
    if verb == "unauthorized":
        raise Exception("Unauthorized")
    if verb == "crash":
        raise KeyError(token)
    if verb == "slow":  # the workload under test: a handler slower than its timeout, bounded by it
        time.sleep(context.get_remaining_time_in_millis() / 1000 + 0.25)
        verb, who = "allow", "late"
    return verb, who or "someone"


# -- (a) powertools ----------------------------------------------------------------------------------------------


def _powertools_policy(verb: str, who: str, arn: str) -> dict[str, Any]:
    parsed = parse_api_gateway_arn(arn)
    policy = APIGatewayAuthorizerResponse.from_route_arn(arn, principal_id=who, context=dict(POWERTOOLS_CONTEXT))
    if verb == "allow":  # only the route this request is for, as the powertools docs show
        policy.allow_route(http_method=parsed.http_method or "*", resource=parsed.resource or "/")
    elif verb == "broad":
        policy.allow_all_routes()
    else:
        policy.deny_all_routes()
    return policy.asdict()


def powertools_token(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """REST TOKEN."""
    parsed = APIGatewayAuthorizerTokenEvent(event)
    verb, who = _verb("powertools_token", event, parsed.authorization_token, context)
    return _powertools_policy(verb, who, parsed.method_arn)


def powertools_request(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """REST REQUEST and HTTP API payload 1.0: the token is the Authorization header."""
    parsed = APIGatewayAuthorizerRequestEvent(event)
    token = parsed.get_header_value("authorization", default_value="")
    verb, who = _verb("powertools_request", event, token, context)
    return _powertools_policy(verb, who, parsed.method_arn)


def powertools_v2(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """HTTP API payload 2.0 answering an IAM policy."""
    parsed = APIGatewayAuthorizerEventV2(event)
    verb, who = _verb("powertools_v2", event, parsed.identity_source[0], context)
    return _powertools_policy(verb, who, parsed.route_arn)


def powertools_v2_simple(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """HTTP API payload 2.0 with simple responses."""
    parsed = APIGatewayAuthorizerEventV2(event)
    verb, _ = _verb("powertools_v2_simple", event, parsed.identity_source[0], context)
    allowed = verb in ("allow", "broad")
    return APIGatewayAuthorizerResponseV2(authorize=allowed, context=dict(POWERTOOLS_CONTEXT)).asdict()


# -- (b) plain dicts, AWS's documented style ---------------------------------------------------------------------


def _plain_policy(verb: str, who: str, arn: str) -> dict[str, Any]:
    if verb == "allow":
        return generate_policy(who, "Allow", arn)
    if verb == "broad":  # arn:aws:execute-api:REGION:ACCOUNT:API/STAGE/*: every method and path of the stage
        api, stage = arn.split("/", 2)[:2]
        return generate_policy(who, "Allow", f"{api}/{stage}/*")
    return generate_policy(who, "Deny", arn)


def plain_token(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """REST TOKEN, as the developer guide writes it."""
    verb, who = _verb("plain_token", event, event["authorizationToken"], context)
    return _plain_policy(verb, who, event["methodArn"])


def plain_request(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """REST REQUEST and HTTP API payload 1.0."""
    verb, who = _verb("plain_request", event, event["headers"].get("authorization", ""), context)
    return _plain_policy(verb, who, event["methodArn"])


def plain_v2(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """HTTP API payload 2.0 answering an IAM policy."""
    verb, who = _verb("plain_v2", event, event["identitySource"][0], context)
    return _plain_policy(verb, who, event["routeArn"])


def plain_v2_simple(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """HTTP API payload 2.0 with simple responses, as the developer guide's example answers."""
    verb, _ = _verb("plain_v2_simple", event, event["identitySource"][0], context)
    return {"isAuthorized": verb in ("allow", "broad"), "context": PLAIN_CONTEXT}
