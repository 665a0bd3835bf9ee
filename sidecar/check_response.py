"""CheckResponse wire bytes written directly, for decisions that are not reused.

A cached or constant Decision is encoded once and remembered (`ext_authz.ResponseEncoder`), but every cold
credential (a new JWT, a Redis L2 hit, an uncached SigV4 principal) yields a new Decision whose response must be
built per Check. Building it with protobuf messages (`ext_authz.build_response`: a Struct, header options, a
CopyFrom, then SerializeToString) costs ~7 us; writing the few fields a Decision can set takes ~1.5 us
(`benchmarks/micro_adapter.py`). The encoding is protobuf's, by field number (envoy.service.auth.v3 and
envoy.config.core.v3): tests parse these bytes back with the generated classes and compare them with
`build_response`, field for field, so the two cannot drift apart unnoticed.

Anything this module does not write (metadata that is not all strings) returns None, and the caller falls back
to `build_response`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from . import reasons
from .request import Decision

_OVERWRITE_IF_EXISTS_OR_ADD = 2  # HeaderValueOption.HeaderAppendAction
_GRPC_PERMISSION_DENIED = 7
_GRPC_UNAUTHENTICATED = 16

# Field keys: (field number << 3) | wire type (2 = length-delimited, 0 = varint).
_STATUS = 0x0A  # CheckResponse.status (google.rpc.Status)
_DENIED = 0x12  # CheckResponse.denied_response
_OK = 0x1A  # CheckResponse.ok_response
_METADATA = 0x22  # CheckResponse.dynamic_metadata (google.protobuf.Struct)
_STATUS_CODE = 0x08  # google.rpc.Status.code
_OK_HEADERS = 0x12  # OkHttpResponse.headers
_OK_REMOVE = 0x2A  # OkHttpResponse.headers_to_remove
_DENIED_STATUS = 0x0A  # DeniedHttpResponse.status (envoy.type.v3.HttpStatus)
_DENIED_HEADERS = 0x12  # DeniedHttpResponse.headers
_DENIED_BODY = 0x1A  # DeniedHttpResponse.body
_HTTP_STATUS_CODE = 0x08  # HttpStatus.code
_OPTION_HEADER = 0x0A  # HeaderValueOption.header
_OPTION_APPEND_ACTION = 0x18  # HeaderValueOption.append_action
_HEADER_KEY = 0x0A  # HeaderValue.key
_HEADER_VALUE = 0x12  # HeaderValue.value
_STRUCT_FIELDS = 0x0A  # Struct.fields (map entries)
_ENTRY_KEY = 0x0A  # map entry key
_ENTRY_VALUE = 0x12  # map entry value (google.protobuf.Value)
_STRING_VALUE = 0x1A  # Value.string_value

_APPEND_ACTION = bytes((_OPTION_APPEND_ACTION, _OVERWRITE_IF_EXISTS_OR_ADD))
_STATUS_OK = bytes((_STATUS, 0))  # present and empty, as build_response sets it (code 0 is not written)
_JSON_CONTENT_TYPE = ("content-type", "application/json")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SHORT = [bytes((n,)) for n in range(128)]


def _field(key: int, payload: bytes) -> bytes:
    """A length-delimited field: key, length, payload."""
    size = len(payload)
    return b"%c%b%b" % (key, _SHORT[size] if size < 128 else _varint(size), payload)


def _text(key: int, value: str) -> bytes:
    """A string field; proto3 writes nothing for an empty one. Raises UnicodeEncodeError on a lone surrogate, as
    protobuf itself does."""
    return _field(key, value.encode("utf-8")) if value else b""


def _header_options(key: int, headers: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(
        _field(key, _field(_OPTION_HEADER, _text(_HEADER_KEY, name) + _text(_HEADER_VALUE, value)) + _APPEND_ACTION)
        for name, value in headers
    )


def _struct(metadata: Mapping[str, Any]) -> bytes | None:
    """A Struct of string values, or None for any other value type (left to protobuf)."""
    entries = []
    for name, value in metadata.items():
        if not isinstance(value, str) or not isinstance(name, str):
            return None
        entries.append(_field(_STRUCT_FIELDS, _text(_ENTRY_KEY, name) + _field(_ENTRY_VALUE, _text(_STRING_VALUE, value))))
    return _field(_METADATA, b"".join(entries))


def encode(decision: Decision, metadata: Mapping[str, Any], body: str) -> bytes | None:
    """CheckResponse bytes for `decision` with `metadata` as dynamic metadata (empty: none) and `body` as the
    denied body; None when `metadata` holds something other than strings."""
    tail = b""
    if metadata:
        struct = _struct(metadata)
        if struct is None:
            return None
        tail = struct
    if decision.allowed:
        ok = _header_options(_OK_HEADERS, decision.headers) + b"".join(
            _field(_OK_REMOVE, name.encode("utf-8")) for name in decision.headers_to_remove
        )
        return b"%b%b%b" % (_STATUS_OK, _field(_OK, ok), tail)  # ok_response present even when empty
    if not 0 <= decision.status < 2**31:
        return None  # not an HTTP status (config validation keeps these out); protobuf decides what to send
    code = _GRPC_UNAUTHENTICATED if decision.status == reasons.STATUS_UNAUTHORIZED else _GRPC_PERMISSION_DENIED
    status = _field(_STATUS, bytes((_STATUS_CODE, code)))
    http_status = bytes((_HTTP_STATUS_CODE,)) + _varint(decision.status) if decision.status else b""
    denied = (
        _field(_DENIED_STATUS, http_status)
        + _header_options(_DENIED_HEADERS, (*decision.headers, _JSON_CONTENT_TYPE))
        + _text(_DENIED_BODY, body)
    )
    return b"%b%b%b" % (status, _field(_DENIED, denied), tail)
