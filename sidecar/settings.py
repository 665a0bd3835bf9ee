"""The config file's schema: one frozen pydantic model per section, and `Config`, the whole file.

A leaf: it knows nothing of loading (`config.py`), compiling (`runtime.py`) or serving. pydantic v2 was chosen
over msgspec for its error locations and discriminated models; validation runs once per load, off the hot path.
`AuthorizerSettings` is the base of each authorizer type's model; the models themselves live with their
authorizers and are validated by the registry (`authorizers/base.py`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from redis.connection import parse_url

_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")
_API_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ACCOUNT = re.compile(r"^\d{12}$")


class AuthorizerSettings(BaseModel):
    """Base of every authorizer's config model: unknown keys are errors, values are immutable. Each type's
    subclass lives with its authorizer (`authorizers/<type>/settings.py`) and registers there."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str

    names_usage_keys: ClassVar[bool] = False
    """Whether the built authorizer names its callers' API keys (a Lambda authorizer's `usageIdentifierKey`), as
    `api_keys.source: authorizer` needs of every route requiring a key or counted by a rule's `api_key` part."""

    def usage_key_gap(self) -> str | None:
        """Why these settings' authorizer never names an API key (None when it can), for the config's errors."""
        return None if self.names_usage_keys else f"{self.type}, which names no API keys"

    route_options: ClassVar[frozenset[str]] = frozenset()
    """The per-route options (keys of a `routes[]` entry) that routes naming this type may set, e.g. SigV4's
    `replay_guard`; the config refuses them on routes whose authorizer is of another type. The authorizer reads
    them in `Authorizer.for_route`."""

    def build(self, ctx: Any) -> Any:
        """The ready-to-serve `Authorizer` for these settings (`ctx`: `authorizers.base.BuildContext`). Each type
        overrides it; a plugin may instead pass its build function to `register`."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to build its authorizer")

    def watched_files(self, base_dir: Path) -> tuple[Path, ...]:
        """Files the built authorizer read at load (resolved against `base_dir`, the config file's directory) whose
        change must reload the config and invalidate cached decisions, like an edit of the config itself.

        A file the authorizer keeps fresh on its own, swapping in a new snapshot while it serves, is not listed:
        the reload would only repeat that work and empty the decision cache for nothing."""
        return ()

    def upstream_header_fields(self) -> Mapping[tuple[str | int, ...], str]:
        """Where these settings name an upstream header, and the name (lower case): the key is the location of the
        setting inside this authorizer's section, for errors that point at the line (`("claim_to_headers", "sub")`).
        """
        return {}

    def redis_connections(self) -> Mapping[tuple[str | int, ...], str]:
        """The names of `redis:` connections these settings use, by where they are named (checked at load)."""
        return {}

    def upstream_header_names(self) -> frozenset[str]:
        """Every upstream header (lower case) the built authorizer may set on an allowed request: the same set as
        the built `Authorizer.upstream_header_names()`, known before building (for checks at load)."""
        return frozenset(self.upstream_header_fields().values())


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_hostport(value: str | None) -> str | None:
    if value is None:
        return None
    match = _HOSTPORT.match(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:9191, got {value!r}")
    return value


def redis_url(value: SecretStr | None) -> SecretStr | None:
    """A Redis URL redis-py can open (`redis://`, `rediss://`, `unix://`), checked when the config is read: else
    the config validated and compiling it raised redis-py's bare ValueError (found by the config fuzzer). The
    message never repeats the URL, which may carry a password."""
    if value is None:
        return value
    url = value.get_secret_value()
    if url.partition("://")[0] not in ("redis", "rediss", "unix"):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    try:
        parse_url(url)  # type: ignore[no-untyped-call]  # redis-py's own reading: a bad host or port fails here
    except ValueError:
        raise ValueError("not a Redis URL redis-py can open (its host, port or database)") from None
    return value


_UNIX_PATH_MAX = 107
"""Bytes of a Unix socket path (sun_path holds 108 with its terminating NUL on Linux)."""
_WORKER = "{worker}"


def _check_unix(value: str, per_worker: bool) -> str:
    path = value.removeprefix("unix:")
    if not path.startswith("/"):
        raise ValueError("a Unix socket path must be absolute, e.g. unix:/run/authz-sidecar/grpc.sock")
    if "\0" in path or path.endswith("/"):
        raise ValueError("not a usable socket path (a NUL byte, or it names a directory)")
    if _WORKER in path and not per_worker:
        raise ValueError("{worker} names each worker's own socket: only in listen.grpc with grpc_per_worker: true")
    if per_worker and path.count(_WORKER) != 1:
        raise ValueError("with grpc_per_worker: true, a Unix path names each worker's socket with {worker} once")
    longest = path.replace(_WORKER, "999")
    if len(longest.encode()) > _UNIX_PATH_MAX:
        raise ValueError(f"a Unix socket path holds at most {_UNIX_PATH_MAX} bytes, this one {len(longest.encode())}")
    return value


def _socket_mode(value: object) -> object:
    """`socket_mode: 0660` (YAML reads an octal integer) or "0660"/"660" as a string."""
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise ValueError("expected an octal mode such as 0660") from None
    return value


class ListenSettings(_Frozen):
    """Where the sidecar listens. `admin` serves /metrics, /healthz and /readyz; null turns a listener off.

    `grpc` and `http` take `HOST:PORT` or a Unix domain socket, `unix:/absolute/path` (docs/configuration.md)."""

    grpc_per_worker: bool = False
    """With `serve --workers N`, instead of every worker sharing `grpc`, worker k listens on its own address: the
    TCP port + k (worker 0, and a single process, on the port itself), a Unix path with its
    `{worker}` replaced by k. Envoy then lists one endpoint per worker (deploy/envoy/: the kernel balances
    connections, not calls, and Envoy opens one connection per endpoint: docs/performance.md)."""
    socket_mode: int = Field(default=0o660, ge=0, le=0o777)
    """Permissions of the Unix socket files the sidecar creates: 0660 lets the owner and its group (Envoy's user
    joins it) connect, and nobody else; the directory should be the group's alone too."""
    grpc: str | None = "127.0.0.1:9191"
    admin: str | None = "127.0.0.1:9190"
    http: str | None = None

    _mode = field_validator("socket_mode", mode="before")(_socket_mode)

    @field_validator("grpc", "http")
    @classmethod
    def _address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.startswith("unix:"):
            if value is not None and _WORKER in value:
                raise ValueError("{worker} belongs in a Unix socket path (unix:/...); a TCP port is counted up")
            return _check_hostport(value)
        return _check_unix(value, info.field_name == "grpc" and bool(info.data.get("grpc_per_worker")))

    _admin = field_validator("admin")(_check_hostport)


class ApiSettings(_Frozen):
    """The API these routes belong to; it names resources in policies (`arn:aws:execute-api:...`)."""

    id: str = "local"
    stage: str = "prod"
    account: str = "000000000000"
    region: str = "us-east-1"

    @field_validator("id", "stage")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _API_ID.match(value):
            raise ValueError("use 1-64 letters, digits, '-' or '_'")
        return value

    @field_validator("account")
    @classmethod
    def _account(cls, value: str) -> str:
        if not _ACCOUNT.match(value):
            raise ValueError("an AWS account id is 12 digits")
        return value


class LocalCacheSettings(_Frozen):
    """The in-process decision cache."""

    enabled: bool = True
    max_entries: int = Field(default=100_000, ge=0, le=10_000_000)


class SentinelSettings(_Frozen):
    """Redis Sentinel: the master's name and the sentinels to ask for it."""

    master: str
    nodes: tuple[str, ...]

    _hostports = field_validator("nodes")(lambda cls, v: tuple(_check_hostport(n) or n for n in v))


class RedisSettings(_Frozen):
    """One Redis connection (the top-level `redis:` map names them). `url` may carry a password and `rediss://`."""

    url: SecretStr
    _url = field_validator("url")(lambda cls, v: redis_url(v))
    timeout_ms: float = Field(default=5.0, gt=0, le=1000)
    """Per-operation limit; a slower Redis counts as a failure."""
    max_connections: int = Field(default=32, ge=1, le=1024)
    cluster: bool = False
    """Use redis-py's RedisCluster client."""
    sentinel: SentinelSettings | None = None
    lean_reads: bool = True
    """Read through the sidecar's own pipelined RESP connection (`kv/resp.py`, plain `redis://` URLs only;
    several times less CPU per lookup than redis-py, docs/performance.md); false reads through redis-py."""
    breaker_threshold: int = Field(default=5, ge=1, le=1000)
    """Consecutive failures that open the circuit breaker."""
    breaker_cooldown: float = Field(default=1.0, gt=0, le=300)
    """Seconds before the first probe; doubles while Redis keeps failing (up to 30 s)."""


class RedisCacheSettings(_Frozen):
    """The shared decision cache (optional): a connection named in the top-level `redis:` map (`connection`,
    `default` when it names none), or, the short form, the connection's own keys inline (`url`, ...)."""

    connection: str | None = None
    url: SecretStr | None = None
    _url = field_validator("url")(lambda cls, v: redis_url(v))
    signing_key: SecretStr | None = None
    """HMAC key every replica shares, so entries are trusted only if a replica wrote them."""
    signing_key_file: str | None = None
    signing_key_env: str | None = None
    timeout_ms: float = Field(default=5.0, gt=0, le=1000)
    max_connections: int = Field(default=32, ge=1, le=1024)
    cluster: bool = False
    sentinel: SentinelSettings | None = None
    lean_reads: bool = True
    breaker_threshold: int = Field(default=5, ge=1, le=1000)
    breaker_cooldown: float = Field(default=1.0, gt=0, le=300)

    @model_validator(mode="after")
    def _one_form(self) -> RedisCacheSettings:
        if self.url is not None and self.connection is not None:
            raise ValueError("give either `connection` (a name in `redis:`) or `url` (the short form), not both")
        return self

    def inline(self) -> RedisSettings | None:
        """The short form's connection settings (None when the cache names a connection instead)."""
        if self.url is None:
            return None
        keys = RedisSettings.model_fields.keys()
        return RedisSettings(**{k: v for k, v in self.__dict__.items() if k in keys})


class CacheSettings(_Frozen):
    """Decision caching: `local` in front of an optional `redis`; TTLs in seconds (API Gateway: 300, max 3600)."""

    local: LocalCacheSettings = LocalCacheSettings()
    redis: RedisCacheSettings | None = None
    ttl: float = Field(default=300.0, ge=0, le=3600)
    """How long an allow is reused; 0 turns caching off."""
    deny_ttl: float = Field(default=30.0, ge=0, le=3600)
    """How long a policy or scope denial is reused; authentication failures are never cached."""


class UpstreamHeaderSettings(_Frozen):
    """Headers set on allowed requests for the upstream; each overwrites whatever the client sent. null: off."""

    principal: str | None = "x-authz-principal"
    authorizer: str | None = "x-authz-authorizer"
    route: str | None = None

    @field_validator("principal", "authorizer", "route")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else None


class DecisionLogSettings(_Frozen):
    """Structured decision logs (JSON lines). Denials are always logged; allows are sampled."""

    enabled: bool = True
    output: str = "stdout"
    """`stdout`, `stderr`, or a file path (appended to)."""
    allow_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    flush_interval: float = Field(default=0.2, gt=0, le=10)


class PolicySettings(_Frozen):
    """How policies see requests, and API-wide policy switches (docs/policies.md)."""

    private_api: bool = False
    """Like an API Gateway private API: deny unless the resource policy explicitly allows."""
    trusted_proxy_hops: int = Field(default=0, ge=0, le=10)
    """Proxies in front of Envoy that append to X-Forwarded-For; 0: aws:SourceIp is Envoy's peer address."""
    vpce_header: str | None = None
    """Header the network layer sets (and strips from clients) with the VPC endpoint id (aws:SourceVpce)."""
    vpc_header: str | None = None
    """Header with the VPC id (aws:SourceVpc)."""
    max_resource_policy_size: int = Field(default=8192, ge=256, le=1_000_000)
    """AWS limits resource policies to 8192 characters; raise it for policies generated by tools."""
    vpc_endpoint_policies: dict[str, str] = {}
    """VPC endpoint id -> IAM policy file (relative to the config file): a request through that endpoint must also
    be allowed by it; once any is set, other endpoints are denied, and so is a private API reached through none
    (docs/private-apis.md)."""

    @field_validator("vpce_header", "vpc_header")
    @classmethod
    def _lower_header(cls, value: str | None) -> str | None:
        return value.lower() if value else None

    @field_validator("vpc_endpoint_policies")
    @classmethod
    def _endpoint_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for vpce, file in value.items():
            if not _VPCE_ID.fullmatch(vpce):
                raise ValueError(f"{vpce!r} is not a VPC endpoint id (vpce- and letters or digits, e.g. vpce-0a1b2c3d)")
            if not file.strip():
                raise ValueError(f"{vpce}: name its policy file")
        return value


_VPCE_ID = re.compile(r"vpce-[0-9a-z]{1,64}")


class HttpModeSettings(_Frozen):
    """The HTTP ext_authz listener (`listen.http`): what Envoy's `http_service` (or nginx/Traefik) sends."""

    flavor: Literal["envoy", "nginx", "traefik"] = "envoy"
    path_prefix: str = ""
    """Envoy's `http_service.path_prefix`, stripped before routing (the shipped config uses `/authz`)."""
    trusted_peers: tuple[str, ...] = ("127.0.0.1", "::1")
    """Addresses/CIDRs whose x-authz-source-address / x-authz-peer-certificate headers are believed."""
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1, le=64 * 1024 * 1024)
    idle_timeout: float = Field(default=60.0, gt=0, le=3600)
    request_timeout: float = Field(default=10.0, gt=0, le=600)
    max_pipelined: int = Field(default=64, ge=1, le=10_000)
    max_connections: int = Field(default=256, ge=1, le=100_000)
    """Connections kept open at once; past it a new one is closed at once (counted, logged with throttling)."""
    max_buffered_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, le=4 * 1024 * 1024 * 1024)
    """Request bodies held by the whole listener (arriving or waiting for their decision); a body that would
    pass it is answered 503 and its connection closed."""

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and (not value.startswith("/") or value.endswith("/")):
            raise ValueError("must start with '/' and not end with '/' (e.g. /authz)")
        return value

    @field_validator("trusted_peers")
    @classmethod
    def _peers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for peer in value:
            try:
                ipaddress.ip_network(peer, strict=False)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _buffers(self) -> HttpModeSettings:
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError("max_buffered_bytes must be at least max_body_bytes")
        return self


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")
GATE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
KEY_PARTS = ("ip", "forwarded_ip", "principal", "api_key", "route", "method")
"""What a rate-based rule's `key` may combine, besides `header:NAME` (docs/limits.md)."""


