"""Identity sources in API Gateway's own syntax, and reading their values from a request.

`method.request.header.NAME` / `method.request.querystring.NAME` (REST) and `$request.header.NAME` /
`$request.querystring.NAME` (HTTP APIs), `$context.routeKey` and `$stageVariables.NAME` are parsed once at load.
Unlike JWT's `IdentitySource`, a header's value is taken whole: the handler gets `Bearer abc` if that is what was
sent, as API Gateway passes it. Every source must be present and non-empty, or the request is refused with 401
before the handler runs (API Gateway's rule); the values, in order, are also the result cache's key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ...request import Request

__all__ = ["IdentitySource", "IdentitySources"]

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_FORMS: tuple[tuple[re.Pattern[str], Literal["header", "query", "route", "stage"]], ...] = (
    (re.compile(rf"^(?:method\.request|\$request)\.header\.({_TOKEN})$"), "header"),
    (re.compile(rf"^(?:method\.request|\$request)\.querystring\.({_TOKEN})$"), "query"),
    (re.compile(r"^\$?context\.(routeKey)$"), "route"),
    (re.compile(r"^\$?stageVariables\.([A-Za-z0-9_]+)$"), "stage"),
)


@dataclass(frozen=True, slots=True)
class IdentitySource:
    """One identity source: `text` as configured, where its value is and its name (lower case for a header)."""

    text: str
    where: Literal["header", "query", "route", "stage"]
    name: str

    @classmethod
    def parse(cls, text: str) -> IdentitySource:
        """Parse one source or raise `ValueError` naming the accepted forms."""
        stripped = text.strip()
        for pattern, where in _FORMS:
            match = pattern.match(stripped)
            if match:
                name = match.group(1)
                return cls(stripped, where, name.lower() if where == "header" else name)
        raise ValueError(
            f"identity source {text!r}: expected method.request.header.NAME, method.request.querystring.NAME, "
            "$request.header.NAME, $request.querystring.NAME, $context.routeKey or $stageVariables.NAME"
        )

    def value(self, request: Request, route_key: str, stage: Mapping[str, str], join_queries: bool) -> str | None:
        """This source's value in `request`, as the event shows it (a repeated query parameter: its last value,
        or every value comma-joined for HTTP API 2.0 events, `join_queries`); None when absent or empty."""
        if self.where == "header":
            found = request.headers.get(self.name)
        elif self.where == "query":
            values = request.query.get(self.name)
            found = (",".join(values) if join_queries else values[-1]) if values else None
        elif self.where == "route":
            found = route_key
        else:
            found = stage.get(self.name)
        return found or None


@dataclass(frozen=True, slots=True)
class IdentitySources:
    """The configured sources, in order, with what reading them needs from the config."""

    sources: tuple[IdentitySource, ...]
    stage_variables: Mapping[str, str]
    join_queries: bool = False

    def values(self, request: Request, route_key: str) -> tuple[str, ...] | None:
        """Every source's value, or None as soon as one is missing or empty (then: 401 without a call)."""
        out: list[str] = []
        for source in self.sources:
            found = source.value(request, route_key, self.stage_variables, self.join_queries)
            if found is None:
                return None
            out.append(found)
        return tuple(out)

    def missing(self, request: Request, route_key: str) -> str:
        """The first source without a value, as configured (for `check --explain`; never a value)."""
        for source in self.sources:
            if source.value(request, route_key, self.stage_variables, self.join_queries) is None:
                return source.text
        return ""
