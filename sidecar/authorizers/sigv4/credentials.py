"""Who holds which AWS-style access key: the credential store the `sigv4` authorizer verifies against.

The store is an interface (`CredentialStore`) so that other backends (a database, Secrets Manager, Vault) can
follow; the one shipped here reads a YAML or JSON file and reloads it when it, or any secret / policy file it
references, changes. A reload parses into a complete new `CredentialSet` and swaps one reference, so the hot path
reads a consistent snapshot without locks; a bad file is reported and the previous snapshot keeps serving.

File shape (extend, don't rename)::

    credentials:
      - access_key_id: AKIDEXAMPLE
        secret_access_key: "..."            # or secret_access_key_env: VAR / secret_access_key_file: path
        principal_arn: arn:aws:iam::123456789012:user/alice
        session_token: "..."                # optional (or session_token_env / session_token_file):
                                            #   temporary credentials must present it on every request
        expires: 2027-01-01T00:00:00Z       # optional
        enabled: true                       # optional, default true
        user_id: AIDAEXAMPLE                # optional: the value of aws:userid
        policies: [ {IAM policy document}, "path/to/policy.json" ]   # compiled at load

Secrets never appear in reprs, logs or error messages: errors name the file, line and field only.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...issues import (
    ConfigError,
    ConfigIssue,
    YamlLocator,
    format_loc,
    parse_loc,
    parse_yaml,
    suggestion,
    validate_located,
)
from ...metrics import ReloadStatus
from ...policy import parse_policy
from ...watched_file import FilePoller, WatchedStore, read_watched_text
from ...watched_file import fingerprint as _fingerprint
from ...watched_file import why_unreadable as _why
from . import sigv4a

if TYPE_CHECKING:
    from ...settings import ApiSettings

log = logging.getLogger(__name__)

_ARN = re.compile(r"arn:(aws[a-z\-]*):(iam|sts)::(\d{12}):(.+)\Z")
DEFAULT_SIGNING_KEY_CACHE = 4096


@dataclass(frozen=True, slots=True)
class Credential:
    """One access key and the identity it proves. Secrets are excluded from repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    principal_arn: str
    account: str
    principal_type: str
    user_id: str
    username: str
    session_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    enabled: bool = True
    policies: tuple[Any, ...] = ()
    """Compiled identity policies (`sidecar.policy.CompiledPolicy`)."""

    @property
    def is_temporary(self) -> bool:
        """Temporary (STS-style) credentials carry a session token that every request must present."""
        return self.session_token is not None


class CredentialSet:
    """An immutable snapshot of credentials, with the derived keys cached alongside it.

    The caches live here (not in the authorizer) so that a reload, which may rotate a secret, starts from empty
    caches automatically. They are plain dicts bounded by `max_signing_keys`: SigV4 signing keys are derived
    once per (access key, date, region, service), SigV4a public keys once per access key.
    """

    def __init__(
        self,
        credentials: Mapping[str, Credential],
        source: str = "<memory>",
        max_signing_keys: int = DEFAULT_SIGNING_KEY_CACHE,
    ) -> None:
        self.credentials: Mapping[str, Credential] = MappingProxyType(dict(credentials))
        self.source = source
        self.max_signing_keys = max(1, max_signing_keys)
        self._signing_keys: dict[tuple[str, str, str, str], bytes] = {}
        self._ecdsa_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self.memo: dict[Any, Any] = {}
        """Per-snapshot memo for callers (e.g. the authorizer's prebuilt Principals)."""

    def get(self, access_key_id: str) -> Credential | None:
        """The credential for an access key id, if any."""
        return self.credentials.get(access_key_id)

    def __len__(self) -> int:
        return len(self.credentials)

    def signing_key(self, credential: Credential, date: str, region: str, service: str) -> bytes:
        """The SigV4 signing key `HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request")`."""
        cache_key = (credential.access_key_id, date, region, service)
        key = self._signing_keys.get(cache_key)
        if key is None:
            key = derive_signing_key(credential.secret_access_key, date, region, service)
            if len(self._signing_keys) >= self.max_signing_keys:
                self._signing_keys.pop(next(iter(self._signing_keys)))  # oldest first: dicts keep insert order
            self._signing_keys[cache_key] = key
        return key

    def ecdsa_public_key(self, credential: Credential) -> ec.EllipticCurvePublicKey:
        """The SigV4a public key of a credential (derived on first use, then kept)."""
        key = self._ecdsa_keys.get(credential.access_key_id)
        if key is None:
            key = sigv4a.derive_public_key(credential.access_key_id, credential.secret_access_key)
            self._ecdsa_keys[credential.access_key_id] = key
        return key


