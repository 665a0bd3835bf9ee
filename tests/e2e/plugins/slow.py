"""A test-only authorizer type, loaded through `plugins:`: it takes `delay` seconds, then allows.

It makes Checks that are reliably in flight, to test draining on SIGTERM; it also proves the plugin mechanism.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from sidecar.authorizers import Authorizer, AuthorizerSettings, BuildContext, register
from sidecar.request import Principal, Request


class SlowSettings(AuthorizerSettings):
    type: Literal["slow"]
    delay: float = 1.0


class SlowAuthorizer(Authorizer):
    kind = "slow"

    def __init__(self, name: str, delay: float) -> None:
        super().__init__(name)
        self.delay = delay

    async def authenticate(self, request: Request) -> Principal:
        await asyncio.sleep(self.delay)  # the workload under test, not synchronization
        return Principal(kind="slow", id="slow-caller", authorizer=self.name)


def build(settings: Any, ctx: BuildContext) -> Authorizer:
    return SlowAuthorizer(ctx.name, settings.delay)


register("slow", SlowSettings, build)
