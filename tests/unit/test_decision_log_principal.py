"""The decision log names the verified caller even when a stage after authentication denies (scopes, policy,
meter), and the decision cache never hands one caller's deny, principal and all, to another.

Real parts: JWTs signed with `cryptography` keys and verified through a `jwks_file`, a real resource policy, the
default decision cache (in-process), and a real redis-server for the shared cache between two replicas.
"""

from __future__ import annotations

import asyncio
import io
import json
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import load_config
from sidecar.limits import MeterGate
from sidecar.logs import DecisionLogger
from sidecar.pipeline import Pipeline
from sidecar.request import Decision, Request
from sidecar.routes import RouteTable
from sidecar.runtime import Runtime, RuntimeHolder, compile_runtime
from tests.conftest import RedisServer
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, ISSUER, NOW, Issuer

ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"
ISSUER_KEYS = Issuer.default()


def write_config(tmp_path: Path, extra: str = "", policy: bool = True) -> Path:
    (tmp_path / "jwks.json").write_text(json.dumps(ISSUER_KEYS.jwks()))
    everyone = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*"}
    statements = [everyone, {**everyone, "Sid": "NoReports", "Effect": "Deny", "Resource": f"{ARN}/GET/reports"}]
    (tmp_path / "resource.json").write_text(json.dumps({"Version": "2012-10-17", "Statement": statements}))
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
            authorizers:
              corp: {{type: jwt, issuer: "{ISSUER}", audiences: [{AUDIENCE}], jwks_file: jwks.json}}
            routes:
              - {{match: "GET /admin", authorizer: corp, scopes: [admin]}}
              - {{match: "GET /reports", authorizer: corp}}
              - {{match: "GET /orders/{{id}}", authorizer: corp}}
            """
        )
        + extra
        + ("resource_policy: resource.json\n" if policy else "")
    )
    return config


def token(sub: str) -> str:
    return ISSUER_KEYS.token(ISSUER_KEYS.claims(sub=sub, exp=int(NOW) + 86_400 * 3650))


def request(path: str, sub: str) -> Request:
    headers = {"authorization": f"Bearer {token(sub)}", "host": "api"}
    return Request(method="GET", raw_path=path, path=path, headers=headers, time=NOW + 10)


class Throttle(MeterGate):
    """Refuses every allow with one shared Decision that names no one (as a usage plan's throttle would)."""

    name = "throttle"
    REFUSAL = Decision(allowed=False, status=429, reason="TooManyRequests", message="Too Many Requests")

    async def meter(self, request: Request, route: str, allowed: Decision) -> Decision | None:
        return self.REFUSAL


def metered(runtime: Runtime) -> Runtime:
    """`runtime` with the throttle on its orders route."""
    pairs = []
    for key in ("GET /admin", "GET /reports", "GET /orders/{id}"):
        match = runtime.routes.match("GET", {"GET /orders/{id}": "/orders/1"}.get(key, key.split(" ")[1]))
        assert match is not None
        route = match.target
        pairs.append((key, replace(route, meter_gates=(Throttle(),)) if key == "GET /orders/{id}" else route))
    return replace(runtime, routes=RouteTable(pairs))


async def started(config: Path) -> Runtime:
    runtime = compile_runtime(load_config(config))
    await runtime.start()
    assert await runtime.wait_ready(10)
    return runtime


def log_lines(stream: io.StringIO, pipeline: Pipeline) -> list[dict[str, Any]]:
    assert pipeline.decision_log is not None
    pipeline.decision_log.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    stream.seek(0)
    stream.truncate()
    return lines


async def test_the_decision_log_names_the_caller_a_later_stage_refused(tmp_path: Path) -> None:
    runtime = await started(write_config(tmp_path))
    try:
        stream = io.StringIO()
        pipeline = Pipeline(RuntimeHolder(metered(runtime)), decision_log=DecisionLogger(stream))
        await pipeline.check(request("/admin", "alice"))  # scopes: the token has no `admin`
        await pipeline.check(request("/reports", "bob"))  # policy: an explicit deny
        await pipeline.check(request("/orders/1", "carol"))  # meter: the throttle refuses the allow
        await pipeline.check(Request(method="GET", raw_path="/admin", path="/admin", headers={}, time=NOW))
        lines = log_lines(stream, pipeline)
        assert [(e["principal"], e["reason"], e["route"], e["authorizer"]) for e in lines] == [
            ("alice", "InsufficientScope", "GET /admin", "corp"),
            ("bob", "AccessDenied", "GET /reports", "corp"),
            ("carol", "TooManyRequests", "GET /orders/{id}", "corp"),
            (None, "TokenMissing", "GET /admin", "corp"),  # nobody was verified: no principal
        ]
        assert lines[1]["statement"] == "NoReports"
    finally:
        await runtime.stop()


@pytest.mark.parametrize("policy", [False, True], ids=["keyed-by-credential", "keyed-by-credential-and-request"])
async def test_a_cached_deny_stays_with_the_credential_it_was_decided_for(tmp_path: Path, policy: bool) -> None:
    runtime = await started(write_config(tmp_path, policy=policy))
    try:
        assert runtime.cache is not None and runtime.cache.local is not None  # the default config caches denies
        match = runtime.routes.match("GET", "/admin")
        assert match is not None and match.target.cache_plan is not None
        assert match.target.cache_plan.with_resource is policy  # both ways of keying a route's decisions
        stream = io.StringIO()
        pipeline = Pipeline(RuntimeHolder(runtime), decision_log=DecisionLogger(stream))
        for sub in ("alice", "alice", "bob", "alice", "bob"):
            decision = await pipeline.check(request("/admin", sub))
            assert decision.reason == "InsufficientScope"
            assert decision.principal is not None and decision.principal.id == sub
            assert not decision.principal.claims  # a cached deny keeps no claims
        lines = log_lines(stream, pipeline)
        assert [(e["principal"], e["cache"]) for e in lines] == [
            ("alice", ""),
            ("alice", "local"),
            ("bob", ""),
            ("alice", "local"),
            ("bob", "local"),
        ]
    finally:
        await runtime.stop()


async def test_replicas_sharing_redis_keep_each_callers_deny_their_own(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    extra = f"cache: {{redis: {{url: '{redis_server.url}', signing_key: shared-secret, timeout_ms: 500}}}}\n"
    config = write_config(tmp_path, extra)
    writer, reader = await started(config), await started(config)
    try:
        stream = io.StringIO()
        first = Pipeline(RuntimeHolder(writer))
        second = Pipeline(RuntimeHolder(reader), decision_log=DecisionLogger(stream))
        assert (await first.check(request("/admin", "alice"))).principal is not None
        assert writer.cache is not None and writer.cache.remote is not None
        while writer.cache.remote._pending:  # the write to Redis runs in the background
            await asyncio.wait(set(writer.cache.remote._pending), timeout=5)
        from_redis = await second.check(request("/admin", "alice"))
        other = await second.check(request("/admin", "bob"))
        assert from_redis.principal is not None and from_redis.principal.id == "alice"
        assert other.principal is not None and other.principal.id == "bob"
        assert [(e["principal"], e["reason"], e["cache"]) for e in log_lines(stream, second)] == [
            ("alice", "InsufficientScope", "redis"),
            ("bob", "InsufficientScope", ""),
        ]
    finally:
        await writer.stop()
        await reader.stop()
