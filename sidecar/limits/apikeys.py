"""API keys (API Gateway's): the key file, the snapshot the hot path looks keys up in, and its hot reload.

The file is YAML (or JSON), a bare list, one entry per key; the key's value is never stored, only its SHA-256::

    - id: mobile-app                  # unique, [A-Za-z0-9_-]{1,64}: what logs and metrics name
      name: Mobile app, production    # free text
      sha256: 5e884898da28...         # lowercase hex SHA-256 of the key value (64 digits)
      plan: gold                      # optional: the usage plan the key belongs to (`usage_plans:` names it)
      enabled: true                   # optional, default true
      expires: 2027-01-01T00:00:00Z   # optional, ISO 8601 (a date alone is midnight; no offset means UTC)

A bare list (not `{keys: [...]}`) because the issue fixes the file as "a list of entries"; the file holds nothing
else. `authz-sidecar api-keys add` writes entries (`apikeys_cli.py`). Errors name the file, line and field, and
never a value; the file holds no value to leak, and a value presented to `find` is never logged.

Reading is two-speed, because a file of 10,000 keys is read on the event loop at every config load: a quick read
(libyaml's events walked into the data, one pydantic validation of the whole list) takes the file when it is
valid, and only when it finds a problem, or meets YAML it leaves alone (anchors, tags, nesting), is the file read
again the located way (`issues.parse_yaml`: the node tree, each entry validated at its line), which is the one
that decides and reports. The quick read accepts nothing the located one refuses: the same model, the same rules.

`FileApiKeyStore` reloads the file like the SigV4 credential store (`authorizers/sigv4/credentials.py`): a stat
fingerprint (`watched_file.py`), one reload at a time, a bad file keeps the previous snapshot (logged with
file:line:field, recorded as a rejected `ReloadStatus` under source `api_keys`). It knows the plans the config
defines, so a reload naming another plan is as bad as one at config load. The process keeps the last snapshot it
read with the fingerprint seen before reading it: a config load whose key file did not change (a SIGHUP, an
unrelated edit) reuses it instead of parsing the file again.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import Node, ScalarNode

from ..issues import ConfigError, ConfigIssue, YamlLocator, did_you_mean, parse_yaml, validate_located
from ..metrics import ReloadStatus
from ..settings import GATE_NAME
from ..watched_file import FilePoller, FileStat, WatchedStore, fingerprint, read_watched_text

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # PyYAML built without libyaml: the same events, only slower
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

log = logging.getLogger(__name__)

NAME_RULE = "use 1-64 letters, digits, '-' or '_'"
"""What a key id and a plan name may be: the config's gate names (`settings.GATE_NAME`), so every plan a key
can name is one `usage_plans:` can define."""
_HEX = re.compile(r"[0-9a-f]{64}\Z")
RELOAD_SOURCE = "api_keys"
MAX_VALUE_LENGTH = 1024
"""Longer presented values are unknown without being hashed: API Gateway's keys are at most 128 characters, and
a request should not buy a hash of a header as large as Envoy allows."""
VALUE_LENGTH = 40
"""Characters of a value `new_key_value` makes (API Gateway: 20 to 128)."""

Why = Literal["ok", "missing", "unknown", "disabled", "expired"]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as the file describes it. The digest is kept (the CLI shows its first digits, the snapshot is
    keyed by it) but left out of the repr, so a logged key shows who it is and nothing to look it up by."""

    id: str
    name: str = ""
    plan: str | None = None
    enabled: bool = True
    expires: float | None = None
    """Epoch seconds (UTC) from which the key is refused; None for never."""
    sha256: str = field(default="", repr=False)
    """Lowercase hex SHA-256 of the value."""


def valid_name(value: str) -> bool:
    """Whether `value` may be a key id or a plan name (the whole string: no trailing newline slips through)."""
    return GATE_NAME.fullmatch(value) is not None


def digest_of(value: str) -> str:
    """The `sha256` the file holds for a key value (lowercase hex)."""
    return _digest(value).hex()


