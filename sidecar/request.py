"""The value types every stage of the pipeline shares: Request in, Principal in the middle, Decision out.

They are transport-neutral on purpose: the gRPC adapter (`transports/ext_authz.py`) and the HTTP adapter build the
same `Request`, and no authorizer, policy or cache code ever sees protobuf. All three are immutable so that a cached
Decision or Principal can be handed to many concurrent requests without copying.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl

from .memo import BoundedMemo

if TYPE_CHECKING:
    from .explanation import Step

EMPTY_MAP: Mapping[str, str] = MappingProxyType({})
_COMMON_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
_UPPER_TOKEN = re.compile(r"[A-Z][A-Z0-9!#$%&'*+.^_`|~-]{0,31}\Z").match


_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]|\A | \Z").search
"""What keeps a value from reaching the upstream exactly as it is: C0 controls (CR, LF, NUL, tab, ...) and DEL,
which Envoy refuses in a header value (the request fails with 503), C1 controls, and a space at either end, which
HTTP parsers strip (" alice" would arrive as "alice"). Other non-ASCII text is fine: both transports send it as
UTF-8 bytes, which Envoy passes through."""


def header_safe(value: str) -> bool:
    """Whether `value` can be sent as a header value and arrive unchanged (checked once per identity, by the
    authorizer that reads it and again by the pipeline before an allow carries it)."""
    return _HEADER_UNSAFE(value) is None


def judged_method(method: str) -> str:
    """The method routes and policies judge: HEAD is judged as GET. Flask, Django, Express, Go's ServeMux and
    Spring answer HEAD with the GET handler (its headers, its side effects), so a HEAD must be allowed exactly
    where a GET is; SigV4 still signs and checks the method as sent."""
    return "GET" if method == "HEAD" else method


def is_canonical_method(method: str) -> bool:
    """Whether `method` is an upper-case HTTP token: the only spelling any stage (routes, policies, SigV4) sees.

    Methods are case-sensitive on the wire, but werkzeug, Django and others upper-case them before dispatch, so
    `delete` over HTTP/2 would miss a closed `DELETE` route, land on an open `ANY` one and still run DELETE.
    Rather than guess what the upstream does, the adapters refuse anything else with a 400 (decided once there).
    """
    return method in _COMMON_METHODS or _UPPER_TOKEN(method) is not None


EMPTY_ANY_MAP: Mapping[str, Any] = MappingProxyType({})


class Request(NamedTuple):
    """One HTTP request as the authorizers see it.

    `headers` are lower-cased, pseudo-headers removed, `host` taken from `:authority`; repeated headers arrive
    joined with "," (Envoy joins them before it sends the CheckRequest). `raw_path` is exactly what the client
    sent (undecoded, with the query); `path` is `raw_path` without the query.

    A NamedTuple rather than a frozen dataclass: it is truly immutable and several times cheaper to build
    (benchmarks/micro_adapter.py; docs/performance.md), and one is built for every Check.
    """

    method: str
    raw_path: str
    path: str
    headers: Mapping[str, str]
    host: str = ""
    scheme: str = "http"
    protocol: str = ""
    source_address: str = ""
    source_port: int = 0
    peer_certificate: str = ""
    body: bytes = b""
    context_extensions: Mapping[str, str] = EMPTY_MAP
    request_id: str = ""
    time: float = 0.0
    """Seconds since the epoch at which Envoy received the request (our clock if Envoy did not say)."""
    origin: Mapping[str, str] = EMPTY_MAP
    """The network origin Envoy vouches for (`vpce`, `vpc`: `aws:SourceVpce`, `aws:SourceVpc`), never read from a
    header: the gRPC adapter takes it from the route's `context_extensions` and from the PROXY-protocol TLV Envoy
    forwards in `metadata_context` (docs/private-apis.md)."""
    trusted_peer: bool = False
    """HTTP mode: the TCP peer that asked is one of `http.trusted_peers`, so the headers it sets about the
    connection (`policy.vpce_header`, `policy.vpc_header`) are believed; a client's copy from anyone else is not."""

    @property
    def query_string(self) -> str:
        """The raw query string, without the leading `?` (empty when there is none)."""
        _, sep, query = self.raw_path.partition("?")
        return query if sep else ""

    @property
    def query(self) -> Mapping[str, tuple[str, ...]]:
        """The decoded query as a multi-map (key -> values in order of appearance); parsed on first use."""
        return parse_query(self.query_string)

    def header(self, name: str, default: str = "") -> str:
        """A header by its lower-case name."""
        return self.headers.get(name, default)


