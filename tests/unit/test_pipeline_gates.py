"""The pipeline's gate phases (house issue #18): admit before authentication, meter after every allow."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sidecar import reasons
from sidecar.config import parse_config
from sidecar.limits import AdmitGate, MeterGate
from sidecar.pipeline import Pipeline
from sidecar.request import Decision, Request
from sidecar.routes import RouteTable
from sidecar.runtime import Runtime, RuntimeHolder, compile_runtime

TOO_MANY = Decision(allowed=False, status=429, reason="TooManyRequests", message="slow down")


class Refuse(AdmitGate):
    name = "refuse"

    def __init__(self, when: str) -> None:
        self.when = when
        self.seen = 0

    async def admit(self, request: Request, route: str) -> Decision | None:
        self.seen += 1
        return TOO_MANY if request.path.startswith(self.when) else None


class Count(MeterGate):
    name = "count"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    async def meter(self, request: Request, route: str, allowed: Decision) -> Decision | None:
        self.seen += 1
        return TOO_MANY if self.seen > self.limit else None


class Broken(MeterGate):
    name = "broken"

    async def meter(self, request: Request, route: str, allowed: Decision) -> Decision | None:
        raise RuntimeError("a bug in a gate")


def runtime_with(tmp_path: Path, admit: tuple[AdmitGate, ...] = (), meter: tuple[MeterGate, ...] = ()) -> Runtime:
    text = (
        "plugins: [tests.e2e.plugins.token]\n"
        "authorizers:\n  tok: {type: test-token}\n"
        "routes:\n  - {match: 'ANY /{proxy+}', authorizer: tok}\n"
    )
    runtime = compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))
    match = runtime.routes.match("GET", "/x")
    assert match is not None
    route = replace(match.target, admit_gates=admit, meter_gates=meter)
    return replace(runtime, routes=RouteTable([(route.key, route)]))


def request(path: str, token: str = "alice") -> Request:
    return Request(method="GET", raw_path=path, path=path, headers={"x-token": token}, time=1e9)


async def test_admit_gates_refuse_before_authentication(tmp_path: Path) -> None:
    gate = Refuse("/blocked")
    pipeline = Pipeline(RuntimeHolder(runtime_with(tmp_path, admit=(gate,))))
    assert (await pipeline.decide(request("/ok"))).allowed
    refused = await pipeline.decide(request("/blocked", token="bad-token"))  # a bad token never gets looked at
    assert (refused.status, refused.reason, refused.message) == (429, TOO_MANY.reason, TOO_MANY.message)
    assert refused.route and refused.authorizer  # where it was refused, for logs and metrics
    assert gate.seen == 2


async def test_meter_gates_run_on_cached_allows_and_never_on_denies(tmp_path: Path) -> None:
    gate = Count(limit=2)
    pipeline = Pipeline(RuntimeHolder(runtime_with(tmp_path, meter=(gate,))))
    assert pipeline.holder.current.cache is not None  # the default config caches allows
    first, second = await pipeline.decide(request("/x")), await pipeline.decide(request("/x"))
    assert first.allowed and second.allowed
    third = await pipeline.decide(request("/x"))  # served from the cache, still metered
    assert (third.allowed, third.status, third.reason, third.message) == (False, 429, "TooManyRequests", "slow down")
    assert third.principal is not None and third.principal.id == "alice"  # the decision log says who was metered
    assert (third.route, third.authorizer) == ("ANY /{proxy+}", "tok")
    denied = await pipeline.decide(request("/x", token="bad-token"))
    assert not denied.allowed and denied.reason == "TokenInvalid"
    assert gate.seen == 3  # the denied request consumed nothing


async def test_a_gate_that_fails_is_a_deny(tmp_path: Path) -> None:
    pipeline = Pipeline(RuntimeHolder(runtime_with(tmp_path, meter=(Broken(),))))
    decision = await pipeline.decide(request("/x"))
    assert not decision.allowed and decision.reason == reasons.INTERNAL_ERROR


async def test_explaining_pipelines_name_the_gate_that_refused(tmp_path: Path) -> None:
    admit, meter = Refuse("/blocked"), Count(limit=0)
    pipeline = Pipeline(RuntimeHolder(runtime_with(tmp_path, admit=(admit,), meter=(meter,))), explain=True)
    refused = await pipeline.decide(request("/blocked"))
    assert [(s.stage, s.outcome) for s in refused.explanation] == [("route", "pass"), ("admit", "deny")]
    assert refused.explanation[-1].summary == "gate refuse refused: TooManyRequests: slow down"
    assert refused.explanation[-1].facts == (("status", "429"),)
    metered = await pipeline.decide(request("/x"))
    assert [(s.stage, s.outcome) for s in metered.explanation] == [
        ("route", "pass"),
        ("admit", "pass"),
        ("authenticate", "pass"),
        ("policy", "pass"),
        ("meter", "deny"),
    ]
    assert metered.explanation[1].summary == "gate refuse let the request through"
    assert metered.principal is not None and metered.principal.id == "alice"
