"""Located config errors: the leaf every loader imports (config files, policy documents, credential files).

`ConfigIssue` is one problem at `file:line:col: field`; `ConfigError` carries every problem found at once;
`parse_yaml` keeps the YAML node tree so any later check can point at the line it complains about;
`validate_located` is how every loader turns YAML into settings, its errors in the words of the rest of the
sidecar (`plain_message`: never pydantic's, never the input) with "did you mean" for a misspelt key. Nothing here
imports the rest of the sidecar, so `policy/` and `authorizers/` can report errors without importing `config.py`.
"""

from __future__ import annotations

import collections.abc
import difflib
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One thing wrong with a config file, located as precisely as the YAML allows."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used; `issues` lists every problem found, each with file, line and field."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def format_loc(loc: Iterable[str | int]) -> str:
    """`("routes", 1, "match")` -> `routes[1].match`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_LOC_PART = re.compile(r"\[(\d+)\]|([^.\[]+)")


def parse_loc(field: str) -> tuple[str | int, ...]:
    """`routes[1].match` -> `("routes", 1, "match")`: `format_loc` read back, to place an issue found in one
    text (a policy made from YAML) at the same path in another. A key holding `.` or `[` splits wrongly, and the
    issue lands at the nearest ancestor found."""
    return tuple(int(index) if index else name for index, name in _LOC_PART.findall(field))


class YamlLocator:
    """Maps a path inside the loaded data back to the YAML node it came from, for line numbers."""

    def __init__(self, file: str, root: yaml.Node | None) -> None:
        self.file = file
        self.root = root

    def issue(self, loc: Sequence[str | int], message: str, at_key: bool = False) -> ConfigIssue:
        """An issue at the value `loc` names (or, `at_key`, at its key: where an unknown key is written)."""
        node = self._find(loc, at_key)
        line = node.start_mark.line + 1 if node is not None else 0
        column = node.start_mark.column + 1 if node is not None else 0
        return ConfigIssue(self.file, line, column, format_loc(loc), message)

    def _find(self, loc: Sequence[str | int], at_key: bool = False) -> yaml.Node | None:
        node = self.root
        best = node
        for index, part in enumerate(loc):
            if at_key and index == len(loc) - 1:
                key = self._key(node, part)
                return key if key is not None else best
            child = self._child(node, part)
            if child is None:
                break
            node = best = child
        return best

    @staticmethod
    def _key(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            for key, _ in node.value:
                if str(key.value) == str(part):
                    return key  # type: ignore[no-any-return]
        return None

    @staticmethod
    def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if str(key.value) == str(part):
                    return value  # type: ignore[no-any-return]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            return node.value[part]  # type: ignore[no-any-return]
        return None


def parse_yaml(text: str, file: str, what: str = "YAML") -> tuple[Any, YamlLocator]:
    """Parse YAML (or JSON) keeping the node tree for line numbers; syntax errors become a `ConfigError`."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML forbids (NUL, most C0 controls): refused up front
        raise ConfigError([_at_position(text, exc.position, file, f"invalid {what}: {exc.reason}")]) from None
    try:
        node = loader.get_single_node()
        duplicates = list(_duplicate_keys(node, file)) if node is not None else []
        if duplicates:  # before constructing: merge keys (`<<`) are flattened into the node tree by then
            raise ConfigError(duplicates)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise ConfigError([ConfigIssue(file, line, column, "", f"invalid {what}: {exc.problem}")]) from None
    except yaml.YAMLError:
        raise ConfigError([ConfigIssue(file, 0, 0, "", f"invalid {what}")]) from None
    except (ValueError, OverflowError):  # a timestamp that is no date (`2027-02-30`): YAML raises it bare
        raise ConfigError([_impossible_time(text, file, what)]) from None
    except RecursionError:  # PyYAML composes and constructs recursively: `[[[[...` hundreds deep
        raise ConfigError([_too_deep(text, file, what)]) from None
    finally:
        loader.dispose()
    locator = YamlLocator(file, node)
    if "\\u" in text or "\\U" in text:  # only an escape can produce a lone surrogate
        bad = list(_unpaired_surrogates(data, ()))
        if bad:
            message = "is not valid Unicode text (an unpaired surrogate escape such as \\ud800)"
            raise ConfigError([locator.issue(path, message) for path in bad])
    return data, locator


