"""The trivial Lambda authorizer handler the custom-authorizer rows call, in process and through `lambda-serve`.

Trivial on purpose: the rows measure what the sidecar spends around a handler (the event, the call, the
response's validation, the policy), so the handler itself costs a dictionary or two. It answers in AWS's
documented style: the caller's principal, a policy allowing the ARN it was asked about, and a context value.
"""

from __future__ import annotations

from typing import Any

HANDLER = "benchmarks.lambda_handlers:allow"
ASYNC_HANDLER = "benchmarks.lambda_handlers:allow_async"


def allow(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Allow the method ARN of this event (TOKEN and REQUEST events name it `methodArn`)."""
    return {
        "principalId": "bench-user",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}],
        },
        "context": {"tier": "gold"},
    }


async def allow_async(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """`allow` as an async function: the sidecar runs it on its event loop, with no thread to hand it to."""
    return allow(event, context)
