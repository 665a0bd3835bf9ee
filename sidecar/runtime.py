"""A config compiled into the immutable objects the hot path reads, and the holder that swaps them atomically.

`compile_runtime` does all the work that can be done before the first request: routes become a trie,
authorizer settings become authorizer instances, policies become matchers. A reload builds a complete new
`Runtime` beside the serving one and swaps a single reference, so an in-flight Check finishes on the runtime it
started with and a bad config never replaces a good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr

from .authorizers.base import Authorizer, BuildContext, registry
from .authorizers.mtls import ClientCertGate, ClientCertVerifier, build_engine
from .cache import TIME_KEYS, DecisionCache, KeyPlan, RedisLayer, SignedBlobStore, blob_store, redis_layer
from .cache import build as build_decision_cache
from .issues import ConfigError, ConfigIssue, issue_at
from .limits import AdmitGate, MeterGate
from .limits.build import build_gates
from .limits.gates import GateSet
from .policy import CompiledPolicy, ContextSettings, load_policy
from .policy.context import DEFAULT_SETTINGS, HEADER_PREFIX, REQUEST_KEYS
from .policy.endpoints import EndpointPolicies, load_endpoint_policies
from .routes import RouteTable
from .settings import Config, RouteSettings, UpstreamHeaderSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False, slots=True)
class CompiledRoute:
    """A route ready to serve: its key text, the authorizer instance and the scopes it requires."""

    key: str
    authorizer: Authorizer
    scopes: frozenset[str]
    cache_plan: KeyPlan | None = None
    """How to key this route's decisions; None: never cached."""
    allow_headers: tuple[tuple[str, str], ...] = ()
    """The allow template: the upstream headers every allow of this route carries whoever the caller is (the
    authorizer's and the route's names, as `upstream_headers` configures them), compiled once."""
    admit_gates: tuple[AdmitGate, ...] = ()
    """Run before authentication on every request of this route (rate-based rules)."""
    meter_gates: tuple[MeterGate, ...] = ()
    """Run after every allow of this route, cached or not (usage plans)."""
    meter_now: bool = False
    """Every meter gate is `synchronous`: the pipeline meters without awaiting."""


@dataclass(frozen=True, eq=False, slots=True)
class Runtime:
    """Everything one config compiles into. Never mutated; replaced whole on reload."""

    config: Config
    version: str
    """Public fingerprint of the config and its files (no secrets): what /readyz shows."""
    cache_version: str
    """Also covers secrets: keys cached decisions; a reload that leaves it unchanged changes nothing."""
    routes: RouteTable[CompiledRoute]
    authorizers: Mapping[str, Authorizer]
    upstream_headers: UpstreamHeaderSettings
    resource_policy: CompiledPolicy | None = None
    context_settings: ContextSettings = DEFAULT_SETTINGS
    cache: DecisionCache | None = None
    watched: tuple[Path, ...] = ()
    """Files besides the config file whose changes should trigger a reload (e.g. the resource policy)."""
    identity_headers: frozenset[str] = frozenset()
    """Every upstream header any part of this config can set on an allow (`identity_headers`): each allowed
    request has the ones its decision does not set removed, so a client can never supply one."""
    blob_store: SignedBlobStore | None = None
    """The signed store in `cache.redis` handed to the authorizers (`BuildContext.blob_store`); closed with them."""
    client_certs: ClientCertVerifier | None = None
    """The engine of the `require_client_cert` routes' gate (its truststore watch starts and stops with the
    runtime); a `type: mtls` authorizer has its own."""
    gates: GateSet | None = None
    """API keys, usage plans and rate-based rules (`limits/`): their key store and counters, started and stopped
    with the authorizers; the routes hold the gates themselves."""
    endpoint_policies: EndpointPolicies | None = None
    """`policy.vpc_endpoint_policies` compiled (None when there are none): judged in the policy stage."""

    @property
    def private_api(self) -> bool:
        """Whether only an explicit resource-policy Allow lets a request in."""
        return self.config.policy.private_api

    def is_ready(self) -> bool:
        """True once every authorizer can decide (keys loaded and so on)."""
        return all(a.is_ready() for a in self.authorizers.values())

    async def wait_ready(self, limit: float) -> bool:
        """Wait up to `limit` seconds for every authorizer to be ready; True if they all are."""
        try:
            async with asyncio.timeout(limit):
                await asyncio.gather(*(a.wait_ready() for a in self.authorizers.values()))
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        """Start the authorizers' background work (key fetches, file watches) and the API key file's watch."""
        await asyncio.gather(*(a.start() for a in self.authorizers.values()))
        if self.gates is not None and self.gates.keys is not None:
            await self.gates.keys.start()
        if self.client_certs is not None:
            await self.client_certs.start()

    async def stop(self) -> None:
        """Stop the authorizers' background work and close the cache's connections."""
        await asyncio.gather(*(a.stop() for a in self.authorizers.values()), return_exceptions=True)
        if self.cache is not None:
            await self.cache.close()
        if self.blob_store is not None:
            await self.blob_store.close()
        if self.gates is not None:
            await self.gates.close()
        if self.client_certs is not None:
            await self.client_certs.stop()


