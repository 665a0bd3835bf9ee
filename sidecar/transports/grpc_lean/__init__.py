"""The lean gRPC engine: unary gRPC over HTTP/2 (h2c) on an asyncio.Protocol, for Envoy's ext_authz Check.

Why it exists: grpc.aio's per-call machinery (its Cython call path, a Task and several completion-queue round
trips per call) costs several times what the whole warm Check costs us before a handler runs (docs/performance.md).
Envoy's ext_authz client needs very little of gRPC: unary calls, uncompressed messages, no deadlines we must
enforce (Envoy times the call out itself), no metadata we read. This package implements exactly that much of
HTTP/2 (RFC 9113) and gRPC's wire format, on the same asyncio + uvloop loop as the HTTP transport:

- frames parsed from one buffer per read, answers of every Check finished in that read leave in one write;
- HPACK decoding through the `hpack` library, with decoded header blocks remembered while the dynamic table does
  not change (Envoy's request blocks become all-indexed after the first call: one dict lookup, no decoding);
- response header blocks are constant bytes (no dynamic table on our side), the response message comes from the
  adapter's memoized encoder;
- a Check runs inline (`sidecar/inline.py`) and only a suspended one costs a Task.

What it supports: the prior-knowledge h2c preface, SETTINGS (window size, frame size), flow control both ways,
PING, GOAWAY both ways (graceful drain), RST_STREAM, CONTINUATION, padding and priority fields, a stream limit,
a message size limit, and `grpc.health.v1.Health/Check`. What it does not: TLS, compression, server reflection,
streaming methods. `server.grpc_engine: grpcio` serves the same Check through grpc.aio instead (`grpcio.py`).

What bounds a peer (anything that can reach the port, not only Envoy; see `LeanSettings`): a connection limit
for the listener; a budget of parked request bytes (calls whose request is still arriving) shared by all its
connections, and a smaller one per connection; receive windows of about a message (the connection's enforced);
and three timeouts kept by one lazy timer per connection (the HTTP/2 preface, idle connections, requests that do
not finish arriving). So memory is bounded by `max_parked_bytes` plus, per connection, one header block and one
partial frame, whatever the peers do.

- `wire.py`: frame types, flags, error codes, frame and header-block encoding, the HPACK decoder with its memo;
- `protocol.py`: one connection (`LeanGrpcProtocol`), its limits (`LeanSettings`) and what a listener's
  connections share;
- `server.py`: the running listener (`LeanGrpcServer`, `start_lean_grpc`) and its settings from the config.
"""

from .protocol import Handler, LeanGrpcProtocol, LeanSettings
from .server import LeanGrpcServer, settings_from_server, start_lean_grpc

__all__ = ["Handler", "LeanGrpcProtocol", "LeanGrpcServer", "LeanSettings", "settings_from_server", "start_lean_grpc"]
