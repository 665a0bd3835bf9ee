"""gRPC status codes and `GrpcError`: what both gRPC engines (`grpc_lean/`, `grpcio.py`) and the ext_authz adapter
share. A leaf: it imports nothing of ours."""

from __future__ import annotations

from typing import Final

GRPC_OK: Final = 0
GRPC_DEADLINE_EXCEEDED: Final = 4
GRPC_NOT_FOUND: Final = 5
GRPC_PERMISSION_DENIED: Final = 7
GRPC_RESOURCE_EXHAUSTED: Final = 8
GRPC_UNIMPLEMENTED: Final = 12
GRPC_INTERNAL: Final = 13
GRPC_UNAUTHENTICATED: Final = 16


class GrpcError(Exception):
    """Raised by a method handler to end its call with a gRPC status other than OK."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
