"""The pipeline remembers a policy verdict by (principal, method, path) only where nothing else of the request
can change it (`CompiledPolicy.reads_request`), and forgets every verdict on a reload."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.runtime import RuntimeHolder, compile_runtime

from .authorizers.custom import handlers
from .authorizers.custom.lambda_testkit import ARN, HANDLERS, Clock, config_text, pipeline, request, token
from .limits import gate_handlers

CACHED = f"handler: {HANDLERS}:malformed\nevent_format: token\n"


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _allow(resource: str = f"{ARN}/GET/pets/*", condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": resource}
    if condition is not None:
        statement["Condition"] = condition
    return statement


def _answer(*statements: dict[str, Any]) -> None:
    handlers.reset()
    handlers.MALFORMED["response"] = {"principalId": "carol", "policyDocument": _policy(*statements)}


async def test_a_verdict_on_principal_and_resource_alone_is_remembered_per_path(tmp_path: Path) -> None:
    _answer(_allow(f"{ARN}/GET/pets/7"))
    pipe = pipeline(tmp_path, CACHED)
    assert (await pipe.check(request("/pets/7", headers=token("t")))).allowed
    assert (await pipe.check(request("/pets/7", headers=token("t")))).allowed
    assert len(pipe._outcomes) == 1  # the second request was judged by the memo
    assert (await pipe.check(request("/pets/8", headers=token("t")))).status == 403  # another resource: judged
    assert (await pipe.check(request("/pets/7", "DELETE", headers=token("t")))).status == 403
    assert len(handlers.CALLS) == 2  # DELETE matched the other route (`cache_key: identity+route`)


async def test_a_handler_policy_that_reads_the_source_ip_is_judged_for_each_request(tmp_path: Path) -> None:
    _answer(_allow(condition={"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}))
    pipe = pipeline(tmp_path, CACHED)
    inside = request(headers=token("t"), source_address="203.0.113.9")
    outside = request(headers=token("t"), source_address="198.51.100.1")
    assert (await pipe.check(inside)).allowed
    assert (await pipe.check(outside)).status == 403  # same principal, same path: the address decides
    assert (await pipe.check(inside)).allowed
    assert len(pipe._outcomes) == 0 and len(handlers.CALLS) == 1


async def test_a_resource_policy_that_reads_a_header_keeps_every_verdict_fresh(tmp_path: Path) -> None:
    _answer(_allow())
    deny_header = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "execute-api:Invoke",
        "Resource": "*",
        "Condition": {"StringEquals": {"request:header/x-tier": "blocked"}},
    }
    allow_all = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "*"}
    pipe = pipeline(tmp_path, CACHED, policy=_policy(allow_all, deny_header))
    assert (await pipe.check(request(headers=token("t")))).allowed
    assert (await pipe.check(request(headers={**token("t"), "x-tier": "blocked"}))).status == 403
    assert (await pipe.check(request(headers=token("t")))).allowed
    assert len(pipe._outcomes) == 0


def _open_runtime(tmp_path: Path, statements: list[dict[str, Any]]) -> Any:
    """A config whose one route is open (`none`): the shared ANONYMOUS principal survives reloads."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(_policy(*statements)))
    text = config_text("").split("authorizers:")[0] + (
        f"resource_policy: {policy}\nauthorizers:\n  open: {{type: none}}\n"
        "routes:\n  - {match: 'ANY /{proxy+}', authorizer: open}\n"
    )
    return compile_runtime(parse_config(text, str(tmp_path / "config.yaml")), clock=Clock())


async def test_a_reload_forgets_the_verdicts_of_the_old_policy(tmp_path: Path) -> None:
    allow = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "*"}
    holder = RuntimeHolder(_open_runtime(tmp_path, [allow]))
    pipe = Pipeline(holder)
    assert (await pipe.check(request("/open"))).allowed
    assert (await pipe.check(request("/open"))).allowed
    holder.current = _open_runtime(tmp_path, [{**allow, "Effect": "Deny"}])
    assert (await pipe.check(request("/open"))).status == 403


class _HeldCounters:
    """An admit gate's counters whose answer waits until the test releases it (a Redis round trip in flight)."""

    def __init__(self, inner: Any, release: asyncio.Event) -> None:
        self.inner = inner
        self.release = release
        self.entered = asyncio.Event()

    async def hit(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        await self.release.wait()
        return await self.inner.hit(*args, **kwargs)


def _gated_runtime(tmp_path: Path, name: str, statements: list[dict[str, Any]], rule: bool) -> Any:
    policy = tmp_path / f"{name}.json"
    policy.write_text(json.dumps(_policy(*statements)))
    text = (
        "api: {id: a1b2c3d4e5, stage: prod, account: '123456789012', region: us-east-1}\n"
        f"resource_policy: {policy}\n"
        + ("rate_limits: [{name: per-ip, key: [ip], limit: 1000}]\n" if rule else "")
        + "authorizers:\n  auth: {type: lambda, handler: 'tests.unit.limits.gate_handlers:gated_handler',"
        " event_format: token}\nroutes: [{match: 'ANY /{proxy+}', authorizer: auth}]\n"
    )
    (tmp_path / f"{name}.yaml").write_text(text)
    return compile_runtime(parse_config(text, str(tmp_path / f"{name}.yaml")), clock=Clock())


async def test_a_check_of_the_replaced_runtime_cannot_turn_the_memo_back_on(tmp_path: Path) -> None:
    """A Check of the old runtime held in an admit gate across a reload reaches the policy stage after the new
    runtime's first Checks: it must not make the pipeline remember verdicts of the new policy, which reads
    aws:SourceIp (the caller outside the network would be answered with the verdict of the one inside)."""
    gate_handlers.GATE[:] = [asyncio.Event()]
    gate_handlers.CALLS.clear()
    allow = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "*"}
    deny_outside = {
        **allow,
        "Effect": "Deny",
        "Condition": {"NotIpAddress": {"aws:SourceIp": "203.0.113.0/24"}, "StringEquals": {"aws:userid": "carol"}},
    }
    old = _gated_runtime(tmp_path, "old", [allow], rule=True)
    new = _gated_runtime(tmp_path, "new", [allow, deny_outside], rule=False)
    holder = RuntimeHolder(old)
    pipe = Pipeline(holder)
    release = asyncio.Event()
    gate = old.gates.admit["ANY /{proxy+}"][0]
    gate.counters = held_counters = _HeldCounters(gate.counters, release)
    held = asyncio.ensure_future(pipe.check(request("/admin", headers=token("t"))))
    await held_counters.entered.wait()  # the old runtime's Check waits in its admit gate
    holder.current = new
    inside = asyncio.ensure_future(pipe.check(request("/admin", headers=token("t"), source_address="203.0.113.9")))
    outside = asyncio.ensure_future(pipe.check(request("/admin", headers=token("t"), source_address="198.51.100.1")))
    while len(gate_handlers.CALLS) < 1:  # the new runtime's single call is waiting in the handler
        await asyncio.sleep(0)
    release.set()
    while len(gate_handlers.CALLS) < 2:  # the old runtime's Check has reached its own handler call
        await asyncio.sleep(0)
    gate_handlers.GATE[0].set()
    assert (await inside).status == 200
    assert (await outside).status == 403
    assert (await held).status == 200
