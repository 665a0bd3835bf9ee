"""The per-request evaluation context: the resource ARN up front, every condition key computed only when read.

Building an `EvalContext` costs one f-string (the resource ARN). Condition keys (`aws:SourceIp`,
`aws:CurrentTime`, `jwt:sub`, `request:header/x-foo`, ...) are resolved the first time a statement reads them and
memoized for the rest of the request, so a policy that only looks at `aws:SourceIp` never formats a timestamp.
Key names are case-insensitive, as in IAM; callers pass them lower-cased (the compiler does).

Values are `str`, a tuple of `str` for multi-valued keys (`jwt:scope`, `cognito:groups`), or None when absent.
Request-derived keys (source IP, time, transport, headers) can never be overridden by an authorizer's
`Principal.context`: an identity must not be able to claim a network location. `aws:` keys come from the sidecar
alone: a token claim never supplies one, and `Principal.context` only the principal's own identity keys
(`AUTHORIZER_AWS_KEYS`, what SigV4 sets), as in API Gateway, where no authorizer output becomes an `aws:` key.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from time import time as _now
from typing import TYPE_CHECKING, Any

from ..request import judged_method
from ..routes import canonical_path
from .arn import resource_arn

if TYPE_CHECKING:
    from ..request import Principal, Request
    from ..settings import ApiSettings

Value = str | tuple[str, ...] | None
INVOKE = "execute-api:invoke"
HEADER_PREFIX = "request:header/"
JWT_PREFIX = "jwt:"
AWS_PREFIX = "aws:"
_UNSET: Any = object()
_MAPPED_V4 = 0xFFFF  # ::ffff:a.b.c.d


@dataclass(frozen=True, slots=True)
class ContextSettings:
    """Knobs from the config that shape context keys.

    `trusted_proxy_hops`: how many trusted proxies (load balancers) stand in front of the proxy that asks the
    sidecar (Envoy, nginx), each appending to `X-Forwarded-For`; 0 means `aws:SourceIp` is that proxy's peer
    address (see `client_address`). `http_proxy_appends`: whether the proxy in front of the HTTP listener appends
    its own entry to `X-Forwarded-For` before it asks, as Envoy (`use_remote_address: true`) and Traefik do; the
    shipped nginx config passes the client's header untouched. False is the safe default: mistaken, it makes
    `aws:SourceIp` a proxy's address, never one a client wrote. gRPC Checks always come from Envoy, which appends.
    `vpce_header` / `vpc_header`: HTTP mode's headers carrying the VPC endpoint / VPC id, set by the trusted proxy
    that asks (which strips a client's copy); believed only from `http.trusted_peers` (`Request.trusted_peer`),
    never in gRPC mode, where Envoy's word is `Request.origin` (see `origin_value`).
    """

    trusted_proxy_hops: int = 0
    vpce_header: str | None = None
    vpc_header: str | None = None
    http_proxy_appends: bool = False


DEFAULT_SETTINGS = ContextSettings()


def normalize(value: Any) -> Value:
    """A claim or context value as a policy value: strings stay, bools become `true`/`false`, lists tuples."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = tuple(v for v in (normalize(x) for x in value) if isinstance(v, str))
        return items
    return None


def parse_ip(text: str) -> tuple[int, int] | None:
    """`(version, integer)` for an IP address (IPv4-mapped IPv6 folds to IPv4); None if unparseable.

    `inet_pton` first: it is much faster than `ipaddress` and just as strict (no leading zeros); only
    scoped IPv6 addresses (`fe80::1%eth0`) need the slow path.
    """
    text = text.strip()
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):  # ValueError: an embedded NUL
        pass
    try:
        number = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        try:
            number = int(ipaddress.IPv6Address(text))
        except ValueError:
            return None
    if number >> 32 == _MAPPED_V4:
        return 4, number & 0xFFFFFFFF
    return 6, number


def parse_date(text: str) -> float | None:
    """Epoch seconds for an ISO 8601 date/time or an epoch-seconds string; None if neither."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def decode_binary(text: str) -> bytes | None:
    """Base64 text as bytes, None if it is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


_ENVOY_OWN_ENTRY_PEERS = frozenset({(4, 0x7F000001), (6, 1)})
"""Peers for which Envoy (`use_remote_address: true`) appends its host's own address to `X-Forwarded-For` instead
of the peer's: 127.0.0.1 and ::1 exactly (seen with Envoy 1.40: a 127.0.0.1 peer was appended as the host's
192.0.2.2, a 127.0.0.5 peer as itself)."""