def _duplicate_keys(node: yaml.Node, file: str) -> Iterator[ConfigIssue]:
    """A key repeated in one mapping: YAML keeps the last silently, so `enabled: false` written above an older
    `enabled: true` would leave a key enabled. Refused, at the repeat's line (a merge key's values may be
    overridden: that is what `<<` is for)."""
    stack: list[tuple[yaml.Node, tuple[str | int, ...]]] = [(node, ())]
    visited: set[int] = set()
    while stack:
        current, path = stack.pop()
        if id(current) in visited:  # an alias: its node is walked once (and a recursive one ends)
            continue
        visited.add(id(current))
        if isinstance(current, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in current.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and key.tag != "tag:yaml.org,2002:merge":
                    if name in seen:
                        message = f"duplicate key {name!r} (first at line {seen[name]}): YAML would keep only the last"
                        where = format_loc((*path, name))
                        yield ConfigIssue(file, key.start_mark.line + 1, key.start_mark.column + 1, where, message)
                    else:
                        seen[name] = key.start_mark.line + 1
                stack.append((value, (*path, name) if name is not None else path))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, (*path, index)) for index, item in enumerate(current.value))


def _at_position(text: str, position: int, file: str, message: str) -> ConfigIssue:
    """An issue at a character offset of `text` (1-based line and column)."""
    line = text.count("\n", 0, position) + 1
    return ConfigIssue(file, line, position - text.rfind("\n", 0, position), "", message)


_MAX_DEPTH = 64


def _too_deep(text: str, file: str, what: str) -> ConfigIssue:
    """Where nesting first goes deeper than any config needs (PyYAML's parser streams events without recursing)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            mark = event.start_mark
            if depth > _MAX_DEPTH and mark is not None:
                return ConfigIssue(file, mark.line + 1, mark.column + 1, "", f"invalid {what}: nested too deeply")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return ConfigIssue(file, 1, 1, "", f"invalid {what}: nested too deeply")


def _impossible_time(text: str, file: str, what: str) -> ConfigIssue:
    """Where the timestamp is that PyYAML could not build (a day, month or offset out of range: 2027-02-30)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        locator = YamlLocator(file, root)
        for loc, node in _scalar_nodes(root, (), set()):
            if node.tag == "tag:yaml.org,2002:timestamp":
                try:
                    loader.construct_yaml_timestamp(node)
                except (ValueError, OverflowError):
                    return locator.issue(loc, "not a real date and time (a day, month or offset out of range)")
    finally:
        loader.dispose()
    return ConfigIssue(file, 0, 0, "", f"invalid {what}: a value that cannot be built")


def _scalar_nodes(
    node: yaml.Node | None, loc: tuple[str | int, ...], seen: set[int]
) -> Iterator[tuple[tuple[str | int, ...], yaml.ScalarNode]]:
    """Every scalar value under `node` with its path, each node once (aliases make a graph, even a cycle)."""
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        yield loc, node
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _scalar_nodes(item, (*loc, index), seen)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _scalar_nodes(key, loc, seen)  # a key can be a timestamp too (`{2027-02-30: x}`)
            yield from _scalar_nodes(value, (*loc, str(key.value)), seen)


def _unpaired_surrogates(
    value: Any, path: tuple[str | int, ...], seen: set[int] | None = None
) -> Iterator[tuple[str | int, ...]]:
    """Paths of strings (keys or values) that UTF-8 cannot encode: they could never be sent in a header, a
    CheckResponse or a log line, so they are refused when the file is read. Each list or mapping is walked once:
    aliases share them, and nine aliases of nine aliases of ... would otherwise be walked exponentially often."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            yield path
        return
    if not isinstance(value, dict | list):
        return
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _unpaired_surrogates(key, path, seen)
            yield from _unpaired_surrogates(item, (*path, key), seen)
    else:
        for index, item in enumerate(value):
            yield from _unpaired_surrogates(item, (*path, index), seen)


_Loc = tuple[str | int, ...]
_Ctx = Mapping[str, Any]


def _number(value: Any) -> str:
    """A limit as written in the schema: `0`, not pydantic's `0.0`."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _plural(count: Any, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


