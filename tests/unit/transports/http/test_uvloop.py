"""Every protocol scenario again on uvloop, the loop production runs (its transports differ from asyncio's).

pytest-asyncio runs the async tests on the default loop; here each scenario runs inside an explicit
`asyncio.Runner(loop_factory=uvloop.new_event_loop)` so no global loop policy is touched.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from . import test_protocol
from .conftest import FakePipeline, Servers

SCENARIOS: list[Callable[..., Any]] = [
    func for name, func in vars(test_protocol).items() if name.startswith("test_") and inspect.iscoroutinefunction(func)
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[f.__name__ for f in SCENARIOS])
def test_scenario_on_uvloop(scenario: Callable[..., Any]) -> None:
    async def run() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        fake = FakePipeline()
        servers = Servers(fake)
        kwargs = {"serve": servers.start, "fake": fake}
        wanted = inspect.signature(scenario).parameters
        try:
            await scenario(**{name: kwargs[name] for name in wanted})
        finally:
            await servers.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


def test_every_protocol_scenario_is_covered() -> None:
    assert len(SCENARIOS) >= 25