def _header_name(value: str) -> str:
    value = value.lower()
    if not _HEADER_NAME.match(value):
        raise ValueError(f"not a header name: {value!r}")
    return value


def _gate_name(value: str) -> str:
    if not GATE_NAME.fullmatch(value):
        raise ValueError("use 1-64 letters, digits, '-' or '_'")
    return value


class ThrottleSettings(_Frozen):
    """API Gateway's throttle: a token bucket refilled at `rate` requests per second, holding `burst` (the most
    requests that pass back to back)."""

    rate: float = Field(ge=0.001, le=1_000_000)
    burst: int = Field(ge=1, le=1_000_000)


class QuotaSettings(_Frozen):
    """API Gateway's quota: `limit` requests per UTC calendar `period` (DAY from 00:00, WEEK from Sunday 00:00,
    MONTH from the 1st); `offset` requests are taken off the limit in the key's first period (QuotaSettings.offset)."""

    limit: int = Field(ge=1, le=10**12)
    period: Literal["DAY", "WEEK", "MONTH"]
    offset: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _offset_below_limit(self) -> QuotaSettings:
        if self.offset >= self.limit:
            raise ValueError("offset must be below limit (it is taken off the limit in the first period)")
        return self


class RouteThrottleSettings(_Frozen):
    """A usage plan's override for one route (API Gateway's per-method throttling)."""

    throttle: ThrottleSettings


