"""The config of `type: jwt` and `type: cognito` (see docs/jwt.md), and how each is built into its authorizer.

Validated once at load with file/line errors like the rest of the config; `build_jwt` / `build_cognito` compile
the settings into a ready-to-serve authorizer (a `jwks_file` is read then, a `jwks_uri` on start).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ..base import Authorizer, AuthorizerSettings, BuildContext
from ..sources import IdentitySource
from .authorizer import CognitoAuthorizer, JwtAuthorizer
from .claims import ClaimRules
from .jwks import CachePolicy, KeySource, StaticKeySource, check_key_url, shared_cache
from .keys import SUPPORTED_ALGORITHMS

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


DEFAULT_ALGORITHMS = (
    *("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"),
    *("EdDSA", "Ed25519", "Ed448"),
)


def _no_credentials(url: str | None) -> str | None:
    """Refuse a key URL with `user:password@` before any other check can quote it in an error."""
    try:
        parts = urlsplit(url) if url else None
    except ValueError:
        return url  # not a URL: the URL check says so
    if parts is not None and (parts.username or parts.password):
        raise ValueError("must not carry credentials (user:password@): the keys are public")
    return url


class TokenSettings(AuthorizerSettings):
    """Keys shared by `jwt` and `cognito` (see docs/jwt.md)."""

    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    identity_source: tuple[str, ...] = ("header.authorization",)
    """Where to look for the token, in order: `header.NAME`, `query.NAME`, `cookie.NAME` (one string or a list)."""
    leeway: float = Field(default=60.0, ge=0, le=600)
    """Seconds of clock skew tolerated on exp, nbf and iat."""
    claim_to_headers: dict[str, str] = {}
    """Claim name -> upstream header name. A header whose claim is absent is sent empty, so a client cannot
    supply it."""
    jwks_uri: str | None = None
    jwks_file: str | None = None
    """A local JWKS file instead of fetching keys (relative to the config file)."""
    allow_http: bool = False
    """Accept plain-http key URLs to non-loopback hosts (keys could be replaced in transit)."""
    max_token_bytes: int = Field(default=16384, ge=256, le=65536)
    token_cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
    """Verified tokens remembered (0 turns the cache off)."""
    jwks_refresh_min: float = Field(default=60.0, ge=1, le=86400)
    jwks_refresh_max: float = Field(default=3600.0, ge=1, le=7 * 86400)
    jwks_max_staleness: float = Field(default=21600.0, ge=0, le=30 * 86400)
    jwks_unknown_kid_interval: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("jwks_uri")
    @classmethod
    def _key_url(cls, value: str | None) -> str | None:
        return _no_credentials(value)

    @field_validator("identity_source", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("identity_source")
    @classmethod
    def _sources(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one identity source is required")
        for text in value:
            IdentitySource.parse(text)
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one algorithm is required")
        for alg in value:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                raise ValueError(f"{alg} is never accepted: only asymmetric signatures are verified")
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"unsupported algorithm {alg!r} (supported: {', '.join(DEFAULT_ALGORITHMS)})")
        return value

    @field_validator("claim_to_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        out = {}
        for claim, header in value.items():
            name = header.strip().lower()
            if not _HEADER_NAME.match(name) or name in ("host", "authorization", "cookie", "content-length"):
                raise ValueError(f"claim {claim!r}: {header!r} is not a header name that may be set")
            out[claim] = name
        return out

    @model_validator(mode="after")
    def _bounds(self) -> TokenSettings:
        if self.jwks_refresh_min > self.jwks_refresh_max:
            raise ValueError("jwks_refresh_min must not exceed jwks_refresh_max")
        if self.jwks_uri and self.jwks_file:
            raise ValueError("set jwks_uri or jwks_file, not both")
        if self.jwks_uri:
            check_key_url(self.jwks_uri, self.allow_http)
        return self

    def jwks_path(self, base_dir: Path) -> Path | None:
        """`jwks_file` resolved against the config file's directory (None when keys are fetched)."""
        if self.jwks_file is None:
            return None
        path = Path(self.jwks_file)
        return path if path.is_absolute() else base_dir / path

    def watched_files(self, base_dir: Path) -> tuple[Path, ...]:
        """The `jwks_file`, read once at build: a new key set in it takes a reload (fetched keys refresh on their
        own)."""
        path = self.jwks_path(base_dir)
        return () if path is None else (path,)

    def upstream_header_fields(self) -> dict[tuple[str | int, ...], str]:
        return {("claim_to_headers", claim): header for claim, header in self.claim_to_headers.items()}

    def cache_policy(self) -> CachePolicy:
        """The JWKS cache bounds these settings ask for."""
        return CachePolicy(
            refresh_min=self.jwks_refresh_min,
            refresh_max=self.jwks_refresh_max,
            max_staleness=self.jwks_max_staleness,
            unknown_kid_interval=self.jwks_unknown_kid_interval,
        )


