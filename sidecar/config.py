"""Loading a config file: YAML in, validated `Config` out, every mistake reported as `file:line:col: field: why`.

The schema lives in `settings.py` and the located errors in `issues.py`; this module adds what spans them:
plugins imported before validation, each authorizer validated by the model its type registered, and the checks
that cross sections. It runs once per load; `runtime.py` compiles the result into what the hot path reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

from .authorizers.base import AuthorizerSettings, AuthorizerType, registry, types_accepting
from .issues import (
    ConfigError,
    ConfigIssue,
    YamlLocator,
    did_you_mean,
    format_loc,
    parse_yaml,
    pydantic_issues,
    suggestion,
    validate_located,
)
from .request import judged_method
from .settings import (
    GATE_NAME,
    MTLS_SECTION,
    ApiSettings,
    CacheSettings,
    Config,
    DecisionLogSettings,
    HttpModeSettings,
    ListenSettings,
    LocalCacheSettings,
    PolicySettings,
    RateLimitSettings,
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


Loc = tuple[str | int, ...]


def _import_plugins(raw: Any, locator: YamlLocator) -> tuple[tuple[str, ...], list[ConfigIssue]]:
    """Import `plugins` modules so the authorizer types they register validate like built-in ones."""
    if raw is None:
        return (), []
    if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
        return (), [locator.issue(("plugins",), "expected a list of Python module names")]
    issues = []
    for index, module in enumerate(raw):
        try:
            importlib.import_module(module)
        except Exception as exc:
            issues.append(locator.issue(("plugins", index), f"cannot import plugin {module!r}: {exc}"))
    return tuple(raw), issues


T = TypeVar("T")


@dataclass(slots=True)
class _Named(Generic[T]):
    """A section of named entries (`authorizers:`, `redis:`): the valid ones, and the names present but invalid
    (None when the section itself is not a mapping, so any name may have been meant)."""

    valid: dict[str, T] = field(default_factory=dict)
    bad: set[str] | None = field(default_factory=set)

    def known(self, name: str) -> bool:
        """Whether the file defines `name`, valid or not: a check naming an invalid one stays silent."""
        return self.bad is None or name in self.bad or name in self.valid

    def defined(self) -> set[str]:
        """Every name the file defines."""
        return {*self.valid, *(self.bad or ())}


@dataclass(slots=True)
class _Parts:
    """What validated, section by section, and what was present but did not: a check that spans sections skips
    what names a broken part, so one mistake is reported once (a `sigv4` authorizer with a typo must not also
    make every route naming it an "unknown authorizer")."""

    issues: list[ConfigIssue] = field(default_factory=list)
    authorizers: _Named[AuthorizerSettings] = field(default_factory=_Named)
    redis: _Named[RedisSettings] = field(default_factory=_Named)
    routes: list[tuple[int, RouteSettings]] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)
    """Top-level sections (of the rest of the file) that failed validation."""


def _validate_named(
    raw: Any,
    section: str,
    what: str,
    issues: list[ConfigIssue],
    locator: YamlLocator,
    one: Callable[[Any, Loc], T | None],
) -> _Named[T]:
    """Validate each `section.<name>` on its own (`one` reports its problems), so one bad entry is one error."""
    named: _Named[T] = _Named()
    if raw is None:
        return named
    if not isinstance(raw, dict):
        issues.append(locator.issue((section,), f"expected a mapping of name -> {what}"))
        return _Named(bad=None)
    for name, spec in raw.items():
        settings = one(spec, (section, str(name)))
        if settings is None:
            assert named.bad is not None
            named.bad.add(str(name))
        else:
            named.valid[str(name)] = settings
    return named


def _authorizer_validator(locator: YamlLocator, issues: list[ConfigIssue]) -> Callable[[Any, Loc], Any]:
    """Validates one `authorizers.<name>` against the settings model its `type` registered."""
    types = registry()

    def one(spec: Any, loc: Loc) -> AuthorizerSettings | None:
        if not isinstance(spec, dict):
            issues.append(locator.issue(loc, "expected a mapping with at least a `type`"))
            return None
        kind = spec.get("type")
        entry: AuthorizerType | None = types.get(str(kind)) if kind is not None else None
        if entry is None:
            known = ", ".join(sorted(types))
            typo = next((str(k) for k in spec if suggestion(str(k), ("type",))), None) if kind is None else None
            if typo is not None:
                issues.append(locator.issue((*loc, typo), "unknown key: did you mean `type`?", at_key=True))
            elif kind is None:
                issues.append(locator.issue(loc, f"missing required key `type` (one of: {known})"))
            else:
                hint = did_you_mean(str(kind), types) or f" (known: {known})"
                issues.append(locator.issue((*loc, "type"), f"unknown authorizer type {kind!r}{hint}"))
            return None
        return _collect(validate_located(entry.settings, spec, locator, loc), issues)

    return one


def _collect(result: tuple[T | None, list[ConfigIssue]], issues: list[ConfigIssue]) -> T | None:
    value, found = result
    issues.extend(found)
    return value


def _validate_routes(raw: Any, locator: YamlLocator, parts: _Parts) -> None:
    """Validate each `routes[]` entry on its own: the cross-section checks still run for the valid ones."""
    if raw is None:
        return
    if not isinstance(raw, list):
        parts.issues.append(locator.issue(("routes",), "expected a list of routes"))
        return
    for index, spec in enumerate(raw):
        route = _collect(validate_located(RouteSettings, spec, locator, ("routes", index)), parts.issues)
        if route is not None:
            parts.routes.append((index, route))


def _validate_sections(data: dict[str, Any], locator: YamlLocator, issues: list[ConfigIssue]) -> _Parts:
    """Take the sections of named or listed entries out of `data` and validate them entry by entry."""

    def one_redis(spec: Any, loc: Loc) -> RedisSettings | None:
        return _collect(validate_located(RedisSettings, spec, locator, loc), issues)

    one_authorizer = _authorizer_validator(locator, issues)
    parts = _Parts(
        issues=issues,
        authorizers=_validate_named(
            data.pop("authorizers", None), "authorizers", "settings", issues, locator, one_authorizer
        ),
        redis=_validate_named(data.pop("redis", None), "redis", "connection settings", issues, locator, one_redis),
    )
    _validate_routes(data.pop("routes", None), locator, parts)
    return parts


def _validate_rest(data: dict[str, Any], locator: YamlLocator, file: str, parts: _Parts) -> Config | None:
    """The sections left (listen, api, cache, ...): on errors, validated again without the broken sections, so
    the checks that span sections still run with what is valid (and skip what names a broken section)."""
    config, found = validate_located(Config, {**data, "source": file}, locator)
    if config is not None:
        return config
    parts.issues.extend(found)
    parts.broken = {issue.field.split(".")[0].split("[")[0] for issue in found}
    kept = {key: value for key, value in data.items() if str(key) not in parts.broken}
    config, _ = validate_located(Config, {**kept, "source": file}, locator)
    return config


def _upstream_header_issues(config: Config, parts: _Parts, locator: YamlLocator) -> list[ConfigIssue]:
    """In HTTP mode, headers for the upstream start with `x-` (Envoy's shipped http_service config passes only
    those on)."""
    if not config.listen.http or "listen" in parts.broken:
        return []
    upstream: list[tuple[Loc, Any]] = []
    if "upstream_headers" not in parts.broken:
        upstream = [(("upstream_headers", k), v) for k, v in config.upstream_headers.model_dump().items()]
    for name, settings in parts.authorizers.valid.items():
        for where, header in settings.upstream_header_fields().items():
            upstream.append((("authorizers", name, *where), header))
    issues = []
    for loc, header in upstream:
        if header and not str(header).startswith("x-"):
            message = f"with listen.http, upstream header names must start with 'x-' (got {header!r})"
            issues.append(locator.issue(loc, message))
    return issues


def _identity_header_issues(config: Config, parts: _Parts, locator: YamlLocator) -> list[ConfigIssue]:
    """No authorizer sets an upstream header under a name `upstream_headers` gives the sidecar's own identity
    headers: the upstream would read a handler's context value (or a claim) as the sidecar's word on the caller."""
    if "upstream_headers" in parts.broken:
        return []
    names = {header: field for field, header in config.upstream_headers.model_dump().items() if header}
    issues = []
    for name, settings in parts.authorizers.valid.items():
        for where, header in settings.upstream_header_fields().items():
            if header in names:
                message = f"{header!r} is the sidecar's own identity header (upstream_headers.{names[header]})"
                issues.append(locator.issue(("authorizers", name, *where), message))
    return issues


def _unknown_connection(name: str, parts: _Parts) -> str:
    defined = parts.redis.defined()
    known = ", ".join(sorted(defined)) or "none defined"
    return f"names Redis connection {name!r}, which `redis:` does not define ({known}){did_you_mean(name, defined)}"


def _redis_issues(config: Config, parts: _Parts, locator: YamlLocator) -> list[ConfigIssue]:
    """Every named Redis connection exists (one that is defined but invalid was reported already)."""
    issues = []
    for name, settings in parts.authorizers.valid.items():
        for where, connection in settings.redis_connections().items():
            if not parts.redis.known(connection):
                issues.append(locator.issue(("authorizers", name, *where), _unknown_connection(connection, parts)))
    cache_redis = config.cache.redis
    if cache_redis is not None and cache_redis.url is None and "cache" not in parts.broken:
        name = cache_redis.connection or "default"
        if not parts.redis.known(name):
            key = "connection" if cache_redis.connection else "url"
            issues.append(locator.issue(("cache", "redis", key), _unknown_connection(name, parts)))
    return issues


def _route_issues(parts: _Parts, locator: YamlLocator) -> list[ConfigIssue]:
    """Routes name existing authorizers, take only the options their authorizer's type accepts, parse as
    routes and are not duplicates."""
    from .routes import RouteSyntaxError, parse_match

    issues = []
    seen: dict[tuple[str, str], int] = {}
    # Keys of a `routes[]` entry that belong to authorizer families (`AuthorizerSettings.route_options`).
    route_options = frozenset().union(*(entry.settings.route_options for entry in registry().values()))
    for index, route in parts.routes:
        if not parts.authorizers.known(route.authorizer):
            defined = parts.authorizers.defined()
            known = ", ".join(sorted(defined)) or "none defined"
            hint = did_you_mean(route.authorizer, defined)
            message = f"unknown authorizer {route.authorizer!r} ({known}){hint}"
            issues.append(locator.issue(("routes", index, "authorizer"), message))
        authorizer = parts.authorizers.valid.get(route.authorizer)
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


def _limit_issues(config: Config, parts: _Parts, locator: YamlLocator) -> list[ConfigIssue]:
    """API keys, usage plans and rate-based rules name what exists: route keys, the key source, Redis."""
    issues: list[ConfigIssue] = []
    routes = {route.match.strip(): route for _, route in parts.routes}

    def unknown_route(loc: Loc, key: str) -> None:
        hint = did_you_mean(key, routes)
        issues.append(locator.issue(loc, f"no route has the key {key!r}{hint}"))

    for plan, settings in config.usage_plans.items():
        if not GATE_NAME.fullmatch(plan):
            issues.append(locator.issue(("usage_plans", plan), "a plan name is 1-64 letters, digits, '-' or '_'"))
        for key in settings.routes:
            if key.strip() not in routes:
                unknown_route(("usage_plans", plan, "routes", key), key)
    names: dict[str, int] = {}
    for index, rule in enumerate(config.rate_limits):
        if rule.name in names:
            issues.append(locator.issue(("rate_limits", index, "name"), f"duplicates rate_limits[{names[rule.name]}]"))
        names.setdefault(rule.name, index)
        for at, key in enumerate(rule.routes):
            if key.strip() not in routes:
                unknown_route(("rate_limits", index, "routes", at), key)
        if "api_key" in rule.key and config.api_keys is None:
            issues.append(locator.issue(("rate_limits", index, "key"), "the api_key part needs `api_keys:`"))
        elif "api_key" in rule.key and config.api_keys is not None and config.api_keys.source == "authorizer":
            issues.extend(_keyless_rule_issues(rule, parts, locator, index))
    for index, route in parts.routes:
        if route.api_key_required:
            issues.extend(_api_key_route_issues(config, parts, locator, index, route))
        if route.require_client_cert and config.mtls is None and MTLS_SECTION not in parts.broken:
            message = "require_client_cert needs `mtls:` (the truststore client certificates must chain to)"
            issues.append(locator.issue(("routes", index, "require_client_cert"), message))
    connection = config.limits.connection
    if connection != "default" and not parts.redis.known(connection):
        issues.append(locator.issue(("limits", "connection"), _unknown_connection(connection, parts)))
    return issues


def _api_key_route_issues(
    config: Config, parts: _Parts, locator: YamlLocator, index: int, route: RouteSettings
) -> list[ConfigIssue]:
    where = ("routes", index, "api_key_required")
    if config.api_keys is None:
        return [locator.issue(where, "api_key_required needs `api_keys:` (the key file and where keys are read)")]
    authorizer = parts.authorizers.valid.get(route.authorizer)
    gap = authorizer.usage_key_gap() if authorizer is not None else None
    if config.api_keys.source == "authorizer" and gap is not None:
        message = (
            f"api_keys.source is authorizer (the authorizer's usageIdentifierKey), but {route.authorizer!r} is {gap}"
        )
        return [locator.issue(where, message)]
    return []


def _keyless_rule_issues(rule: RateLimitSettings, parts: _Parts, locator: YamlLocator, index: int) -> list[ConfigIssue]:
    """A rule counting by `api_key` under `api_keys.source: authorizer` on a route whose authorizer never names a
    key would count nothing there (a request missing a part is not counted): refused, as `api_key_required` is."""
    scope = {key.strip() for key in rule.routes}
    for _, route in parts.routes:
        if scope and route.match.strip() not in scope:
            continue
        method = route.match.split(None, 1)[0].upper()
        if rule.methods and method not in ("ANY", "$DEFAULT") and judged_method(method) not in rule.methods:
            continue  # the rule never sees this route's requests
        authorizer = parts.authorizers.valid.get(route.authorizer)
        gap = None if authorizer is None else authorizer.usage_key_gap()
        if gap is not None:
            message = (
                f"the api_key part reads the authorizer's usageIdentifierKey (api_keys.source: authorizer), but"
                f" route {route.match.strip()!r} is in this rule's scope and its authorizer {route.authorizer!r}"
                f" is {gap}: the rule would never count it (scope the rule with `routes`)"
            )
            return [locator.issue(("rate_limits", index, "key"), message)]
    return []


def _cross_check(config: Config, parts: _Parts, locator: YamlLocator) -> list[ConfigIssue]:
    """Checks that span sections, over the parts that validated (see `_Parts`)."""
    return [
        *_upstream_header_issues(config, parts, locator),
        *_identity_header_issues(config, parts, locator),
        *_redis_issues(config, parts, locator),
        *_route_issues(parts, locator),
        *_limit_issues(config, parts, locator),
    ]


def parse_config(text: str, file: str = "<memory>") -> Config:
    """Validate config text; raise `ConfigError` listing every problem with its location, in file order."""
    data, locator = parse_yaml(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([locator.issue((), "the top level must be a mapping")])
    data = dict(data)
    plugins, plugin_issues = _import_plugins(data.pop("plugins", None), locator)
    parts = _validate_sections(data, locator, plugin_issues)
    issues = parts.issues
    config = _validate_rest(data, locator, file, parts)
    if config is not None:
        issues.extend(_cross_check(config, parts, locator))
    if issues or config is None:
        raise ConfigError(sorted(issues, key=lambda issue: (issue.line, issue.column)))
    update = {
        "authorizers": parts.authorizers.valid,
        "redis": parts.redis.valid,
        "routes": tuple(route for _, route in parts.routes),
        "plugins": plugins,
    }
    return config.model_copy(update=update)


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
