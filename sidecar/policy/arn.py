"""ARNs and wildcard patterns: validation, API Gateway's short resource form, and compilation to regexes.

IAM matches ARNs segment by segment: in the first five colon-separated parts (`arn`, partition, service, region,
account) a `*` or `?` never crosses a colon; in the resource part it matches anything, `/` and `:` included.
`Action` patterns are plain globs, case-insensitive; `Resource` and `Arn*` condition values are case-sensitive.
Every pattern is turned into one anchored regex at load time; the hot path only calls `fullmatch`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import ApiSettings

SHORT_PREFIX = "execute-api:/"
_ARN_PARTS = 6
_ACTION = re.compile(r"^(\*|[A-Za-z0-9*?\-]+:[A-Za-z0-9*?]+)$")

Pieces = Iterable[tuple[str, bool]]
"""A pattern as `(text, exact)` pieces: exact text matches literally even if it holds `*` or `?`."""


def expand_short_form(resource: str, api: ApiSettings | None) -> str:
    """`execute-api:/prod/GET/pets` -> `arn:aws:execute-api:{region}:{account}:{api-id}/prod/GET/pets`.

    API Gateway rewrites the short form to the API's own ARN when a resource policy is saved. Without API
    settings the region, account and API id become wildcards.
    """
    if not resource.startswith(SHORT_PREFIX):
        return resource
    rest = resource[len(SHORT_PREFIX) :]
    if api is None:
        return f"arn:aws:execute-api:*:*:*/{rest}"
    return f"arn:aws:execute-api:{api.region}:{api.account}:{api.id}/{rest}"


def arn_problem(text: str) -> str | None:
    """Why `text` is not an ARN pattern (None if it is). `*` alone is accepted: it matches every resource."""
    if text == "*":
        return None
    if not text.startswith("arn:"):
        return f"malformed ARN {text!r}: expected arn:partition:service:region:account:resource or *"
    parts = text.split(":", _ARN_PARTS - 1)
    if len(parts) < _ARN_PARTS and not parts[-1].endswith("*"):
        return f"malformed ARN {text!r}: expected arn:partition:service:region:account:resource (6 parts)"
    if len(parts) < 3 or not parts[1] or not parts[2]:  # `arn:*` has no service (an IndexError, found by fuzzing)
        return f"malformed ARN {text!r}: the partition and service must not be empty"
    return None


def action_problem(text: str) -> str | None:
    """Why `text` is not an action pattern like `execute-api:Invoke` (None if it is)."""
    if _ACTION.match(text):
        return None
    return f"malformed action {text!r}: expected service:action (wildcards * and ? allowed) or *"


def glob_regex(pieces: Pieces, arn: bool) -> str:
    """Regex source (unanchored, for `fullmatch`) for a wildcard pattern; with `arn`, wildcards stay within the
    first 5 segments.

    A naive translation (`*` -> `.*`) backtracks polynomially: `*a*a*a*b` against 800 `a`s takes seconds, and
    clients choose paths and headers. Every star but the last is therefore emitted as an atomic lazy group
    `(?>.*?CHUNK)`: it commits to the earliest occurrence of the fixed-length chunk that follows, which is always
    safe for globs (an earlier chunk leaves more room for the rest). Matching is then linear in practice.
    """
    tokens: list[tuple[str, bool]] = []  # (regex, is_star)
    colons = 0
    for text, exact in pieces:
        for char in text:
            if not exact and char in "*?":
                bounded = arn and colons < _ARN_PARTS - 1
                if char == "*":
                    tokens.append(("[^:]*" if bounded else ".*", True))
                else:
                    tokens.append(("[^:]" if bounded else ".", False))
                continue
            if char == ":":
                colons += 1
            tokens.append((re.escape(char), False))
    if arn and colons < _ARN_PARTS - 1 and tokens and tokens[-1][1]:
        tokens[-1] = (".*", True)  # `arn:aws:execute-api:*`: a trailing star covers the parts left out
    stars = [i for i, (_, is_star) in enumerate(tokens) if is_star]
    if not stars:
        return "".join(regex for regex, _ in tokens)
    out = [regex for regex, _ in tokens[: stars[0]]]
    for here, following in itertools.pairwise(stars):
        chunk = "".join(regex for regex, _ in tokens[here + 1 : following])
        out.append(f"(?>{tokens[here][0]}?{chunk})")
    out.extend(regex for regex, _ in tokens[stars[-1] :])
    return "".join(out)


LONG_PATTERN = 256
"""Rendered patterns longer than this (a variable filled from a long header or claim) skip the regex caches."""


def rendered_matches(pattern: tuple[tuple[str, bool], ...], value: str, arn: bool) -> bool:
    """Whether `value` matches a rendered (variables substituted) pattern, case-sensitively.

    Short patterns use a cached regex: they recur for every request of the same principal. Long ones come from
    request data and would fill both our cache and `re`'s with large entries, so they are matched directly.
    """
    if sum(len(text) for text, _ in pattern) <= LONG_PATTERN:
        return _compile_glob(pattern, arn).fullmatch(value) is not None
    return glob_match(pattern, value, arn)


@lru_cache(maxsize=4096)
def _compile_glob(pattern: tuple[tuple[str, bool], ...], arn: bool) -> re.Pattern[str]:
    return re.compile(glob_regex(pattern, arn), re.DOTALL)


_LIT, _ONE, _STAR, _ANY = 0, 1, 2, 3  # token kinds: literal char, `?`, `*`, a trailing `*` that may cross colons


def glob_match(pattern: Pieces, value: str, arn: bool) -> bool:
    """Wildcard matching without regexes, with exactly `glob_regex`'s semantics (the tests hold them together).

    With `arn`, the first five colon-separated parts are matched one by one and their wildcards never match a
    colon; in a full six-part ARN the resource part's wildcards match anything. A short ARN pattern ending in `*`
    (`arn:aws:execute-api:*`) lets that final star cover the parts left out.
    """
    tokens = [(char, _ONE if char == "?" else _STAR) if not exact and char in "*?" else (char, _LIT)
              for text, exact in pattern for char in text]  # fmt: skip
    if not arn:
        return _match_tokens(tokens, value, no_colon=False)
    parts: list[list[tuple[str, int]]] = [[]]
    for char, kind in tokens:
        if char == ":" and kind == _LIT and len(parts) < _ARN_PARTS:
            parts.append([])
        else:
            parts[-1].append((char, kind))
    short = len(parts) < _ARN_PARTS
    if short and parts[-1] and parts[-1][-1][1] == _STAR:
        parts[-1][-1] = ("*", _ANY)
    values = value.split(":", len(parts) - 1)  # the last part keeps any further colons
    if len(values) != len(parts):
        return False
    last = len(parts) - 1
    return all(
        _match_tokens(part, text, no_colon=short or i < last)
        for i, (part, text) in enumerate(zip(parts, values, strict=True))
    )


def _match_tokens(tokens: list[tuple[str, int]], value: str, no_colon: bool) -> bool:
    """Glob match by chunks: the text between stars is found with `str.find` at its earliest place (always safe
    for globs), so a long chunk substituted from request data costs a C-speed search, never a quadratic scan."""
    chunks: list[list[tuple[str, int]]] = [[]]
    stars: list[int] = []
    for token in tokens:
        if token[1] in (_STAR, _ANY):
            stars.append(token[1])
            chunks.append([])
        else:
            chunks[-1].append(token)
    head, tail = chunks[0], chunks[-1]
    if not stars:
        return len(head) == len(value) and _fixed_at(head, value, 0, no_colon)
    end = len(value) - len(tail)
    if end < len(head) or not _fixed_at(head, value, 0, no_colon) or not _fixed_at(tail, value, end, no_colon):
        return False
    pos = len(head)
    for kind, chunk in zip(stars, chunks[1:-1], strict=False):
        limit = end - len(chunk)  # the last start that leaves room for the chunk
        if no_colon and kind != _ANY:
            colon = value.find(":", pos, end)
            limit = min(limit, colon if colon >= 0 else limit)  # this star cannot swallow a colon
        found = _find(chunk, value, pos, limit, no_colon)
        if found < 0:
            return False
        pos = found + len(chunk)
    return not (no_colon and stars[-1] != _ANY and ":" in value[pos:end])


def _fixed_at(chunk: list[tuple[str, int]], value: str, at: int, no_colon: bool) -> bool:
    """Whether a star-free chunk matches `value` at `at`."""
    for offset, (char, kind) in enumerate(chunk):
        got = value[at + offset]
        if (kind == _LIT and got != char) or (kind == _ONE and no_colon and got == ":"):
            return False
    return True


def _find(chunk: list[tuple[str, int]], value: str, start: int, last_start: int, no_colon: bool) -> int:
    """The earliest position in [start, last_start] where `chunk` matches, or -1."""
    if last_start < start:
        return -1
    if all(kind == _LIT for _, kind in chunk):
        return value.find("".join(char for char, _ in chunk), start, last_start + len(chunk))
    for at in range(start, last_start + 1):
        if _fixed_at(chunk, value, at, no_colon):
            return at
    return -1


def compile_alternatives(patterns: Iterable[str], arn: bool, ignore_case: bool) -> re.Pattern[str]:
    """One regex matching any of several plain patterns (so a statement's list costs one `fullmatch`)."""
    return _alternatives(tuple(patterns), arn, ignore_case)


@lru_cache(maxsize=2048)
def _alternatives(patterns: tuple[str, ...], arn: bool, ignore_case: bool) -> re.Pattern[str]:
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    body = "|".join(f"(?:{glob_regex(((p, False),), arn)})" for p in patterns)
    return re.compile(body, flags)


class ArnSet:
    """Several ARN patterns, matched without a long regex where possible.

    Literal ARNs go into a set. Patterns whose literal prefix already covers the five leading colons (the usual
    `arn:aws:execute-api:region:account:api/stage/...`) become `startswith(prefix)` plus a short regex for the
    rest, which compiles far faster than the whole ARN as a regex (a 10,000-statement policy loads in a fraction
    of the time) and runs no slower. Anything else falls back to one segment-aware regex.
    """

    __slots__ = ("exact", "full", "prefixed")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        groups: dict[str, list[str]] = {}
        full: list[str] = []
        for pattern in patterns:
            prefix = literal_prefix(pattern)
            if prefix == pattern:
                exact.add(pattern)
            elif prefix.count(":") >= _ARN_PARTS - 1:
                groups.setdefault(prefix, []).append(pattern[len(prefix) :])
            else:
                full.append(pattern)
        self.exact = frozenset(exact)
        self.prefixed = tuple(
            (prefix, _alternatives(tuple(rests), False, False).fullmatch) for prefix, rests in groups.items()
        )
        self.full = _alternatives(tuple(full), True, False).fullmatch if full else None

    def matches(self, value: str) -> bool:
        """Whether `value` matches any of the patterns."""
        if value in self.exact:
            return True
        for prefix, match in self.prefixed:
            if value.startswith(prefix) and match(value, len(prefix)) is not None:
                return True
        return self.full is not None and self.full(value) is not None


def literal_prefix(pattern: str) -> str:
    """Text before the first wildcard or variable: every matching value starts with it."""
    end = len(pattern)
    for mark in ("*", "?", "${"):
        found = pattern.find(mark)
        if 0 <= found < end:
            end = found
    return pattern[:end]


def literal_suffix(pattern: str) -> str:
    """Text after the last wildcard or variable: every matching value ends with it."""
    marks = ("*", "?", "}") if "${" in pattern else ("*", "?")
    start = max(pattern.rfind(mark) + 1 for mark in marks)
    return pattern[start:]


def resource_arn(api: ApiSettings, method: str, path: str) -> str:
    """The execute-api ARN API Gateway evaluates for a request: `...:{api-id}/{stage}/{METHOD}/{path}`."""
    if not path.startswith("/"):
        path = "/" + path
    return f"arn:aws:execute-api:{api.region}:{api.account}:{api.id}/{api.stage}/{method}{path}"
