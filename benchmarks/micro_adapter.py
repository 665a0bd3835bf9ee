"""Micro-benchmark: the gRPC adapter's cost per Check, CheckRequest bytes -> Request -> Decision -> response bytes.

Run: `python -m benchmarks.micro_adapter`. Prints medians in microseconds (time.perf_counter_ns over many
iterations; batches of 1,000 calls so timer overhead does not dominate). No assertions: figures go in notes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from hpack import Encoder

from sidecar.config import default_config
from sidecar.pipeline import Pipeline
from sidecar.runtime import RuntimeHolder, compile_runtime
from sidecar.transports.ext_authz import AuthorizationService, ResponseEncoder, build_response, to_request
from sidecar.transports.grpc_lean.protocol import Handler, LeanGrpcProtocol, LeanSettings, _Shared
from sidecar.transports.grpc_lean.wire import DATA, END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS, frame

BATCH = 1000
ROUNDS = 30


def sample_check() -> bytes:
    """A realistic CheckRequest as Envoy sends it: a dozen headers, a small body, a source address."""
    check = CheckRequest()
    http = check.attributes.request.http
    http.id, http.method, http.path = "1234", "GET", "/public/orders/42?expand=items&limit=10"
    http.host, http.scheme, http.protocol = "api.example.com", "https", "HTTP/1.1"
    http.headers.update(
        {
            ":authority": "api.example.com",
            ":method": "GET",
            ":path": "/public/orders/42?expand=items&limit=10",
            ":scheme": "https",
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "user-agent": "bench/1.0",
            "x-forwarded-proto": "https",
            "x-request-id": "5b9c3a1e-8d7f-4c1b-9a2e-000000000000",
            "authorization": "Bearer " + "x" * 600,
            "x-envoy-expected-rq-timeout-ms": "15000",
        }
    )
    check.attributes.source.address.socket_address.address = "10.0.0.7"
    check.attributes.source.address.socket_address.port_value = 40000
    check.attributes.request.time.FromSeconds(1_700_000_000)
    return check.SerializeToString()


async def _noop_check(data: bytes) -> bytes:
    return b""


class _Discard:
    """A transport that drops what it is given."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def lean_calls(wire: bytes, method: Handler) -> Callable[[], float]:
    """Median us per call through `LeanGrpcProtocol.data_received`, one call per read (no batching), with
    Envoy-like request headers (indexed after the first call, as Envoy's HPACK encoder sends them)."""
    encoder = Encoder()
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/envoy.service.auth.v3.Authorization/Check"),
        (":authority", "authz"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "250m"),
        ("x-envoy-expected-rq-timeout-ms", "250"),
    ]
    blocks = [encoder.encode(fields) for _ in range(2)]
    body = b"\x00" + len(wire).to_bytes(4, "big") + wire
    calls = [
        frame(HEADERS, END_HEADERS, 2 * i + 1, blocks[min(i, 1)]) + frame(DATA, END_STREAM, 2 * i + 1, body)
        for i in range(BATCH)
    ]
    handlers = {"/envoy.service.auth.v3.Authorization/Check": method}

    def measure() -> float:
        async def rounds() -> float:
            samples = []
            for _ in range(ROUNDS):
                protocol = LeanGrpcProtocol(_Shared(handlers, LeanSettings()))
                protocol.connection_made(_Discard())  # type: ignore[arg-type]
                protocol.data_received(PREFACE + frame(SETTINGS, 0, 0))
                start = time.perf_counter_ns()
                for call in calls:
                    protocol.data_received(call)
                samples.append((time.perf_counter_ns() - start) / BATCH / 1000)
            return statistics.median(samples)

        return asyncio.run(rounds())

    return measure


def median_us(fn: Callable[[], object]) -> float:
    """Median microseconds per call of `fn`."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for _ in range(BATCH):
            fn()
        samples.append((time.perf_counter_ns() - start) / BATCH / 1000)
    return statistics.median(samples)


def main() -> None:
    wire = sample_check()
    message = CheckRequest.FromString(wire)
    runtime = compile_runtime(default_config())
    pipeline = Pipeline(RuntimeHolder(runtime))
    request = to_request(message)
    loop = asyncio.new_event_loop()
    decision = loop.run_until_complete(pipeline.check(request))
    encoder = ResponseEncoder()

    def full() -> bytes:
        req = to_request(CheckRequest.FromString(wire))
        coro = pipeline.check(req)
        try:
            coro.send(None)
        except StopIteration as done:  # the pipeline completes without suspending on this route
            return encoder.encode(done.value)
        raise RuntimeError("pipeline suspended")

    def adapter_only() -> bytes:
        to_request(CheckRequest.FromString(wire))
        return encoder.encode(decision)

    def route_match() -> object:
        return runtime.routes.match("GET", "/public/orders/42")

    def pipeline_only() -> object:
        coro = pipeline.check(request)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        raise RuntimeError("pipeline suspended")

    service = AuthorizationService(pipeline.check)
    lean_noop = lean_calls(wire, _noop_check)
    lean_full = lean_calls(wire, service.check_wire)
    rows = [
        ("parse CheckRequest bytes (upb)", median_us(lambda: CheckRequest.FromString(wire))),
        ("CheckRequest -> Request", median_us(lambda: to_request(message))),
        ("route match ({proxy+})", median_us(route_match)),
        ("pipeline.check (anonymous route)", median_us(pipeline_only)),
        ("Decision -> bytes, memoized", median_us(lambda: encoder.encode(decision))),
        ("Decision -> bytes, uncached", median_us(lambda: build_response(decision).SerializeToString())),
        ("adapter only: bytes -> Request, Decision -> bytes", median_us(adapter_only)),
        ("adapter + pipeline: bytes -> Request -> Decision -> bytes", median_us(full)),
        ("lean listener, no-op method: HTTP/2 frames in -> frames out", lean_noop()),
        ("lean listener + adapter + pipeline: frames in -> frames out", lean_full()),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  median us")
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.2f}")
    loop.close()


if __name__ == "__main__":
    main()
