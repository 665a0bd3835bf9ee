"""The Lambda context object a handler receives as its second argument, with the attributes AWS documents
(`aws_request_id`, `function_name`, `get_remaining_time_in_millis()`, ...), so a handler written for Lambda
runs here unchanged. A leaf: built once per call by the authorizer, read by the handler, and by the remote
invoker, which sends its fields (and the time left) along with the event."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ContextTemplate", "LambdaContext", "new_request_id"]

_VARIANT = "89ab"


def new_request_id() -> str:
    """A random version-4 UUID's text, as Lambda's request ids are: what `str(uuid.uuid4())` returns, without
    building the UUID object, which costs more than the random bytes (one per handler call)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class LambdaContext:
    """Lambda's context attributes. `deadline` is a `time.monotonic()` reading: the moment the call times out,
    which `get_remaining_time_in_millis()` counts down to, as Lambda's counts down to the function's timeout."""

    aws_request_id: str
    function_name: str
    deadline: float
    function_version: str = "$LATEST"
    invoked_function_arn: str = ""
    memory_limit_in_mb: int = 128
    log_group_name: str = ""
    log_stream_name: str = ""
    identity: Any = None
    """Lambda sets this only for calls from the AWS Mobile SDK (Cognito identity); always None here."""
    client_context: Any = None
    """Lambda sets this only for calls from the AWS Mobile SDK; always None here."""
    monotonic: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the call times out (never negative), as Lambda's context answers."""
        return max(0, int((self.deadline - self.monotonic()) * 1000))


@dataclass(frozen=True, slots=True)
class ContextTemplate:
    """What every call's context shares (the function's names); `new` adds the call's id and deadline."""

    function_name: str
    invoked_function_arn: str
    log_group_name: str
    log_stream_name: str
    memory_limit_in_mb: int = 128

    @classmethod
    def for_function(cls, function_name: str, region: str, account: str) -> ContextTemplate:
        """Lambda's names for a function called `function_name` in this API's region and account; the log stream
        is this process's (one per process, as one per Lambda execution environment)."""
        stream = time.strftime("%Y/%m/%d", time.gmtime()) + "/[$LATEST]" + uuid.uuid4().hex
        return cls(
            function_name=function_name,
            invoked_function_arn=f"arn:aws:lambda:{region}:{account}:function:{function_name}",
            log_group_name=f"/aws/lambda/{function_name}",
            log_stream_name=stream,
        )

    def new(self, timeout: float, request_id: str | None = None) -> LambdaContext:
        """The context of one call that times out in `timeout` seconds; `request_id` is the event's
        `requestContext.requestId` (a new one when None)."""
        return LambdaContext(
            aws_request_id=request_id or new_request_id(),
            function_name=self.function_name,
            deadline=time.monotonic() + timeout,
            invoked_function_arn=self.invoked_function_arn,
            memory_limit_in_mb=self.memory_limit_in_mb,
            log_group_name=self.log_group_name,
            log_stream_name=self.log_stream_name,
        )
