"""A Lambda event's `sourceIp` is the address `aws:SourceIp` reads: with `policy.trusted_proxy_hops`, the client
behind the trusted proxies (from X-Forwarded-For), not the proxy that reached Envoy."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.policy import EvalContext
from sidecar.request import ANONYMOUS, Request
from sidecar.runtime import RuntimeHolder, compile_runtime

from . import handlers
from .lambda_testkit import HANDLERS, config_text, request

CLIENT = "198.51.100.7"
PROXY = "10.0.0.2"
"""The load balancer in front of Envoy: Envoy's peer, which appended the client to X-Forwarded-For."""


@pytest.fixture(autouse=True)
def _reset() -> None:
    handlers.reset()


def _pipeline(tmp_path: Path, settings: str, hops: int) -> Pipeline:
    extra = f"policy:\n  trusted_proxy_hops: {hops}\n"
    config = parse_config(config_text(settings, extra=extra), str(tmp_path / "config.yaml"))
    return Pipeline(RuntimeHolder(compile_runtime(config)))


def _source_ip(pipe: Pipeline) -> str:
    """What `aws:SourceIp` is for the test's request, as the policy stage computes it."""
    runtime = pipe.holder.current
    ctx = EvalContext(_request(), ANONYMOUS, runtime.config.api, runtime.context_settings)
    value = ctx.get("aws:sourceip")
    assert isinstance(value, str)
    return value


def _request() -> Request:
    return request(headers={"x-token": "allow-alice", "x-forwarded-for": CLIENT}, source_address=PROXY)


REST = f"handler: {HANDLERS}:request_handler\nevent_format: request\nidentity_sources: method.request.header.x-token\n"
HTTP_API = f"handler: {HANDLERS}:v2_policy_handler\nevent_format: http-2.0\nidentity_sources: $request.header.x-token\n"


@pytest.mark.parametrize("hops, expected", [(1, CLIENT), (0, PROXY)])
@pytest.mark.parametrize(
    "settings, where",
    [(REST, ("requestContext", "identity", "sourceIp")), (HTTP_API, ("requestContext", "http", "sourceIp"))],
    ids=["rest", "http-2.0"],
)
async def test_the_events_source_ip_is_aws_source_ip(
    tmp_path: Path, settings: str, where: tuple[str, ...], hops: int, expected: str
) -> None:
    pipe = _pipeline(tmp_path, settings, hops)
    assert (await pipe.check(_request())).allowed
    (event,) = handlers.CALLS
    for key in where:
        event = event[key]
    assert event == expected == _source_ip(pipe)
