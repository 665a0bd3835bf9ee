"""The config of `type: lambda` (docs/custom-authorizers.md), and how it is built into a `LambdaAuthorizer`.

Validated once at load with file/line errors like the rest of the config. A `handler` is imported here, in its
validator, so a missing module or attribute is reported at the line of `handler:`; a `target` builds the remote
invoker (`remote.py`, imported only then).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..base import Authorizer, AuthorizerSettings, BuildContext
from .authorizer import LambdaAuthorizer, ResultCache
from .context import ContextTemplate
from .events import EventFormat, EventSpec
from .identity import IdentitySource, IdentitySources
from .invoke import Invoker, local_invoker, resolve_handler
from .responses import ResponseReader

__all__ = ["BreakerSettings", "LambdaSettings"]

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")
_REQUEST_HEADERS = frozenset({"host", "authorization", "cookie", "content-length"})
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
_IDENTITY_HEADERS = frozenset({"x-authz-principal", "x-authz-authorizer", "x-authz-route"})
"""The sidecar's identity headers by their usual names (`upstream_headers`' defaults, and `x-authz-route`): reserved
whatever this config calls them; the names it does configure are checked with the whole config (`config.py`)."""
_STAGE_VARIABLE = re.compile(r"^[A-Za-z0-9_]+$")
_TARGET = re.compile(r"^grpc://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_TOKEN_SOURCE = "method.request.header.Authorization"


def _reserved(name: str) -> str | None:
    """Why a (lower-cased) header name may not carry a context value, or None: one the upstream reads as the
    sidecar's word on the caller, one a proxy consumes or rewrites, or one that is the request's own."""
    if name in _IDENTITY_HEADERS:
        return "the sidecar's own identity header"
    if name in _HOP_BY_HOP or name.startswith("proxy-"):
        return "a hop-by-hop header"
    if name.startswith(":"):
        return "a pseudo-header"
    if name.startswith("x-envoy-"):
        return "one of Envoy's own headers"
    if name in _REQUEST_HEADERS:
        return "the request's own header"
    return None


class BreakerSettings(BaseModel):
    """The remote target's circuit breaker: after `threshold` consecutive failures, calls fail at once (500) for
    `cooldown` seconds before one is let through to probe."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    threshold: int = Field(default=5, ge=1, le=1000)
    cooldown: float = Field(default=1.0, gt=0, le=300)