_NOT_DECISIVE: Any = {"listen": True, "server": True, "decision_log": True}
"""Settings no decision depends on: replicas that differ only in ports or logging share cached decisions."""


def config_version(config: Config, *files: Path) -> str:
    """The public fingerprint of the config and the files it names (shown by /readyz and in logs).

    Secrets appear in it only masked, so publishing it reveals nothing; `cache_version` covers them.
    """
    digest = hashlib.sha256(config.model_dump_json(exclude=_NOT_DECISIVE).encode())
    _hash_files(digest, files)
    return digest.hexdigest()[:16]


def cache_version(config: Config, public: str) -> str:
    """The fingerprint that keys cached decisions and decides whether a reload changed anything: the public
    version plus every secret value and secret file, so rotating a signing key or a Redis password is a change."""
    digest = hashlib.sha256(public.encode())
    secrets: list[str] = []
    _collect_secrets(config.model_dump(exclude=_NOT_DECISIVE), secrets)
    for value in sorted(secrets):
        digest.update(hashlib.sha256(value.encode()).digest())
    redis = config.cache.redis
    if redis is not None and redis.signing_key_file:
        _hash_files(digest, [_resolve(config, redis.signing_key_file)])
    return digest.hexdigest()[:32]


def _collect_secrets(value: Any, out: list[str]) -> None:
    if isinstance(value, SecretStr):
        out.append(value.get_secret_value())
    elif isinstance(value, dict):
        for item in value.values():
            _collect_secrets(item, out)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_secrets(item, out)


def _hash_files(digest: Any, files: Iterable[Path]) -> None:
    for path in files:
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<unreadable>")


