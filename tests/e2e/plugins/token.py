"""A test-only bearer-ish authorizer, loaded through `plugins:`: the `x-token` header is the caller's id.

It offers a credential fingerprint, so its decisions are cacheable like a JWT's; tokens starting with `bad` are
rejected (an authentication failure, which must never be cached).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from sidecar.authorizers import Authorizer, AuthorizerSettings, BuildContext, register
from sidecar.reasons import Denied
from sidecar.request import Principal, Request


class TokenSettings(AuthorizerSettings):
    type: Literal["test-token"]


class TokenAuthorizer(Authorizer):
    kind = "test-token"

    def fingerprint(self, request: Request) -> bytes | None:
        token = request.headers.get("x-token")
        return hashlib.sha256(token.encode()).digest() if token else None

    async def authenticate(self, request: Request) -> Principal:
        token = request.headers.get("x-token", "")
        if not token or token.startswith("bad"):
            raise Denied("TokenInvalid", "no good token")
        return Principal(kind="test-token", id=token, authorizer=self.name)


def build(settings: Any, ctx: BuildContext) -> Authorizer:
    return TokenAuthorizer(ctx.name)


register("test-token", TokenSettings, build)
