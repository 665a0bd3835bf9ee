"""The sidecar's route table as Envoy route matchers, sound for per-route ext_authz settings.

`envoy-config` gives each sidecar route its own Envoy route, so that route's ext_authz settings (which headers,
the body) apply to its requests only. That is safe only if Envoy never files a request under a route the sidecar
would not pick: a request the sidecar judges under a SigV4 route must never cross the hop as a JWT route's
trimmed CheckRequest. So the matchers are *sound* rather than complete:

- each matcher accepts only canonical paths made of plain characters (no `%`, `;`, `#`, `\\`, dot segments,
  empty segments or a trailing slash), for which the sidecar's matching is plain segment comparison;
- matchers are listed in the sidecar's precedence order (`precedence`: every full match before any greedy one,
  segment by segment a literal before a `{param}`, a deeper greedy route before a shallower one, an explicit
  method before `ANY`), so Envoy's first match is the sidecar's pick;
- every other request (encoded, unusual, `$default`, no route) falls to a catch-all that gets what every route
  needs at once.

Requests are routed on the method as judged (`HEAD` as `GET`), as the pipeline does. A route the table itself
would not pick for a sample of its own template (a duplicate under other parameter names) is left to the
catch-all. `tests/unit/harness/test_envoy_routes.py` checks soundness against `RouteTable` on random tables.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..request import judged_method
from ..routes import _GREEDY, _PARAM, RouteKey, RouteTable

T = TypeVar("T")

_PLAIN = r"[A-Za-z0-9_~!$&'()*+,=:@-]"
"""A path character the sidecar compares as it stands (no percent-decoding, no segment meaning)."""
_PLAIN_OR_DOT = r"[A-Za-z0-9_~!$&'()*+,=:@.-]"
SEGMENT = rf"{_PLAIN_OR_DOT}*{_PLAIN}{_PLAIN_OR_DOT}*"
"""One plain segment: at least one character that is not a dot, so never `.` or `..`."""
_PLAIN_LITERAL = re.compile(rf"{SEGMENT}\Z")
_SAMPLE_METHOD = "SAMPLE"
"""A method no route names, to sample an `ANY` route with."""
ANY_METHOD = r"^[A-Z][A-Z0-9!#$%&'*+.^_`|~-]*$"
TOO_LONG_METHOD = r"(?s).{33}.*"
"""What an `ANY` route matches on `:method`: the methods the sidecar judges (`request._UPPER_TOKEN`: an upper-case
token of at most 32 characters, said as a token and a length, each small enough for Envoy's regex program-size
limit). Any other spelling (HTTP/2 passes `delete` through) falls to the catch-all, so the sidecar refuses it
(400), instead of an `ANY` route taking what an explicit-method route above it did not (`delete` past
`DELETE`)."""


@dataclass(frozen=True, slots=True)
class EnvoyRoute(Generic[T]):
    """One sidecar route as an Envoy matcher: `regex` on the path (no query), `methods` on `:method` (None:
    any method)."""

    key: str
    target: T
    regex: str
    methods: tuple[str, ...] | None

    def match(self) -> dict[str, Any]:
        """The Envoy `RouteMatch`."""
        methods: list[dict[str, Any]]
        if self.methods is not None:
            pattern = f"^(?:{'|'.join(self.methods)})$"
            methods = [{"name": ":method", "string_match": {"safe_regex": {"regex": pattern}}}]
        else:
            methods = [
                {"name": ":method", "string_match": {"safe_regex": {"regex": ANY_METHOD}}},
                {"name": ":method", "string_match": {"safe_regex": {"regex": TOO_LONG_METHOD}}, "invert_match": True},
            ]
        return {"safe_regex": {"regex": self.regex}, "headers": methods}

    def accepts(self, method: str, path: str) -> bool:
        """Whether Envoy would file (method, path) under this route (Python's `re` agrees with RE2 here)."""
        if self.methods is not None and method not in self.methods:
            return False
        if self.methods is None and (re.fullmatch(ANY_METHOD, method) is None or re.fullmatch(TOO_LONG_METHOD, method)):
            return False
        return re.fullmatch(self.regex, path) is not None


def precedence(key: RouteKey) -> tuple[Any, ...]:
    """Sort key giving the sidecar's order among routes that match one canonical path (see the module)."""
    kinds = tuple(0 if not (_PARAM.match(s) or _GREEDY.match(s)) else 1 for s in key.segments)
    any_method = 1 if key.method == "ANY" else 0
    if key.segments and _GREEDY.match(key.segments[-1]):
        return (1, (*kinds[:-1], 2), any_method)
    return (0, kinds, any_method)


def path_regex(key: RouteKey) -> str | None:
    """The regex of canonical paths this route key matches, or None if a literal is not plain (never matched by
    a plain path, so leaving it to the catch-all loses nothing)."""
    parts = []
    for segment in key.segments:
        if _GREEDY.match(segment):
            parts.append(rf"(?:/{SEGMENT})+")
        elif _PARAM.match(segment):
            parts.append(f"/{SEGMENT}")
        elif _PLAIN_LITERAL.match(segment):
            parts.append("/" + re.escape(segment))
        else:
            return None
    return "^" + ("".join(parts) or "/") + "$"


def _sample(key: RouteKey) -> str:
    segments = ["p" if _PARAM.match(s) else "g/h" if _GREEDY.match(s) else s for s in key.segments]
    return "/" + "/".join(segments)


def envoy_routes(table: RouteTable[T]) -> tuple[list[EnvoyRoute[T]], list[tuple[str, str]]]:
    """(the table's routes as Envoy matchers in precedence order, [(route key, why it is left to the
    catch-all)])."""
    out: list[tuple[tuple[Any, ...], EnvoyRoute[T]]] = []
    left: list[tuple[str, str]] = []
    for key, text, target in table.entries:
        if key.is_default:
            left.append((text, "$default takes what no route matches: the catch-all serves it"))
            continue
        regex = path_regex(key)
        if regex is None:
            left.append((text, "a literal segment is not plain characters: its requests go to the catch-all"))
            continue
        method = _SAMPLE_METHOD if key.method == "ANY" else key.method
        found = table.match(judged_method(method), _sample(key))
        if found is None or found.target is not target:
            left.append((text, "the sidecar never picks this route for its own template (HEAD or a duplicate)"))
            continue
        methods = None if key.method == "ANY" else (("GET", "HEAD") if key.method == "GET" else (key.method,))
        out.append((precedence(key), EnvoyRoute(text, target, regex, methods)))
    out.sort(key=lambda pair: pair[0])
    return [route for _, route in out], left


def first_match(routes: Sequence[EnvoyRoute[T]], method: str, path: str) -> EnvoyRoute[T] | None:
    """The route Envoy picks (first match), None for the catch-all."""
    return next((r for r in routes if r.accepts(method, path)), None)


__all__ = ["SEGMENT", "EnvoyRoute", "envoy_routes", "first_match", "path_regex", "precedence"]
