"""The route table: API Gateway-style route keys compiled once into a segment trie.

Syntax: `GET /orders/{id}`, `ANY /admin/{proxy+}`, `$default`. Precedence is API Gateway's: a full match (every
segment a literal or a `{param}`) beats any greedy `{proxy+}` match, which beats `$default`. Among full matches,
segment by segment a literal beats `{param}`; among greedy ones the deepest along the most literal path wins; for
the same path, an explicit method beats `ANY`. Matching costs one dict lookup for
literal paths and a short trie walk for templates; nothing is parsed per request except splitting the path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar
from urllib.parse import unquote

from .memo import BoundedMemo

T = TypeVar("T")

DEFAULT_ROUTE = "$default"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "ANY"})
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_.-]*)\}$")
_GREEDY = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_.-]*)\+\}$")
_EMPTY: Mapping[str, str] = MappingProxyType({})
_UNSEEN = object()
_MEMO_SIZE = 4096
_MEMO_PATH_CHARS = 512


class RouteSyntaxError(ValueError):
    """A route key that is not `METHOD /path` or `$default`."""


@dataclass(frozen=True, slots=True)
class RouteKey:
    """A parsed route key. `segments` are literals, `{name}` or `{name+}` (last only)."""

    method: str
    segments: tuple[str, ...]
    is_default: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """Identity for duplicate detection: method and normalized template."""
        return (self.method, "/" + "/".join(self.segments)) if not self.is_default else ("*", DEFAULT_ROUTE)


def parse_match(text: str) -> RouteKey:
    """Parse `METHOD /path` or `$default`, raising `RouteSyntaxError` with the reason."""
    text = text.strip()
    if text == DEFAULT_ROUTE:
        return RouteKey(method="ANY", segments=(), is_default=True)
    method, _, path = text.partition(" ")
    method = method.upper()
    path = path.strip()
    if method not in METHODS:
        raise RouteSyntaxError(f"unknown method {method!r}: use one of {', '.join(sorted(METHODS))} or $default")
    if not path.startswith("/"):
        raise RouteSyntaxError("the path must start with '/', e.g. 'GET /orders/{id}'")
    segments = tuple(s for s in path.split("/") if s)
    names = set()
    for index, segment in enumerate(segments):
        param = _PARAM.match(segment) or _GREEDY.match(segment)
        if param:
            if param.group(1) in names:
                raise RouteSyntaxError(f"parameter {{{param.group(1)}}} appears twice")
            names.add(param.group(1))
            if _GREEDY.match(segment) and index != len(segments) - 1:
                raise RouteSyntaxError("a greedy {name+} parameter must be the last segment")
        elif "{" in segment or "}" in segment:
            raise RouteSyntaxError(f"malformed segment {segment!r}: parameters are {{name}} or {{name+}}")
    return RouteKey(method=method, segments=segments)


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    """A matched route: its target (whatever the table was built with) and the path parameters."""

    target: T
    key: str
    params: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(slots=True)
class _Node(Generic[T]):
    literal: dict[str, _Node[T]] = field(default_factory=dict)
    param: tuple[str, _Node[T]] | None = None
    greedy: dict[str, tuple[str, str, T]] = field(default_factory=dict)  # method -> (name, key, target)
    ends: dict[str, tuple[str, T]] = field(default_factory=dict)  # method -> (key, target)


class AmbiguousPath(ValueError):
    """A path whose meaning depends on who reads it: denied with a 400, never resolved or guessed."""


_UNSAFE = ("/", "\\", "\x00")


def path_segments(path: str) -> list[str]:
    """Segments of a request path, percent-decoded, or `AmbiguousPath` where the upstream may read it otherwise.

    The sidecar must judge exactly the path the upstream serves, and it cannot know whether the proxy in between
    normalized it: Envoy does with `normalize_path`/`merge_slashes` (then nothing below ever arrives), nginx
    forwards `$request_uri` raw, and upstreams disagree with each other. So nothing is resolved: a dot segment
    (`.`, `..`, also percent-encoded), an empty segment (`//`; one trailing slash is not in the segments: see
    `RouteTable._trailing` and `canonical_path`), a `#` (a fragment
    is never sent, so it is an attack or a broken client), a raw `;` (Tomcat and Spring cut `;params` off a
    segment, so `/admin;x` and `/..;/` are served as `/admin` and `/..`) or an encoding that changes
    segmentation once decoded (`%2F`, `%5C`, `%23`, NUL, invalid UTF-8) is refused. Plain escapes are decoded,
    so `/%61dmin` is `/admin`.
    """
    if path == "/":
        return []
    raws = path.split("/")
    if raws[0] == "":
        del raws[0]
    if len(raws) > 1 and raws[-1] == "":
        del raws[-1]  # one trailing slash: routing looks at both readings (`RouteTable._trailing`)
    out: list[str] = []
    for raw in raws:
        if not raw:
            raise AmbiguousPath("the path has an empty segment ('//')")
        if "#" in raw or ";" in raw:
            raise AmbiguousPath(f"path segment {raw!r} holds '#' or ';', which upstreams cut the path at")
        try:
            segment = unquote(raw, errors="strict") if "%" in raw else raw
        except UnicodeDecodeError:
            raise AmbiguousPath(f"path segment {raw!r} is not UTF-8 once decoded") from None
        if segment in (".", "..") or "#" in segment or any(c in segment for c in _UNSAFE):
            raise AmbiguousPath(f"ambiguous path segment {raw!r}")
        out.append(segment)
    return out


def _needs_walk(path: str) -> bool:
    """False for a path that is canonical as it stands (the common case): no segment walk needed."""
    return "%" in path or "/." in path or "//" in path or "\\" in path or "#" in path or ";" in path


def canonical_path(path: str) -> str:
    """The path policies judge: `/` + decoded segments, a trailing slash kept (`/admin/` is inside `admin/*`, as
    an upstream serving an index there reads it); raises `AmbiguousPath`."""
    if not _needs_walk(path):
        return path
    segments = path_segments(path)
    return "/" + "/".join(segments) + ("/" if segments and path[-1] == "/" else "")


class RouteTable(Generic[T]):
    """Compiled routes; `match(method, path)` returns the most specific `Match` or None. Immutable once built."""

    def __init__(self, routes: list[tuple[str, T]]) -> None:
        self._exact: dict[tuple[str, str], Match[T]] = {}
        self._root: _Node[T] = _Node()
        self._default: Match[T] | None = None
        self._has_templates = False
        self._memo: BoundedMemo[tuple[str, str], Match[T] | None] = BoundedMemo(_MEMO_SIZE)
        entries = []
        for text, target in routes:
            key = parse_match(text)
            self._add(key, text.strip(), target)
            entries.append((key, text.strip(), target))
        self.entries: tuple[tuple[RouteKey, str, T], ...] = tuple(entries)
        """Every route as given: (parsed key, key text, target), for tools that render the table elsewhere."""

    def _add(self, key: RouteKey, text: str, target: T) -> None:
        if key.is_default:
            self._default = Match(target, DEFAULT_ROUTE)
            return
        node = self._root
        templated = False
        for index, segment in enumerate(key.segments):
            greedy = _GREEDY.match(segment)
            if greedy and index == len(key.segments) - 1:
                node.greedy[key.method] = (greedy.group(1), text, target)
                self._has_templates = True
                return
            param = _PARAM.match(segment)
            if param:
                templated = True
                if node.param is None:
                    node.param = (param.group(1), _Node())
                elif node.param[0] != param.group(1):
                    # API Gateway forbids two names at one position; keep the first name, it binds the value.
                    pass
                node = node.param[1]
            else:
                node = node.literal.setdefault(segment, _Node())
        node.ends[key.method] = (text, target)
        if templated:
            self._has_templates = True
        else:
            self._exact[(key.method, "/" + "/".join(key.segments))] = Match(target, text)

    def match(self, method: str, path: str) -> Match[T] | None:
        """The most specific route for this request, `$default`, or None; raises `AmbiguousPath`.

        Answers are remembered per (method, path): a match is a pure function of them and the table, and
        traffic repeats its paths, so a repeat costs one dict lookup instead of a normalization and a trie
        walk. The memo is bounded in entries (when full it starts over) and in
        size: paths longer than `_MEMO_PATH_CHARS` are matched every time, so clients choosing long unique
        paths cannot make it hold more than a few megabytes.
        """
        if len(path) > _MEMO_PATH_CHARS:
            return self._match(method, path)
        key = (method, path)
        memo = self._memo
        found = memo.get(key, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[return-value]
        return memo.put(key, self._match(method, path))

    def _match(self, method: str, path: str) -> Match[T] | None:
        if _needs_walk(path):
            segments: list[str] | None = path_segments(path)  # may raise AmbiguousPath
            canonical = "/" + "/".join(segments or ())
        else:
            canonical = path.rstrip("/") or "/"
            segments = None
        trailing = len(path) > 1 and path[-1] == "/"
        # A route of literals only is always the most specific full match, so a hit here ends the search.
        found = self._exact.get((method, canonical)) or self._exact.get(("ANY", canonical))
        if not trailing and (found is not None or not self._has_templates):
            return found or self._default
        if segments is None:
            segments = canonical.split("/")[1:] if canonical != "/" else []
        params: dict[str, str] = {}
        # API Gateway's priority: any full match (literals and {param}) before any greedy match, then $default.
        full = (
            (found.key, found.target)
            if found is not None
            else self._walk(self._root, segments, 0, method, params, False)
        )
        if not trailing:
            hit = full or self._walk(self._root, segments, 0, method, params, True)
        else:
            hit = self._trailing(method, segments, full, params)
        if hit is not None:
            key, target = hit
            return Match(target, key, MappingProxyType(params) if params else _EMPTY)
        return self._default

    def _trailing(
        self, method: str, segments: list[str], full: tuple[str, T] | None, params: dict[str, str]
    ) -> tuple[str, T] | None:
        """A path with a trailing slash: `/admin/` is `/admin` to some upstreams and a child of `/admin/` (an
        index view) to others, such as Flask. It is judged by the route both readings pick; when they pick
        different routes (`GET /admin` and `ANY /admin/{proxy+}`), the path is ambiguous and refused."""
        greedy_params: dict[str, str] = {}
        greedy = self._walk(self._root, [*segments, ""], 0, method, greedy_params, True)
        # Only a greedy route rooted at this very path (`/admin/{proxy+}` for `/admin/`, its value empty) reads the
        # slash as "a child"; a shallower catch-all would take `/admin` itself as readily.
        rooted = greedy is not None and "" in greedy_params.values()
        if full is not None and greedy is not None and rooted and full[1] is not greedy[1]:
            raise AmbiguousPath("a trailing slash makes the path name two routes")
        if full is not None:
            return full
        params.update(greedy_params)
        return greedy

    def _walk(
        self, node: _Node[T], segments: list[str], index: int, method: str, params: dict[str, str], greedy_ok: bool
    ) -> tuple[str, T] | None:
        """Depth-first in precedence order (literal, then {param}, then, when `greedy_ok`, {proxy+}); the first
        match wins, so the deepest greedy route along the most literal path is the most specific one."""
        if index == len(segments):
            end = node.ends.get(method) or node.ends.get("ANY")
            if end is not None and not greedy_ok:
                return end
        else:
            child = node.literal.get(segments[index])
            if child is not None:
                hit = self._walk(child, segments, index + 1, method, params, greedy_ok)
                if hit is not None:
                    return hit
            if node.param is not None and segments[index]:
                name, child = node.param
                # Two routes may name one position differently (the first name is kept), so a deeper
                # parameter can share this one's name: restore what was bound before, never just delete.
                previous = params.get(name)
                params[name] = segments[index]
                hit = self._walk(child, segments, index + 1, method, params, greedy_ok)
                if hit is not None:
                    return hit
                if previous is None:
                    del params[name]
                else:
                    params[name] = previous
        if not greedy_ok:
            return None
        greedy = node.greedy.get(method) or node.greedy.get("ANY")
        if greedy is not None and index < len(segments):
            name, key, target = greedy
            params[name] = "/".join(segments[index:])
            return key, target
        return None