def derive_signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """The SigV4 key derivation (AWS documentation, "Calculate the signature")."""
    key = hmac.new(("AWS4" + secret_access_key).encode(), date.encode(), hashlib.sha256).digest()
    key = hmac.new(key, region.encode(), hashlib.sha256).digest()
    key = hmac.new(key, service.encode(), hashlib.sha256).digest()
    return hmac.new(key, b"aws4_request", hashlib.sha256).digest()


class CredentialStore(WatchedStore, abc.ABC):
    """Where the `sigv4` authorizer looks up access keys. `current` must be cheap: it runs on every request.
    `reload_statuses` feeds the authorizer's own; `recheck_files` is `Authorizer.recheck_files`."""

    @property
    @abc.abstractmethod
    def current(self) -> CredentialSet:
        """The snapshot to verify the next request against."""


class StaticCredentialStore(CredentialStore):
    """A fixed set of credentials (tests, `check` tooling, embedding)."""

    def __init__(self, credentials: Sequence[Credential], max_signing_keys: int = DEFAULT_SIGNING_KEY_CACHE) -> None:
        self._set = CredentialSet({c.access_key_id: c for c in credentials}, max_signing_keys=max_signing_keys)

    @property
    def current(self) -> CredentialSet:
        return self._set


# ---------------------------------------------------------------------------------------------------------------
# The file format
# ---------------------------------------------------------------------------------------------------------------


class _Entry(BaseModel):
    """One `credentials[]` item as written in the file (before secrets and policy paths are resolved)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    access_key_id: str = Field(min_length=1, max_length=128)
    secret_access_key: str | None = Field(default=None, min_length=1)
    secret_access_key_env: str | None = Field(default=None, min_length=1)
    secret_access_key_file: str | None = Field(default=None, min_length=1)
    principal_arn: str
    user_id: str | None = Field(default=None, min_length=1)
    session_token: str | None = Field(default=None, min_length=1)
    session_token_env: str | None = Field(default=None, min_length=1)
    session_token_file: str | None = Field(default=None, min_length=1)
    expires: datetime | None = None
    enabled: bool = True
    policies: tuple[dict[str, Any] | str, ...] = ()

    @field_validator("access_key_id")
    @classmethod
    def _key_id(cls, value: str) -> str:
        if any(c.isspace() or c == "/" for c in value):
            raise ValueError("must not contain spaces or '/'")
        return value

    @field_validator("principal_arn")
    @classmethod
    def _arn(cls, value: str) -> str:
        if not _ARN.match(value):
            raise ValueError(
                "expected an IAM or STS principal ARN, e.g. arn:aws:iam::123456789012:user/alice "
                "or arn:aws:sts::123456789012:assumed-role/Role/session"
            )
        return value


_SECRET_KEYS = ("secret_access_key", "secret_access_key_env", "secret_access_key_file")
_TOKEN_KEYS = ("session_token", "session_token_env", "session_token_file")


def _one_of(raw: Any, loc: tuple[str | int, ...], keys: tuple[str, ...], required: bool) -> list[tuple[Any, str]]:
    """(where, why) when an entry gives none (if `required`) or several of `keys`. Checked on the raw entry,
    not in a model validator, so it is reported with the entry's other problems (pydantic runs those only on
    an entry whose fields are all valid)."""
    if not isinstance(raw, dict):
        return []
    given = [key for key in keys if raw.get(key) is not None]
    if len(given) > 1:
        return [((*loc, given[1]), f"give only one of {', '.join(keys)} (also {given[0]})")]
    unknown = [str(k) for k in raw if k not in _Entry.model_fields]
    if required and not given and not any(suggestion(k, keys) for k in unknown):  # a typo says "did you mean"
        return [(loc, f"missing required key `{keys[0]}` (or {', '.join(keys[1:])})")]
    return []


class _File(BaseModel):
    """The file's top level (each entry is validated on its own, as `_Entry`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    credentials: tuple[Any, ...] = ()


