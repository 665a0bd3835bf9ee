"""The gRPC ext_authz adapter: the only code that knows Envoy's protobuf messages.

`to_request` turns a `CheckRequest` into our immutable `Request`; `encode_decision` turns a `Decision` into the
wire bytes of a `CheckResponse`. Encoded responses are memoized per Decision object (weakly), so a decision served
from a cache or a constant deny costs one dictionary lookup to render instead of building and serializing
protobuf messages again. The servicer registers with an identity response serializer to return those bytes as is.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from google.protobuf.struct_pb2 import Struct

from .. import reasons
from ..metrics import RECORDER, Recorder
from ..policy.context import is_origin_id
from ..request import EMPTY_MAP, Decision, Request, is_canonical_method
from .status import GRPC_INTERNAL, GRPC_OK, GRPC_PERMISSION_DENIED, GRPC_UNAUTHENTICATED, GrpcError

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
_OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
_MAX_MEMO = 4096


class MalformedRequest(ValueError):
    """A CheckRequest that lacks what any decision needs (method, path): denied, never raised to gRPC."""


def to_request(check: CheckRequest, clock: Callable[[], float] = time.time) -> Request:
    """Build our `Request` from Envoy's `CheckRequest` (raises `MalformedRequest`).

    Each protobuf field is read once (every access to a sub-message builds a wrapper object) and the `Request`
    is built positionally, in field order: one Check builds one, and keywords cost several times as much.
    Pseudo-headers are dropped (`:authority` becomes `host`).
    """
    attributes = check.attributes
    http = attributes.request.http
    method = http.method
    raw_path = http.path
    if not method or not raw_path:
        raise MalformedRequest("the CheckRequest carries no HTTP method or path")
    if not is_canonical_method(method):
        raise MalformedRequest("the HTTP method is not an upper-case token")
    if raw_path[0] != "/":  # `*` (OPTIONS *) or an authority form: no route and no policy path judge it alike
        raise MalformedRequest("the request target is not an origin-form path")
    wire_headers = http.headers
    if wire_headers:
        # A comprehension over upb's map: `dict(map)` goes through collections.abc's Python-level keys(), which is
        # slower (docs/performance.md); pseudo-headers are dropped on the way.
        headers = {name: wire_headers[name] for name in wire_headers if name[:1] != ":"}
        authority = wire_headers.get(":authority") or http.host
    else:
        headers = _headers_from_map(http)
        authority = headers.pop(":authority", "") or http.host
        headers = {name: value for name, value in headers.items() if name[:1] != ":"}
    if "" in headers:
        raise MalformedRequest("the CheckRequest carries a header with an empty name")
    if authority:
        headers["host"] = authority
    stamp = attributes.request.time
    seconds = stamp.seconds
    source = attributes.source
    socket = source.address.socket_address
    extensions = attributes.context_extensions
    recorded = attributes.HasField("metadata_context")  # only when Envoy forwards namespaces (~90 ns to ask)
    return Request(
        method,
        raw_path,
        raw_path.partition("?")[0],
        headers,
        authority,
        # Never `http.scheme`: Envoy copies it from the client's own `:scheme` on h2c, so a cleartext client could
        # claim https (aws:SecureTransport). At the edge (`use_remote_address: true`, as shipped) Envoy overwrites
        # x-forwarded-proto with the scheme of the connection it accepted; absent, the request is not secure.
        headers.get("x-forwarded-proto") or "http",
        http.protocol,
        socket.address,
        socket.port_value,
        source.certificate,
        http.raw_body or http.body.encode("utf-8", "surrogateescape"),
        dict(extensions) if extensions else EMPTY_MAP,
        headers.get("x-request-id", "") or http.id,
        seconds + stamp.nanos / 1e9 if seconds else clock(),
        network_origin(extensions, attributes.metadata_context if recorded else None)
        if extensions or recorded
        else EMPTY_MAP,
    )


ORIGIN_KEYS = ("vpce", "vpc")
"""The keys of `Request.origin`: in a route's `context_extensions`, and in the PROXY-protocol namespace."""
PROXY_PROTOCOL_NAMESPACE = "envoy.filters.listener.proxy_protocol"
"""Where Envoy's `proxy_protocol` listener filter records a TLV (its default `metadata_namespace`); the ext_authz
filter forwards it when `metadata_context_namespaces` names it."""
AWS_VPCE_SUBTYPE = "\x01"
"""An NLB's VPC-endpoint TLV (type 0xEA) begins with its subtype, 0x01 for the endpoint id; Envoy records the
TLV's whole value."""


def network_origin(extensions: Mapping[str, str], metadata: Any | None) -> Mapping[str, str]:
    """`Request.origin`: each of `vpce` and `vpc` from the route's `context_extensions` (the operator's word for
    the listener, virtual host or route), else from the PROXY-protocol TLV Envoy recorded for the connection
    (`metadata`: the CheckRequest's `metadata_context`). A value that is not an id is left out (fail closed: a
    private API then denies the request, as it denies one that came through no endpoint)."""
    recorded = metadata.filter_metadata.get(PROXY_PROTOCOL_NAMESPACE) if metadata is not None else None
    found: dict[str, str] = {}
    for key in ORIGIN_KEYS:
        value = extensions.get(key) if extensions else None
        if value is None and recorded is not None:
            value = _tlv_text(recorded, key)
        if value is not None and is_origin_id(value):
            found[key] = value
    return found or EMPTY_MAP


