"""Located config errors: the leaf every loader imports (config files, policy documents, credential files).

`ConfigIssue` is one problem at `file:line:col: field`; `ConfigError` carries every problem found at once;
`parse_yaml` keeps the YAML node tree so any later check can point at the line it complains about. Nothing here
imports the rest of the sidecar, so `policy/` and `authorizers/` can report errors without importing `config.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError


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


class YamlLocator:
    """Maps a path inside the loaded data back to the YAML node it came from, for line numbers."""

    def __init__(self, file: str, root: yaml.Node | None) -> None:
        self.file = file
        self.root = root

    def issue(self, loc: Sequence[str | int], message: str) -> ConfigIssue:
        node = self._find(loc)
        line = node.start_mark.line + 1 if node is not None else 0
        column = node.start_mark.column + 1 if node is not None else 0
        return ConfigIssue(self.file, line, column, format_loc(loc), message)

    def _find(self, loc: Sequence[str | int]) -> yaml.Node | None:
        node = self.root
        best = node
        for part in loc:
            child = self._child(node, part)
            if child is None:
                break
            node = best = child
        return best

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
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise ConfigError([ConfigIssue(file, line, column, "", f"invalid {what}: {exc.problem}")]) from None
    except yaml.YAMLError:
        raise ConfigError([ConfigIssue(file, 0, 0, "", f"invalid {what}")]) from None
    finally:
        loader.dispose()
    locator = YamlLocator(file, node)
    if "\\u" in text or "\\U" in text:  # only an escape can produce a lone surrogate
        bad = list(_unpaired_surrogates(data, ()))
        if bad:
            message = "is not valid Unicode text (an unpaired surrogate escape such as \\ud800)"
            raise ConfigError([locator.issue(path, message) for path in bad])
    return data, locator


def _unpaired_surrogates(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
    """Paths of strings (keys or values) that UTF-8 cannot encode: they could never be sent in a header, a
    CheckResponse or a log line, so they are refused when the file is read."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _unpaired_surrogates(key, path)
            yield from _unpaired_surrogates(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unpaired_surrogates(item, (*path, index))


def pydantic_issues(exc: ValidationError, locator: YamlLocator, prefix: tuple[str | int, ...]) -> list[ConfigIssue]:
    """Located issues for a pydantic error (only its message: the input could be a secret)."""
    issues = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = (*prefix, *err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        issues.append(locator.issue(loc, message))
    return issues
