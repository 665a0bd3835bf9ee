"""The gates of a config, built once per load: the key store, the counters and every route's gates.

Counting happens in Redis when `limits.connection` names a connection `redis:` defines (with `on_redis_error`
as the fallback), else in process. The in-process counters are one per process (`process_counters`), shared by
every config load: a reload must not hand every caller a fresh bucket and quota.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from ..issues import ConfigError, ConfigIssue, issue_at
from ..policy.context import ContextSettings
from ..secret import read_secret
from ..settings import MIN_KEY_SECRET, Config
from .apikeys import FileApiKeyStore
from .counters import Counters, LocalCounters
from .gates import GateSet, compile_gates

_PROCESS_COUNTERS: LocalCounters | None = None


def process_counters() -> LocalCounters:
    """This process's in-process counters (on the wall clock), made on first use."""
    global _PROCESS_COUNTERS
    if _PROCESS_COUNTERS is None:
        _PROCESS_COUNTERS = LocalCounters()
    return _PROCESS_COUNTERS


def uses_gates(config: Config) -> bool:
    return bool(config.rate_limits) or config.api_keys is not None


def build_gates(
    config: Config,
    context: ContextSettings,
    clock: Callable[[], float],
    issues: list[ConfigIssue],
    private: bool = False,
) -> GateSet | None:
    """The config's gates, or None without any; problems (a bad key file, a key naming an unknown plan) are
    appended to `issues` at their line in the key file. `private`: counted in fresh in-process counters
    of their own (`check`), never in Redis nor in the process's shared ones."""
    if not uses_gates(config):
        return None
    keys = _key_store(config, clock, issues)
    secret = key_secret(config, issues, shared=not private and counts_in_redis(config))
    if (config.api_keys is not None and keys is None) or secret is None:
        return None
    counters = LocalCounters(clock) if private else _counters(config, clock)
    return compile_gates(config, context, counters, keys, secret, clock)


def counts_in_redis(config: Config) -> bool:
    """Whether the gates count in Redis (`limits.connection` names a connection `redis:` defines)."""
    return config.limits.connection in config.redis


KEY_SECRET_LABEL = b"authz-sidecar limits.key_secret"
"""What the cache's signing key is HMACed with to make the rate rules' key secret: one configured secret serves
both, and neither use can stand in for the other."""
_PROCESS_SECRET = secrets.token_bytes(32)
"""The key secret of a config that counts in process and configures none: drawn once per process, so that a
reload keeps every rule's counts (`process_counters` outlive configs too)."""


def key_secret(config: Config, issues: list[ConfigIssue], shared: bool) -> bytes | None:
    """The HMAC key of the rate rules' aggregation keys (`limits.key_secret`): its own setting, else derived
    from `cache.redis`'s configured signing key, else (only when not `shared` through Redis: every replica must
    make the same keys) this process's random one. None, with an issue at its setting, when it cannot be had."""
    limits = config.limits
    try:
        own = read_secret(
            limits.key_secret.get_secret_value() if limits.key_secret is not None else None,
            limits.key_secret_file,
            limits.key_secret_env,
            config.base_dir,
        )
    except OSError as exc:
        message = f"cannot read the key secret file {exc.filename}: {exc.strerror or type(exc).__name__}"
        issues.append(issue_at(config.source, ("limits", "key_secret_file"), message))
        return None
    except ValueError as exc:
        issues.append(issue_at(config.source, ("limits", "key_secret_env"), str(exc)))
        return None
    if own is not None:
        if len(own) < MIN_KEY_SECRET:
            where = "key_secret_file" if limits.key_secret_file else "key_secret_env"
            issues.append(issue_at(config.source, ("limits", where), f"must be at least {MIN_KEY_SECRET} bytes"))
            return None
        return own
    cache = _cache_signing_key(config)
    if cache is not None:
        return hmac.new(cache, KEY_SECRET_LABEL, hashlib.sha256).digest()
    if shared and config.rate_limits:
        message = (
            "rate rules counted in Redis need one secret every replica shares for their keys: set"
            " limits.key_secret, key_secret_file or key_secret_env (16 bytes or more), or cache.redis.signing_key"
        )
        issues.append(issue_at(config.source, ("rate_limits",), message))
        return None
    return _PROCESS_SECRET


def _cache_signing_key(config: Config) -> bytes | None:
    """`cache.redis`'s signing key when the config sets one (the runtime reports it if it cannot be read)."""
    cache = config.cache.redis
    if cache is None:
        return None
    try:
        return read_secret(
            cache.signing_key.get_secret_value() if cache.signing_key is not None else None,
            cache.signing_key_file,
            cache.signing_key_env,
            config.base_dir,
        )
    except (OSError, ValueError):
        return None


def _counters(config: Config, clock: Callable[[], float]) -> Counters:
    local = process_counters() if clock is time.time else LocalCounters(clock)
    connection = config.redis.get(config.limits.connection)
    if connection is None:
        return local
    from .redis_counters import shared_counters  # redis-py is imported only by configs that count in Redis

    return shared_counters(connection, config.limits.on_redis_error, local, config.limits.timeout_ms)


def _key_store(config: Config, clock: Callable[[], float], issues: list[ConfigIssue]) -> FileApiKeyStore | None:
    settings = config.api_keys
    if settings is None:
        return None
    path = Path(settings.file)
    if not path.is_absolute():
        path = config.base_dir / path
    try:
        return FileApiKeyStore(path, config.usage_plans.keys(), clock)  # a key naming another plan: at its line
    except ConfigError as exc:
        issues.extend(exc.issues)
        return None
    except OSError as exc:
        message = f"cannot read the API key file {path}: {exc.strerror or type(exc).__name__}"
        issues.append(issue_at(config.source, ("api_keys", "file"), message))
        return None