def _digest(value: str) -> bytes:
    # surrogatepass: a header value is a str that may hold anything; encoding it must never raise (fail closed).
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class ApiKeySet:
    """One immutable snapshot of the key file: what the hot path reads, swapped whole on reload."""

    def __init__(self, keys: Iterable[ApiKey], source: str = "<memory>") -> None:
        by_digest: dict[bytes, tuple[bytes, ApiKey]] = {}
        by_id: dict[str, ApiKey] = {}
        for key in keys:
            if not _HEX.match(key.sha256):
                raise ValueError(f"api key {key.id}: sha256 must be 64 lowercase hex digits")
            digest = bytes.fromhex(key.sha256)
            if key.id in by_id or digest in by_digest:
                raise ValueError(f"api key {key.id}: duplicate id or sha256")
            by_digest[digest] = (digest, key)
            by_id[key.id] = key
        self._by_digest: Mapping[bytes, tuple[bytes, ApiKey]] = MappingProxyType(by_digest)
        self._by_id: Mapping[str, ApiKey] = MappingProxyType(by_id)
        self.source = source
        self.plans: frozenset[str] = frozenset(key.plan for key in by_id.values() if key.plan is not None)
        """Every plan a key names, for the config's check that each one is a configured usage plan."""
        self.version = _version(by_id.values())
        """A fingerprint of the whole file's meaning (ids, plans, digests...): what logs and /readyz show."""

    def find(self, value: str) -> ApiKey | None:
        """The key whose digest is the SHA-256 of `value`, enabled or not (`check_key` judges it).

        A dict lookup keyed by the digest: one hash whatever the number of keys. Its own comparison is not
        constant-time, but all it could reveal is how much of a SHA-256 digest matched, which says nothing
        about any key's value (finding a value from its digest is a preimage attack). The accepting
        comparison is `hmac.compare_digest` of the stored digest against the computed one, so the decision
        itself is constant-time as the issue requires: with a plain dict the two already match when one is
        found, and the check keeps the rule true where a reviewer looks for it, and if the map is ever keyed by
        less than the whole digest. It costs well under a microsecond."""
        if len(value) > MAX_VALUE_LENGTH:
            return None
        computed = hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()  # `_digest`, inline: hot
        found = self._by_digest.get(computed)
        if found is None or not hmac.compare_digest(found[0], computed):
            return None
        return found[1]

    def by_id(self, id: str) -> ApiKey | None:
        """The key with this id (usage reports and tools name keys by id)."""
        return self._by_id.get(id)

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)


def check_key(keys: ApiKeySet, value: str | None, now: float) -> tuple[ApiKey | None, Why]:
    """(the key, why) for a presented value: `ok` only for a known, enabled, unexpired key; the key is
    returned for `disabled` and `expired` too, so the deny can be logged with its id. Never raises: a value
    that cannot be judged is `missing` or `unknown`, a deny."""
    key = keys.find(value) if value else None
    return key, judge_key(key, value, now)


def judge_key(key: ApiKey | None, value: str | None, now: float) -> Why:
    """`check_key`'s verdict on the key `find` gave for `value` (None: none)."""
    if not value:
        return "missing"
    if key is None:
        return "unknown"
    if not key.enabled:
        return "disabled"
    if key.expires is not None and now >= key.expires:
        return "expired"
    return "ok"


def new_key_value() -> str:
    """A new key value: 40 characters of the URL-safe alphabet (A-Z a-z 0-9 - _) from `secrets`, 240 bits."""
    return secrets.token_urlsafe(VALUE_LENGTH * 3 // 4)


def _version(keys: Iterable[ApiKey]) -> str:
    ordered = sorted(keys, key=lambda k: k.id)
    fields = [[key.id, key.name, key.plan, key.enabled, key.expires, key.sha256] for key in ordered]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]  # one dumps call: ASCII (escapes)


# ---------------------------------------------------------------------------------------------------------------
# The file format
# ---------------------------------------------------------------------------------------------------------------