class UsagePlanSettings(_Frozen):
    """One usage plan: the throttle and quota every API key of the plan gets; `routes` overrides the throttle of
    single routes, keyed by their route key (`GET /pets/{id}`), each with a bucket of its own."""

    throttle: ThrottleSettings | None = None
    quota: QuotaSettings | None = None
    routes: dict[str, RouteThrottleSettings] = {}


class ApiKeySettings(_Frozen):
    """Where API keys come from: the key file (`limits/apikeys.py`: digests only, hot-reloaded) and where a
    request's key is read, its `header` (`source: header`) or the Lambda authorizer's `usageIdentifierKey`
    (`source: authorizer`)."""

    file: str
    source: Literal["header", "authorizer"] = "header"
    header: str = "x-api-key"

    _header = field_validator("header")(lambda cls, v: _header_name(v))


class ForwardedIpSettings(_Frozen):
    """WAF's forwarded IP configuration for the `forwarded_ip` key: the address `trusted_hops` entries left of
    the peer in `header` (0: the peer Envoy saw, so a client's own entries never count); `fallback` when the
    header has no valid address there: `MATCH` counts the request under one shared key, `NO_MATCH` skips it.
    A header other than `x-forwarded-for` (which Envoy extends with the peer) needs `trusted_hops` of at least
    1: its last entry is what the nearest trusted proxy wrote, and with 0 the rule would read the peer and
    ignore the header, or (as it once did) read an entry any client can write."""

    header: str = "x-forwarded-for"
    trusted_hops: int = Field(default=0, ge=0, le=10)
    fallback: Literal["MATCH", "NO_MATCH"] = "MATCH"

    _header = field_validator("header")(lambda cls, v: _header_name(v))

    @model_validator(mode="after")
    def _hops_for_another_header(self) -> ForwardedIpSettings:
        if self.header != "x-forwarded-for" and self.trusted_hops < 1:
            raise ValueError(
                f"trusted_hops must be at least 1 with header {self.header!r}: the proxies in front of Envoy that"
                " write it (its last entry is the nearest one's); with 0 a client could write the counted address"
            )
        return self