class LambdaSettings(AuthorizerSettings):
    """`type: lambda`: a handler written for API Gateway's Lambda authorizers, in process or behind a target."""

    names_usage_keys: ClassVar[bool] = True  # its responses' usageIdentifierKey (`api_keys.source: authorizer`)

    def usage_key_gap(self) -> str | None:
        if self.simple_responses:  # {"isAuthorized": ...} (HTTP APIs, which have no usage plans) carries no key
            return "lambda with simple_responses, whose answers carry no usageIdentifierKey"
        return None

    type: Literal["lambda"]
    handler: str | None = None
    """`package.module:function`, imported once per config load."""
    target: str | None = None
    """`grpc://host:port`: a remote service speaking `proto/` (e.g. `authz-sidecar lambda-serve`)."""
    event_format: EventFormat = "request"
    identity_sources: tuple[str, ...] | None = None
    """API Gateway's syntax; `token` takes exactly one header (default `method.request.header.Authorization`)."""
    token_validation: str | None = None
    """`token` only: a regex the whole token must match, else 401 without a call (identityValidationExpression)."""
    simple_responses: bool = False
    """`http-2.0` only: the handler answers `{isAuthorized, context}`."""
    result_ttl: float = Field(default=300.0, ge=0, le=3600)
    """Seconds a result is reused (0: call the handler for every request)."""
    cache_key: Literal["identity", "identity+route"] = "identity+route"
    result_cache_size: int = Field(default=10_000, ge=1, le=1_000_000)
    """Results remembered in process (least recently used first out)."""
    stage_variables: dict[str, str] = {}
    context_to_headers: dict[str, str] = {}
    """Context key -> upstream header (`$context.authorizer.KEY`). A key the handler leaves out sends no header,
    and a client's copy of it is removed."""
    timeout: float = Field(default=1.0, gt=0, le=30)
    """Seconds per call; keep it below Envoy's ext_authz timeout, so a slow handler is our 500, not Envoy's error."""
    max_concurrency: int = Field(default=16, ge=1, le=1024)
    """Calls at once: the thread pool of a sync handler, the requests in flight to a target."""
    max_response_bytes: int = Field(default=8192, ge=256, le=1024 * 1024)
    function_name: str | None = None
    """The context object's `function_name` (default: the authorizer's name)."""
    breaker: BreakerSettings = BreakerSettings()

    @field_validator("handler")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is not None:
            resolve_handler(value)  # HandlerImportError is a ValueError: reported at this line
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            if info.data.get("handler") is not None:
                raise ValueError("set handler (in process) or target (remote), not both")
            match = _TARGET.match(value)
            if not match or not 0 < int(match.group(2)) < 65536:
                raise ValueError("expected grpc://HOST:PORT, e.g. grpc://127.0.0.1:9300")
        return value

    @field_validator("identity_sources", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """One string may list several sources comma-separated, as API Gateway's `identitySource` does."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("identity_sources")
    @classmethod
    def _sources(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        parsed = [IdentitySource.parse(text) for text in value or ()]
        if info.data.get("event_format") == "token" and (len(parsed) != 1 or parsed[0].where != "header"):
            raise ValueError("event_format: token takes exactly one identity source, a header")
        return value

    @field_validator("token_validation")
    @classmethod
    def _regex(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            if info.data.get("event_format", "token") != "token":
                raise ValueError("applies to event_format: token only")
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("simple_responses")
    @classmethod
    def _simple(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("event_format", "http-2.0") != "http-2.0":
            raise ValueError("needs event_format: http-2.0 (API Gateway offers simple responses only there)")
        return value

    @field_validator("stage_variables")
    @classmethod
    def _stage_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _STAGE_VARIABLE.match(name):
                raise ValueError(f"stage variable {name!r}: use letters, digits and '_'")
        return value

    @field_validator("context_to_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        out = {}
        for key, header in value.items():
            name = header.strip().lower()
            reserved = _reserved(name)
            if reserved is not None:
                raise ValueError(f"context key {key!r}: {header!r} is {reserved}, not a header a handler may set")
            if not _HEADER_NAME.match(name):
                raise ValueError(f"context key {key!r}: {header!r} is not a header name that may be set")
            out[key] = name
        return out

    @field_validator("function_name")
    @classmethod
    def _function_name(cls, value: str | None) -> str | None:
        if value is not None and not _FUNCTION_NAME.match(value):
            raise ValueError("a function name is 1-64 letters, digits, '-' or '_'")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> LambdaSettings:
        if self.handler is None and self.target is None:
            raise ValueError("set handler (package.module:function, in process) or target (grpc://host:port)")
        return self

    def sources(self) -> tuple[IdentitySource, ...]:
        """The identity sources, parsed (the default for `token`: the Authorization header)."""
        texts = self.identity_sources
        if texts is None:
            texts = (DEFAULT_TOKEN_SOURCE,) if self.event_format == "token" else ()
        return tuple(IdentitySource.parse(text) for text in texts)

    def upstream_header_fields(self) -> dict[tuple[str | int, ...], str]:
        return {("context_to_headers", key): header for key, header in self.context_to_headers.items()}

    def version(self, ctx: BuildContext) -> str:
        """What keys this authorizer's results: a changed setting or API never reuses a result of the old one."""
        text = self.model_dump_json() + ctx.api.model_dump_json()
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def invoker(self, ctx: BuildContext) -> Invoker:
        """The in-process invoker for `handler`, or the remote one for `target`."""
        if self.target is not None:
            from .remote import remote_invoker  # only configs that name a target load the gRPC client

            return remote_invoker(self, ctx)
        assert self.handler is not None
        return local_invoker(self.handler, self.max_concurrency)

    def result_cache(self, ctx: BuildContext) -> ResultCache:
        """The in-process result cache, in front of the config's shared Redis when it has one (`cache.redis`)."""
        return ResultCache(self.result_ttl, self.result_cache_size, ctx.clock, store=ctx.blob_store, namespace=ctx.name)

    def build(self, ctx: BuildContext) -> Authorizer:
        sources = self.sources()
        caching = self.result_ttl > 0 and bool(sources)  # API Gateway: no identity source, no cache
        function = self.function_name or ctx.name
        return LambdaAuthorizer(
            ctx.name,
            invoker=self.invoker(ctx),
            sources=IdentitySources(sources, dict(self.stage_variables), self.event_format == "http-2.0"),
            events=EventSpec(self.event_format, ctx.api, dict(self.stage_variables), ctx.context_settings),
            reader=ResponseReader(ctx.name, ctx.api, self.max_response_bytes, self.simple_responses),
            contexts=ContextTemplate.for_function(function, ctx.api.region, ctx.api.account),
            timeout=self.timeout,
            clock=ctx.clock,
            version=self.version(ctx),
            cache=self.result_cache(ctx) if caching else None,
            cache_by_route=self.cache_key == "identity+route",
            token_pattern=re.compile(self.token_validation) if self.token_validation is not None else None,
            context_headers=self.context_to_headers,
        )