class KeyEntry(BaseModel):
    """One entry as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str = Field(min_length=1)
    sha256: str
    plan: str | None = None
    enabled: bool = True
    expires: datetime | None = None

    @field_validator("id", "plan")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not valid_name(value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _HEX.match(value):
            hint = " (lowercase)" if _HEX.match(value.lower()) else ""
            raise ValueError(f"expected the key value's SHA-256 as 64 lowercase hex digits{hint}")
        return value

    @field_validator("expires", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        # YAML reads an unquoted timestamp as a datetime (or a date); a number would be taken as epoch seconds
        # by pydantic, and `expires: 2027` would then have expired in 1970.
        if value is not None and not isinstance(value, str | datetime | date):
            raise ValueError("expected an ISO 8601 date and time, e.g. 2027-01-01T00:00:00Z")
        return value

    def key(self) -> ApiKey:
        expires = None
        if self.expires is not None:
            at = self.expires if self.expires.tzinfo else self.expires.replace(tzinfo=UTC)
            expires = at.timestamp()
        return ApiKey(self.id, self.name, self.plan, self.enabled, expires, self.sha256)


_ENTRIES = TypeAdapter(list[KeyEntry])
"""The whole file at once, for the quick read: one call into pydantic instead of one per entry."""
_STR = "tag:yaml.org,2002:str"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "timestamp"))
"""The implicit types the quick read builds besides strings (with PyYAML's own constructors); any other (`<<`,
`=`) is left to the located read."""


def read_key_text(path: Path) -> str:
    """The file's text (`ConfigError` when it cannot be read)."""
    return read_watched_text(path, "api key file")


def parse_key_text(text: str, file: str) -> tuple[Any, YamlLocator]:
    """The file's data and its locator (`ConfigError` for a syntax error); `parse_keys` validates the data."""
    return parse_yaml(text, file, what="YAML/JSON")  # an impossible date is located there


def parse_keys(data: Any, locator: YamlLocator, plans: Collection[str] | None = None) -> ApiKeySet:
    """Validate parsed file data: every problem at once, each at its line and field; duplicates are reported
    at the later entry, naming the earlier one by index. With `plans` (the config's `usage_plans:`), a key
    naming another plan is a problem at its `plan`."""
    if not isinstance(data, list):
        raise ConfigError([locator.issue((), "expected a list of api keys (`[]` for none)")])
    issues: list[ConfigIssue] = []
    keys: list[ApiKey] = []
    ids: dict[str, int] = {}
    digests: dict[str, int] = {}
    for index, raw in enumerate(data):
        entry, found = validate_located(KeyEntry, raw, locator, (index,))
        issues.extend(found)
        if isinstance(raw, dict):
            issues.extend(_duplicate(locator, index, "id", raw.get("id"), ids))
            issues.extend(_duplicate(locator, index, "sha256", raw.get("sha256"), digests))
        if entry is not None:
            keys.append(entry.key())
            if plans is not None and entry.plan is not None and entry.plan not in plans:
                issues.append(locator.issue((index, "plan"), unknown_plan(entry.plan, plans)))
    if issues:
        raise ConfigError(sorted(issues, key=lambda issue: (issue.line, issue.column)))
    return ApiKeySet(keys, locator.file)


def unknown_plan(plan: str, plans: Collection[str]) -> str:
    """Why a key naming `plan` is refused when the config defines `plans`."""
    known = ", ".join(sorted(plans)) or "none defined"
    return f"names usage plan {plan!r}, which `usage_plans:` does not define ({known}){did_you_mean(plan, plans)}"


def _duplicate(locator: YamlLocator, index: int, name: str, value: Any, seen: dict[str, int]) -> list[ConfigIssue]:
    if not isinstance(value, str):
        return []
    if value in seen:
        return [locator.issue((index, name), f"duplicate {name} (also [{seen[value]}])")]
    seen[value] = index
    return []


def load_api_keys(path: Path, plans: Collection[str] | None = None) -> ApiKeySet:
    """Read and validate a key file; `ConfigError` lists every problem, each with file:line:col and field.
    With `plans`, every plan a key names must be one of them (`parse_keys`)."""
    text = read_key_text(path)
    quick = _quick_keys(text, str(path), plans)
    if quick is not None:
        return quick
    return parse_keys(*parse_key_text(text, str(path)), plans)  # decides, and locates what is wrong


