"""The wire format of the lean gRPC engine: HTTP/2 frames (RFC 9113), the constant HPACK header blocks we send,
gRPC's Trailers-Only answer, and the HPACK decoder with its memo. No I/O, no connection state."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import cast
from urllib.parse import quote

from hpack import Decoder

from ...memo import BoundedMemo

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Error codes (section 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
# Settings identifiers (section 6.5.2).
S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE = 0x2, 0x3, 0x4
S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 0x5, 0x6

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
FRAME_LIMIT = 16_384
"""The largest frame we accept (the protocol's default SETTINGS_MAX_FRAME_SIZE, which we never raise)."""

_HEAD = struct.Struct(">HBBBL")  # a frame header: length (24 bits as 16 + 8), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    length = len(payload)
    return _HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


def _int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with `first`'s high bits set in its first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing, new name, no Huffman coding: decodable by any peer
    whatever its dynamic table holds, so our header blocks can be constant bytes."""
    return b"\x00" + _int(len(name), 7, 0) + name + _int(len(value), 7, 0) + value


_STATUS_200 = b"\x88"  # :status 200, static table index 8
_CONTENT_TYPE = b"\x0f\x10" + _int(16, 7, 0) + b"application/grpc"  # literal, name from static index 31
RESPONSE_HEAD = _STATUS_200 + _CONTENT_TYPE
TRAILERS_OK = _literal(b"grpc-status", b"0")


_STATUS_SAFE = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"
_MAX_STATUS_TEXT = 512
"""Characters of a grpc-message we send: the whole Trailers-Only block must fit one HEADERS frame."""
_GRPC_SUBTYPES = (b"application/grpc+", b"application/grpc;")
_MEMO_BLOCK = 1024
"""Header blocks longer than this are not remembered (Envoy's indexed request blocks are ~10 bytes)."""


def trailers_only(code: int, message: str) -> bytes:
    """The header block of a Trailers-Only gRPC response (a failed call: status and message, no body)."""
    # grpc-message is percent-encoded UTF-8: printable ASCII except '%' stays as is
    text = quote(message[:_MAX_STATUS_TEXT], safe=_STATUS_SAFE).encode("ascii")
    return RESPONSE_HEAD + _literal(b"grpc-status", str(code).encode()) + _literal(b"grpc-message", text)


class _Headers:
    """HPACK decoding with a memo: a header block that did not change the dynamic table decodes the same way
    until the table changes, so it is remembered (its :path and whether it is a gRPC POST) until then."""

    __slots__ = ("_decoder", "_memo")

    _MAX_MEMO = 256

    def __init__(self, max_header_list_bytes: int) -> None:
        self._decoder = Decoder(max_header_list_size=max_header_list_bytes)
        self._memo: BoundedMemo[bytes, tuple[bytes, bool]] = BoundedMemo(self._MAX_MEMO)

    def request(self, block: bytes) -> tuple[bytes, bool]:
        """(:path, is a gRPC POST) of a request header block; raises HPACKError on a bad block."""
        found = self._memo.get(block)
        if found is not None:
            return found
        table = self._decoder.header_table
        entries = table.dynamic_entries
        before = (table.maxsize, len(entries), entries[0] if entries else None)
        fields = cast(Iterable[tuple[bytes, bytes]], self._decoder.decode(block, raw=True))
        path = b""
        method = content_type = b""
        for name, value in fields:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
        grpc = content_type == b"application/grpc" or content_type.startswith(_GRPC_SUBTYPES)
        result = (path, method == b"POST" and grpc)
        after = (table.maxsize, len(entries), entries[0] if entries else None)
        # Same size limit, same number of entries and the same newest entry object: nothing was inserted (each
        # insert makes a new tuple) and nothing evicted (a size update that shrinks and restores changes the count).
        if after[0] == before[0] and after[1] == before[1] and after[2] is before[2]:
            if len(block) <= _MEMO_BLOCK:
                self._memo.put(block, result)
        else:
            self._memo.clear()  # the table changed: every remembered block may now decode differently
        return result

    def skip(self, block: bytes) -> None:
        """Decode a block only for its effect on the dynamic table (trailers, refused streams)."""
        self._decoder.decode(block, raw=True)
        self._memo.clear()