def _tlv_text(recorded: Any, key: str) -> str | None:
    """The text of one recorded TLV (a `Struct` field), the VPC-endpoint TLV's subtype byte removed."""
    field = recorded.fields.get(key)
    if field is None or field.WhichOneof("kind") != "string_value":
        return None
    text: str = field.string_value
    return text.removeprefix(AWS_VPCE_SUBTYPE) if key == "vpce" else text


def _headers_from_map(http: Any) -> dict[str, str]:
    """Headers from `header_map` (sent instead of `headers` when Envoy is told to), repeats joined by ','."""
    out: dict[str, str] = {}
    for entry in http.header_map.headers:
        key = entry.key.lower()
        value = entry.raw_value.decode("utf-8", "surrogateescape") if entry.raw_value else entry.value
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _header_options(headers: tuple[tuple[str, str], ...]) -> list[HeaderValueOption]:
    return [HeaderValueOption(header=HeaderValue(key=k, value=v), append_action=_OVERWRITE) for k, v in headers]


def build_response(decision: Decision) -> CheckResponse:
    """The `CheckResponse` for a decision (see `encode_decision` for the memoized wire form)."""
    response = CheckResponse()
    metadata = decision.metadata or identity_metadata(decision)
    if metadata:
        struct = Struct()
        struct.update(dict(metadata))
        response.dynamic_metadata.CopyFrom(struct)
    if decision.allowed:
        response.status.code = GRPC_OK
        response.ok_response.headers.extend(_header_options(decision.all_headers()))
        response.ok_response.headers_to_remove.extend(decision.headers_to_remove)
        return response
    response.status.code = (
        GRPC_UNAUTHENTICATED if decision.status == reasons.STATUS_UNAUTHORIZED else GRPC_PERMISSION_DENIED
    )
    denied = response.denied_response
    denied.status.code = decision.status  # HttpStatus enum values are the HTTP codes
    denied.headers.extend(_header_options((*decision.all_headers(), ("content-type", "application/json"))))
    denied.body = deny_body(decision)
    return response


def identity_metadata(decision: Decision) -> dict[str, str]:
    """Envoy dynamic metadata for an allow: who, by which authorizer, on which route (for access logs and later
    filters). Derived when the response is encoded, not stored with every cached Decision (memory per entry)."""
    principal = decision.principal
    if not decision.allowed or principal is None:
        return {}
    return {"principal": principal.id, "authorizer": decision.authorizer, "route": decision.route}


def deny_body(decision: Decision) -> str:
    """The JSON body a denied client sees: message and reason code, nothing internal."""
    return json.dumps({"message": decision.message, "reason": decision.reason}, separators=(",", ":"))


class ResponseEncoder:
    """Renders Decisions to CheckResponse bytes, remembering the bytes for Decisions that are reused."""

    def __init__(self) -> None:
        self._memo: weakref.WeakKeyDictionary[Decision, bytes] = weakref.WeakKeyDictionary()

    def encode(self, decision: Decision) -> bytes:
        """Wire bytes of the CheckResponse for `decision`."""
        memo = self._memo
        wire = memo.get(decision)
        if wire is None:
            wire = build_response(decision).SerializeToString()
            if len(memo) < _MAX_MEMO:
                memo[decision] = wire
        return wire


MALFORMED = reasons.deny(reasons.MALFORMED_REQUEST, "Malformed authorization request", status=400)

CheckFunc = Callable[[Request], Awaitable[Decision]]


class AuthorizationService:
    """`envoy.service.auth.v3.Authorization/Check` over any `check(request) -> Decision` callable."""

    def __init__(self, check: CheckFunc, clock: Callable[[], float] = time.time, recorder: Recorder = RECORDER) -> None:
        self._check = check
        self._clock = clock
        self._encoder = ResponseEncoder()
        self._stage = recorder.stage

    async def check(self, message: CheckRequest, context: grpc.aio.ServicerContext | None = None) -> bytes:
        """The RPC handler: never raises, every failure is a deny."""
        start = perf_counter()
        try:
            request = to_request(message, self._clock)
        except Exception:  # MalformedRequest, or anything odd in the message: a reasoned 400, never a crash
            return self._encoder.encode(MALFORMED)
        parsed = perf_counter()
        try:
            decision = await self._check(request)
        except Exception:  # the pipeline never raises; this is a last line of defence
            decision = reasons.INTERNAL
        decided = perf_counter()
        try:
            wire = self._encoder.encode(decision)
        except Exception as exc:  # e.g. a header value that is not valid UTF-8 text: denied, never a failed RPC
            log.error(
                "cannot encode a CheckResponse (%s, reason %s): denied instead", type(exc).__name__, decision.reason
            )
            wire = self._encoder.encode(reasons.INTERNAL)
        self._stage("adapter", parsed - start + perf_counter() - decided)
        return wire

    async def check_wire(self, data: bytes) -> bytes:
        """Check from the request's wire bytes (the lean engine's method handler, `grpc_lean/`).

        Bytes that are not a CheckRequest fail the call with INTERNAL, as grpcio fails a request it cannot
        deserialize: Envoy then applies its failure mode (deny unless `failure_mode_allow`)."""
        try:
            message = CheckRequest.FromString(data)
        except Exception:
            raise GrpcError(GRPC_INTERNAL, "the request is not a CheckRequest") from None
        return await self.check(message)

    def handler(self) -> grpc.GenericRpcHandler:
        """A generic handler serving Check with pre-encoded response bytes."""
        method = grpc.unary_unary_rpc_method_handler(
            self.check,
            request_deserializer=CheckRequest.FromString,
            response_serializer=_identity,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Check": method})


def _identity(wire: bytes) -> bytes:
    return wire
