"""Transports: the only code that knows a wire format. Each turns bytes into our immutable `Request` and a
`Decision` back into bytes, and sees the pipeline only as a `Checker`. No transport imports another; the gRPC
engines share the ext_authz adapter (`ext_authz.py`) and the status leaf (`status.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..request import Decision, Request


class Checker(Protocol):
    """What a transport needs from the pipeline (`sidecar.pipeline.Pipeline` satisfies it)."""

    async def check(self, request: Request) -> Decision:
        """Decide one request; expected never to raise (transports still turn a raise into a deny)."""
        ...
