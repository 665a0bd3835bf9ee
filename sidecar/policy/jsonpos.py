"""A strict JSON reader that remembers where every value starts, so policy errors can say `file:line:col`.

The standard `json` module gives no positions for values, and users need "Statement[2].Condition.IpAddress at
line 14, column 9" to fix a pasted policy. This reader is small on purpose: it reuses `json`'s own string scanner
(so escapes behave exactly like `json.loads`), rejects duplicate keys (IAM does too; silently keeping the last one
would hide a mistake) and caps nesting depth so hostile input cannot exhaust the stack. It runs at load time only.

Well-formed documents are read by the C `json` module (far faster than this reader); positions are computed
by this reader only when an error or warning needs one.
"""

from __future__ import annotations

import contextlib
import json
import re
from bisect import bisect_right
from collections.abc import Callable
from json import decoder as _decoder
from typing import Any

Path = tuple[str | int, ...]

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_WS = re.compile(r"[ \t\n\r]*")
_MAX_DEPTH = 32
_scanstring: Callable[[str, int, bool], tuple[str, int]] = _decoder.scanstring  # type: ignore[attr-defined]


class JsonSyntaxError(ValueError):
    """Malformed JSON; `offset` is the character index where reading failed."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class Located:
    """Parsed JSON plus the start offset of every value, addressed by its path (`("Statement", 2, "Effect")`)."""

    def __init__(self, text: str, value: Any, offsets: dict[Path, int] | None) -> None:
        self.text = text
        self.value = value
        self._offsets = offsets
        self._line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset."""
        line = bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def position(self, path: Path) -> tuple[int, int]:
        """Line and column of the value at `path`, or of its nearest located ancestor."""
        offsets = self._offsets
        if offsets is None:
            reader = _Reader(self.text)
            with contextlib.suppress(JsonSyntaxError):  # deeper than our limit: positions stop at that depth
                reader.read()
            offsets = self._offsets = reader.offsets
        for end in range(len(path), -1, -1):
            offset = offsets.get(path[:end])
            if offset is not None:
                return self.line_col(offset)
        return 1, 1


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.offsets: dict[Path, int] = {}

    def skip_ws(self) -> None:
        match = _WS.match(self.text, self.pos)
        assert match is not None  # the pattern matches the empty string
        self.pos = match.end()

    def fail(self, message: str) -> JsonSyntaxError:
        return JsonSyntaxError(message, self.pos)

    def read(self) -> Any:
        self.skip_ws()
        value = self.value((), 0)
        self.skip_ws()
        if self.pos != len(self.text):
            raise self.fail("unexpected text after the end of the document")
        return value

    def value(self, path: Path, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.fail(f"nested deeper than {_MAX_DEPTH} levels")
        text, pos = self.text, self.pos
        if pos >= len(text):
            raise self.fail("unexpected end of document")
        self.offsets[path] = pos
        char = text[pos]
        if char == "{":
            return self.object(path, depth)
        if char == "[":
            return self.array(path, depth)
        if char == '"':
            return self.string()
        for word, result in (("true", True), ("false", False), ("null", None)):
            if text.startswith(word, pos):
                self.pos = pos + len(word)
                return result
        match = _NUMBER.match(text, pos)
        if match:
            self.pos = match.end()
            literal = match.group()
            return float(literal) if any(c in literal for c in ".eE") else int(literal)
        raise self.fail(f"unexpected character {char!r}")

    def string(self) -> str:
        start = self.pos
        try:
            value, self.pos = _scanstring(self.text, self.pos + 1, True)
        except ValueError as exc:
            raise self.fail(f"bad string: {str(exc).split(':')[0]}") from None
        if not _is_text(value):
            self.pos = start
            raise self.fail("bad string: an unpaired surrogate escape (\\ud800-\\udfff) is not text")
        return value

    def object(self, path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.pos += 1
        self.skip_ws()
        if self.text.startswith("}", self.pos):
            self.pos += 1
            return out
        while True:
            self.skip_ws()
            if not self.text.startswith('"', self.pos):
                raise self.fail("expected a quoted key")
            key_at = self.pos
            key = self.string()
            if key in out:
                self.pos = key_at
                raise self.fail(f"duplicate key {key!r}")
            self.skip_ws()
            if not self.text.startswith(":", self.pos):
                raise self.fail("expected ':' after a key")
            self.pos += 1
            self.skip_ws()
            out[key] = self.value((*path, key), depth + 1)
            self.skip_ws()
            if self.text.startswith(",", self.pos):
                self.pos += 1
                continue
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return out
            raise self.fail("expected ',' or '}'")

    def array(self, path: Path, depth: int) -> list[Any]:
        out: list[Any] = []
        self.pos += 1
        self.skip_ws()
        if self.text.startswith("]", self.pos):
            self.pos += 1
            return out
        while True:
            self.skip_ws()
            out.append(self.value((*path, len(out)), depth + 1))
            self.skip_ws()
            if self.text.startswith(",", self.pos):
                self.pos += 1
                continue
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return out
            raise self.fail("expected ',' or ']'")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _all_text(value: Any) -> bool:
    """False when a string anywhere in `value` (keys included) holds an unpaired surrogate."""
    if isinstance(value, str):
        return _is_text(value)
    if isinstance(value, dict):
        return all(_is_text(k) and _all_text(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_all_text(v) for v in value)
    return True


def parse_located(text: str) -> Located:
    """Parse `text` as JSON, keeping value positions; raise `JsonSyntaxError` on malformed input (including a
    string that holds an unpaired surrogate escape: it could not be logged or sent anywhere as text)."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        if "\\u" in text and not _all_text(value):
            raise ValueError("an unpaired surrogate")
    except (ValueError, RecursionError):
        reader = _Reader(text)  # malformed: read again slowly to say exactly where and why
        value = reader.read()
        return Located(text, value, reader.offsets)
    return Located(text, value, None)
