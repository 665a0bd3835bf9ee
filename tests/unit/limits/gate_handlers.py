"""Lambda handlers for the gate tests: they name the API key in `usageIdentifierKey`, as API Gateway's
`apiKeySource: AUTHORIZER` expects, and count their calls."""

from __future__ import annotations

import asyncio
from typing import Any

CALLS: list[dict[str, Any]] = []


def usage_key_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """TOKEN authorizer: the token `key:VALUE` allows and names VALUE as the usage key; `no-key` allows without one."""
    CALLS.append(event)
    token = event["authorizationToken"]
    answer: dict[str, Any] = {
        "principalId": "tenant-" + str(len(token)),
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": event["methodArn"]}],
        },
    }
    if token.startswith("key:"):
        answer["usageIdentifierKey"] = token[4:]
    return answer


GATE: list[asyncio.Event] = []
"""The event `gated_handler` waits for (the test puts one in)."""


async def gated_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Allows everything as `carol`, once the test sets `GATE[0]`."""
    CALLS.append(event)
    await GATE[0].wait()
    return {
        "principalId": "carol",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"}],
        },
    }