def principal_details(arn: str) -> tuple[str, str, str, str]:
    """(account, aws:PrincipalType, default aws:userid suffix, aws:username) for a principal ARN."""
    match = _ARN.match(arn)
    if match is None:
        return "", "", "", ""
    _, service, account, resource = match.groups()
    if service == "iam" and resource == "root":
        return account, "Account", account, ""
    if service == "iam" and resource.startswith("user/"):
        name = resource.rsplit("/", 1)[-1]
        return account, "User", "", name
    if service == "sts" and resource.startswith("federated-user/"):
        return account, "FederatedUser", f"{account}:{resource.split('/', 1)[1]}", ""
    if resource.startswith(("assumed-role/", "role/")):
        parts = resource.split("/")
        role_session = ":".join(parts[1:3]) if len(parts) >= 3 else parts[-1]
        return account, "AssumedRole", role_session, ""
    return account, "User", "", resource.rsplit("/", 1)[-1]


def _read_yaml(path: Path) -> tuple[Any, YamlLocator]:
    return parse_yaml(read_watched_text(path, "credentials file"), str(path), what="YAML/JSON")


@dataclass(slots=True)
class _Loaded:
    credentials: dict[str, Credential]
    watched: list[Path]


class _EntryResolver:
    """Turns a validated `_Entry` into a `Credential`: reads env vars, secret files and policy files."""

    def __init__(self, base_dir: Path, locator: YamlLocator, watched: list[Path], api: ApiSettings | None) -> None:
        self.api = api
        self.base_dir = base_dir
        self.locator = locator
        self.watched = watched
        self.issues: list[ConfigIssue] = []

    def _fail(self, loc: tuple[str | int, ...], message: str) -> None:
        self.issues.append(self.locator.issue(loc, message))

    def _secret(self, loc: tuple[str | int, ...], value: str | None, env: str | None, file: str | None) -> str | None:
        if value is not None:
            return value
        if env is not None:
            resolved = os.environ.get(env)
            if not resolved:
                self._fail((*loc[:-1], f"{loc[-1]}_env"), f"environment variable {env} is not set or empty")
            return resolved or None
        if file is not None:
            path = (self.base_dir / file).resolve()
            self.watched.append(path)
            try:
                resolved = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                self._fail((*loc[:-1], f"{loc[-1]}_file"), f"cannot read {path}: {_why(exc)}")
                return None
            if not resolved:
                self._fail((*loc[:-1], f"{loc[-1]}_file"), f"{path} is empty")
            return resolved or None
        return None

    def _policies(self, loc: tuple[str | int, ...], items: tuple[dict[str, Any] | str | None, ...]) -> list[Any]:
        """Compile each identity policy (inline document or file) with the policy engine, once, at load. Each
        problem is reported once, where it is: an inline policy's at its line in this file, a policy file's at
        its line there (None: an item validation already reported)."""
        out: list[Any] = []
        for index, item in enumerate(items):
            if item is None:
                continue
            where = (*loc, "policies", index)
            policy = self._inline_policy(where, item) if isinstance(item, dict) else self._policy_file(where, item)
            if policy is not None:
                out.append(policy)
        return out

    def _inline_policy(self, where: tuple[str | int, ...], item: dict[str, Any]) -> Any:
        source = f"{self.locator.file} {format_loc(where)}"
        try:
            return parse_policy(json.dumps(item), source, kind="identity", api=self.api)
        except ConfigError as exc:  # located in the JSON text made from the YAML: point at the YAML instead
            self.issues.extend(self.locator.issue((*where, *parse_loc(i.field)), i.message) for i in exc.issues)
            return None

    def _policy_file(self, where: tuple[str | int, ...], name: str) -> Any:
        path = (self.base_dir / name).resolve()
        self.watched.append(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM from Windows editors, as load_policy does
        except (OSError, UnicodeDecodeError) as exc:
            self._fail(where, f"cannot read policy file {path}: {_why(exc)}")
            return None
        try:
            return parse_policy(text, str(path), kind="identity", api=self.api)
        except ConfigError as exc:
            self.issues.extend(exc.issues)
            return None

    def materials(
        self, loc: tuple[str | int, ...], fields: Mapping[str, Any]
    ) -> tuple[str | None, str | None, list[Any]]:
        """The secret, session token and compiled policies `fields` name (an entry's, or the well-typed values
        of an entry that failed validation, so its missing files and bad policies are reported with the rest)."""
        secret = self._secret((*loc, "secret_access_key"), *(fields.get(key) for key in _SECRET_KEYS))
        token = self._secret((*loc, "session_token"), *(fields.get(key) for key in _TOKEN_KEYS))
        return secret, token, self._policies(loc, tuple(fields.get("policies", ())))

    def resolve(self, loc: tuple[str | int, ...], entry: _Entry) -> Credential | None:
        before = len(self.issues)
        secret, token, policies = self.materials(loc, entry.__dict__)
        if len(self.issues) != before or secret is None:
            return None
        expires_at = None
        if entry.expires is not None:
            expires = entry.expires if entry.expires.tzinfo else entry.expires.replace(tzinfo=UTC)
            expires_at = expires.timestamp()
        account, principal_type, user_id, username = principal_details(entry.principal_arn)
        return Credential(
            access_key_id=entry.access_key_id,
            secret_access_key=secret,
            principal_arn=entry.principal_arn,
            account=account,
            principal_type=principal_type,
            user_id=entry.user_id or user_id or entry.access_key_id,
            username=username,
            session_token=token,
            expires_at=expires_at,
            enabled=entry.enabled,
            policies=tuple(policies),
        )


def load_credentials_file(path: Path, api: ApiSettings | None = None) -> _Loaded:
    """Parse and validate a credentials file; `ConfigError` lists every problem at once, each with
    file:line:col and field (never a value).

    Identity policies are compiled with the policy engine (`api` expands the short resource form); the
    Principal carries the compiled policies.
    """
    data, locator = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError([locator.issue((), "expected a mapping with a `credentials:` list")])
    _, issues = validate_located(_File, data, locator)
    raw_entries = data.get("credentials")
    watched = [path.resolve()]
    resolver = _EntryResolver(path.resolve().parent, locator, watched, api)
    resolver.issues.extend(issues)
    credentials: dict[str, Credential] = {}
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_entries if isinstance(raw_entries, list) else ()):
        credential = _load_entry(("credentials", index), raw, resolver, seen)
        if credential is not None:
            credentials[credential.access_key_id] = credential
    if resolver.issues:
        raise ConfigError(sorted(resolver.issues, key=lambda issue: (issue.file, issue.line, issue.column)))
    return _Loaded(credentials, watched)