class RateLimitSettings(_Frozen):
    """One AWS WAF rate-based rule: at most `limit` requests per trailing `window` seconds for each value of
    `key` (a combination of `KEY_PARTS` and `header:NAME`); over it, `block` answers `status`, `count` only
    counts. `routes` (route keys) and `methods` narrow its scope; empty: every request."""

    name: str
    key: tuple[str, ...] = Field(min_length=1, max_length=5)
    window: Literal[60, 120, 300, 600] = 300
    limit: int = Field(ge=10, le=2_000_000_000)
    action: Literal["block", "count"] = "block"
    status: int = Field(default=403, ge=400, le=599)
    routes: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    forwarded_ip: ForwardedIpSettings = ForwardedIpSettings()

    _name = field_validator("name")(lambda cls, v: _gate_name(v))

    @field_validator("key")
    @classmethod
    def _key(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for part in value:
            if part.lower().startswith("header:"):
                out.append("header:" + _header_name(part.split(":", 1)[1]))
            elif part in KEY_PARTS:
                out.append(part)
            else:
                raise ValueError(f"unknown key part {part!r}: use {', '.join(KEY_PARTS)} or header:NAME")
        if len(set(out)) != len(out):
            raise ValueError("a key part is repeated")
        return tuple(out)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(m.upper() for m in value)
        for method in out:
            if method in ("HEAD", "ANY"):
                hint = "HEAD is judged as GET: name GET" if method == "HEAD" else "leave methods out for all of them"
                raise ValueError(f"{method} cannot be a rule's method ({hint})")
            if not _METHOD.fullmatch(method):
                raise ValueError(f"not an HTTP method: {method!r}")
        return out


MTLS_SECTION = "mtls"
"""The top-level section of `MtlsSettings` (also the `type` of the mtls authorizer, which the spine never names)."""


class MtlsSettings(_Frozen):
    """Client certificates (docs/mtls.md): the CA bundle they must chain to (`truststore`, PEM, hot-reloaded),
    CRLs (`crls`, PEM or DER, hot-reloaded), where a request's certificate is read (`sources`, in order: Envoy's
    `source.certificate`, the `x-forwarded-client-cert` header, RFC 9440 `Client-Cert`; headers only from trusted
    peers) and which field names the caller (`principal`). `max_chain_depth` counts the certificates above the
    client's (API Gateway: 4); `stale_crl` says what a CRL past its nextUpdate does (`deny`: every certificate
    it covers is refused until a fresh one is loaded; `allow`: it is still used)."""

    truststore: str
    crls: tuple[str, ...] = ()
    sources: tuple[Literal["envoy", "xfcc", "client-cert-header"], ...] = Field(default=("envoy",), min_length=1)
    principal: Literal["san.uri", "san.dns", "san.email", "subject.cn"] = "san.uri"
    max_chain_depth: int = Field(default=4, ge=1, le=10)
    stale_crl: Literal["deny", "allow"] = "deny"
    trusted_peers: tuple[str, ...] | None = None
    """The proxies whose certificate headers (xfcc, client-cert-header) are believed; None: nobody's (not
    `http.trusted_peers`: who may ask the sidecar is often a whole network, and a client inside it must not write
    its own certificate). In gRPC mode XFCC comes from Envoy, which must set it itself (`SANITIZE_SET`)."""
    verify_cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
    """Verified chains remembered by the certificate's SHA-256, so a warm Check does no cryptography."""

    @field_validator("trusted_peers")
    @classmethod
    def _peers(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for peer in value or ():
            try:
                ipaddress.ip_network(peer, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an address or CIDR: {peer!r}") from exc
        return value


class LimitSettings(_Frozen):
    """How usage plans and rate-based rules count: in Redis (`connection`, a name in `redis:`; used when that
    name is defined, else every gate counts in process, exact for one replica only), what to do when Redis fails
    (`on_redis_error`: `local` counts in process meanwhile, `allow` admits, `deny` refuses; API Gateway fails
    open) and whether metrics carry API key ids as labels (off: bounded cardinality)."""

    connection: str = "default"
    on_redis_error: Literal["local", "allow", "deny"] = "local"
    key_id_labels: bool = False
    timeout_ms: int = Field(default=50, ge=1, le=10_000)
    """How long a gate waits for Redis before `on_redis_error` decides. Longer than the decision cache's (a
    count that times out may still land in Redis: the request is then counted twice, or refused and counted)."""
    key_secret: SecretStr | None = None
    """The HMAC-SHA256 key a rate rule's aggregation key is made with (its parts may be a credential header or an
    API key value: an unkeyed digest of them in Redis could be guessed back). At least 16 bytes; one of
    `key_secret`, `key_secret_file`, `key_secret_env`. None of them: derived from `cache.redis`'s signing key when
    that is configured, else a random per-process secret, which only counting in process may use (every replica
    sharing Redis must make the same keys). docs/limits.md#rate-based-rules."""
    key_secret_file: str | None = None
    key_secret_env: str | None = None

    @field_validator("key_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_KEY_SECRET:
            raise ValueError(f"must be at least {MIN_KEY_SECRET} bytes")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> LimitSettings:
        given = [self.key_secret is not None, self.key_secret_file is not None, self.key_secret_env is not None]
        if sum(given) > 1:
            raise ValueError("give one of key_secret, key_secret_file and key_secret_env")
        return self


MIN_KEY_SECRET = 16
"""Bytes a rate rule's key secret has at least: a short one could be searched for from a digest."""


class RouteSettings(_Frozen):
    """One route: `match` is `METHOD /path/{param}/{proxy+}` (API Gateway's syntax) or `$default`."""

    match: str
    authorizer: str
    scopes: tuple[str, ...] = ()
    cache_ttl: float | None = Field(default=None, ge=0, le=3600)
    """Overrides `cache.ttl` for this route (0: never cache its decisions)."""
    replay_guard: bool | None = None
    """`sigv4` routes only: deny a signature already used while it is still valid. Null: the authorizer's own
    `replay_guard` setting decides, so the guard can be on for the routes that move money and off elsewhere."""
    api_key_required: bool = False
    """Require a valid API key (`api_keys:`) after the authorizer allows, and meter it by its usage plan."""
    require_client_cert: bool = False
    """Require a verified client certificate (`mtls:`) before the route's own authorizer runs (mTLS and JWT)."""


_Gen0 = Annotated[int, Field(ge=100)]
_GenN = Annotated[int, Field(ge=1)]


class ServerSettings(_Frozen):
    """Process behaviour."""

    grace_period: float = Field(default=10.0, ge=0, le=300)
    """Seconds in-flight Checks get to finish after SIGTERM."""
    drain_delay: float = Field(default=0.0, ge=0, le=300)
    """Seconds after SIGTERM during which the sidecar keeps accepting and deciding Checks while its health says
    NOT_SERVING, before it stops accepting. Envoy's health check needs that long to take its endpoints out (the
    shipped one: every 1 s, 0.5 s timeout); without it Envoy keeps sending until then and gets refused
    connections (503s), even with another instance listed and healthy (measured by `benchmarks/soak.py`)."""
    watch_config: bool = True
    """Reload when the config file changes (SIGHUP always reloads)."""
    watch_interval: float = Field(default=2.0, gt=0, le=60)
    grpc_engine: Literal["lean", "grpcio"] = "lean"
    """What serves `listen.grpc`: `lean` (`sidecar/transports/grpc_lean/`: unary gRPC over h2c on the asyncio
    loop, several times less CPU per Check (docs/performance.md), no reflection) or `grpcio` (grpc.aio, with
    server reflection)."""
    gc_freeze: bool = True
    """After start-up and each reload, collect once and `gc.freeze()` what is alive, so full collections stop
    walking the imports and the compiled runtime (they stalled the loop; see `sidecar/serve/heap.py`)."""
    gc_threshold: tuple[_Gen0, _GenN, _GenN] | None = None
    """`gc.set_threshold` values; null (the default) keeps Python's (700, 10, 10). Measured under load with the
    freeze on, a much larger first generation made young collections rarer but each one slower (the young
    objects no longer fit in cache), and the total collector time went up (docs/performance.md)."""
    grpc_max_connections: int = Field(default=256, ge=1, le=65_536)
    """Lean engine: connections `listen.grpc` keeps open at once; one more is sent GOAWAY(ENHANCE_YOUR_CALM) and
    closed at once (counted, one warning per 10 s). Envoy opens one per worker thread, more past 1,000 streams."""
    grpc_max_parked_bytes: int = Field(default=32 * 1024 * 1024, ge=1024 * 1024, le=1024 * 1024 * 1024)
    """Lean engine: request bytes all connections together may hold for Checks still arriving (a Check that
    arrives in one 16 KiB DATA frame holds none). A Check that would pass it fails with RESOURCE_EXHAUSTED (Envoy
    applies its ext_authz failure mode to that Check alone) and its bytes are released."""
    grpc_max_connection_parked_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    """Lean engine: the same bound for one connection, so a single peer cannot take the whole budget."""
    grpc_stream_window: int = Field(default=256 * 1024, ge=65_535, le=16 * 1024 * 1024)
    """Lean engine: the HTTP/2 receive window of each call (refilled as its bytes arrive): what a peer may send on
    a call before we read it. The default takes a Check with Envoy's 64 KiB body limit and its headers whole."""
    grpc_connection_window: int = Field(default=1024 * 1024, ge=65_535, le=64 * 1024 * 1024)
    """Lean engine: the HTTP/2 receive window of each connection (topped up once half is used)."""
    grpc_preface_timeout: float = Field(default=5.0, gt=0, le=300)
    """Lean engine: seconds a new connection has to send the HTTP/2 preface before it is closed."""
    grpc_idle_timeout: float = Field(default=60.0, gt=0, le=3600)
    """Lean engine: seconds a connection may have no call open before a graceful GOAWAY closes it."""
    grpc_request_timeout: float = Field(default=10.0, gt=0, le=600)
    """Lean engine: seconds a Check's request may take to arrive whole; then it fails with DEADLINE_EXCEEDED and
    its stream is reset. (Envoy's own ext_authz timeout, 0.5 s in the shipped config, is far shorter.)"""


class Config(_Frozen):
    """A whole config file, validated. `source` is where it came from (for error messages and relative paths)."""

    listen: ListenSettings = ListenSettings()
    api: ApiSettings = ApiSettings()
    cache: CacheSettings = CacheSettings()
    server: ServerSettings = ServerSettings()
    upstream_headers: UpstreamHeaderSettings = UpstreamHeaderSettings()
    decision_log: DecisionLogSettings = DecisionLogSettings()
    policy: PolicySettings = PolicySettings()
    http: HttpModeSettings = HttpModeSettings()
    redis: dict[str, RedisSettings] = {}
    """Named Redis connections that the decision cache, the SigV4 replay guard and the gates (`limits`) name;
    each uses `default` when it names none."""
    api_keys: ApiKeySettings | None = None
    usage_plans: dict[str, UsagePlanSettings] = {}
    rate_limits: tuple[RateLimitSettings, ...] = ()
    limits: LimitSettings = LimitSettings()
    mtls: MtlsSettings | None = None
    plugins: tuple[str, ...] = ()
    """Python modules imported before validation; each may `register` its own authorizer types."""
    authorizers: dict[str, AuthorizerSettings] = {}
    resource_policy: str | None = None
    routes: tuple[RouteSettings, ...] = ()
    source: str = Field(default="<memory>", exclude=True)

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in this config resolve against."""
        return Path(self.source).resolve().parent if not self.source.startswith("<") else Path.cwd()
