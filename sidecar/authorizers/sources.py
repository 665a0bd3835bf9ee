"""Identity sources: where in a request an authorizer finds the credential it verifies.

`header.NAME`, `query.NAME` and `cookie.NAME` (and API Gateway's `$request.header.NAME` spelling) are parsed
once, at config load, into an `IdentitySource`; `extract` is all the hot path runs. A leaf shared by every
authorizer that reads a bearer-style credential, so each new type reads requests the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..request import Request

_SOURCE = re.compile(r"^(?:\$request\.)?(header|query|querystring|cookie)\.([!#$%&'*+.^_`|~0-9A-Za-z-]+)$")


@dataclass(frozen=True, slots=True)
class IdentitySource:
    """Where the token is: `header.NAME` (a `Bearer ` prefix is stripped), `query.NAME` or `cookie.NAME`.

    API Gateway's spelling (`$request.header.Authorization`, `$request.querystring.token`) is accepted too.
    """

    where: Literal["header", "query", "cookie"]
    name: str

    @classmethod
    def parse(cls, text: str) -> IdentitySource:
        match = _SOURCE.match(text.strip())
        if not match:
            raise ValueError(f"identity source {text!r}: expected header.NAME, query.NAME or cookie.NAME")
        kind, name = match.groups()
        if kind == "header":
            return cls("header", name.lower())
        return cls("query" if kind in ("query", "querystring") else "cookie", name)

    def extract(self, request: Request) -> str | None:
        """The token in `request`, or None when this source holds none."""
        if self.where == "header":
            value = request.headers.get(self.name)
            if not value:
                return None
            scheme, sep, rest = value.strip().partition(" ")
            if not sep:
                return scheme or None  # a bare token, as API Gateway accepts
            if scheme.lower() != "bearer":
                return None  # another scheme (Basic, AWS4-HMAC-SHA256, ...): not ours
            return rest.strip() or None
        if self.where == "query":
            values = request.query.get(self.name)
            return values[0] if values and values[0] else None
        return _cookie(request.headers.get("cookie", ""), self.name)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"') or None
    return None


__all__ = ["IdentitySource"]