def client_address(request: Request, settings: ContextSettings, header: str = "x-forwarded-for") -> str:
    """The raw client address: the asking proxy's peer, or with N trusted hops the address the outermost of
    them saw (`header`: the chain's header, WAF's forwarded IP config may name another).

    The chain is the `X-Forwarded-For` the asking proxy received, then that proxy's own peer
    (`request.source_address`: the last trusted hop). Each trusted proxy appended the address it received the
    request from, so the client is the entry N places left of the peer; entries further left were written by the
    client and are ignored. When the asking proxy appends an entry of its own (Envoy always does, behind the
    shipped config), that entry is dropped first: it is the peer (or, for a 127.0.0.1 / ::1 peer, Envoy's own
    address), already in the chain. A chain shorter than N + 1 gives its leftmost entry.
    """
    peer = request.source_address.strip()
    hops = settings.trusted_proxy_hops
    if hops <= 0:
        return peer
    chain = [p for p in (p.strip() for p in request.headers.get(header, "").split(",")) if p]
    # Only the gRPC adapter fills `protocol` (from Envoy's CheckRequest); HTTP-mode requests leave it empty.
    appends = bool(request.protocol) or settings.http_proxy_appends
    if appends and chain and _asking_proxy_entry(chain[-1], peer):
        chain.pop()
    if peer:
        chain.append(peer)
    if not chain:
        return ""
    return chain[-hops - 1] if len(chain) > hops else chain[0]


def _asking_proxy_entry(entry: str, peer: str) -> bool:
    """Whether the last `X-Forwarded-For` entry is the one the asking proxy appended for `peer`."""
    address = parse_ip(peer)
    return address is not None and (address in _ENVOY_OWN_ENTRY_PEERS or parse_ip(entry) == address)


def _source_ip(ctx: EvalContext) -> str | None:
    """`aws:SourceIp`, validated (None if not an address); IPv4-mapped IPv6 is shown as IPv4."""
    source = client_address(ctx.request, ctx.settings)
    parsed = ctx.ip(source) if source else None
    if parsed is None:
        return None
    if parsed[0] == 4 and ":" in source:
        source = socket.inet_ntop(socket.AF_INET, parsed[1].to_bytes(4, "big"))
        ctx.ip(source)
    return source


_ORIGIN_ID = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,128}").fullmatch
"""An origin value: 1-128 visible ASCII characters and no `,` (AWS's ids are `vpce-` / `vpc-` and hex digits; a
comma means two headers were joined)."""


def is_origin_id(value: str) -> bool:
    """Whether `value` can name a VPC endpoint or VPC; anything else (a TLV of another subtype, control
    characters, joined headers) is no origin at all, which a private API denies."""
    return _ORIGIN_ID(value) is not None


def origin_value(request: Request, key: str, header: str | None) -> str | None:
    """The network origin's `key` (`vpce`, `vpc`) as the proxy that asks vouches for it, or None.

    `Request.origin` is Envoy's word (a route's `context_extensions`, the PROXY-protocol TLV): when the adapter
    filled it, it is the only source. Otherwise `header` counts only when a trusted peer asked (HTTP mode's
    `Request.trusted_peer`); the gRPC adapter never sets that, so in gRPC mode a header a client sent through
    Envoy never names an endpoint."""
    origin = request.origin
    if origin:
        return origin.get(key)
    if header is None or not request.trusted_peer:
        return None
    value = request.headers.get(header)
    return value if value is not None and is_origin_id(value) else None


def _vpc_source_ip(ctx: EvalContext) -> str | None:
    """`aws:VpcSourceIp`: the client address (`aws:SourceIp`'s) when the request came through a VPC endpoint (an
    origin is known), absent otherwise, as in AWS."""
    if ctx.get("aws:sourcevpce") is None and ctx.get("aws:sourcevpc") is None:
        return None
    return _source_ip(ctx)


def resource_path(path: str) -> str:
    """The path as the route table judged it (`routes.canonical_path`): dot segments resolved, escapes decoded,
    empty segments and the trailing slash dropped, so `/public/../admin/x`, `/%61dmin/x` and `/admin/x/` cannot
    dodge a Deny on `execute-api:/prod/*/admin/*` while matching the `admin` route."""
    return canonical_path(path)


def principal_type(principal: Principal) -> str | None:
    """`aws:PrincipalType` from the principal's ARN (Account, User, AssumedRole, FederatedUser) or kind."""
    arn = principal.arn
    if principal.kind == "anonymous":
        return "Anonymous"
    if arn.endswith(":root"):
        return "Account"
    if ":user/" in arn:
        return "User"
    if ":assumed-role/" in arn:
        return "AssumedRole"
    if ":federated-user/" in arn or principal.claims:
        return "FederatedUser"
    return None


def _username(principal: Principal) -> str | None:
    _, sep, rest = principal.arn.partition(":user/")
    return rest.rsplit("/", 1)[-1] if sep and ":iam::" in principal.arn else None


def _iso(seconds: float) -> str | None:
    try:
        return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):  # a nonsensical request time: the key is absent
        return None


Resolver = Callable[["EvalContext"], Value]

_REQUEST_KEYS: dict[str, Resolver] = {
    "aws:sourceip": _source_ip,
    "aws:currenttime": lambda c: _iso(c.now),
    "aws:epochtime": lambda c: str(int(c.now)),
    "aws:securetransport": lambda c: "true" if c.request.scheme == "https" else "false",
    "aws:referer": lambda c: c.request.headers.get("referer"),
    "aws:useragent": lambda c: c.request.headers.get("user-agent"),
    "aws:sourcevpce": lambda c: origin_value(c.request, "vpce", c.settings.vpce_header),
    "aws:sourcevpc": lambda c: origin_value(c.request, "vpc", c.settings.vpc_header),
    "aws:vpcsourceip": _vpc_source_ip,
    "aws:requestedregion": lambda c: c.api.region,
}

