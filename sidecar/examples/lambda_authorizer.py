"""A Lambda TOKEN authorizer in the style of API Gateway's developer guide, runnable here unchanged:
`handler: sidecar.examples.lambda_authorizer:handler` with `event_format: token` (the demo runs it).

The token is the decision, as in the guide: `allow`, `deny`, `unauthorized` (401); anything else raises (500).
Replace that check with a real one and keep the response shape. The allow covers every method and path of the
stage, not only the `methodArn` asked about: the result is cached for the token, and a policy for one ARN would
deny the caller's next request to another path (docs/custom-authorizers.md, "The cached policy pitfall").
"""

from __future__ import annotations

from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    token = event["authorizationToken"]
    if token == "allow":
        api, stage = event["methodArn"].split("/")[:2]  # arn:aws:execute-api:REGION:ACCOUNT:API_ID, STAGE
        return generate_policy("user", "Allow", f"{api}/{stage}/*")
    if token == "deny":
        return generate_policy("user", "Deny", event["methodArn"])
    if token == "unauthorized":
        raise Exception("Unauthorized")  # API Gateway's 401
    raise Exception("Error: Invalid token")  # any other exception: 500


def generate_policy(principal_id: str, effect: str, resource: str) -> dict[str, Any]:
    return {
        "principalId": principal_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
        "context": {"stringKey": "value", "numberKey": 123, "booleanKey": True},
    }
