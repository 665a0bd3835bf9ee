"""A reload stops the config it replaces only once the decisions still using it are done (`RuntimeHolder.swap`).

Found by the soak (`benchmarks/soak.py`, config reloads under load): a Check that had taken the old runtime and
was waiting for its admit gate's Redis call when a reload swapped configs reached its `lambda` handler after the
old runtime had stopped the handler's invoker, and was answered 500 `AuthorizerConfigurationException`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sidecar.pipeline import Pipeline
from sidecar.runtime import RuntimeHolder
from tests.unit.authorizers.custom.lambda_testkit import request, token
from tests.unit.limits import gate_handlers
from tests.unit.test_pipeline_outcome_memo import _gated_runtime, _HeldCounters

ALLOW = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "*"}


async def test_a_check_held_across_a_reload_is_decided_by_its_own_runtime(tmp_path: Path) -> None:
    gate_handlers.GATE[:] = [asyncio.Event()]
    gate_handlers.GATE[0].set()  # the handler answers at once: only the admit gate holds the Check
    old = _gated_runtime(tmp_path, "old", [ALLOW], rule=True)
    new = _gated_runtime(tmp_path, "new", [ALLOW], rule=True)
    holder = RuntimeHolder(old)
    pipe = Pipeline(holder)
    assert (await pipe.check(request("/warm", headers=token("t")))).status == 200  # the old runtime started
    release = asyncio.Event()
    gate = old.gates.admit["ANY /{proxy+}"][0]
    gate.counters = held_counters = _HeldCounters(gate.counters, release)
    held = asyncio.ensure_future(pipe.check(request("/held", headers=token("t"))))
    await held_counters.entered.wait()  # the old runtime's Check waits in its admit gate (a Redis call)
    swapping = asyncio.ensure_future(holder.swap(new))
    while holder.current is not new:
        await asyncio.sleep(0)
    assert (await pipe.check(request("/new", headers=token("t")))).status == 200
    assert not swapping.done()  # the old runtime is not stopped under the held Check
    release.set()
    assert (await held).status == 200
    assert await asyncio.wait_for(swapping, 5) is old
    assert holder.users.count == 0
