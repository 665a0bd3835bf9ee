"""One request, one direction, in named phases: match -> admit gates -> cached(identify -> scopes -> policy) ->
meter gates -> Decision.

The pipeline knows nothing of transports: the gRPC and HTTP adapters both call `Pipeline.check(request)` and
render the `Decision` it returns. It never raises: every failure, including a bug in an authorizer, becomes a
deny with a reason code (fail closed). It also records what every transport needs recorded (latency histograms,
decision counters, decision logs), so a new transport gets observability for free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from time import perf_counter
from typing import Any, TypeVar

from . import reasons
from .authorizers.base import Authorizer, IdentitySide
from .explanation import ADMIT, AUTHENTICATE, DENY, METER, PASS, POLICY, ROUTE, SCOPES, Step, listed, shown_value, when
from .limits import AdmitGate, MeterGate
from .logs import DecisionLogger
from .memo import BoundedMemo
from .metrics import RECORDER, Recorder
from .policy import (
    AUTHENTICATED,
    NOT_AUTHENTICATED,
    CompiledPolicy,
    EvalContext,
    Evaluation,
    Outcome,
    StatementRef,
    authorize,
    evaluate_all,
)
from .policy.conditions import template_keys
from .policy.context import AUTHORIZER_AWS_KEYS, AWS_PREFIX, HEADER_PREFIX, REQUEST_KEYS, origin_value
from .policy.document import StatementSpec
from .policy.endpoints import AUTHORIZER_ALLOWS
from .policy.variables import has_variables, parse_template
from .reasons import Denied
from .request import ANONYMOUS, Decision, Principal, Request, header_safe, judged_method
from .routes import AmbiguousPath
from .runtime import DEFAULT_IDENTITY_HEADERS, CompiledRoute, Runtime, RuntimeHolder
from .settings import UpstreamHeaderSettings

log = logging.getLogger(__name__)

_MAX_ALLOW_MEMO = 4096
NO_ROUTE = reasons.deny(reasons.MISSING_AUTHENTICATION_TOKEN, "Missing Authentication Token")
AMBIGUOUS_PATH = reasons.deny(
    reasons.MALFORMED_REQUEST,
    "The request path is ambiguous (a dot or empty segment, ';', '#' or an encoded separator)",
    400,
)


_INSUFFICIENT_SCOPE = reasons.deny(reasons.INSUFFICIENT_SCOPE, "The token lacks a scope this route requires")
"""The scopes deny; each one is this with the route, the authorizer and the caller filled in."""
UNSENDABLE_IDENTITY = reasons.INTERNAL
"""An allow whose identity could not reach the upstream unchanged: denied (fail closed) rather than sent."""


def sendable(principal: Principal) -> bool:
    """Whether every value this principal puts in an upstream header arrives as it is (`header_safe`).

    Authorizers check what they read (JWT: `InvalidClaim`); this is the pipeline's own last check, for every
    authorizer type, run once per principal object on its first allow (the allow memo keeps the rest). A value
    Envoy refuses would turn the allow into a 503, and one a parser trims would name someone else."""
    if not header_safe(principal.id):
        log.error("authorizer %s produced a principal id that cannot be sent upstream; denying", principal.authorizer)
        return False
    for name, value in principal.upstream_headers:
        if value and not header_safe(value):
            log.error("authorizer %s produced an unsendable %s value; denying", principal.authorizer, name)
            return False
    return True


def first_phase_policy(policy: CompiledPolicy) -> CompiledPolicy | None:
    """The part of a resource policy judged before an authorizer that asks for it runs (`resource_policy_first`):
    its Deny statements whose every condition key and policy variable the request alone decides (`aws:SourceIp`,
    `request:header/...`, the keys no caller supplies), each named as in `policy`; None when it has none."""
    document = policy.document
    denies = tuple(s for s in document.statements if s.effect == "Deny" and _request_decides(s, document.variables))
    return CompiledPolicy(replace(document, statements=denies)) if denies else None


def _request_decides(statement: StatementSpec, variables: bool) -> bool:
    keys = {condition.key.lower() for condition in statement.conditions}
    for condition in statement.conditions:
        keys |= template_keys(condition.values, condition.operator.family, variables)
    for resource in statement.resources if variables else ():
        if has_variables(resource):
            keys |= parse_template(resource).keys
    return all(_request_key(key) for key in keys)


def _request_key(key: str) -> bool:
    """Whether a (lower-cased) key has the same value whoever the caller is: one of the request's, or an `aws:`
    key nothing supplies (absent either way)."""
    if key in REQUEST_KEYS or key.startswith(HEADER_PREFIX):
        return True
    return key.startswith(AWS_PREFIX) and key not in AUTHORIZER_AWS_KEYS


def _policies_apply(runtime: Runtime, principal: Principal, side: IdentitySide) -> bool:
    """Whether the identity side or the resource policy has a say (else the authorizer's word is final, unless a
    VPC endpoint's policy speaks)."""
    return runtime.resource_policy is not None or runtime.private_api or bool(principal.policies) or side == "policies"


def _origin_key(runtime: Runtime, request: Request) -> str:
    """What of the origin an outcome depends on besides the principal, method and path: the VPC endpoint, when
    the config has endpoint policies (a verdict through one endpoint is never reused for another, or for none)."""
    if runtime.endpoint_policies is None:
        return ""
    settings = runtime.context_settings
    return origin_value(request, "vpce", settings.vpce_header) or ""


def _combined(runtime: Runtime, ctx: EvalContext, principal: Principal, side: IdentitySide) -> Outcome:
    """The identity side and the resource policy combined (`Pipeline._authorize`)."""
    identity: Evaluation | None
    if principal.policies or side == "policies":
        identity = evaluate_all(principal.policies, ctx) or NOT_AUTHENTICATED
    elif side == "anonymous" or principal is ANONYMOUS:
        identity = None  # an open route: only the resource policy can allow
    else:
        identity = AUTHENTICATED  # JWT/Cognito: authenticated callers are allowed unless a policy denies
    resource = runtime.resource_policy.evaluate(ctx) if runtime.resource_policy is not None else None
    same_account = not principal.account or principal.account == runtime.config.api.account
    return authorize(identity, resource, same_account=same_account, private_api=runtime.private_api)


def _label(deciding: StatementRef | None) -> str:
    """The deciding statement's name as a decision carries it to logs: a Sid a handler wrote (control characters,
    any length) is escaped and cut (`shown_value`)."""
    return shown_value(deciding.label) if deciding is not None else ""


def allow_decision(
    route: CompiledRoute,
    principal: Principal,
    names: UpstreamHeaderSettings,
    identity: frozenset[str] = DEFAULT_IDENTITY_HEADERS,
) -> Decision:
    """The allow `Decision` for `principal` on `route`, with the upstream identity headers configured.

    Every name in `identity` (all the headers any authorizer of the config can set) that this allow does not set
    is removed from the upstream request, and so is one the principal leaves empty (a claim the token lacks):
    whatever the route, the upstream reads these headers only from us. What differs per principal stays out of
    `headers` where it can (the id goes in through `identity_header`), so the allows of one route share one
    `headers` tuple: cached decisions are the sidecar's size.
    """
    headers = [(name, value) for name, value in principal.upstream_headers if value]
    headers.extend(route.allow_headers)  # the route's allow template
    sent = [name for name, _ in headers]
    if names.principal:
        sent.append(names.principal)
    return Decision(
        allowed=True,
        status=200,
        reason=reasons.ALLOWED if principal.kind != "anonymous" else reasons.ANONYMOUS,
        headers=tuple(headers) if principal.upstream_headers else _shared(tuple(headers)),
        headers_to_remove=_shared(tuple(sorted(identity.difference(sent)))),
        principal=principal.without_claims(),
        route=route.key,
        authorizer=route.authorizer.name,
        ttl=None,
        identity_header=names.principal or "",
    )


_T = TypeVar("_T", tuple[str, str], tuple[str, ...], tuple[tuple[str, str], ...])
_SHARED: BoundedMemo[Any, Any] = BoundedMemo(_MAX_ALLOW_MEMO)


def _shared(value: _T) -> _T:
    """One object for a tuple that is the same on every decision of a route (cached decisions hold them)."""
    found: _T | None = _SHARED.get(value)
    return found if found is not None else _SHARED.put(value, value)


_COUNTED = Decision(allowed=True, status=200, reason=reasons.ALLOWED)
"""What `_admit` answers when only count-mode gates spoke (their names in `gate`)."""


def _joined(first: str, second: str) -> str:
    return f"{first},{second}" if first and second else first or second


def _metered(refused: Decision, route: str, authorizer: str, principal: Principal | None = None) -> Decision:
    """A gate's refusal as the decision of this request: where, by which route's authorizer and (after an allow)
    who was refused, for logs and metrics (a gate answers with a shared deny that names no one)."""
    if refused.principal is principal and refused.route and refused.authorizer:
        return refused
    return replace(
        refused,
        principal=refused.principal or principal,
        route=refused.route or route,
        authorizer=refused.authorizer or authorizer,
    )


class Pipeline:
    """Decides requests against whatever runtime the holder currently serves."""

    def __init__(
        self,
        holder: RuntimeHolder,
        decision_log: DecisionLogger | None = None,
        recorder: Recorder = RECORDER,
        explain: bool = False,
    ) -> None:
        self.holder = holder
        self.decision_log = decision_log
        self.recorder = recorder
        # Allow decisions by (route, principal object). Authorizers hand out the same Principal object for a
        # repeated credential (token caches), so a warm request reuses the Decision and its encoded response.
        self._allowed: BoundedMemo[tuple[CompiledRoute, Principal, str], Decision] = BoundedMemo(_MAX_ALLOW_MEMO)
        self._allowed_for: Runtime | None = None
        """The runtime whose routes key `_allowed` and whose policies `_outcomes` remembers."""
        self._outcomes: BoundedMemo[tuple[Principal, str, str, str], tuple[Outcome, str]] = BoundedMemo(_MAX_ALLOW_MEMO)
        """Policy verdicts (and the deciding statement's label) by (principal object, method, path, VPC endpoint),
        where no policy involved reads more of the request than that (`CompiledPolicy.reads_request`): a cached
        Lambda result or a repeated SigV4 caller on a known path is then judged without evaluating anything. The
        endpoint is "" unless the config has endpoint policies (`_origin_key`)."""
        self._remember_outcomes = False
        """Whether the current runtime's resource policy lets `_outcomes` remember verdicts."""
        self._first_phase: CompiledPolicy | None = None
        self._first_phase_of: CompiledPolicy | None = None
        """The resource policy `_first_phase` was picked from (`_resource_denies`): one per config load."""
        self.explain = explain
        """Attach an explanation to every decision, stage by stage (`sidecar.explanation`): for `check`, never
        while serving (it costs text per request and bypasses the decision cache)."""

    async def check(self, request: Request) -> Decision:
        """Decide one request and record it. Never raises."""
        recorder = self.recorder
        recorder.in_flight += 1
        start = perf_counter()
        try:
            decision, layer = await self._decide(request)
        finally:
            recorder.in_flight -= 1
        elapsed = perf_counter() - start
        recorder.check(decision.authorizer, decision.allowed, decision.reason, elapsed)
        if self.decision_log is not None:
            self.decision_log.record(request, decision, elapsed, layer)
        return decision

    async def decide(self, request: Request) -> Decision:
        """Decide one request without recording it. Never raises."""
        return (await self._decide(request))[0]

    async def _decide(self, request: Request) -> tuple[Decision, str]:
        """The decision and the cache layer that supplied it ("" when computed), on the runtime current when the
        request arrived: a reload stops the one it replaces only once the decisions using it are done
        (`RuntimeHolder.swap`)."""
        runtime, users = self.holder.current, self.holder.users
        users.count += 1
        try:
            return await self._decide_on(runtime, request)
        finally:
            users.leave()

    async def _decide_on(self, runtime: Runtime, request: Request) -> tuple[Decision, str]:
        # Explaining (`check --explain`, never while serving): each stage that runs appends its step here.
        steps: list[Step] | None = [] if self.explain else None
        try:
            match = runtime.routes.match(judged_method(request.method), request.path)
        except AmbiguousPath:
            return await self._unrouted(runtime, request, AMBIGUOUS_PATH, steps, _ambiguous_step, request), ""
        if match is None:
            return await self._unrouted(runtime, request, NO_ROUTE, steps, _no_route_step, request, runtime), ""
        route = match.target
        if steps is not None:
            steps.append(_route_step(request, route, runtime))
        counted = ""
        if route.admit_gates:
            refused = await self._admit(route.admit_gates, route.key, request, steps)
            if refused is not None:
                if not refused.allowed:
                    return _explained(_metered(refused, route.key, route.authorizer.name), steps), ""
                counted = refused.gate  # a count-mode rule went over: noted on the decision, nothing refused
        # The cached phase, inline (one coroutine less per Check): identify -> scopes -> policy, or the cache.
        decision: Decision | None = None
        layer = ""
        cache, plan = runtime.cache, route.cache_plan
        fingerprint = (
            route.authorizer.fingerprint(request) if cache is not None and plan is not None and steps is None else None
        )
        if fingerprint is None or cache is None or plan is None:
            decision = await self._compute(runtime, route, request, steps)
        else:
            start = perf_counter()
            context = (
                EvalContext(request, ANONYMOUS, runtime.config.api, runtime.context_settings)
                if plan.request_keys
                else None
            )
            key = plan.key(request, fingerprint, context)
            decision = cache.get_local(key)
            layer = "local"
            if decision is None and cache.remote is not None:
                decision = await cache.get_remote(key, plan)
                layer = "redis"
            self.recorder.stage("cache", perf_counter() - start)
            if decision is None:
                layer = ""
                decision = await self._compute(runtime, route, request)
                cache.put(key, decision, plan)
        if route.meter_gates and decision.allowed:
            if route.meter_now:
                decision = self._meter_now(route, request, decision, steps)
            else:
                decision = await self._meter(route, request, decision, steps)
        if counted:
            decision = replace(decision, gate=_joined(counted, decision.gate))
        return (decision if steps is None else _explained(decision, steps)), layer

    async def _unrouted(
        self,
        runtime: Runtime,
        request: Request,
        answer: Decision,
        steps: list[Step] | None,
        last: Callable[..., Step],
        *args: Any,
    ) -> Decision:
        """The answer to a request no route takes, after the rate rules that watch every request (a scanner
        probing unknown paths is counted and blocked like any other caller)."""
        gates = runtime.gates.unrouted if runtime.gates is not None else ()
        if gates:
            refused = await self._admit(gates, "", request, steps)
            if refused is not None and not refused.allowed:
                return _explained(refused, steps)
            if refused is not None:
                answer = replace(answer, gate=refused.gate)
        return _explained(answer, steps, last, *args)

    async def _admit(
        self, gates: tuple[AdmitGate, ...], route: str, request: Request, steps: list[Step] | None = None
    ) -> Decision | None:
        """The admit phase: the first gate that refuses decides; a gate that fails is a deny (fail closed). A gate
        may instead answer an *allowed* decision naming itself in `gate` (a count-mode rule over its limit): the
        request goes on, and the names of all such gates come back in one such decision."""
        counted = ""
        start = perf_counter()
        for gate in gates:
            try:
                refused = await gate.admit(request, route)
            except Exception:
                log.exception("admit gate %s failed on route %s; denying", gate.name, route or "(none)")
                refused = reasons.INTERNAL
            if steps is not None:
                steps.append(_gate_step(ADMIT, gate.name, refused))
            if refused is not None:
                if not refused.allowed:
                    self.recorder.stage("admit", perf_counter() - start)
                    return refused
                counted = _joined(counted, refused.gate)
        self.recorder.stage("admit", perf_counter() - start)
        return replace(_COUNTED, gate=counted) if counted else None

    async def _meter(
        self, route: CompiledRoute, request: Request, allowed: Decision, steps: list[Step] | None = None
    ) -> Decision:
        """The meter phase, after an allow (cached ones too): the first gate that refuses replaces the allow. The
        refusal keeps the allowed caller (`principal`), so its decision log line says who was throttled."""
        start = perf_counter()
        decision = allowed
        for gate in route.meter_gates:
            try:
                refused = await gate.meter(request, route.key, allowed)
            except Exception:
                refused = _gate_failed(gate, route)
            decision, done = _gated(decision, allowed, gate, refused, steps)
            if done:
                break
        self.recorder.stage("meter", perf_counter() - start)
        return decision

    def _meter_now(
        self, route: CompiledRoute, request: Request, allowed: Decision, steps: list[Step] | None = None
    ) -> Decision:
        """`_meter` when every gate is `synchronous` (in-process counters): no coroutine per Check."""
        start, decision = perf_counter(), allowed
        for gate in route.meter_gates:
            try:
                refused = gate.meter_now(request, route.key, allowed)
            except Exception:
                refused = _gate_failed(gate, route)
            decision, done = _gated(decision, allowed, gate, refused, steps)
            if done:
                break
        self.recorder.stage("meter", perf_counter() - start)
        return decision

    async def _compute(
        self, runtime: Runtime, route: CompiledRoute, request: Request, steps: list[Step] | None = None
    ) -> Decision:
        """Authenticate and authorize, with no cache involved. Every deny after a successful authentication
        keeps the verified principal (claims dropped), for decision logs: who was refused, not only why."""
        authorizer = route.authorizer
        if runtime is not self._allowed_for and runtime is self.holder.current:
            self._serving(runtime)
        if authorizer.resource_policy_first and runtime.resource_policy is not None:
            first = self._resource_denies(runtime, request)
            if first is not None:
                if steps is not None:
                    steps.append(first.step(ANONYMOUS.id))
                refusal = first.to_denied().decision(route=route.key, authorizer=authorizer.name)
                return replace(refusal, statement=_label(first.deciding))
        authenticating = True
        try:
            start = perf_counter()
            principal = await authorizer.authenticate(request)
            authenticating = False
            self.recorder.stage("authenticate", perf_counter() - start)
            if steps is not None:
                steps.append(_identified_step(authorizer, principal))
            if route.scopes and not route.scopes & principal.scopes:
                if steps is not None:
                    steps.append(_scopes_step(route.scopes, principal.scopes))
                return replace(
                    _INSUFFICIENT_SCOPE,
                    route=route.key,
                    authorizer=authorizer.name,
                    principal=principal.without_claims(),
                )
            if steps is not None and route.scopes:
                steps.append(_scopes_step(route.scopes, principal.scopes))
            outcome, statement = self._policy_outcome(runtime, request, principal, authorizer.identity_side, steps)
        except Denied as denied:
            if authenticating:  # a refused credential was verified too (a bad token's signature): the stage's time
                self.recorder.stage("authenticate", perf_counter() - start)
            if steps is not None:
                steps.append(_refused_step(authorizer, denied))
            return denied.decision(route=route.key, challenge=authorizer.challenge, authorizer=authorizer.name)
        except Exception:
            log.exception("authorizer %s failed on route %s; denying", authorizer.name, route.key)
            if steps is not None:
                steps.append(Step(AUTHENTICATE, DENY, f"{authorizer.name} failed unexpectedly (see the log)"))
            return reasons.INTERNAL
        if steps is not None:
            steps.append(
                outcome.step(principal.arn or principal.id)
                if outcome is not None
                else Step(POLICY, PASS, "no policy applies: the authorizer's word is final")
            )
        if outcome is not None and not outcome.allowed:
            refusal = authorizer.policy_refusal(outcome).decision(route=route.key, authorizer=authorizer.name)
            return replace(refusal, principal=principal.without_claims(), statement=statement)
        if steps is not None:
            if not sendable(principal):
                steps.append(
                    Step(AUTHENTICATE, DENY, "the caller's identity cannot be sent upstream as it is (see the log)")
                )
                return UNSENDABLE_IDENTITY
            decision = allow_decision(route, principal, runtime.upstream_headers, runtime.identity_headers)
            return replace(decision, statement=statement) if statement else decision
        return self._allow(route, principal, runtime, statement)

    def _serving(self, runtime: Runtime) -> None:
        """A reload: the memos' keys hold the old runtime's routes and principals (and through them its
        authorizers), which would stay alive until the memos filled up, and its verdicts. Only the runtime the
        holder serves takes the memos over: a Check of the replaced one still finishing (it waited in a gate, or
        for Redis) is decided without them, so it can neither switch them back nor leave its verdicts in them."""
        self._allowed.clear()
        self._outcomes.clear()
        self._allowed_for = runtime
        policy, endpoints = runtime.resource_policy, runtime.endpoint_policies
        self._remember_outcomes = (policy is None or not policy.reads_request) and (
            endpoints is None or not endpoints.reads_request
        )

    def _resource_denies(self, runtime: Runtime, request: Request) -> Outcome | None:
        """The resource policy's explicit Deny of the anonymous caller, before authenticating (for authorizers
        that ask: `Authorizer.resource_policy_first`), or None: anything short of a Deny is decided later.

        Only the Denies the request alone decides are judged here (`first_phase_policy`, picked once per loaded policy):
        one on a key the authorizer supplies (`lambda:tenant`, `aws:userid`) is not known yet, and a negated
        operator or `Null` on a missing key matches, which would refuse everyone; it is judged after `authenticate`
        with the rest of the policy. With no such Deny there is no first phase at all."""
        policy = runtime.resource_policy
        assert policy is not None
        if policy is not self._first_phase_of:
            self._first_phase = first_phase_policy(policy)
            self._first_phase_of = policy
        first = self._first_phase
        if first is None:
            return None
        resource = first.evaluate(EvalContext(request, ANONYMOUS, runtime.config.api, runtime.context_settings))
        return authorize(None, resource) if resource.denied else None

    def _policy_outcome(
        self,
        runtime: Runtime,
        request: Request,
        principal: Principal,
        side: IdentitySide,
        steps: list[Step] | None = None,
    ) -> tuple[Outcome | None, str]:
        """The policy verdict and its deciding statement's label, or (None, "") when no policy can apply (then the
        authorizer's word is final). A verdict that only the principal and the resource decide is remembered
        (`_outcomes`; the `policy` stage times evaluations, not these lookups); never while explaining."""
        applies = _policies_apply(runtime, principal, side)
        if not applies and runtime.endpoint_policies is None:
            return None, ""
        remember = (
            steps is None
            and runtime is self._allowed_for  # a replaced runtime's last requests neither read nor fill the memo
            and self._remember_outcomes
            and not any(policy.reads_request for policy in principal.policies)
        )
        key = (principal, request.method, request.path, _origin_key(runtime, request)) if remember else None
        if key is not None:
            found = self._outcomes.get(key)
            if found is not None:
                return found
        start = perf_counter()
        outcome = self._authorize(runtime, request, principal, side, applies)
        self.recorder.stage("policy", perf_counter() - start)
        if outcome is AUTHORIZER_ALLOWS:
            return None, ""  # only an endpoint policy could have spoken, and the request came through no endpoint
        judged = (outcome, _label(outcome.deciding))
        if key is not None:
            self._outcomes.put(key, judged)
        return judged

    def _authorize(
        self, runtime: Runtime, request: Request, principal: Principal, side: IdentitySide, applies: bool = True
    ) -> Outcome:
        """Evaluate the identity side and the resource policy, combined as API Gateway combines them, then the VPC
        endpoint's policy (`applies` False: only the endpoint's can apply, else the authorizer's word stands). The
        side is what the authorizer class declares (`Authorizer.identity_side`); the shared ANONYMOUS principal is
        anonymous whoever returns it, so a plugin cannot make it count as authenticated by forgetting to say so."""
        ctx = EvalContext(request, principal, runtime.config.api, runtime.context_settings)
        outcome = _combined(runtime, ctx, principal, side) if applies else AUTHORIZER_ALLOWS
        endpoints = runtime.endpoint_policies
        return endpoints.judge(ctx, outcome) if endpoints is not None else outcome

    def _allow(self, route: CompiledRoute, principal: Principal, runtime: Runtime, statement: str) -> Decision:
        key = (route, principal, statement)
        decision = self._allowed.get(key) if runtime is self._allowed_for else None
        if decision is None:
            if not sendable(principal):
                return UNSENDABLE_IDENTITY
            decision = allow_decision(route, principal, runtime.upstream_headers, runtime.identity_headers)
            if statement:
                decision = replace(decision, statement=statement)
            if runtime is self._allowed_for:
                self._allowed.put(key, decision)
        return decision


# -- explanation steps (built only when the pipeline explains: `check`, never while serving) ------------------


def _explained(
    decision: Decision, steps: list[Step] | None, last: Callable[..., Step] | None = None, *args: Any
) -> Decision:
    """`decision` with the steps taken so far (and the step `last(*args)` builds) as its explanation; the
    decision itself when not explaining."""
    if steps is None:
        return decision
    if last is not None:
        steps.append(last(*args))
    return replace(decision, explanation=tuple(steps))


def _judged(request: Request) -> tuple[tuple[str, str], ...]:
    method = judged_method(request.method)
    sent = "" if method == request.method else f" (sent as {shown_value(request.method)})"
    return (("method", method + sent), ("path", shown_value(request.path)))


def _ambiguous_step(request: Request) -> Step:
    return Step(
        ROUTE,
        DENY,
        f"{reasons.MALFORMED_REQUEST}: the path is ambiguous (a dot or empty segment, ';', '#' or an encoded "
        "separator, which upstreams resolve differently), so no route is judged",
        _judged(request),
    )


MAX_LISTED_ROUTES = 20
"""Route keys a no-route explanation lists (a config with more says how many there are)."""


def _no_route_step(request: Request, runtime: Runtime) -> Step:
    keys = [route.match.strip() for route in runtime.config.routes]
    routes = listed(keys, limit=MAX_LISTED_ROUTES) if keys else "(none configured)"
    return Step(
        ROUTE,
        DENY,
        f"{reasons.MISSING_AUTHENTICATION_TOKEN}: no route key matches {judged_method(request.method)} "
        f"{shown_value(request.path)} (API Gateway's answer for an unknown route), and there is no $default route",
        (*_judged(request), ("routes", routes)),
    )


def _route_step(request: Request, route: CompiledRoute, runtime: Runtime) -> Step:
    facts = [("authorizer", _named(route.authorizer))]
    if route.scopes:
        facts.append(("required_scopes", listed(route.scopes) + " (any one of)"))
    method = judged_method(request.method)
    sent = "" if method == request.method else f" ({request.method} is judged as {method})"
    return Step(ROUTE, PASS, f"{method} {shown_value(request.path)} matched route {route.key}{sent}", tuple(facts))


def _named(authorizer: Authorizer) -> str:
    return f"{authorizer.name} (type {authorizer.kind})" if authorizer.kind else authorizer.name


def _gate_failed(gate: MeterGate, route: CompiledRoute) -> Decision:
    """A meter gate that raised: logged, and a deny (fail closed)."""
    log.exception("meter gate %s failed on route %s; denying", gate.name, route.key)
    return reasons.INTERNAL


def _gated(
    decision: Decision, allowed: Decision, gate: MeterGate, refused: Decision | None, steps: list[Step] | None
) -> tuple[Decision, bool]:
    """One meter gate's answer applied to the decision so far: (the decision, whether metering is over). A
    refusal replaces the allow and keeps the allowed caller (`principal`), so its decision log line says who was
    throttled; a count-mode rule over its limit is noted and the allow stands."""
    if steps is not None:
        steps.append(_gate_step(METER, gate.name, refused))
    if refused is None:
        return decision, False
    if refused.allowed:
        return replace(decision, gate=_joined(decision.gate, refused.gate)), False
    return _metered(refused, allowed.route, allowed.authorizer, allowed.principal), True


def _gate_step(stage: str, gate: str, refused: Decision | None) -> Step:
    if refused is None:
        return Step(stage, PASS, f"gate {gate} let the request through")
    if refused.allowed:
        return Step(stage, PASS, f"gate {gate} let the request through, over the limit of {refused.gate} (count mode)")
    said = f"{refused.reason}: {refused.message}" if refused.message else refused.reason
    return Step(stage, DENY, f"gate {gate} refused: {said}", (("status", str(refused.status)),))


def _identified_step(authorizer: Authorizer, principal: Principal) -> Step:
    if principal is ANONYMOUS or principal.kind == ANONYMOUS.kind:
        return Step(AUTHENTICATE, PASS, f"{_named(authorizer)} checks no credential: the caller is anonymous")
    facts = [("principal", f"{principal.kind} {shown_value(principal.id)}")]
    if principal.arn and principal.arn != principal.id:
        facts.append(("arn", principal.arn))
    if principal.account:
        facts.append(("account", principal.account))
    if principal.policies or authorizer.identity_side == "policies":
        sources = (str(getattr(policy, "source", policy)) for policy in principal.policies)
        facts.append(("identity_policies", listed(sources, empty="(none attached)")))
    if principal.scopes:
        facts.append(("token_scopes", listed(principal.scopes)))
    if principal.expires_at is not None:
        facts.append(("expires_at", when(principal.expires_at)))
    return Step(AUTHENTICATE, PASS, f"{_named(authorizer)} identified {shown_value(principal.id)}", tuple(facts))


def _scopes_step(required: frozenset[str], held: frozenset[str]) -> Step:
    facts = (("required_scopes", listed(required) + " (any one of)"), ("token_scopes", listed(held)))
    granted = required & held
    if granted:
        return Step(SCOPES, PASS, f"the token holds {listed(granted)}", facts)
    return Step(
        SCOPES,
        DENY,
        f"{reasons.INSUFFICIENT_SCOPE}: the token holds none of the scopes this route requires",
        facts,
    )


def _refused_step(authorizer: Authorizer, denied: Denied) -> Step:
    """The authenticate stage's refusal: what the authorizer's explainer says, else its reason and message."""
    step = Step(AUTHENTICATE, DENY, f"{denied.reason}: {denied.message}")
    if denied.explain is not None:
        try:
            step = denied.explain()
        except Exception:  # an explanation must never turn a deny into a crash
            log.exception("authorizer %s: explaining %s failed", authorizer.name, denied.reason)
    return step.with_facts(("authorizer", _named(authorizer)))
