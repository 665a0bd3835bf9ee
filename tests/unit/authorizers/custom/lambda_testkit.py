"""What the `lambda` authorizer tests share: configs naming the handlers of `handlers.py`, a pipeline over the
real config loader and runtime, requests, and a clock the test moves."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.request import Request
from sidecar.runtime import RuntimeHolder, compile_runtime

HANDLERS = "tests.unit.authorizers.custom.handlers"
API = "api:\n  id: a1b2c3d4e5\n  stage: prod\n  account: '123456789012'\n  region: us-east-1\n"
ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"
T0 = 1_800_000_000.0
ROUTES = "  - {match: 'GET /pets/{id}', authorizer: auth}\n  - {match: 'ANY /{proxy+}', authorizer: auth}\n"


class Clock:
    """The authorizers' wall clock (`BuildContext.clock`), moved by the test."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config_text(settings: str, routes: str | None = None, extra: str = "") -> str:
    """A config with one `lambda` authorizer `auth` (its settings indented under it) and routes naming it."""
    body = textwrap.indent(textwrap.dedent(settings).strip(), "    ")
    routes = routes or ROUTES
    return f"{API}authorizers:\n  auth:\n    type: lambda\n{body}\nroutes:\n{routes}{extra}"


def pipeline(
    tmp_path: Path,
    settings: str,
    routes: str | None = None,
    policy: dict[str, Any] | None = None,
    clock: Clock | None = None,
    explain: bool = False,
) -> Pipeline:
    """A pipeline over the real loader and runtime, started (thread pools exist) by the first call."""
    extra = ""
    if policy is not None:
        path = tmp_path / "resource-policy.json"
        path.write_text(json.dumps(policy))
        extra = f"resource_policy: {path}\n"
    config = parse_config(config_text(settings, routes, extra), str(tmp_path / "config.yaml"))
    runtime = compile_runtime(config, clock=clock or Clock())
    return Pipeline(RuntimeHolder(runtime), explain=explain)


def request(
    path: str = "/pets/7",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    query: str = "",
    **fields: Any,
) -> Request:
    raw = path + (f"?{query}" if query else "")
    all_headers = {"host": "api.example.test", "user-agent": "curl/8.5", **(headers or {})}
    return Request(
        method=method,
        raw_path=raw,
        path=path,
        headers=all_headers,
        host=all_headers["host"],
        source_address=fields.pop("source_address", "203.0.113.9"),
        time=fields.pop("time", T0),
        request_id=fields.pop("request_id", "req-1"),
        protocol=fields.pop("protocol", "HTTP/1.1"),
        **fields,
    )


def token(value: str) -> dict[str, str]:
    return {"authorization": value}


async def started(pipe: Pipeline) -> Pipeline:
    await pipe.holder.current.start()
    return pipe
