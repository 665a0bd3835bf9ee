"""A config compiled into the immutable objects the hot path reads, and the holder that swaps them atomically.

`compile_runtime` does all the work that can be done before the first request: routes become a trie,
authorizer settings become authorizer instances, policies become matchers. A reload builds a complete new
`Runtime` beside the serving one and swaps a single reference, so an in-flight Check finishes on the runtime it
started with and a bad config never replaces a good one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .authorizers.base import Authorizer, BuildContext, registry
from .config import Config, ConfigError, ConfigIssue, UpstreamHeaderSettings
from .routes import RouteTable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route ready to serve: its key text, the authorizer instance and the scopes it requires."""

    key: str
    authorizer: Authorizer
    scopes: frozenset[str]


@dataclass(frozen=True, eq=False, slots=True)
class Runtime:
    """Everything one config compiles into. Never mutated; replaced whole on reload."""

    config: Config
    version: str
    routes: RouteTable[CompiledRoute]
    authorizers: Mapping[str, Authorizer]
    upstream_headers: UpstreamHeaderSettings

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
        """Start the authorizers' background work (key fetches, file watches)."""
        await asyncio.gather(*(a.start() for a in self.authorizers.values()))

    async def stop(self) -> None:
        """Stop the authorizers' background work."""
        await asyncio.gather(*(a.stop() for a in self.authorizers.values()), return_exceptions=True)


def config_version(config: Config) -> str:
    """A short fingerprint of the config: it keys cached decisions, so a reload invalidates them all."""
    blob = config.model_dump_json().encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def compile_runtime(config: Config) -> Runtime:
    """Build a `Runtime`; raise `ConfigError` if a part cannot be compiled (e.g. a credentials file is bad)."""
    types = registry()
    authorizers: dict[str, Authorizer] = {}
    issues: list[ConfigIssue] = []
    for name, settings in config.authorizers.items():
        ctx = BuildContext(name=name, base_dir=config.base_dir, api=config.api)
        try:
            authorizers[name] = types[settings.type].build(settings, ctx)
        except ConfigError as exc:
            issues.extend(exc.issues)
        except (OSError, ValueError) as exc:
            issues.append(ConfigIssue(config.source, 0, 0, f"authorizers.{name}", str(exc)))
    if issues:
        raise ConfigError(issues)
    routes = RouteTable(
        [
            (
                r.match,
                CompiledRoute(key=r.match.strip(), authorizer=authorizers[r.authorizer], scopes=frozenset(r.scopes)),
            )
            for r in config.routes
        ]
    )
    return Runtime(
        config=config,
        version=config_version(config),
        routes=routes,
        authorizers=MappingProxyType(authorizers),
        upstream_headers=config.upstream_headers,
    )


class RuntimeHolder:
    """Holds the serving `Runtime`. Readers take `holder.current` once per request; `swap` replaces it."""

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
        self.draining = False

    async def swap(self, new: Runtime) -> Runtime:
        """Start `new`, make it current, then stop the old one. Returns the old runtime."""
        await new.start()
        old, self.current = self.current, new
        await old.stop()
        return old
