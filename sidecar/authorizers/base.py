"""The one interface every authorizer implements, and the registry that maps a config `type` to it.

An authorizer identifies the caller (`authenticate`), or raises `Denied`. Slow shared state (JWKS documents,
credential stores) lives in objects the authorizer owns and refreshes in the background between `start()` and
`stop()`; `authenticate` only reads it. Each authorizer type registers a pydantic settings model, so its config
keys are validated with file/line errors like the rest of the config, and a `build` function that compiles the
settings once into a ready-to-serve instance.

Everything the spine needs to know about a type is asked of these two classes, never decided by its name: the
settings say which files to watch, which upstream headers the type may set and which per-route options it takes;
the authorizer class says which side of the identity/resource combination its callers stand on. A new type is one
module (or folder) and one line in `builtin.py`.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..hop import HopNeeds, NotOffloadable, OffloadRules
from ..policy.context import DEFAULT_SETTINGS, ContextSettings
from ..request import Principal, Request
from ..settings import AuthorizerSettings

if TYPE_CHECKING:
    from ..cache.blobs import SignedBlobStore
    from ..metrics import ReloadStatus
    from ..policy import Outcome
    from ..reasons import Denied
    from ..settings import ApiSettings, MtlsSettings, RedisSettings, RouteSettings

__all__ = ["Authorizer", "AuthorizerSettings", "AuthorizerType", "BuildContext", "IdentitySide", "register"]


IdentitySide = Literal["policies", "authenticated", "anonymous"]
"""What the caller an authorizer identifies brings to the policy stage (`Authorizer.identity_side`)."""


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What an authorizer may need from the surrounding config when it is built."""

    name: str
    base_dir: Path
    """Directory of the config file: relative paths in authorizer settings resolve against it."""
    api: ApiSettings
    redis: Mapping[str, RedisSettings] = field(default_factory=dict)
    """The config's named Redis connections (`redis:`), for types that share state through one."""
    clock: Callable[[], float] = time.time
    """The process's wall clock, for the authorizer's own state (when keys were fetched, when they go stale).
    A request is judged at `Request.time`, never at this clock: `check --at T` builds its runtime with a clock
    that reads T, so keys fetched offline count as fetched at T and the two agree."""
    blob_store: SignedBlobStore | None = None
    """Signed entries in the config's shared Redis (`cache.redis`), for types that share what they computed
    between replicas (a Lambda authorizer's results), each under keys of its own; None without `cache.redis`."""
    context_settings: ContextSettings = DEFAULT_SETTINGS
    """How requests are read for context keys (`policy.trusted_proxy_hops`, ...): what a type that shows the caller's
    address (a Lambda event's `sourceIp`) reads it with, so it is `aws:SourceIp`."""
    mtls: MtlsSettings | None = None
    """The config's `mtls:` section (truststore, CRLs, certificate sources), for `type: mtls`."""
    source: str = ""
    """The config file, for problems found while building that belong at one of its keys (`issues.issue_at`)."""
    http_trusted_peers: tuple[str, ...] = ("127.0.0.1", "::1")
    """`http.trusted_peers`: whom `mtls:` believes certificate headers from when it names no peers of its own."""