def _resolve(config: Config, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else config.base_dir / path


def key_files(config: Config) -> list[Path]:
    """Key material files authorizers read at load (e.g. a `jwks_file`): a change must reload and invalidate."""
    return [path for settings in config.authorizers.values() for path in settings.watched_files(config.base_dir)]


def policy_path(config: Config) -> Path | None:
    """Where `resource_policy` points, resolved against the config file's directory."""
    if config.resource_policy is None:
        return None
    return _resolve(config, config.resource_policy)


def endpoint_policy_paths(config: Config) -> dict[str, Path]:
    """Where each `policy.vpc_endpoint_policies` entry points, resolved against the config file's directory."""
    return {vpce: _resolve(config, name) for vpce, name in config.policy.vpc_endpoint_policies.items()}


def compile_runtime(config: Config, clock: Callable[[], float] = time.time, private_limits: bool = False) -> Runtime:
    """Build a `Runtime`; raise `ConfigError` if a part cannot be compiled (e.g. a credentials file is bad).

    `clock` is the authorizers' own clock (`BuildContext.clock`): `check --at` passes one that reads its time.
    `private_limits`: the gates count in fresh counters of their own, never Redis nor the process's (`check`:
    judging a request offline must not spend anyone's quota)."""
    types = registry()
    authorizers: dict[str, Authorizer] = {}
    issues: list[ConfigIssue] = []
    layer = _redis_layer(config, issues)
    blobs = blob_store(layer, BLOB_PREFIX, "results") if layer is not None else None
    context_settings = _context_settings(config)
    for name, settings in config.authorizers.items():
        ctx = BuildContext(
            name=name,
            base_dir=config.base_dir,
            api=config.api,
            redis=config.redis,
            clock=clock,
            blob_store=blobs,
            context_settings=context_settings,
            mtls=config.mtls,
            source=config.source,
            http_trusted_peers=config.http.trusted_peers,
        )
        try:
            authorizers[name] = types[settings.type].build(settings, ctx)
        except ConfigError as exc:
            issues.extend(exc.issues)
        except (OSError, ValueError) as exc:
            issues.append(located(config, ("authorizers", name), str(exc)))
    resource_policy = _load_resource_policy(config, issues)
    endpoints = _load_endpoint_policies(config, issues)
    watched = tuple(
        p for p in (policy_path(config), *endpoint_policy_paths(config).values(), *key_files(config)) if p is not None
    )
    gates = build_gates(config, context_settings, clock, issues, private_limits) if not issues else None
    client_certs = _client_cert_engine(config, clock, issues) if not issues else None
    if issues:
        raise ConfigError(issues)
    cert_gate = ClientCertGate(client_certs) if client_certs is not None else None
    version = config_version(config, *watched)
    internal = cache_version(config, version)
    cache = build_decision_cache(config, layer)
    routes = RouteTable(
        [
            (
                r.match,
                _compile_route(r, authorizers, cache, config, internal, resource_policy, gates, cert_gate, endpoints),
            )
            for r in config.routes
        ]
    )
    return Runtime(
        config=config,
        version=version,
        cache_version=internal,
        cache=cache,
        routes=routes,
        authorizers=MappingProxyType(authorizers),
        upstream_headers=config.upstream_headers,
        resource_policy=resource_policy,
        watched=watched,
        identity_headers=identity_headers(config.upstream_headers, authorizers.values()),
        context_settings=context_settings,
        blob_store=blobs,
        gates=gates,
        client_certs=client_certs,
        endpoint_policies=endpoints,
    )


def _client_cert_engine(
    config: Config, clock: Callable[[], float], issues: list[ConfigIssue]
) -> ClientCertVerifier | None:
    """The engine the `require_client_cert` routes share, or None when no route requires a certificate; a
    truststore or CRL that does not load is an issue at its `mtls:` key."""
    if config.mtls is None or not any(route.require_client_cert for route in config.routes):
        return None
    try:
        return build_engine(config.mtls, config.base_dir, config.source, config.http.trusted_peers, clock)
    except ConfigError as exc:
        issues.extend(exc.issues)
    return None


def _context_settings(config: Config) -> ContextSettings:
    """How this config's requests are read for context keys (the policies' and the authorizers')."""
    return ContextSettings(
        trusted_proxy_hops=config.policy.trusted_proxy_hops,
        vpce_header=config.policy.vpce_header,
        vpc_header=config.policy.vpc_header,
        # Envoy's http_service (use_remote_address) and Traefik append their peer before asking; the
        # shipped nginx config passes the client's X-Forwarded-For untouched.
        http_proxy_appends=config.http.flavor != "nginx",
    )


BLOB_PREFIX = "authz:r:"
"""Redis keys of the authorizers' shared results (`BuildContext.blob_store`), beside the decisions' `authz:d:`."""


def _redis_layer(config: Config, issues: list[ConfigIssue]) -> RedisLayer | None:
    """`cache.redis` resolved once (its signing key read) for the decision cache and the authorizers; a key that
    cannot be read is an issue at the key that names it (`signing_key_file`, `signing_key_env`)."""
    try:
        return redis_layer(config)
    except OSError as exc:
        message = f"cannot read the signing key file {exc.filename}: {exc.strerror or type(exc).__name__}"
        issues.append(located(config, ("cache", "redis", "signing_key_file"), message))
    except ValueError as exc:
        issues.append(located(config, ("cache", "redis", "signing_key_env"), str(exc)))
    return None


DEFAULT_IDENTITY_HEADERS = frozenset({"x-authz-principal", "x-authz-authorizer", "x-authz-route"})
"""Removed from every allow that does not set them even when the config switches them off or renames them: an
upstream written against the defaults must never read a client's copy."""


def identity_headers(names: UpstreamHeaderSettings, authorizers: Iterable[Authorizer]) -> frozenset[str]:
    """The header names any allow of this config may carry for the upstream: the defaults, the configured
    `upstream_headers` and every authorizer's own (`Authorizer.upstream_header_names`)."""
    found = set(DEFAULT_IDENTITY_HEADERS)
    found.update(name for name in (names.principal, names.authorizer, names.route) if name)
    for authorizer in authorizers:
        found.update(authorizer.upstream_header_names())
    return frozenset(found)


def _compile_route(
    route: RouteSettings,
    authorizers: Mapping[str, Authorizer],
    cache: DecisionCache | None,
    config: Config,
    version: str,
    policy: CompiledPolicy | None,
    gates: GateSet | None = None,
    cert_gate: AdmitGate | None = None,
    endpoints: EndpointPolicies | None = None,
) -> CompiledRoute:
    plan = key_plan(config, route, version, policy, endpoints) if cache is not None else None
    authorizer = authorizers[route.authorizer].for_route(route)
    if cache is not None and cache.local is not None and plan is not None and plan.ttl > 0 and not plan.with_resource:
        authorizer = authorizer.behind_decision_cache()  # allows here are cached per credential alone
    key = route.match.strip()
    names = config.upstream_headers
    constant = ((names.authorizer, authorizer.name), (names.route, key))
    meters = gates.meter.get(key, ()) if gates is not None else ()
    return CompiledRoute(
        key=key,
        authorizer=authorizer,
        scopes=frozenset(route.scopes),
        cache_plan=plan,
        allow_headers=tuple((name, value) for name, value in constant if name),
        admit_gates=(
            *((cert_gate,) if cert_gate is not None and route.require_client_cert else ()),
            *(gates.admit.get(key, ()) if gates is not None else ()),
        ),
        meter_gates=meters,
        meter_now=bool(meters) and all(gate.synchronous for gate in meters),
    )


def key_plan(
    config: Config,
    route: RouteSettings,
    version: str,
    policy: CompiledPolicy | None,
    endpoints: EndpointPolicies | None = None,
) -> KeyPlan | None:
    """How decisions on `route` are keyed, or None when they must not be cached (TTL 0, clock-reading policy).
    Endpoint policies make the origin (`aws:SourceVpce`) and whatever they read part of every key."""
    ttl = config.cache.ttl if route.cache_ttl is None else route.cache_ttl
    if ttl <= 0 and config.cache.deny_ttl <= 0:
        return None
    keys = (policy.context_keys if policy is not None else frozenset()) | (
        endpoints.context_keys if endpoints is not None else frozenset()
    )
    if keys & TIME_KEYS:
        return None
    request_keys = tuple(sorted(k for k in keys if k in REQUEST_KEYS or k.startswith(HEADER_PREFIX)))
    return KeyPlan(
        version=version,
        route=route.match.strip(),
        with_resource=policy is not None or endpoints is not None,
        request_keys=request_keys,
        ttl=ttl,
        deny_ttl=config.cache.deny_ttl,
    )


def located(config: Config, loc: tuple[str | int, ...], message: str) -> ConfigIssue:
    """An issue at the config key `loc` (file:line:col), for problems found after validation (a file a key names
    cannot be read): `issue_at` the config's file."""
    return issue_at(config.source, loc, message)


def _load_resource_policy(config: Config, issues: list[ConfigIssue]) -> CompiledPolicy | None:
    """Compile `resource_policy` (a path relative to the config file); problems are appended to `issues`."""
    path = policy_path(config)
    if path is None:
        return None
    if not path.is_file():
        issues.append(located(config, ("resource_policy",), f"cannot read the policy file {path}: no such file"))
        return None
    try:
        policy = load_policy(path, kind="resource", api=config.api, max_size=config.policy.max_resource_policy_size)
    except ConfigError as exc:
        issues.extend(exc.issues)
        return None
    for warning in policy.warnings:
        log.warning("%s", warning)
    return policy


def _load_endpoint_policies(config: Config, issues: list[ConfigIssue]) -> EndpointPolicies | None:
    """Compile `policy.vpc_endpoint_policies` (paths relative to the config file), None when there are none; a
    file that is missing is an issue at its entry, one that does not parse is located in the file itself."""
    files = endpoint_policy_paths(config)
    if not files:
        return None
    missing = [vpce for vpce, path in files.items() if not path.is_file()]
    for vpce in missing:
        where = ("policy", "vpc_endpoint_policies", vpce)
        issues.append(located(config, where, f"cannot read the policy file {files[vpce]}: no such file"))
    if missing:
        return None
    try:
        endpoints = load_endpoint_policies(files, config.api, config.policy.private_api)
    except ConfigError as exc:
        issues.extend(exc.issues)
        return None
    for policy in endpoints.policies.values():
        for warning in policy.warnings:
            log.warning("%s", warning)
    return endpoints


class Users:
    """How many decisions are using one runtime right now (`Pipeline` enters and leaves around each)."""

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def leave(self) -> None:
        self.count -= 1
        if not self.count and self._idle is not None:
            self._idle.set()

    async def idle(self, within: float) -> bool:
        """Wait until no decision uses the runtime (at most `within` seconds); whether none does."""
        if self.count:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), within)
        return not self.count


class RuntimeHolder:
    """Holds the serving `Runtime`. Readers take `holder.current` (and enter `holder.users`) once per request;
    `swap` replaces it."""

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
        self.users = Users()
        self.draining = False

    async def swap(self, new: Runtime) -> Runtime:
        """Start `new`, make it current, let the decisions still using the old one finish (within its grace
        period), then stop the old one. Returns the old runtime.

        Why wait: a decision takes the runtime once and may still await a gate's Redis call or the decision cache
        when the swap happens; stopping the old runtime under it made its next step fail (a `lambda` handler's
        pool already gone: 500 `AuthorizerConfigurationException`, found by the soak's config reloads)."""
        await new.start()
        old, users = self.current, self.users
        self.current, self.users = new, Users()
        if not await users.idle(old.config.server.grace_period):
            log.warning("reload: %d decisions still use the old config past its grace period; stopping it", users.count)
        await old.stop()
        return old