_PRINCIPAL_KEYS: dict[str, Resolver] = {
    "aws:principalarn": lambda c: c.principal.arn or None,
    "aws:principalaccount": lambda c: c.principal.account or None,
    "aws:principaltype": lambda c: principal_type(c.principal),
    "aws:userid": lambda c: c.principal.id or None,
    "aws:username": lambda c: _username(c.principal),
    "jwt:scope": lambda c: tuple(sorted(c.principal.scopes)) if c.principal.scopes else None,
}

REQUEST_KEYS = frozenset(_REQUEST_KEYS)
PROVIDED_KEYS = REQUEST_KEYS | frozenset(_PRINCIPAL_KEYS)
"""Context keys the sidecar itself computes (lower-cased)."""
AUTHORIZER_AWS_KEYS = frozenset(k for k in _PRINCIPAL_KEYS if k.startswith(AWS_PREFIX))
"""The only `aws:` keys an authorizer's `Principal.context` may set: its principal's own identity (SigV4 knows the
user id behind an access key). Every other `aws:` key is absent unless the sidecar computes it."""


class EvalContext:
    """Everything one request exposes to policies. Build one per request; it is not shared across requests."""

    request: Request
    principal: Principal
    api: ApiSettings
    settings: ContextSettings
    action: str
    resource: str
    now: float

    __slots__ = (
        "_claims",
        "_dates",
        "_ips",
        "_pctx",
        "_values",
        "action",
        "api",
        "now",
        "principal",
        "request",
        "resource",
        "settings",
    )

    def __init__(
        self,
        request: Request,
        principal: Principal,
        api: ApiSettings,
        settings: ContextSettings = DEFAULT_SETTINGS,
        action: str = INVOKE,
    ) -> None:
        self.request = request
        self.principal = principal
        self.api = api
        self.settings = settings
        self.action = action.lower()
        self.resource = resource_arn(api, judged_method(request.method.upper()), resource_path(request.path))
        self.now = request.time or _now()
        self._values: dict[str, Value] = {}
        self._dates: dict[str, float | None] = {}
        self._ips: dict[str, tuple[int, int] | None] = {}
        self._pctx: Mapping[str, Any] | None = None
        self._claims: Mapping[str, Any] | None = None

    def get(self, key: str) -> Value:
        """The value of a lower-cased condition key, computed on first use."""
        value = self._values.get(key, _UNSET)
        if value is _UNSET:
            value = self._values[key] = self._resolve(key)
        return value  # type: ignore[no-any-return]

    def _resolve(self, key: str) -> Value:
        resolver = _REQUEST_KEYS.get(key)
        if resolver is not None:
            return resolver(self)
        if key.startswith(HEADER_PREFIX):
            return self.request.headers.get(key[len(HEADER_PREFIX) :])
        if key.startswith(AWS_PREFIX) and key not in AUTHORIZER_AWS_KEYS:
            return None  # aws:PrincipalOrgID, aws:PrincipalTag/...: no claim or authorizer context supplies them
        if self._pctx is None:
            self._pctx = {str(k).lower(): v for k, v in self.principal.context.items()}
        if key in self._pctx:
            return normalize(self._pctx[key])
        resolver = _PRINCIPAL_KEYS.get(key)
        if resolver is not None:
            return resolver(self)
        if self._claims is None:
            self._claims = {str(k).lower(): v for k, v in self.principal.claims.items()}
        claim: str | None = key[len(JWT_PREFIX) :] if key.startswith(JWT_PREFIX) else key
        if claim not in self._claims:
            claim = self._provider_claim(key)
        if claim is not None and claim in self._claims:
            value = self._claims[claim]
            if claim in ("scope", "scp") and isinstance(value, str):
                return tuple(value.split())
            return normalize(value)
        return None

    def _provider_claim(self, key: str) -> str | None:
        """IAM's web-identity keys name the provider: `cognito-identity.amazonaws.com:sub`,
        `accounts.google.com:sub`. They read the token's claim when the token's issuer is that provider."""
        provider, _, claim = key.rpartition(":")
        issuer = self._claims.get("iss") if self._claims is not None else None
        if not provider or not isinstance(issuer, str):
            return None
        issuer = issuer.lower().removeprefix("https://").removeprefix("http://").rstrip("/")
        return claim if issuer == provider else None

    def date(self, text: str) -> float | None:
        """`text` as epoch seconds, memoized (time keys are compared by several statements)."""
        value = self._dates.get(text, _UNSET)
        if value is _UNSET:
            value = self._dates[text] = parse_date(text)
        return value  # type: ignore[no-any-return]

    def ip(self, text: str) -> tuple[int, int] | None:
        """`text` as `(version, integer)`, memoized."""
        value = self._ips.get(text, _UNSET)
        if value is _UNSET:
            value = self._ips[text] = parse_ip(text)
        return value  # type: ignore[no-any-return]
