"""What keeps an uncached handler call cheap without changing what it means: a response is judged once per
distinct text (the same answer is the same principal), a sync call is timed without a Task of its own, and the
context's request id is a version-4 UUID made without a UUID object."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.authorizers.custom.context import LambdaContext, new_request_id
from sidecar.authorizers.custom.invoke import HandlerFailed, LocalInvoker, local_invoker

from . import handlers
from .lambda_testkit import HANDLERS, pipeline, request, token

UNCACHED = f"handler: {HANDLERS}:token_handler\nevent_format: token\nresult_ttl: 0\n"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    handlers.reset()
    yield
    handlers.RELEASE.set()


def test_request_ids_are_version_4_uuids() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


async def test_the_same_answer_is_the_same_principal_and_another_answer_is_not(tmp_path: Path) -> None:
    pipe = pipeline(tmp_path, UNCACHED)
    first = await pipe.check(request(headers=token("allow-alice")))
    second = await pipe.check(request(headers=token("allow-alice")))
    other = await pipe.check(request(headers=token("allow-bob")))
    assert len(handlers.CALLS) == 3  # result_ttl 0: called every time
    assert first.allowed and second.allowed and other.allowed
    assert first.principal is not None and other.principal is not None
    assert second is first  # one principal for one answer, so the pipeline's allow memo answered
    assert other.principal.id == "bob" and other.principal is not first.principal


async def test_a_remembered_answer_is_still_judged_for_each_request(tmp_path: Path) -> None:
    """The handler's policy allows the route it was asked about; the same answer for another path is
    evaluated again (a deny), and a malformed answer stays a 500 however often it comes."""
    pipe = pipeline(tmp_path, UNCACHED.replace("token_handler", "malformed"))
    handlers.MALFORMED["response"] = {"principalId": "x", "policyDocument": "not an object"}
    for _ in range(2):
        assert (await pipe.check(request(headers=token("t")))).status == 500
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "execute-api:Invoke",
                "Resource": "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod/GET/pets/7",
            }
        ],
    }
    handlers.MALFORMED["response"] = {"principalId": "carol", "policyDocument": document}
    assert (await pipe.check(request(headers=token("t")))).allowed
    assert (await pipe.check(request("/pets/8", headers=token("t")))).status == 403
    assert len(handlers.CALLS) == 4


async def test_a_sync_call_cancelled_from_outside_is_cancelled_not_a_timeout() -> None:
    invoker = local_invoker(f"{HANDLERS}:sleepy_handler", 2)
    await invoker.start()
    try:
        call = asyncio.ensure_future(invoker.invoke({}, LambdaContext("r", "f", time.monotonic() + 5), 5.0))
        assert await asyncio.to_thread(handlers.STARTED.wait, 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        with pytest.raises(HandlerFailed) as caught:  # the next call (on the other thread) is timed as before
            await invoker.invoke({}, LambdaContext("r", "f", time.monotonic() + 0.05), 0.05)
        assert caught.value.kind == "timeout"
    finally:
        handlers.RELEASE.set()
        await invoker.stop()


async def _tasks_seen(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Records the Task it runs in, before and after an await when the event asks for one."""
    seen = [asyncio.current_task()]
    if event.get("wait"):
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
    return {"seen": seen}


async def test_an_async_handler_that_waits_for_nothing_runs_in_the_callers_task() -> None:
    invoker = LocalInvoker(_tasks_seen, 2)
    context = LambdaContext("r", "f", time.monotonic() + 5)
    answer = await invoker.invoke({}, context, 1.0)
    assert answer["seen"] == [asyncio.current_task()]  # no Task of its own: answered in the same turn
    waited = await invoker.invoke({"wait": True}, context, 1.0)
    first, after = waited["seen"]
    assert first is asyncio.current_task() and after is not None and after is not first  # the rest ran as a Task
