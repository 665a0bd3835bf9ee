"""The two authorizers that need no credentials: `none` (anonymous allow) and `deny` (always refuse)."""

from __future__ import annotations

from typing import Any, Literal

from ..hop import NOTHING, ClosedRoute, HopNeeds, NotOffloadable, OffloadRules, OpenRoute
from ..reasons import ROUTE_DENY, STATUS_FORBIDDEN, Denied
from ..request import ANONYMOUS, Principal, Request
from .base import Authorizer, AuthorizerSettings, BuildContext


class NoneSettings(AuthorizerSettings):
    """`type: none`: every caller is the anonymous principal (policies may still deny)."""

    type: Literal["none"]

    def build(self, ctx: BuildContext) -> Authorizer:
        return build_none(self, ctx)


class DenySettings(AuthorizerSettings):
    """`type: deny`: every request is refused with 403, e.g. to close a route without deleting it."""

    type: Literal["deny"]

    def build(self, ctx: BuildContext) -> Authorizer:
        return build_deny(self, ctx)

    message: str = "Forbidden"

    def usage_key_gap(self) -> str | None:
        """None: a closed route allows nothing, so nothing there is metered and no key needs naming."""
        return None


class NoneAuthorizer(Authorizer):
    """Lets everyone in as the anonymous principal."""

    kind = "none"
    identity_side = "anonymous"

    def fingerprint(self, request: Request) -> bytes | None:
        return b"anonymous"

    def hop_needs(self) -> HopNeeds:
        """Nothing: the anonymous caller is everyone."""
        return NOTHING

    def offload_rules(self) -> OffloadRules | NotOffloadable:
        return OpenRoute(ANONYMOUS.id)

    async def authenticate(self, request: Request) -> Principal:
        return ANONYMOUS


class DenyAuthorizer(Authorizer):
    """Refuses every request."""

    kind = "deny"
    identity_side = "policies"
    """Never reached (no caller is ever identified); if it were, only a policy could allow the caller: fail closed."""

    def fingerprint(self, request: Request) -> bytes | None:
        return b"-"

    def hop_needs(self) -> HopNeeds:
        """Nothing: every request is refused, whatever it carries."""
        return NOTHING

    def offload_rules(self) -> OffloadRules | NotOffloadable:
        return ClosedRoute(STATUS_FORBIDDEN, ROUTE_DENY, self._message)

    def __init__(self, name: str, message: str) -> None:
        super().__init__(name)
        self._message = message

    async def authenticate(self, request: Request) -> Principal:
        # A fresh exception each time: re-raising one shared instance would grow its traceback forever.
        raise Denied(ROUTE_DENY, self._message, STATUS_FORBIDDEN)


def build_none(settings: Any, ctx: BuildContext) -> Authorizer:
    """Build a `none` authorizer."""
    return NoneAuthorizer(ctx.name)


def build_deny(settings: Any, ctx: BuildContext) -> Authorizer:
    """Build a `deny` authorizer."""
    assert isinstance(settings, DenySettings)
    return DenyAuthorizer(ctx.name, settings.message)