def _load_entry(
    loc: tuple[str | int, ...], raw: Any, resolver: _EntryResolver, seen: dict[str, int]
) -> Credential | None:
    """One entry: its schema, its one-of rules, a duplicate key id, then its secrets and policies, every
    problem collected."""
    entry, issues = validate_located(_Entry, raw, resolver.locator, loc)
    problems = [*_one_of(raw, loc, _SECRET_KEYS, required=True), *_one_of(raw, loc, _TOKEN_KEYS, required=False)]
    key_id = raw.get("access_key_id") if isinstance(raw, dict) else None
    if isinstance(key_id, str):
        if key_id in seen:
            problems.append(((*loc, "access_key_id"), f"duplicate access_key_id (also credentials[{seen[key_id]}])"))
        else:
            seen[key_id] = int(loc[-1])
    resolver.issues.extend(issues)
    for where, message in problems:
        resolver.issues.append(resolver.locator.issue(where, message))
    if entry is None:
        if isinstance(raw, dict):
            resolver.materials(loc, _well_typed(raw))
        return None
    credential = resolver.resolve(loc, entry)
    return credential if not problems else None


def _well_typed(raw: dict[str, Any]) -> dict[str, Any]:
    """The secret sources and policies of an invalid entry that have the right type (the wrong ones were
    reported by validation)."""
    out: dict[str, Any] = {key: raw[key] for key in (*_SECRET_KEYS, *_TOKEN_KEYS) if isinstance(raw.get(key), str)}
    policies = raw.get("policies")
    if isinstance(policies, list):
        # Wrong-typed items stay as None placeholders, so each policy's problems keep their own index.
        out["policies"] = tuple(item if isinstance(item, dict | str) else None for item in policies)
    return out


