"""The config of `type: sigv4` (see docs/sigv4.md), and how it is built into a `SigV4Authorizer`.

`deny_status: 401` turns the 403 denials into 401 with a `WWW-Authenticate: AWS4-HMAC-SHA256` challenge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ...settings import RedisSettings, redis_url
from ..base import Authorizer, AuthorizerSettings, BuildContext
from .authorizer import SigV4Authorizer
from .credentials import DEFAULT_SIGNING_KEY_CACHE, FileCredentialStore
from .replay import LocalReplayGuard, ReplayGuard, guard_for
from .verifier import MAX_EXPIRES, SigV4Verifier, VerifierOptions

_SERVICE = re.compile(r"^[a-z0-9\-]+$")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CredentialSourceSettings(_Frozen):
    """Where the access keys come from. Only `file` exists today; other backends add keys here."""

    file: str
    reload_interval: float = Field(default=2.0, ge=0, le=3600)
    """Seconds between checks for a changed file (0: never reload)."""


class SigV4UpstreamHeaders(_Frozen):
    """Identity headers added to allowed requests for the upstream (each null = not sent)."""

    access_key_id: str | None = None
    principal_arn: str | None = None

    @field_validator("access_key_id", "principal_arn")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else None


class SigV4Settings(AuthorizerSettings):
    """`type: sigv4`: AWS SigV4 / SigV4a signed requests verified against a credential store."""

    type: Literal["sigv4"]

    service: str = "execute-api"
    region: str | None = Field(default=None, min_length=1)
    regions: tuple[str, ...] = ()
    credentials: CredentialSourceSettings
    normalize_path: bool | None = None
    """Remove dot and empty path segments before signing. Default: on, except for service `s3`."""
    double_encode: bool | None = None
    """URI-encode the (already encoded) wire path again. Default: on, except for service `s3`."""
    clock_skew: float = Field(default=300, ge=0, le=3600)
    allow_unsigned_payload: bool = False
    replay_guard: bool = False
    """Deny a signature seen before while it is still valid (beyond API Gateway; off by default)."""
    replay_redis_url: SecretStr | None = None
    _replay_url = field_validator("replay_redis_url")(lambda cls, v: redis_url(v))
    """Share the replay guard between sidecars through this Redis (`SET NX PX`): the inline short form of
    `replay_redis`. With neither, the guard uses the config's `redis.default` when there is one, else it stays in
    the process."""
    replay_redis: str | None = None
    """A connection of the top-level `redis:` map for the shared replay guard."""
    replay_redis_timeout_ms: float = Field(default=5.0, gt=0, le=1000)
    replay_cache_size: int = Field(default=1_000_000, ge=1, le=100_000_000)
    upstream_headers: SigV4UpstreamHeaders = SigV4UpstreamHeaders()
    max_expires: int = Field(default=MAX_EXPIRES, ge=1, le=MAX_EXPIRES)
    algorithms: tuple[Literal["AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"], ...] = (
        "AWS4-HMAC-SHA256",
        "AWS4-ECDSA-P256-SHA256",
    )
    require_signed_session_token: bool = False
    """Deny header-signed requests whose X-Amz-Security-Token is not in SignedHeaders (AWS accepts either)."""
    deny_status: Literal[401, 403] = 403
    signing_key_cache_size: int = Field(default=DEFAULT_SIGNING_KEY_CACHE, ge=1, le=1_000_000)

    route_options: ClassVar[frozenset[str]] = frozenset({"replay_guard"})
    """A route's `replay_guard` turns the guard on or off for that route (`SigV4Authorizer.for_route`)."""

    def redis_connections(self) -> dict[tuple[str | int, ...], str]:
        return {("replay_redis",): self.replay_redis} if self.replay_redis else {}

    def replay_connection(self, connections: Mapping[str, RedisSettings]) -> RedisSettings | None:
        """The Redis connection the replay guard shares (None: it stays in the process): the inline
        `replay_redis_url`, else the named `replay_redis`, else the config's `redis.default` if it has one."""
        if self.replay_redis_url is not None:
            return RedisSettings(url=self.replay_redis_url, timeout_ms=self.replay_redis_timeout_ms, lean_reads=False)
        return connections.get(self.replay_redis or "default")

    def watched_files(self, base_dir: Path) -> tuple[Path, ...]:
        """None: the credentials file (and the secret and policy files it names) is watched by its
        `FileCredentialStore`, which swaps in a new snapshot every `credentials.reload_interval` while serving. A
        config reload for it would rebuild every authorizer and empty the decision cache for nothing."""
        return ()

    def upstream_header_fields(self) -> dict[tuple[str | int, ...], str]:
        headers = self.upstream_headers
        names = {"access_key_id": headers.access_key_id, "principal_arn": headers.principal_arn}
        return {("upstream_headers", key): name for key, name in names.items() if name}

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        if not _SERVICE.match(value):
            raise ValueError("a service name is lower-case letters, digits and '-', e.g. execute-api")
        return value

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not r for r in value):
            raise ValueError("entries must not be empty")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one algorithm")
        return value

    @model_validator(mode="after")
    def _region_xor_regions(self) -> SigV4Settings:
        if self.region is not None and self.regions:
            raise ValueError("give either `region` or `regions`, not both")
        return self

    def verifier_options(self, default_region: str) -> VerifierOptions:
        """The compiled, hot-path form of these settings, with the defaults that depend on other keys (S3 neither
        normalizes nor double-encodes; the region is the API's unless `region`/`regions` says otherwise)."""
        s3 = self.service == "s3"
        regions = self.regions or ((self.region,) if self.region else (default_region,))
        return VerifierOptions(
            service=self.service,
            regions=frozenset(regions),
            normalize_path=self.normalize_path if self.normalize_path is not None else not s3,
            double_encode=self.double_encode if self.double_encode is not None else not s3,
            clock_skew=float(self.clock_skew),
            allow_unsigned_payload=self.allow_unsigned_payload,
            max_expires=self.max_expires,
            algorithms=frozenset(self.algorithms),
            require_signed_session_token=self.require_signed_session_token,
            deny_status=self.deny_status,
        )

    def build(self, ctx: BuildContext) -> Authorizer:
        return build_sigv4(self, ctx)


def build_sigv4(settings: Any, ctx: BuildContext) -> Authorizer:
    """Build a `sigv4` authorizer: load the credential file (ConfigError on problems) and compile the options."""
    assert isinstance(settings, SigV4Settings)
    path = Path(settings.credentials.file)
    if not path.is_absolute():
        path = ctx.base_dir / path
    store = FileCredentialStore(
        path,
        reload_interval=settings.credentials.reload_interval,
        max_signing_keys=settings.signing_key_cache_size,
        api=ctx.api,
        source=f"credentials:{ctx.name}",
    )
    options = settings.verifier_options(ctx.api.region)

    connection = settings.replay_connection(ctx.redis)

    def make_guard() -> ReplayGuard:
        local = LocalReplayGuard(settings.replay_cache_size)
        return local if connection is None else guard_for(connection, local)

    guard = make_guard() if settings.replay_guard else None
    return SigV4Authorizer(ctx.name, SigV4Verifier(store, options), settings.upstream_headers, guard, make_guard)
