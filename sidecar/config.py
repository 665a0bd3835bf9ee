"""Loading a config file: YAML in, validated `Config` out, every mistake reported as `file:line:col: field: why`.

The schema lives in `settings.py` and the located errors in `issues.py`; this module adds what spans them:
plugins imported before validation, each authorizer validated by the model its type registered, and the checks
that cross sections. It runs once per load; `runtime.py` compiles the result into what the hot path reads.
"""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .authorizers.base import AuthorizerSettings, registry, types_accepting
from .issues import ConfigError, ConfigIssue, YamlLocator, format_loc, parse_yaml, pydantic_issues
from .settings import (
    ApiSettings,
    CacheSettings,
    Config,
    DecisionLogSettings,
    HttpModeSettings,
    ListenSettings,
    LocalCacheSettings,
    PolicySettings,
    RedisCacheSettings,
    RedisSettings,
    RouteSettings,
    SentinelSettings,
    ServerSettings,
    UpstreamHeaderSettings,
)

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "ApiSettings",
    "CacheSettings",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "DecisionLogSettings",
    "HttpModeSettings",
    "ListenSettings",
    "LocalCacheSettings",
    "PolicySettings",
    "RedisCacheSettings",
    "RedisSettings",
    "RouteSettings",
    "SentinelSettings",
    "ServerSettings",
    "UpstreamHeaderSettings",
    "YamlLocator",
    "default_config",
    "default_config_text",
    "format_loc",
    "load_config",
    "parse_config",
    "parse_yaml",
    "pydantic_issues",
]


def _import_plugins(raw: Any, locator: YamlLocator) -> list[ConfigIssue]:
    """Import `plugins` modules so the authorizer types they register validate like built-in ones."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
        return [locator.issue(("plugins",), "expected a list of Python module names")]
    issues = []
    for index, module in enumerate(raw):
        try:
            importlib.import_module(module)
        except Exception as exc:
            issues.append(locator.issue(("plugins", index), f"cannot import plugin {module!r}: {exc}"))
    return issues


def _validate_authorizers(raw: Any, locator: YamlLocator) -> tuple[dict[str, AuthorizerSettings], list[ConfigIssue]]:
    """Validate each `authorizers.<name>` against the settings model its `type` registered."""
    issues: list[ConfigIssue] = []
    out: dict[str, AuthorizerSettings] = {}
    if raw is None:
        return out, issues
    if not isinstance(raw, dict):
        return out, [locator.issue(("authorizers",), "expected a mapping of name -> settings")]
    types = registry()
    for name, spec in raw.items():
        loc: tuple[str | int, ...] = ("authorizers", str(name))
        if not isinstance(spec, dict):
            issues.append(locator.issue(loc, "expected a mapping with at least a `type`"))
            continue
        kind = spec.get("type")
        entry = types.get(str(kind)) if kind is not None else None
        if entry is None:
            known = ", ".join(sorted(types))
            issues.append(locator.issue((*loc, "type"), f"unknown authorizer type {kind!r} (known: {known})"))
            continue
        try:
            out[str(name)] = entry.settings.model_validate(spec)
        except ValidationError as exc:
            issues.extend(pydantic_issues(exc, locator, loc))
    return out, issues


def _cross_check(config: Config, locator: YamlLocator) -> list[ConfigIssue]:
    """Checks that span sections: routes name existing authorizers and parse as routes; in HTTP mode, headers
    for the upstream start with `x-` (Envoy's shipped http_service config passes only those on)."""
    from .routes import RouteSyntaxError, parse_match

    issues = []
    if config.listen.http:
        upstream: list[tuple[tuple[str | int, ...], Any]] = [
            (("upstream_headers", k), v) for k, v in config.upstream_headers.model_dump().items()
        ]
        for name, settings in config.authorizers.items():
            for where, header in settings.upstream_header_fields().items():
                upstream.append((("authorizers", name, *where), header))
        for loc, header in upstream:
            if header and not str(header).startswith("x-"):
                message = f"with listen.http, upstream header names must start with 'x-' (got {header!r})"
                issues.append(locator.issue(loc, message))
    for name, settings in config.authorizers.items():
        for where, connection in settings.redis_connections().items():
            if connection not in config.redis:
                known = ", ".join(sorted(config.redis)) or "none defined"
                message = f"names Redis connection {connection!r}, which `redis:` does not define ({known})"
                issues.append(locator.issue(("authorizers", name, *where), message))
    cache_redis = config.cache.redis
    if cache_redis is not None and cache_redis.url is None:
        name = cache_redis.connection or "default"
        if name not in config.redis:
            known = ", ".join(sorted(config.redis)) or "none defined"
            message = f"names Redis connection {name!r}, which `redis:` does not define ({known})"
            issues.append(locator.issue(("cache", "redis", "connection" if cache_redis.connection else "url"), message))
    seen: dict[tuple[str, str], int] = {}
    # Keys of a `routes[]` entry that belong to authorizer families (`AuthorizerSettings.route_options`).
    route_options = frozenset().union(*(entry.settings.route_options for entry in registry().values()))
    for index, route in enumerate(config.routes):
        if route.authorizer not in config.authorizers:
            known = ", ".join(sorted(config.authorizers)) or "none defined"
            issues.append(
                locator.issue(("routes", index, "authorizer"), f"unknown authorizer {route.authorizer!r} ({known})")
            )
        authorizer = config.authorizers.get(route.authorizer)
        if authorizer is not None:
            for option in sorted(route_options):
                if getattr(route, option) is not None and option not in authorizer.route_options:
                    types = " / ".join(types_accepting(option))
                    message = f"{option} applies to {types} routes only ({route.authorizer!r} is {authorizer.type})"
                    issues.append(locator.issue(("routes", index, option), message))
        try:
            parsed = parse_match(route.match)
        except RouteSyntaxError as exc:
            issues.append(locator.issue(("routes", index, "match"), str(exc)))
            continue
        key = parsed.key
        if parsed.method == "HEAD":
            message = "HEAD is judged as GET (upstreams answer HEAD with the GET handler): use GET for this route"
            issues.append(locator.issue(("routes", index, "match"), message))
        if key in seen:
            issues.append(locator.issue(("routes", index, "match"), f"duplicates routes[{seen[key]}]"))
        seen[key] = index
    return issues


def parse_config(text: str, file: str = "<memory>") -> Config:
    """Validate config text; raise `ConfigError` listing every problem with its location."""
    data, locator = parse_yaml(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([locator.issue((), "the top level must be a mapping")])
    issues = _import_plugins(data.get("plugins"), locator)
    raw_authorizers = data.pop("authorizers", None)
    authorizer_settings, authorizer_issues = _validate_authorizers(raw_authorizers, locator)
    issues.extend(authorizer_issues)
    try:
        config = Config.model_validate({**data, "authorizers": {}, "source": file})
    except ValidationError as exc:
        issues.extend(pydantic_issues(exc, locator, ()))
        raise ConfigError(issues) from None
    config = config.model_copy(update={"authorizers": authorizer_settings})
    issues.extend(_cross_check(config, locator))
    if issues:
        raise ConfigError(issues)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a config file."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, 0, 0, "", f"cannot read: {exc}")]) from None
    return parse_config(text, file)


DEFAULT_CONFIG_NAME = "<embedded default>"


def default_config_text() -> str:
    """The embedded default config (documented in docs/configuration.md)."""
    return resources.files("sidecar").joinpath("defaults/default.yaml").read_text(encoding="utf-8")


def default_config() -> Config:
    """The config `authz-sidecar serve` uses when given none."""
    return parse_config(default_config_text(), DEFAULT_CONFIG_NAME)