class Authorizer(abc.ABC):
    """Identifies callers for the routes that name it."""

    kind: ClassVar[str] = ""
    """The config `type` this class serves; also the `kind` of the Principals it returns."""
    challenge: ClassVar[str | None] = "Bearer"
    """The `WWW-Authenticate` value sent with 401 denials (None: none, as API Gateway answers a Lambda's 401)."""
    identity_side: ClassVar[IdentitySide] = "authenticated"
    """How the policy stage treats the callers this authorizer identifies, API Gateway's way:

    - `policies`: the caller's identity policies are the identity side (IAM callers, `sigv4`): with none attached
      or none allowing, only the resource policy can allow;
    - `authenticated`: identifying the caller is the identity side's Allow (`jwt`, `cognito`, plugins): allowed
      unless a policy denies (a private API's and a cross-account caller's rules still need the resource policy);
    - `anonymous`: there is no identity side (`none`): with no resource policy the route is open, with one only
      the resource policy can allow.

    A Principal that carries identity policies of its own is evaluated against them whatever the side."""
    resource_policy_first: ClassVar[bool] = False
    """Whether the resource policy is evaluated before `authenticate`, for the anonymous caller, so that an
    explicit Deny in it refuses the request without authenticating: API Gateway's order for Lambda authorizers,
    whose handler is a call worth not making (`lambda`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    async def authenticate(self, request: Request) -> Principal:
        """Return who the caller is, or raise `sidecar.reasons.Denied`."""

    def for_route(self, route: RouteSettings) -> Authorizer:
        """The instance that serves `route`: `self`, unless the route changes how this authorizer behaves
        (a per-route option such as SigV4's `replay_guard`). Called once per route at compile time."""
        return self

    def behind_decision_cache(self) -> Authorizer:
        """The instance for a route whose decisions the in-process cache keeps per credential alone (no policy
        reads the request): `self`, unless this authorizer keeps verified credentials of its own, which such a
        route would only hold twice. Called once per route at compile time, after `for_route`."""
        return self

    def policy_refusal(self, outcome: Outcome) -> Denied:
        """The 403 for a policy stage that refused this authorizer's caller: IAM's words (`User: ARN is not
        authorized to perform: execute-api:Invoke on resource: ...`) unless the type has API Gateway words of its
        own (a Lambda authorizer's policy: `User is not authorized to access this resource`)."""
        return outcome.to_denied()

    def upstream_header_names(self) -> frozenset[str]:
        """Every upstream header (lower case) this authorizer may set on an allowed request.

        The runtime removes all of them, from every authorizer of the config, from each allowed request that
        does not set them itself: a client must never pass its own `x-user-id` to the upstream on a route whose
        authorizer happens not to write that header."""
        return frozenset()

    def hop_needs(self) -> HopNeeds:
        """What of a request this authorizer reads (`sidecar.hop`): the ext_authz settings Envoy is given
        (`envoy-config`) send no more than what every route's parts read. Every header unless a type says less:
        a type that reads headers it cannot name in advance, or does not say, must get them all."""
        return HopNeeds.everything(f"authorizer {self.name} (type {self.kind}) does not name the headers it reads")

    def offload_rules(self) -> OffloadRules | NotOffloadable:
        """What Envoy's own filters would have to check to decide this authorizer's requests exactly as it does,
        or why they cannot (`envoy-config --offload`). Only a type that can restate its whole judgement in
        Envoy's terms answers with rules."""
        return NotOffloadable(f"authorizer {self.name} (type {self.kind}) has no equivalent among Envoy's filters")

    def fingerprint(self, request: Request) -> bytes | None:
        """A digest of the credential this request presents, or None if decisions about it must not be cached.

        Offer one only when `authenticate`'s verdict is a pure function of that credential (a bearer token is;
        a SigV4 signature, which covers the whole request, is not). The decision cache keys on it *before*
        authenticating, so a repeated token skips verification entirely.
        """
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook, most authorizers hold no background state
        """Begin background work (key fetches, file watches). Called once before serving."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop background work. Called when a newer config replaces this one, or at shutdown."""

    def is_ready(self) -> bool:
        """Whether this authorizer can decide requests yet (e.g. its keys have loaded)."""
        return True

    async def wait_ready(self) -> None:
        """Return once `is_ready()`; authorizers with a readiness event should override this poll."""
        while not self.is_ready():  # noqa: ASYNC110 - generic fallback; subclasses can await an Event
            await asyncio.sleep(0.05)

    def reload_statuses(self) -> tuple[ReloadStatus, ...]:
        """One `sidecar.metrics.ReloadStatus` per file this authorizer reloads on its own while it serves (a
        SigV4 credentials file; later JWKS files, truststores, key stores), outside the config's reloads.

        Recording each reload there (`ok`, `unchanged`, `rejected`) counts it in `authz_config_reloads_total`
        under the status's source, and /readyz, which asks every authorizer of the serving config, shows the
        newest attempt and, while it was rejected, the error. Most authorizers reload nothing themselves."""
        return ()

    async def recheck_files(self, why: str) -> None:  # noqa: B027 - optional hook, most authorizers reload nothing
        """Look at the files this authorizer reloads on its own now, reloading those that changed (recording each
        in `reload_statuses`): a SIGHUP asks every authorizer, so an operator need not wait for the next poll."""


BuildFunc = Callable[[Any, BuildContext], Authorizer]


@dataclass(frozen=True, slots=True)
class AuthorizerType:
    """A registry entry: the settings model for `type: NAME` and how to build an authorizer from it."""

    name: str
    settings: type[AuthorizerSettings]
    build: BuildFunc


_REGISTRY: dict[str, AuthorizerType] = {}


def register(name: str, settings: type[AuthorizerSettings], build: BuildFunc | None = None) -> None:
    """Make `type: name` usable in config files. The settings class builds its authorizer (`build(ctx)`); a
    `build` function given here is the older plugin form and is used instead."""
    _REGISTRY[name] = AuthorizerType(name=name, settings=settings, build=build or _settings_build)


def _settings_build(settings: Any, ctx: BuildContext) -> Authorizer:
    built = settings.build(ctx)
    if not isinstance(built, Authorizer):
        raise TypeError(f"{type(settings).__name__}.build returned {type(built).__name__}, not an Authorizer")
    return built


def registry() -> dict[str, AuthorizerType]:
    """All registered authorizer types, loading the built-in ones on first use."""
    from . import builtin  # noqa: F401 - importing registers the built-in types

    return _REGISTRY


def types_accepting(option: str) -> tuple[str, ...]:
    """The registered types whose routes may set the per-route `option` (`AuthorizerSettings.route_options`),
    sorted: what an error about the option on another type's route names (`replay_guard applies to sigv4 routes
    only ...`)."""
    return tuple(sorted(name for name, entry in registry().items() if option in entry.settings.route_options))