class CompactMap(Mapping[str, Any]):
    """A read-only mapping stored compactly: the values in a tuple, the keys in an index shared by every map with
    the same keys in the same order.

    For what lives as long as a cache entry (a verified token's claims, an allow decision's metadata): with
    100,000 entries cached their size is the sidecar's size, and a dict behind a MappingProxyType costs several
    times as much (docs/performance.md).
    """

    __slots__ = ("_index", "_values")

    def __init__(self, items: Mapping[str, Any]) -> None:
        keys = tuple(items)
        index = _SHAPES.get(keys)
        if index is None:
            index = _SHAPES.put(keys, {key: position for position, key in enumerate(keys)})
        self._index = index
        self._values = tuple(items.values())

    def __getitem__(self, key: str) -> Any:
        return self._values[self._index[key]]

    def get(self, key: str, default: Any = None) -> Any:
        position = self._index.get(key)
        return default if position is None else self._values[position]

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"CompactMap({dict(zip(self._index, self._values, strict=True))!r})"


_MAX_SHAPES = 1024
_SHAPES: BoundedMemo[tuple[str, ...], dict[str, int]] = BoundedMemo(_MAX_SHAPES)
"""Distinct key sequences whose index is shared (maps already built keep theirs when it starts over)."""


@lru_cache(maxsize=1024)
def parse_query(query: str) -> Mapping[str, tuple[str, ...]]:
    """Decode a query string into an immutable multi-map (memoized: the same query costs one lookup)."""
    pairs: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        pairs.setdefault(key, []).append(value)
    return MappingProxyType({k: tuple(v) for k, v in pairs.items()})


@dataclass(frozen=True, eq=False, slots=True)
class Principal:
    """Who the caller is, as established by an authorizer.

    `context` holds the policy condition keys this identity contributes (`aws:PrincipalArn`, `jwt:sub`, ...);
    `policies` are the identity-based policies attached to it (compiled, opaque to this module);
    `expires_at` bounds how long any decision about this principal may be cached.
    """

    kind: str
    id: str
    authorizer: str = ""
    arn: str = ""
    account: str = ""
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: EMPTY_ANY_MAP)
    context: Mapping[str, Any] = field(default_factory=lambda: EMPTY_ANY_MAP)
    upstream_headers: tuple[tuple[str, str], ...] = ()
    policies: tuple[Any, ...] = ()
    expires_at: float | None = None

    def without_claims(self) -> Principal:
        """The same identity without what only authorization reads (claims, policy context, identity policies,
        claim headers): what a decision keeps of its principal. A cached decision lives as long as its cache
        entry, and a JWT's claims were most of its size; decisions from Redis carry no more than this either."""
        if self.claims is EMPTY_ANY_MAP and self.context is EMPTY_ANY_MAP and not self.policies:
            return self
        return Principal(
            self.kind, self.id, self.authorizer, self.arn, self.account, self.scopes, expires_at=self.expires_at
        )


ANONYMOUS = Principal(kind="anonymous", id="anonymous")


@dataclass(frozen=True, eq=False, slots=True, weakref_slot=True)
class Decision:
    """The verdict on one request, and everything the adapters need to render it.

    On allow, `headers` are added to the upstream request; on deny, they go to the client with `status` and a
    JSON body `{"message": message, "reason": reason}`. `explanation` is filled only by a pipeline that explains
    (`check --explain`): never while serving, so it reaches neither decision logs nor the client.
    """

    allowed: bool
    status: int
    reason: str
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=lambda: EMPTY_ANY_MAP)
    """Envoy dynamic metadata to send. When empty, an allow with a principal sends who/authorizer/route, derived
    by the gRPC adapter at encoding (`ext_authz.identity_metadata`) rather than stored with each decision."""
    principal: Principal | None = None
    route: str = ""
    authorizer: str = ""
    statement: str = ""
    """The policy statement (Sid or index) that decided, for decision logs."""
    explanation: tuple[Step, ...] = ()
    """What each stage checked and found (`sidecar.explanation`), in pipeline order."""
    ttl: float | None = field(default=None)
    """How long this decision may be reused for an identical request (None: the cache's default)."""
    identity_header: str = ""
    """On allow: the header that carries `principal.id` upstream. Kept apart from `headers` so that the allows
    of one route share a single `headers` tuple (100,000 cached decisions each held two more tuples)."""
    gate: str = ""
    """The gate that refused this request (`usage_plan:gold`, `rate_limit:per-ip`), or the count-mode rules it
    went over (`count:per-ip`), for decision logs."""

    def all_headers(self) -> tuple[tuple[str, str], ...]:
        """The headers to send: `headers`, then the principal's id under `identity_header` (when set)."""
        principal = self.principal
        if self.identity_header and principal is not None:
            return (*self.headers, (self.identity_header, principal.id))
        return self.headers