def _quick_keys(text: str, file: str, plans: Collection[str] | None) -> ApiKeySet | None:
    """The file's keys when it is valid as far as the quick read can tell, else None (the located read then
    decides). Every rule is the located read's: `KeyEntry` on the whole list, `ApiKeySet`'s duplicate checks,
    the plans; only the positions are missing, and they are wanted only for a problem."""
    data = _quick_data(text)
    if data is None:
        return None
    try:
        keys = ApiKeySet((entry.key() for entry in _ENTRIES.validate_python(data)), file)
    except ValueError:  # pydantic's ValidationError is one, as are ApiKeySet's duplicates
        return None
    if plans is not None and not keys.plans <= frozenset(plans):
        return None
    return keys


class _Declined(Exception):
    """The quick read met YAML it leaves to the located one."""


def _quick_data(text: str) -> list[dict[Any, Any]] | None:
    """The file's data if it is a list of flat mappings, built from libyaml's events with PyYAML's own resolver
    and scalar constructors (so it equals what `yaml.safe_load` makes), without the node tree and its marks that
    make a full load cost about 0.1 ms per key; None for anything else (an anchor, an alias, a tag, a nested
    value, a lone surrogate, a YAML or date error), which the located read reports or accepts."""
    loader = _Loader(text)
    try:
        return _walk(loader)
    except (_Declined, yaml.YAMLError, ValueError):  # ValueError: impossible dates, UnicodeEncodeError
        return None
    finally:
        loader.dispose()


def _walk(loader: _Loader) -> list[dict[Any, Any]]:
    # First character -> the implicit types a plain scalar starting with it may be: what `resolve` looks up
    # first, so a scalar starting with no such character is a string without asking it (a few microseconds
    # each, a fifth of the read). Resolvers the shortcut would skip (none in SafeLoader) leave the file alone.
    typed = loader.yaml_implicit_resolvers
    if None in typed or loader.yaml_path_resolvers:
        raise _Declined
    get = loader.get_event
    plain: dict[str, Any] = {}  # plain scalars resolved already (keys, `true`): what one becomes is its text's

    def scalar(event: Event | None) -> Any:
        if not isinstance(event, ScalarEvent) or event.anchor is not None or event.tag is not None:
            raise _Declined
        value: str = event.value
        if not value.isascii():
            value.encode("utf-8")  # a lone surrogate (an escape such as \ud800) raises: the located read refuses it
        if not event.implicit[0] or value[:1] not in typed:
            return value  # quoted, or plain and no implicit type's first character
        if value not in plain:
            plain[value] = _typed(loader, value, event.implicit)
        return plain[value]

    _expect(get(), StreamStartEvent)
    _expect(get(), DocumentStartEvent)
    _expect(get(), SequenceStartEvent)
    entries = []
    while not isinstance(event := get(), SequenceEndEvent):
        _expect(event, MappingStartEvent)
        entry = {}
        while not isinstance(event := get(), MappingEndEvent):
            key = scalar(event)
            if key in entry:
                raise _Declined  # a repeated key: the located read refuses it at its line (`issues.parse_yaml`)
            entry[key] = scalar(get())
        entries.append(entry)
    _expect(get(), DocumentEndEvent)
    _expect(get(), StreamEndEvent)  # a second document is the located read's error
    return entries


def _expect(event: Event | None, kind: type[Event]) -> None:
    if not isinstance(event, kind) or getattr(event, "anchor", None) is not None or getattr(event, "tag", None):
        raise _Declined


def _typed(loader: _Loader, value: str, implicit: tuple[bool, bool]) -> Any:
    """A plain scalar's value as PyYAML makes it: its resolver's tag, its constructor."""
    resolve: Callable[[type[Node], str, tuple[bool, bool]], str] = loader.resolve  # untyped in the stubs
    tag = resolve(ScalarNode, value, implicit)
    if tag == _STR:
        return value
    if tag not in _SCALAR_TAGS:
        raise _Declined
    return loader.yaml_constructors[tag](loader, ScalarNode(tag, value))


# ---------------------------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------------------------


class ApiKeyStore(WatchedStore, abc.ABC):
    """Where gates look keys up. `current` must be cheap: it runs on every request of an api-key route.
    `start`, `stop`, `reload_statuses` and `recheck_files` are `WatchedStore`'s (a fixed store's by default)."""

    @abc.abstractmethod
    def current(self) -> ApiKeySet:
        """The snapshot to judge the next request against."""


