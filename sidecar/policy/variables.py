"""Policy variables: `${aws:username}`, `${jwt:sub, 'nobody'}` and the escapes `${*}`, `${?}`, `${$}`.

A string that may hold variables is parsed once, at load, into a `Template` of pieces. Literal pieces keep their
wildcard meaning (in `Resource`, `StringLike`, `ArnLike`); substituted values and escapes are exact text, so a
username can never smuggle a `*` into a pattern. A variable whose key is missing (and has no default), or whose
value is multi-valued, makes the whole value match nothing, as AWS documents. `Version: 2008-10-17` disables
substitution: the text is then taken literally, which is why parsing takes `enabled`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_KEY = re.compile(r"^[A-Za-z0-9_.:/\-]+$")
_DEFAULT = re.compile(r"^\s*([^,\s]+)\s*,\s*'([^']*)'\s*$")
_ESCAPES = {"*": "*", "?": "?", "$": "$"}

Value = str | tuple[str, ...] | None
Lookup = Callable[[str], Value]


class VariableError(ValueError):
    """A `${...}` that is not a known escape, a key, or `key, 'default'`."""


@dataclass(frozen=True, slots=True)
class Piece:
    """One piece of a template: `text` is literal (a pattern where patterns apply) unless `key` is set.

    `exact` marks text that came from an escape and so must match literally even inside a pattern.
    """

    text: str = ""
    key: str = ""
    default: str | None = None
    exact: bool = False


@dataclass(frozen=True, slots=True)
class Template:
    """A string with variables; `render` substitutes them from a per-request lookup."""

    source: str
    pieces: tuple[Piece, ...]

    @property
    def keys(self) -> frozenset[str]:
        """The (lower-cased) context keys this template reads."""
        return frozenset(p.key for p in self.pieces if p.key)

    def render(self, lookup: Lookup) -> tuple[tuple[str, bool], ...] | None:
        """Pieces as `(text, is_exact)` with variables substituted; None when a variable cannot be resolved."""
        out: list[tuple[str, bool]] = []
        for piece in self.pieces:
            if not piece.key:
                out.append((piece.text, piece.exact))
                continue
            value = lookup(piece.key)
            if value is None:
                value = piece.default
            if not isinstance(value, str):
                return None
            out.append((value, True))
        return tuple(out)

    def render_text(self, lookup: Lookup) -> str | None:
        """The substituted string (for exact comparisons), or None when a variable cannot be resolved."""
        rendered = self.render(lookup)
        return None if rendered is None else "".join(text for text, _ in rendered)


def has_variables(text: str) -> bool:
    """Whether `text` contains a `${...}` (cheap pre-check before `parse_template`)."""
    return "${" in text


def parse_template(text: str) -> Template:
    """Parse `text` into a Template; raise `VariableError` for a malformed `${...}`."""
    pieces: list[Piece] = []
    pos = 0
    for match in _VARIABLE.finditer(text):
        if match.start() > pos:
            pieces.append(Piece(text=text[pos : match.start()]))
        pieces.append(_variable(match.group(1)))
        pos = match.end()
    if pos < len(text):
        pieces.append(Piece(text=text[pos:]))
    if any("${" in piece.text for piece in pieces if not piece.exact):
        raise VariableError("unterminated policy variable: '${' without a closing '}'")
    return Template(text, tuple(pieces))


def _variable(body: str) -> Piece:
    if body in _ESCAPES:
        return Piece(text=_ESCAPES[body], exact=True)
    stripped = body.strip()
    if _KEY.match(stripped) and ":" in stripped:
        return Piece(key=stripped.lower())
    match = _DEFAULT.match(body)
    if match and _KEY.match(match.group(1)) and ":" in match.group(1):
        return Piece(key=match.group(1).lower(), default=match.group(2))
    raise VariableError(f"malformed policy variable ${{{body}}}: use ${{prefix:key}} or ${{prefix:key, 'default'}}")