class FileCredentialStore(CredentialStore):
    """Credentials from a YAML/JSON file, reloaded when it (or a secret/policy file it names) changes.

    The first load happens in the constructor and raises `ConfigError`, so a bad file fails config validation.
    Every later reload is recorded in `status` (source `credentials:NAME`: counted in
    `authz_config_reloads_total`, shown by /readyz) and logged: `rejected` (file:line:field, never values; the
    last good snapshot keeps serving and the error stays on /readyz until the files load again), `unchanged`
    (the files changed on disk but not what they mean: the snapshot and its derived-key caches stay), or `ok`.
    """

    def __init__(
        self,
        path: Path,
        reload_interval: float = 2.0,
        max_signing_keys: int = DEFAULT_SIGNING_KEY_CACHE,
        api: ApiSettings | None = None,
        source: str = "",
    ) -> None:
        self.path = path
        self.api = api
        self.reload_interval = reload_interval
        self.max_signing_keys = max_signing_keys
        loaded = load_credentials_file(path, api)
        self._set = CredentialSet(loaded.credentials, str(path), max_signing_keys)
        self._versions = credential_versions(loaded.credentials)
        self._watched = loaded.watched
        self._fingerprint = _fingerprint(self._watched)
        self._reloading = threading.Lock()
        self._poller = FilePoller(self.reload_if_changed, reload_interval, f"credentials-watch:{path}")
        self.status = ReloadStatus(source or f"credentials:{path.name}")
        """This store's reloads (the authorizer passes `credentials:<its name>`)."""
        self.reloads = 0
        self.reload_errors = 0

    @property
    def current(self) -> CredentialSet:
        return self._set

    @property
    def version(self) -> str:
        """The public fingerprint of the serving snapshot (`credential_versions`): what logs and /readyz show."""
        return self._versions[0]

    def reload_statuses(self) -> tuple[ReloadStatus, ...]:
        return (self.status,)

    async def recheck_files(self, why: str) -> None:
        await asyncio.to_thread(self.reload_if_changed, why)  # file reads stay off the event loop

    def reload_if_changed(self, why: str = "file change") -> bool:
        """Reload when any watched file changed; True if a new snapshot was installed. Never raises ConfigError.

        One at a time (the poller's thread and a SIGHUP's may ask together): two loads racing could install the
        older read last, and a revoked key would stay valid. The files are stat'ed before they are read, so an
        edit that lands during a load differs from what is recorded and is reloaded at the next look."""
        with self._reloading:
            return self._reload_if_changed(why)

    def _reload_if_changed(self, why: str) -> bool:
        fingerprint = _fingerprint(self._watched)
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        try:
            loaded = load_credentials_file(self.path, self.api)
        except ConfigError as exc:
            self.reload_errors += 1
            self.status.record("rejected", why, self.version, str(exc))
            log.error(
                "credentials file %s (%s) rejected; still serving credentials %s:\n%s",
                self.path,
                why,
                self.version,
                exc,
            )
            return False
        self._watched = loaded.watched
        before = {entry[0]: entry for entry in fingerprint}  # known files: their stats from before the read
        self._fingerprint = tuple(before.get(entry[0], entry) for entry in _fingerprint(self._watched))
        versions = credential_versions(loaded.credentials)
        if versions == self._versions:
            self.status.record("unchanged", why, self.version)
            log.info("credentials file %s (%s): unchanged, still serving credentials %s", self.path, why, self.version)
            return False
        self._set = CredentialSet(loaded.credentials, str(self.path), self.max_signing_keys)
        self._versions = versions
        self.reloads += 1
        self.status.record("ok", why, self.version)
        log.info(
            "credentials file %s (%s): now serving credentials %s (%d keys)",
            self.path,
            why,
            self.version,
            len(self._set),
        )
        return True

    async def start(self) -> None:
        await self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()


def credential_versions(credentials: Mapping[str, Credential]) -> tuple[str, str]:
    """(public, internal) fingerprints of a set of credentials, as the config has `version` and `cache_version`.

    The public one covers who holds which key with what policies, never a secret, so logs and /readyz may show
    it; the internal one adds every secret and session token. A reload whose internal fingerprint is the serving
    one's (a comment, a touched file) changes nothing; rotating a secret changes only the internal one."""
    public, secrets = hashlib.sha256(), hashlib.sha256()
    for key in sorted(credentials):
        c = credentials[key]
        policies = [(p.source, p.fingerprint) for p in c.policies]
        fields = [c.access_key_id, c.principal_arn, c.user_id, c.expires_at, c.enabled, c.is_temporary, policies]
        public.update(json.dumps(fields).encode() + b"\n")
        secrets.update(hashlib.sha256(json.dumps([c.secret_access_key, c.session_token]).encode()).digest())
    version = public.hexdigest()[:16]
    secrets.update(version.encode())
    return version, secrets.hexdigest()[:32]
