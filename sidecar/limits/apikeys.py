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

`FileApiKeyStore` reloads the file like the SigV4 credential store (`authorizers/sigv4/credentials.py`): a stat
fingerprint (`watched_file.py`), one reload at a time, a bad file keeps the previous snapshot (logged with
file:line:field, recorded as a rejected `ReloadStatus` under source `api_keys`).
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..issues import ConfigError, ConfigIssue, YamlLocator, parse_yaml, validate_located
from ..metrics import ReloadStatus
from ..settings import GATE_NAME
from ..watched_file import FilePoller, WatchedStore, fingerprint, read_watched_text

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
        computed = _digest(value)
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
    if not value:
        return None, "missing"
    key = keys.find(value)
    if key is None:
        return None, "unknown"
    if not key.enabled:
        return key, "disabled"
    if key.expires is not None and now >= key.expires:
        return key, "expired"
    return key, "ok"


def new_key_value() -> str:
    """A new key value: 40 characters of the URL-safe alphabet (A-Z a-z 0-9 - _) from `secrets`, 240 bits."""
    return secrets.token_urlsafe(VALUE_LENGTH * 3 // 4)


def _version(keys: Iterable[ApiKey]) -> str:
    hasher = hashlib.sha256()
    for key in sorted(keys, key=lambda k: k.id):
        hasher.update(json.dumps([key.id, key.name, key.plan, key.enabled, key.expires, key.sha256]).encode() + b"\n")
    return hasher.hexdigest()[:16]


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


def read_key_text(path: Path) -> str:
    """The file's text (`ConfigError` when it cannot be read)."""
    return read_watched_text(path, "api key file")


def parse_key_text(text: str, file: str) -> tuple[Any, YamlLocator]:
    """The file's data and its locator (`ConfigError` for a syntax error); `parse_keys` validates the data."""
    return parse_yaml(text, file, what="YAML/JSON")


def parse_keys(data: Any, locator: YamlLocator) -> ApiKeySet:
    """Validate parsed file data: every problem at once, each at its line and field; duplicates are reported
    at the later entry, naming the earlier one by index."""
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
    if issues:
        raise ConfigError(sorted(issues, key=lambda issue: (issue.line, issue.column)))
    return ApiKeySet(keys, locator.file)


def _duplicate(locator: YamlLocator, index: int, name: str, value: Any, seen: dict[str, int]) -> list[ConfigIssue]:
    if not isinstance(value, str):
        return []
    if value in seen:
        return [locator.issue((index, name), f"duplicate {name} (also [{seen[value]}])")]
    seen[value] = index
    return []


def load_api_keys(path: Path) -> ApiKeySet:
    """Read and validate a key file; `ConfigError` lists every problem, each with file:line:col and field."""
    return parse_keys(*parse_key_text(read_key_text(path), str(path)))


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


class FileApiKeyStore(ApiKeyStore):
    """Keys from the key file, reloaded when it changes.

    The first load happens in the constructor and raises `ConfigError`, so a bad file fails config validation.
    Every later reload is recorded in `status` (source `api_keys`) and logged: `rejected` (file:line:field; the
    last good snapshot keeps serving), `unchanged` (the file changed on disk but not what it means), or `ok`.
    """

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        reload_interval: float = 2.0,
        source: str = RELOAD_SOURCE,
    ) -> None:
        self.path = path
        self._fingerprint = fingerprint([path])  # before the read: an edit during it is seen next time
        self._set = load_api_keys(path)
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
            return self._reload(why)

    def _reload(self, why: str) -> bool:
        serving = self._set.version
        try:
            loaded = load_api_keys(self.path)
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
