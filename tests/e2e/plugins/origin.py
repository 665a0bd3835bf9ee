"""A test-only authorizer type, loaded through `plugins:`: the caller is the VPC endpoint its request came through.

It names the caller by the `vpce` ext_authz context extension (and `vpc`, in its context), which only Envoy's
configuration sets: the private listener of the TLS variant (`sidecar.harness.envoy.DownstreamTls.private`). A
request without one is refused, so a test sees through the upstream's `x-authz-principal` which listener a
request took, and that a client cannot choose.
"""

from __future__ import annotations

from typing import Any, Literal

from sidecar.authorizers import Authorizer, AuthorizerSettings, BuildContext, register
from sidecar.reasons import Denied
from sidecar.request import Principal, Request


class OriginSettings(AuthorizerSettings):
    type: Literal["test-origin"]


class OriginAuthorizer(Authorizer):
    kind = "test-origin"

    async def authenticate(self, request: Request) -> Principal:
        vpce = request.context_extensions.get("vpce", "")
        if not vpce:
            raise Denied("NoOrigin", "the request came through no VPC endpoint")
        vpc = request.context_extensions.get("vpc", "")
        return Principal(kind="test-origin", id=vpce, authorizer=self.name, context={"vpc": vpc})


def build(settings: Any, ctx: BuildContext) -> Authorizer:
    return OriginAuthorizer(ctx.name)


register("test-origin", OriginSettings, build)
