"""`authz-sidecar api-keys add | list | disable`: the key file's own tools (its format: `apikeys.py`).

`add` makes a new value, writes only its SHA-256 and prints the value once, alone on stdout (so
`KEY=$(authz-sidecar api-keys add ...)` captures exactly it); everything else goes to stderr and never holds
the value. Files are written whole to a temporary file beside them and renamed over (`os.replace`), so the
sidecar's reload never reads half a file. Edits keep the file's comments and order where they can (an entry is
appended as text, `enabled: false` written into the entry): the edited text is parsed back and must mean exactly
the intended change, else the file is written out anew from its data (comments lost, meaning kept).

Exit codes: 0 done, 2 a usage or file error (printed as file:line:col: field: message).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ..issues import ConfigError, parse_yaml
from ..watched_file import fingerprint
from .apikeys import (
    NAME_RULE,
    ApiKey,
    ApiKeySet,
    digest_of,
    load_api_keys,
    new_key_value,
    parse_key_text,
    parse_keys,
    read_key_text,
    valid_name,
)

EXIT_OK, EXIT_ERROR = 0, 2
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NEW_FILE_HEADER = "# API keys (authz-sidecar api-keys add): only SHA-256 digests of the values are stored.\n"


class UsageError(Exception):
    """A bad argument or a refused change: printed as is (file, argument, why; never a key value)."""


def add_parser(sub: Any) -> None:
    """Register `api-keys` on the command line's subparsers (`cli.py` calls this)."""
    parser = sub.add_parser("api-keys", help="manage the API key file (add prints a new key's value once)")
    verbs = parser.add_subparsers(dest="api_keys_command", required=True)
    add = verbs.add_parser("add", help="append a new key; print its value, once, on stdout")
    add.add_argument("--file", type=Path, required=True, help="the key file (created if absent)")
    add.add_argument("--name", required=True, help="free text describing the key's holder")
    add.add_argument("--plan", help="the usage plan the key belongs to (a name in usage_plans:)")
    add.add_argument("--expires", help="ISO 8601 time from which the key is refused (no offset: UTC)")
    add.add_argument("--id", help="the key's id (default: key- and 10 random hex digits)")
    listing = verbs.add_parser("list", help="show the keys (never a value; the digest's first 8 hex digits)")
    listing.add_argument("--file", type=Path, required=True)
    disable = verbs.add_parser("disable", help="mark a key disabled (refused from the sidecar's next reload)")
    disable.add_argument("--file", type=Path, required=True)
    disable.add_argument("--id", required=True)


def run(args: argparse.Namespace) -> int:
    """Run one `api-keys` verb; errors are printed to stderr and give exit code 2."""
    verbs: dict[str, Callable[[argparse.Namespace], int]] = {"add": _add, "list": _list, "disable": _disable}
    try:
        return verbs[args.api_keys_command](args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"error: {exc.filename or args.file}: {exc.strerror or exc.__class__.__name__}", file=sys.stderr)
    return EXIT_ERROR


# ---------------------------------------------------------------------------------------------------------------
# The verbs
# ---------------------------------------------------------------------------------------------------------------


def _add(args: argparse.Namespace) -> int:
    path: Path = args.file
    entry = _new_entry(args)
    text, data, keys = _read(path, missing_ok=True)
    if entry["id"] is None:
        entry["id"] = _fresh_id(keys)
    elif keys.by_id(entry["id"]) is not None:
        index = next(i for i, raw in enumerate(data) if raw.get("id") == entry["id"])
        _, locator = parse_key_text(text, str(path))
        raise UsageError(str(locator.issue((index, "id"), f"an api key with this id exists (--id {entry['id']})")))
    value = new_key_value()
    while keys.find(value) is not None:  # 240 random bits: never, but the file's digests must stay unique
        value = new_key_value()
    entry["sha256"] = digest_of(value)
    expected = [*data, entry]
    new_text = _appended(text, entry) if text.strip() else None
    _write(path, text, _checked(new_text, expected) or _dumped(text, expected), expected)
    added = load_api_keys(path).find(value)
    if added is None or added.id != entry["id"]:  # what was written must accept the value printed
        raise UsageError(f"{path}: the written file does not accept the new key; nothing printed")
    print(value)
    print(f"added api key {entry['id']} to {path}", file=sys.stderr)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    _, _, keys = _read(args.file, missing_ok=False)
    rows = [("ID", "NAME", "PLAN", "ENABLED", "EXPIRES", "SHA256")]
    rows.extend(_row(key) for key in keys)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]))
    return EXIT_OK