_EXPECTED = {
    **dict.fromkeys(("int_type", "int_parsing", "int_parsing_size"), "expected an integer"),
    "int_from_float": "expected an integer (no fraction)",
    **dict.fromkeys(("float_type", "float_parsing", "decimal_type", "decimal_parsing"), "expected a number"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "expected true or false"),
    **dict.fromkeys(("string_type", "bytes_type", "string_unicode"), "expected a string"),
    **dict.fromkeys(
        ("dict_type", "mapping_type", "model_type", "model_attributes_type", "frozen_dict_type"), "expected a mapping"
    ),
    **dict.fromkeys(("list_type", "tuple_type", "set_type", "frozen_set_type", "iterable_type"), "expected a list"),
    **dict.fromkeys(
        ("datetime_type", "datetime_parsing", "datetime_from_date_parsing", "datetime_object_invalid"),
        "expected a date and time, e.g. 2027-01-01T00:00:00Z",
    ),
    **dict.fromkeys(("date_type", "date_parsing"), "expected a date, e.g. 2027-01-01"),
    "none_required": "expected null",
    "finite_number": "expected a finite number",
    "url_parsing": "expected a URL",
    "missing": "missing required key",
    "extra_forbidden": "unknown key",
    "invalid_key": "keys must be strings",
}
"""Plain words for pydantic error types whose message needs no detail from the error's context."""

_WITH_CONTEXT: dict[str, Callable[[_Ctx], str]] = {
    "greater_than": lambda c: f"must be greater than {_number(c['gt'])}",
    "greater_than_equal": lambda c: f"must be at least {_number(c['ge'])}",
    "less_than": lambda c: f"must be less than {_number(c['lt'])}",
    "less_than_equal": lambda c: f"must be at most {_number(c['le'])}",
    "multiple_of": lambda c: f"must be a multiple of {_number(c['multiple_of'])}",
    "string_too_short": lambda c: (
        "must not be empty" if c["min_length"] == 1 else f"must be at least {_plural(c['min_length'], 'character')}"
    ),
    "string_too_long": lambda c: f"must be at most {_plural(c['max_length'], 'character')}",
    "string_pattern_mismatch": lambda c: f"does not have the expected form (the pattern {c['pattern']})",
    "too_short": lambda c: f"needs at least {_plural(c['min_length'], 'item')}",
    "too_long": lambda c: f"takes at most {_plural(c['max_length'], 'item')}",
    "literal_error": lambda c: f"must be {c['expected']}",
    "enum": lambda c: f"must be {c['expected']}",
    "value_error": lambda c: str(c["error"]),
    "assertion_error": lambda c: str(c["error"]),
}
"""Plain words for pydantic error types whose context carries the limit (never the input)."""


