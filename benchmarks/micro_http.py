"""Micro-benchmark: the HTTP adapter's cost per authorization request, bytes in -> Request -> Decision -> bytes out.

The request is what Envoy 1.40's `http_service` sends (captured from a real Envoy: path prefix, forwarded
headers, `x-authz-source-address`, a 600-byte bearer token). Each row feeds it to a protocol instance over a
fake transport, so the figures are the Python work per request without socket syscalls; the no-op row is the
same measurement for `benchmarks.noop_http_authz`, the floor.

Run: `python -m benchmarks.micro_http`. Prints medians in microseconds (time.perf_counter_ns, batches of 1,000
requests). No assertions: figures go in notes (docs/http-mode.md).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import uvloop

from benchmarks.noop_http_authz import NoopHttpAuthz
from sidecar import reasons
from sidecar.config import default_config
from sidecar.pipeline import Pipeline
from sidecar.request import Decision, Request
from sidecar.runtime import RuntimeHolder, compile_runtime
from sidecar.settings import HttpModeSettings
from sidecar.transports.http.protocol import HttpAuthzProtocol, _Shared, build_request
from sidecar.transports.http.render import render

BATCH = 1000
ROUNDS = 30

ENVOY_REQUEST = (
    b"GET /authz/public/orders/42?expand=items&limit=10 HTTP/1.1\r\n"
    b"host: api.example.com\r\n"
    b"content-length: 0\r\n"
    b"accept: application/json\r\n"
    b"accept-encoding: gzip, deflate\r\n"
    b"user-agent: bench/1.0\r\n"
    b"authorization: Bearer " + b"x" * 600 + b"\r\n"
    b"x-forwarded-proto: https\r\n"
    b"x-request-id: 5b9c3a1e-8d7f-4c1b-9a2e-000000000000\r\n"
    b"x-envoy-external-address: 10.0.0.7\r\n"
    b"x-authz-source-address: 10.0.0.7\r\n"
    b"x-envoy-internal: true\r\n"
    b"x-envoy-expected-rq-timeout-ms: 500\r\n"
    b"\r\n"
)

ALLOW = Decision(
    allowed=True,
    status=200,
    reason=reasons.ALLOWED,
    headers=(("x-authz-principal", "anonymous"), ("x-authz-authorizer", "public")),
)


class ConstantPipeline:
    """Allows at once: isolates the adapter's own cost."""

    async def check(self, request: Request) -> Decision:
        return ALLOW


class NullTransport:
    """Enough of a transport for the protocols: swallows writes, reports a loopback peer."""

    written = 0

    def write(self, data: bytes) -> None:
        self.written += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def median_us(fn: Callable[[], object]) -> tuple[float, float]:
    """Median microseconds per call of `fn`: wall clock (perf_counter_ns) and this thread's CPU time.

    The CPU column is the one to quote on a busy machine: it does not count time spent descheduled.
    """
    wall, cpu = [], []
    for _ in range(ROUNDS):
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(BATCH):
            fn()
        cpu.append((time.thread_time_ns() - start_cpu) / BATCH / 1000)
        wall.append((time.perf_counter_ns() - start) / BATCH / 1000)
    return statistics.median(wall), statistics.median(cpu)


def feeder(protocol: Any, transport: NullTransport) -> Callable[[], None]:
    """A function that sends one request to `protocol` and checks one response came out."""
    protocol.connection_made(transport)
    receive = protocol.data_received

    def one() -> None:
        before = transport.written
        receive(ENVOY_REQUEST)
        if transport.written != before + 1:
            raise RuntimeError("no response written: the request did not complete inline")

    return one


async def measure() -> list[tuple[str, tuple[float, float]]]:
    settings = HttpModeSettings(path_prefix="/authz")
    runtime = compile_runtime(default_config())
    real = Pipeline(RuntimeHolder(runtime))
    constant_shared = _Shared(ConstantPipeline(), settings)
    real_shared = _Shared(real, settings)
    headers = {"host": "api.example.com", "authorization": "Bearer x", "x-authz-source-address": "10.0.0.7"}
    request = build_request("GET", "/authz/public/orders/42?a=1", dict(headers), b"", "127.0.0.1", True, real_shared)
    assert request is not None

    def pipeline_only() -> object:
        coro = real.check(request)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        raise RuntimeError("pipeline suspended")

    build, prefix = real_shared.build, real_shared.prefix  # what the protocol calls for each request
    checked: set[str] = set()
    return [
        ("no-op floor protocol (parse, answer 200)", median_us(feeder(NoopHttpAuthz(), NullTransport()))),
        (
            "envoy flavor's build (prefix strip, trust, Request)",
            median_us(
                lambda: build("GET", "/authz/public/orders/42?a=1", dict(headers), b"", "127.0.0.1", True, prefix)
            ),
        ),
        ("render allow with 2 headers", median_us(lambda: render(ALLOW, False, b"", checked))),
        ("pipeline.check (anonymous route, inline)", median_us(pipeline_only)),
        (
            "adapter, constant allow (parse+Request+render)",
            median_us(feeder(HttpAuthzProtocol(constant_shared), NullTransport())),
        ),
        (
            "adapter + real pipeline (default config)",
            median_us(feeder(HttpAuthzProtocol(real_shared), NullTransport())),
        ),
    ]


def main() -> None:
    rows = uvloop.run(measure())
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  wall us   cpu us  (medians)")
    for name, (wall, cpu) in rows:
        print(f"{name:<{width}}  {wall:7.2f}  {cpu:7.2f}")


if __name__ == "__main__":
    main()