def _disable(args: argparse.Namespace) -> int:
    path: Path = args.file
    text, data, keys = _read(path, missing_ok=False)
    key = keys.by_id(args.id)
    if key is None:
        raise UsageError(f"{path}: --id: no api key with id {_shown(args.id)}")
    if not key.enabled:
        print(f"api key {key.id} is already disabled in {path}", file=sys.stderr)
        return EXIT_OK
    index = next(i for i, raw in enumerate(data) if raw.get("id") == key.id)
    expected = [dict(raw, enabled=False) if i == index else raw for i, raw in enumerate(data)]
    _write(path, text, _checked(_disabled_text(text, index), expected) or _dumped(text, expected), expected)
    print(f"disabled api key {key.id} in {path}", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------------
# Arguments, reading and writing
# ---------------------------------------------------------------------------------------------------------------


def _new_entry(args: argparse.Namespace) -> dict[str, Any]:
    """The new entry's fields from the arguments (its sha256 comes later), each checked as the file checks it."""
    if not args.name.strip():
        raise UsageError("--name: must not be empty")
    for flag, value in (("--id", args.id), ("--plan", args.plan)):
        if value is not None and not valid_name(value):
            raise UsageError(f"{flag}: {NAME_RULE} (got {_shown(value)})")
    entry: dict[str, Any] = {"id": args.id, "name": args.name, "sha256": ""}
    if args.plan is not None:
        entry["plan"] = args.plan
    entry["enabled"] = True
    if args.expires is not None:
        entry["expires"] = _iso(args.expires)
    return entry


def _iso(text: str) -> str:
    """`--expires` as the file writes it: UTC, `YYYY-MM-DDTHH:MM:SSZ`."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError("--expires: expected an ISO 8601 date and time, e.g. 2027-01-01T00:00:00Z") from None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fresh_id(keys: ApiKeySet) -> str:
    while True:
        candidate = f"key-{secrets.token_hex(5)}"
        if keys.by_id(candidate) is None:
            return candidate


def _read(path: Path, missing_ok: bool) -> tuple[str, list[Any], ApiKeySet]:
    """The file's text, its data (a list of entries) and its keys, every problem a `ConfigError`; an absent
    file is an empty one for `add`."""
    if missing_ok and not path.exists():
        return "", [], ApiKeySet(())
    text = read_key_text(path)  # read once: the text edited is the text validated
    data, locator = parse_key_text(text, str(path))
    return text, data, parse_keys(data, locator)


def _appended(text: str, entry: dict[str, Any]) -> str | None:
    """`text` with `entry` appended as a block item at the indentation of the list's items, comments kept;
    None when the file's list is not written as a block."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.SequenceNode) or root.flow_style:
        return None
    indent = " " * root.start_mark.column
    block = _dump([entry])
    item = "".join(indent + line for line in block.splitlines(keepends=True))
    return text + ("" if text.endswith("\n") else "\n") + item


def _disabled_text(text: str, index: int) -> str | None:
    """`text` with entry `index` set to `enabled: false`, in place: its `enabled` value replaced, or a line
    added after its `id` (a block mapping) or a member before its `}` (a flow one); None when neither fits."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.SequenceNode) or not isinstance(root.value[index], yaml.MappingNode):
        return None
    node = root.value[index]
    members = {str(key.value): (key, value) for key, value in node.value}
    if "enabled" in members:
        start: int = members["enabled"][1].start_mark.index
        stop: int = members["enabled"][1].end_mark.index
        return text[:start] + "false" + text[stop:]
    if node.flow_style:
        end: int = node.end_mark.index - 1  # the closing brace
        return text[:end] + ", enabled: false" + text[end:] if text[end] == "}" else None
    key, value = members["id"]
    newline = text.find("\n", int(value.end_mark.index))
    line = " " * int(key.start_mark.column) + "enabled: false\n"
    if newline < 0:
        return text + "\n" + line
    return text[: newline + 1] + line + text[newline + 1 :]


def _dump(data: list[Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000)


def _dumped(text: str, expected: list[Any]) -> str:
    """The whole file written anew from its data (its comments lost); a new file gets a header comment."""
    return (NEW_FILE_HEADER if not text.strip() else "") + _dump(expected)


def _checked(text: str | None, expected: list[Any]) -> str | None:
    """`text` if it parses to exactly `expected` (the in-place edit did what was meant), else None."""
    if text is None:
        return None
    try:
        data, _ = parse_yaml(text, "<edited>")
    except ConfigError:
        return None
    return text if data == expected else None


def _write(path: Path, read: str, text: str, expected: list[Any]) -> None:
    """Write `text` over `path` atomically: a temporary file beside it, fsynced, renamed over. Refused when
    the file changed since it was read (another `add` at the same time), so neither change is lost silently."""
    data, locator = parse_yaml(text, str(path))
    if data != expected:
        raise UsageError(f"{path}: could not write the change faithfully; file left as it was")
    parse_keys(data, locator)
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current != read:
        raise UsageError(f"{path}: changed while being edited; file left as it was, run the command again")
    mode = path.stat().st_mode & 0o7777 if path.exists() else _default_mode()
    before = fingerprint([path])
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)  # mkstemp makes 0600: keep the file's mode, or a new file's usual one
        if fingerprint([path]) != before:
            raise UsageError(f"{path}: changed while being edited; file left as it was, run the command again")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _default_mode() -> int:
    """What `open()` would give a new file under this process's umask (the CLI has one thread)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _row(key: ApiKey) -> tuple[str, str, str, str, str, str]:
    expires = "-" if key.expires is None else datetime.fromtimestamp(key.expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    enabled = "true" if key.enabled else "false"
    return (key.id, _shown(key.name), key.plan or "-", enabled, expires, key.sha256[:8])


def _shown(text: str) -> str:
    """Text from a file or an argument, safe to print on a terminal (control characters replaced)."""
    return _CONTROL.sub("?", text)
