"""The gates of a config, built once per load: the key store, the counters and every route's gates.

Counting happens in Redis when `limits.connection` names a connection `redis:` defines (with `on_redis_error`
as the fallback), else in process. The in-process counters are one per process (`process_counters`), shared by
every config load: a reload must not hand every caller a fresh bucket and quota.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..issues import ConfigError, ConfigIssue, issue_at
from ..policy.context import ContextSettings
from ..settings import Config
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
    if config.api_keys is not None and keys is None:
        return None
    counters = LocalCounters(clock) if private else _counters(config, clock)
    return compile_gates(config, context, counters, keys, clock)


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
