"""The soak's `type: lambda` handler (in process): its answer is fixed by the token, so the soak knows each
request's decision in advance.

`allow-...` gets a policy allowing the method ARN it was asked about (200), `deny-...` an explicit Deny (403
`AccessDenied`), anything else `raise Exception("Unauthorized")` (401 `Unauthorized`), as API Gateway documents a
TOKEN authorizer's three answers.
"""

from __future__ import annotations

from typing import Any

HANDLER = "benchmarks.soak_lambda:decide"


def decide(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Allow or deny the event's method ARN by the token's prefix; refuse any other token as Unauthorized."""
    token = str(event.get("authorizationToken", "")).removeprefix("Bearer ")
    if token.startswith("allow-"):
        effect = "Allow"
    elif token.startswith("deny-"):
        effect = "Deny"
    else:
        raise Exception("Unauthorized")  # API Gateway's documented way to answer 401
    return {
        "principalId": token,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": event["methodArn"]}],
        },
    }