class JwtSettings(TokenSettings):
    """`type: jwt`: any OIDC / OAuth 2 issuer."""

    type: Literal["jwt"]

    issuer: str = Field(min_length=1)
    """Exactly the `iss` the tokens carry; also where keys are discovered when no jwks_uri/jwks_file is set."""
    audiences: tuple[str, ...] = Field(min_length=1)
    """A token passes when any `aud` value, or else its `client_id`, is listed."""

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        _no_credentials(value)
        return value

    @model_validator(mode="after")
    def _discovery(self) -> JwtSettings:
        if not self.jwks_uri and not self.jwks_file:
            check_key_url(self.issuer, self.allow_http)
        return self

    def build(self, ctx: BuildContext) -> Authorizer:
        return build_jwt(self, ctx)


_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_POOL = re.compile(r"^[\w-]+_[0-9a-zA-Z]+$")


class CognitoSettings(TokenSettings):
    """`type: cognito`: an Amazon Cognito user pool."""

    type: Literal["cognito"]

    region: str
    user_pool_id: str
    client_ids: tuple[str, ...] = Field(min_length=1)
    token_use: tuple[Literal["access", "id"], ...] = ("access",)
    algorithms: tuple[str, ...] = ("RS256",)

    @field_validator("token_use", mode="before")
    @classmethod
    def _one_or_many_uses(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.match(value):
            raise ValueError(f"{value!r} is not an AWS region name")
        return value

    @field_validator("user_pool_id")
    @classmethod
    def _pool(cls, value: str) -> str:
        if not _POOL.match(value):
            raise ValueError(f"{value!r} is not a user pool id (like us-east-1_AbC123)")
        return value

    @property
    def issuer(self) -> str:
        """Cognito's issuer for this pool."""
        return f"https://cognito-idp.{self.region}.amazonaws.com/{self.user_pool_id}"

    def build(self, ctx: BuildContext) -> Authorizer:
        return build_cognito(self, ctx)


# -- building -----------------------------------------------------------------------------------------------


def _key_source(settings: TokenSettings, issuer: str, default_uri: str | None, ctx: BuildContext) -> KeySource:
    path = settings.jwks_path(ctx.base_dir)
    if settings.jwks_file and path is not None:
        return StaticKeySource.from_file(str(path), ctx.name)
    uri = settings.jwks_uri or default_uri
    return shared_cache(
        jwks_uri=uri,
        issuer=issuer,
        policy=settings.cache_policy(),
        allow_http=settings.allow_http,
        clock=ctx.clock,
        name=ctx.name,
    )


def _common(settings: TokenSettings, ctx: BuildContext) -> dict[str, Any]:
    return {
        "clock": ctx.clock,
        "algorithms": frozenset(settings.algorithms),
        "sources": tuple(IdentitySource.parse(s) for s in settings.identity_source),
        "claim_to_headers": dict(settings.claim_to_headers),
        "max_token_bytes": settings.max_token_bytes,
        "cache_size": settings.token_cache_size,
    }


def build_jwt(settings: Any, ctx: BuildContext) -> Authorizer:
    """Build a `jwt` authorizer (loading a static JWKS file now, if one is configured)."""
    assert isinstance(settings, JwtSettings)
    rules = ClaimRules(issuer=settings.issuer, audiences=frozenset(settings.audiences), leeway=settings.leeway)
    keys = _key_source(settings, settings.issuer, None, ctx)
    path = settings.jwks_path(ctx.base_dir)
    where = (settings.jwks_uri, str(path) if path is not None else None)
    return JwtAuthorizer(ctx.name, rules=rules, keys=keys, keys_at=where, **_common(settings, ctx))


def build_cognito(settings: Any, ctx: BuildContext) -> Authorizer:
    """Build a `cognito` authorizer; keys default to the pool's `/.well-known/jwks.json`."""
    assert isinstance(settings, CognitoSettings)
    issuer = settings.issuer
    rules = ClaimRules(
        issuer=issuer,
        audiences=frozenset(settings.client_ids),
        leeway=settings.leeway,
        token_uses=frozenset(settings.token_use),
    )
    keys = _key_source(settings, issuer, issuer + "/.well-known/jwks.json", ctx)
    return CognitoAuthorizer(ctx.name, rules=rules, keys=keys, **_common(settings, ctx))
