"""Lambda authorizer handlers in AWS's documented plain-dict style, for the remote tests: the same functions run
in the test's process (a `LambdaHost` in-process) and in a real `authz-sidecar lambda-serve` (this directory on
PYTHONPATH, `remote_handlers:handler`). What a handler does is chosen by the token, so one handler serves every
scenario: `allow`, `deny`, `unauthorized`, `crash:<secret>`, `malformed`, `deep` (a response nested too deep to
encode), `block` (until `RELEASE` is set, or for ever in a subprocess), `fifo:<path>` (blocks reading a named pipe:
the test knows the call is in flight when its writer's open returns, and lets it finish by writing)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

RELEASE = threading.Event()
"""Set by in-process tests to let `block` calls return (and in their teardown, so no thread stays blocked)."""
STARTED = threading.Event()
"""Set when a `block` call has started: the test knows it is in flight."""
CALLS: list[str] = []
"""The tokens of the calls this process's handlers received, in order."""
DEEP = 100_000
"""How deep `deep` nests its response (and the tests their JSON): far past Python's recursion limit."""


def policy(principal: str, effect: str, resource: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """An IAM policy response as AWS's documentation builds one."""
    response: dict[str, Any] = {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
    }
    if context is not None:
        response["context"] = context
    return response


def handler(event: dict[str, Any], context: Any) -> Any:
    """A sync TOKEN (or REQUEST) authorizer; its context echoes the Lambda context it was given."""
    token = str(event.get("authorizationToken") or event.get("headers", {}).get("authorization", ""))
    CALLS.append(token)
    arn = event.get("methodArn", "*")
    if token == "allow":
        echoed = {
            "user": "alice",
            "functionName": context.function_name,
            "requestId": context.aws_request_id,
            "remainingMs": context.get_remaining_time_in_millis(),
            "memory": context.memory_limit_in_mb,
            "admin": False,
        }
        return policy("alice", "Allow", arn, echoed)
    if token == "deny":
        return policy("mallory", "Deny", arn)
    if token == "unauthorized":
        raise Exception("Unauthorized")
    if token.startswith("crash:"):
        raise KeyError(token)  # the message holds the token: it must never reach a log or the wire
    if token == "malformed":
        return {"principalId": "x", "policyDocument": {1, 2}}  # a set: not JSON
    if token == "deep":  # JSON nested past what any encoder recurses into
        nested: list[Any] = []
        for _ in range(DEEP):
            nested = [nested]
        return policy("deep", "Allow", arn, {"nested": nested})
    if token == "block":
        STARTED.set()
        RELEASE.wait(30)  # bounded: a test that forgets to release still ends
        return policy("late", "Allow", arn)
    if token.startswith("fifo:"):
        with open(token.removeprefix("fifo:"), encoding="utf-8") as pipe:  # blocks until the test opens it
            said = pipe.read()
        return policy(said, "Allow", arn)
    return policy("nobody", "Deny", arn)


async def async_handler(event: dict[str, Any], context: Any) -> Any:
    """An async handler: `block` awaits an event nobody sets, so only the timeout ends it; the rest as `handler`."""
    if event.get("authorizationToken") == "block":
        await asyncio.Event().wait()
    return handler(event, context)