def plain_message(error: Mapping[str, Any]) -> str:
    """A pydantic error in the words of this project's other errors, from its `type` and context: no
    "Value error, ..." or "Input should be ...", and never the input value (it could be a secret)."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing" and error["loc"] and isinstance(error["loc"][-1], int):
        return "too few items"
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    maker = _WITH_CONTEXT.get(kind)
    if maker is not None:
        try:
            return maker(ctx)
        except KeyError:
            pass
    message = str(error["msg"])
    for prefix, replacement in (("Value error, ", ""), ("Assertion failed, ", ""), ("Input should be ", "expected ")):
        if message.startswith(prefix):
            message = replacement + message[len(prefix) :]
    return message


def _known_keys(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts: field names and their aliases (internal, excluded fields left out)."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        out.append(name)
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str) and alias not in out:
                out.append(alias)
    return out


def _unwrap(annotation: Any) -> list[Any]:
    """The types an annotation may hold, without `Annotated`, `Optional` and union wrappers."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg) if t is not type(None)]
    return [annotation]


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation of `part` inside a value of type `annotation` (None when it cannot be told)."""
    for candidate in _unwrap(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            if isinstance(part, str):
                for name, info in candidate.model_fields.items():
                    if part in (name, info.alias, info.validation_alias):
                        return info.annotation
            continue
        origin = typing.get_origin(candidate)
        args = typing.get_args(candidate)
        if origin in (dict, Mapping, collections.abc.Mapping) and len(args) == 2:
            return args[1]
        if origin in (list, tuple, collections.abc.Sequence) and args and isinstance(part, int):
            if origin is tuple and args[-1] is not Ellipsis:
                return args[part] if part < len(args) else None
            return args[0]
    return None


def _model_at(model: type[BaseModel], loc: _Loc) -> type[BaseModel] | None:
    """The model validating the mapping at `loc` inside `model`'s input (None when none does)."""
    annotation: Any = model
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    for candidate in _unwrap(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def suggestion(word: str, known: Iterable[str]) -> str | None:
    """The known word `word` is most likely a typo of, if one is close enough."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.7)
    return close[0] if close else None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`": did you mean `x`?"` for a close known word, else the empty string (appended to a message)."""
    close = suggestion(word, known)
    return f": did you mean `{close}`?" if close else ""


def _real_loc(locator: YamlLocator, prefix: _Loc, loc: _Loc, kind: str) -> tuple[_Loc, bool]:
    """`loc` without the parts pydantic adds that are not in the file (a union member's name such as
    `dict[str,any]`, `[key]`), and whether any was dropped. A `missing` key is kept: it is absent by nature (a
    missing item of a fixed-length list is reported at the list)."""
    node: yaml.Node | None = locator.root
    for part in prefix:
        node = YamlLocator._child(node, part)
    if node is None:
        return loc, False
    out: list[str | int] = []
    for index, part in enumerate(loc):
        child = YamlLocator._child(node, part)
        if child is not None:
            out.append(part)
            node = child
        elif kind == "missing" and index == len(loc) - 1 and isinstance(part, str):
            out.append(part)
    return tuple(out), len(out) != len(loc)


def pydantic_issues(
    exc: ValidationError, locator: YamlLocator, prefix: _Loc, model: type[BaseModel] | None = None
) -> list[ConfigIssue]:
    """Located issues for a pydantic error, in plain words (`plain_message`; never the input: it could be a
    secret). With the `model` that was validated, an unknown key close to a known one says "did you mean", and
    the key it was meant to be is not also reported missing: one mistake, one error."""
    found: list[tuple[_Loc, str, str, bool]] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc, union = _real_loc(locator, prefix, tuple(err["loc"]), err["type"])
        message = plain_message(err)
        meant = None
        if err["type"] == "extra_forbidden" and model is not None and loc and isinstance(loc[-1], str):
            target = _model_at(model, loc[:-1])
            meant = suggestion(loc[-1], _known_keys(target)) if target is not None else None
            if meant is not None:
                message = f"unknown key: did you mean `{meant}`?"
                found.append(((*loc[:-1], meant), "meant", "", False))
        found.append((loc, err["type"], message, union))
    meant_keys = {loc for loc, kind, _, _ in found if kind == "meant"}
    merged: dict[_Loc, list[str]] = {}
    for loc, kind, message, union in found:
        if kind == "meant" or (kind == "missing" and loc in meant_keys):
            continue
        messages = merged.setdefault(loc, [])
        if message in messages:
            continue
        if union and messages and messages[-1].startswith("expected ") and message.startswith("expected "):
            messages[-1] += " or " + message.removeprefix("expected ")  # each member of a union said what it wants
        else:
            messages.append(message)
    unknown = {loc for loc, kind, _, _ in found if kind == "extra_forbidden"}
    return [
        locator.issue((*prefix, *loc), message, at_key=loc in unknown)
        for loc, messages in merged.items()
        for message in messages
    ]


M = TypeVar("M", bound=BaseModel)


def validate_located(
    model: type[M], data: Any, locator: YamlLocator, prefix: _Loc = ()
) -> tuple[M | None, list[ConfigIssue]]:
    """Validate `data` (found at `prefix` in the file `locator` reads) with `model`: the instance, or None and
    every problem located and in plain words. The one way every loader turns YAML into settings."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, pydantic_issues(exc, locator, prefix, model)


def issue_at(source: str, loc: tuple[str | int, ...], message: str) -> ConfigIssue:
    """An issue at the key `loc` of the config file `source` (file:line:col), for problems found after
    validation (a file a key names cannot be read): the file is parsed again for its positions, only on this
    error path; without a file (the embedded default, or one gone since) the issue has no position."""
    try:
        text = Path(source).read_text(encoding="utf-8")
        _, locator = parse_yaml(text, source)
    except (OSError, UnicodeDecodeError, ConfigError):
        return ConfigIssue(source, 0, 0, format_loc(loc), message)
    return locator.issue(loc, message)