class StaticApiKeyStore(ApiKeyStore):
    """A fixed set of keys (tests, embedding)."""

    def __init__(self, keys: ApiKeySet) -> None:
        self._set = keys

    def current(self) -> ApiKeySet:
        return self._set


_LAST_READ: tuple[tuple[FileStat, ...], ApiKeySet] | None = None
"""The last snapshot this process read from a key file, with the file's fingerprint taken before that read.
One entry: a config has one key file, and what a config load wants is the snapshot the previous one (or its
store's last reload) read. An edit landing during the read leaves a fingerprint the file no longer has, so the
entry is never found again; an edit the fingerprint cannot see (same size, inode and mtime tick) is missed here
as the store's own watch misses it, until the next edit."""


def _snapshot(path: Path, seen: tuple[FileStat, ...], plans: frozenset[str]) -> ApiKeySet:
    """The key file's snapshot when its fingerprint was `seen` (taken before calling): the one this process last
    read if the file is still as it was then, else read anew. The plans are checked on every use (a config may
    drop a plan without the key file changing); a refusal is read anew too, for its positions."""
    global _LAST_READ
    last = _LAST_READ
    if last is not None and last[0] == seen and last[1].plans <= plans:
        return last[1]
    keys = load_api_keys(path, plans)
    _LAST_READ = (seen, keys)
    return keys


class FileApiKeyStore(ApiKeyStore):
    """Keys from the key file, reloaded when it changes.

    `plans` are the usage plans the config defines: a file with a key naming another is bad, at load and on
    every reload alike (a reload installing it would turn that key's every request into a silent 403).
    The first load happens in the constructor and raises `ConfigError`, so a bad file fails config validation.
    Every later reload is recorded in `status` (source `api_keys`) and logged: `rejected` (file:line:field; the
    last good snapshot keeps serving), `unchanged` (the file changed on disk but not what it means), or `ok`.
    """

    def __init__(
        self,
        path: Path,
        plans: Iterable[str],
        clock: Callable[[], float] = time.time,
        reload_interval: float = 2.0,
        source: str = RELOAD_SOURCE,
    ) -> None:
        self.path = path
        self.plans = frozenset(plans)
        self._fingerprint = fingerprint([path])  # before the read: an edit during it is seen next time
        self._set = _snapshot(path, self._fingerprint, self.plans)
        self._reloading = threading.Lock()
        self._poller = FilePoller(self.reload_if_changed, reload_interval, f"api-keys-watch:{path}")
        self.status = ReloadStatus(source, clock)
        self.reloads = 0
        self.reload_errors = 0

    def current(self) -> ApiKeySet:
        return self._set

    def reload_statuses(self) -> tuple[ReloadStatus, ...]:
        return (self.status,)

    async def recheck_files(self, why: str) -> None:
        await asyncio.to_thread(self.reload_if_changed, why)  # file reads stay off the event loop

    def reload_if_changed(self, why: str = "file change") -> bool:
        """Reload when the file changed; True if a new snapshot was installed. Never raises `ConfigError`.

        One at a time (the poller's thread and a SIGHUP's may ask together): two loads racing could install the
        older read last, and a disabled key would stay valid."""
        with self._reloading:
            seen = fingerprint([self.path])
            if seen == self._fingerprint:
                return False
            self._fingerprint = seen
            return self._reload(why, seen)

    def _reload(self, why: str, seen: tuple[FileStat, ...]) -> bool:
        serving = self._set.version
        try:
            loaded = _snapshot(self.path, seen, self.plans)
        except ConfigError as exc:
            self.reload_errors += 1
            self.status.record("rejected", why, serving, str(exc))
            log.error("api key file %s (%s) rejected; still serving keys %s:\n%s", self.path, why, serving, exc)
            return False
        if loaded.version == serving:
            self.status.record("unchanged", why, serving)
            log.info("api key file %s (%s): unchanged, still serving keys %s", self.path, why, serving)
            return False
        self._set = loaded
        self.reloads += 1
        self.status.record("ok", why, loaded.version)
        log.info("api key file %s (%s): now serving keys %s (%d keys)", self.path, why, loaded.version, len(loaded))
        return True

    async def start(self) -> None:
        await self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()
