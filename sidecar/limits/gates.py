"""The gates of API keys, usage plans and rate-based rules, compiled once per config (`compile_gates`).

- `UsagePlanGate` (meter phase, routes with `api_key_required`): the request's API key must be a known, enabled,
  unexpired key in a usage plan (else 403 `Forbidden`, API Gateway's INVALID_API_KEY); then the plan's throttle
  (a route override has a bucket of its own) and quota count it, atomically, in `Counters` (429 `Too Many
  Requests` / `Limit Exceeded`). It runs after the allow, cached or not, so a denied request costs no quota.
- `RateLimitGate` (AWS WAF's rate-based rules): before authentication (admit phase), so a flood of bad
  credentials is refused before any verification; a rule whose key needs the caller (`principal`, or `api_key`
  read from the authorizer) runs after the allow instead, since no caller is known before. `count` rules never
  refuse: over the limit they note themselves on the decision (`Decision.gate`, decision logs) and in metrics.

Refusals carry `Retry-After` and the RateLimit headers of draft-ietf-httpapi-ratelimit-headers-09
(`RateLimit-Policy: "throttle";q=100;w=2`, `RateLimit: "throttle";r=0;t=1`). Key values never reach a log or a
Redis key: keys are named by their id, and a rule's aggregation key is an HMAC-SHA256 of its parts under the
deployment's key secret (`limits.key_secret`), so what Redis holds cannot be checked against a guessed value.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .. import reasons
from ..metrics import GATE_DECISIONS, USAGE_KEY_DECISIONS, Tally, tally
from ..policy.context import ContextSettings, client_address, parse_ip
from ..request import Decision, Principal, Request, judged_method
from ..settings import ApiKeySettings, Config, ForwardedIpSettings, RateLimitSettings, UsagePlanSettings
from .apikeys import ApiKey, ApiKeyStore, judge_key
from .base import AdmitGate, MeterGate
from .counters import Admission, Counters, LocalCounters, Quota, Throttle, Window

if TYPE_CHECKING:
    from ..settings import ThrottleSettings

log = logging.getLogger(__name__)

__all__ = ["CompiledPlan", "GateSet", "RateLimitGate", "UsagePlanGate", "compile_gates"]

INVALID_API_KEY = reasons.deny(reasons.INVALID_API_KEY, "Forbidden", 403)
TOO_MANY_REQUESTS = "Too Many Requests"
LIMIT_EXCEEDED = "Limit Exceeded"
_COUNTED = Decision(allowed=True, status=200, reason=reasons.ALLOWED)
"""A count-mode rule over its limit: the request goes on, the rule's name in `gate` (see `Pipeline._admit`)."""
NO_FORWARDED_IP = "\x00no-address"
"""The one aggregation value of requests whose forwarded address is missing or invalid (`fallback: MATCH`)."""


def _throttle(settings: ThrottleSettings | None) -> Throttle | None:
    return Throttle(settings.rate, settings.burst) if settings is not None else None


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """What one plan applies on one route: the throttle (the route's override, or the plan's), its bucket's
    name (the route key for an override, "" for the plan-wide bucket) and the plan's quota."""

    throttle: Throttle | None
    bucket: str
    quota: Quota | None


@dataclass(frozen=True, slots=True)
class CompiledPlan:
    """A usage plan ready to meter: its limits per route, worked out once."""

    name: str
    default: PlanLimits
    routes: Mapping[str, PlanLimits]

    @classmethod
    def of(cls, name: str, settings: UsagePlanSettings) -> CompiledPlan:
        quota = settings.quota
        compiled = Quota(quota.limit, quota.period, quota.offset) if quota is not None else None
        routes = {
            key.strip(): PlanLimits(_throttle(override.throttle), key.strip(), compiled)
            for key, override in settings.routes.items()
        }
        return cls(name, PlanLimits(_throttle(settings.throttle), "", compiled), routes)

    def limits(self, route: str) -> PlanLimits:
        return self.routes.get(route, self.default)


def refusal(admission: Admission, reason: str, message: str, status: int, policy: str, gate: str) -> Decision:
    """The deny for a refused count, with `Retry-After` (whole seconds, at least 1) and the RateLimit headers."""
    retry = max(1, math.ceil(admission.retry_after))
    headers = (
        ("retry-after", str(retry)),
        ("ratelimit-policy", f'"{policy}";q={admission.limit};w={max(1, math.ceil(admission.window))}'),
        ("ratelimit", f'"{policy}";r={admission.remaining};t={max(0, math.ceil(admission.reset))}'),
    )
    return replace(reasons.deny(reason, message, status), headers=headers, gate=gate)


class UsagePlanGate(MeterGate):
    """API keys and their usage plans, after the allow (see the module docstring)."""

    name = "usage_plan"

    def __init__(
        self,
        keys: ApiKeyStore,
        settings: ApiKeySettings,
        plans: Mapping[str, CompiledPlan],
        counters: Counters,
        clock: Callable[[], float] = time.time,
        key_id_labels: bool = False,
    ) -> None:
        self.keys = keys
        self.header = settings.header
        self.from_authorizer = settings.source == "authorizer"
        self.plans = plans
        self.counters = counters
        self.clock = clock
        self.key_id_labels = key_id_labels
        self._tallies: dict[tuple[str, str], Tally] = {}
        self._admitted: dict[str, Tally] = {}
        """Each plan's `ok` tally, found with one lookup on the common allow."""
        self._refusal = counters.refusal if isinstance(counters, LocalCounters) else None
        """The in-process counters' synchronous meter, which builds an `Admission` only for a refusal."""
        self.synchronous = self._refusal is not None

    def presented(self, request: Request, principal: Principal | None) -> str | None:
        """The key value this request presents: its header, or the Lambda authorizer's `usageIdentifierKey`."""
        if self.from_authorizer:
            return getattr(principal, "usage_identifier_key", None)
        return request.headers.get(self.header)

    async def meter(self, request: Request, route: str, allowed: Decision) -> Decision | None:
        if self._refusal is not None:
            return self.meter_now(request, route, allowed)
        found = self._limits(request, route, allowed)
        if not isinstance(found, tuple):
            return found
        key, plan, limits = found
        admission = await self.counters.meter(f"{plan.name}:{key.id}", limits.throttle, limits.quota, limits.bucket)
        return self._judged(plan, key, admission)

    def meter_now(self, request: Request, route: str, allowed: Decision) -> Decision | None:
        """`meter` on the in-process counters: nothing to wait for, and an allow builds nothing."""
        assert self._refusal is not None, "meter_now needs the in-process counters"
        found = self._limits(request, route, allowed)
        if not isinstance(found, tuple):
            return found
        key, plan, limits = found
        admission = self._refusal(f"{plan.name}:{key.id}", limits.throttle, limits.quota, limits.bucket)
        if admission is not None:
            return self._judged(plan, key, admission)
        admitted = self._admitted.get(plan.name)
        if admitted is None or self.key_id_labels:
            self._ok(plan.name, key.id)
        else:
            admitted.n += 1  # `_ok`, inline: Tally.inc
        return None

    def _limits(
        self, request: Request, route: str, allowed: Decision
    ) -> tuple[ApiKey, CompiledPlan, PlanLimits] | Decision | None:
        """The request's key, plan and the plan's limits on `route`; or the 403 of a key that cannot be used, or
        None for a plan that limits nothing here (counted as admitted)."""
        value = self.presented(request, allowed.principal) if self.from_authorizer else request.headers.get(self.header)
        key = self.keys.current().find(value) if value else None
        plan = self.plans.get(key.plan) if key is not None and key.plan is not None else None
        expires = key.expires if key is not None else None
        if key is None or plan is None or not key.enabled or (expires is not None and self._now(request) >= expires):
            return self._invalid(key, value, route, self._now(request))
        limits = plan.routes.get(route, plan.default)  # `plan.limits`, inline: hot
        if limits.throttle is None and limits.quota is None:
            self._ok(plan.name, key.id)
            return None
        return key, plan, limits

    def _judged(self, plan: CompiledPlan, key: ApiKey, admission: Admission) -> Decision | None:
        """Count a metered request; None when admitted, else its 429."""
        self._count(plan.name, key.id, admission.reason)
        if admission.allowed:
            return None
        gate = f"{self.name}:{plan.name}"
        if admission.reason == "quota":
            return refusal(admission, reasons.QUOTA_EXCEEDED, LIMIT_EXCEEDED, 429, "quota", gate)
        return refusal(admission, reasons.THROTTLED, TOO_MANY_REQUESTS, 429, "throttle", gate)

    def _now(self, request: Request) -> float:
        return request.time or self.clock()

    def _invalid(self, key: ApiKey | None, value: str | None, route: str, now: float) -> Decision:
        """The 403 for a key that is missing, unknown, disabled, expired or in no plan, counted by why."""
        why = judge_key(key, value, now)
        in_plan = key is not None and key.plan is not None and key.plan in self.plans
        self._tally(key.plan if key is not None and key.plan else "", why)
        if key is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("api key %s refused on route %s: %s", key.id, route, why if in_plan else "in no usage plan")
        return replace(INVALID_API_KEY, gate=self.name)

    def _ok(self, plan: str, key_id: str) -> None:
        """`_count` of an admitted request."""
        admitted = self._admitted.get(plan)
        if admitted is None:
            admitted = self._admitted[plan] = tally(GATE_DECISIONS, self.name, plan, "ok")
        admitted.inc()
        if self.key_id_labels:
            USAGE_KEY_DECISIONS.labels(plan, key_id, "ok").inc()

    def _count(self, plan: str, key_id: str, outcome: str) -> None:
        self._tally(plan, outcome)
        if self.key_id_labels:
            USAGE_KEY_DECISIONS.labels(plan, key_id, outcome).inc()

    def _tally(self, plan: str, outcome: str) -> None:
        """Count one outcome; each (plan, outcome) child is looked up once (plans and outcomes are few)."""
        child = self._tallies.get((plan, outcome))
        if child is None:
            child = self._tallies[(plan, outcome)] = tally(GATE_DECISIONS, self.name, plan, outcome)
        child.inc()


Part = Callable[[Request, str, Decision | None], str | None]
"""One component of a rule's key, read from the request, its route key and (after the allow) its decision;
None when the request lacks it (then the rule does not count the request, as WAF)."""


def _forwarded(settings: ForwardedIpSettings, context: ContextSettings) -> Part:
    """WAF's forwarded IP. `X-Forwarded-For` is read as `aws:SourceIp` is, with this rule's own hops: the address
    `trusted_hops` entries left of the peer (0: the peer, so a client's own entries never count). Another header
    (`x-real-ip`) is read alike, as if the peer followed its entries (Envoy appends the peer to X-Forwarded-For
    only): `trusted_hops` (at least 1, `ForwardedIpSettings`) 1 is its last entry, the nearest trusted proxy's.
    A missing header (with hops to trust) or an entry that is no address takes WAF's fallback: MATCH counts it
    under one shared value."""
    header, trusted = settings.header, settings.trusted_hops
    hops = replace(context, trusted_proxy_hops=trusted)
    fallback = NO_FORWARDED_IP if settings.fallback == "MATCH" else None

    def read(request: Request, route: str, decision: Decision | None) -> str | None:
        if header == "x-forwarded-for":
            if trusted and header not in request.headers:
                return fallback
            address = client_address(request, hops)
        else:
            if header not in request.headers or trusted < 1:  # 0 is refused by the config: never the client's entry
                return fallback
            chain = [entry.strip() for entry in request.headers[header].split(",") if entry.strip()]
            address = chain[-trusted] if len(chain) >= trusted else ""  # trusted >= 1: never the peer itself
        return address if address and parse_ip(address) is not None else fallback

    return read


def _part(name: str, rule: RateLimitSettings, context: ContextSettings, keys: ApiKeySettings | None) -> Part:
    """The reader of one key part (the names are validated by `RateLimitSettings`)."""
    if name == "ip":
        return lambda request, route, decision: client_address(request, context) or None
    if name == "forwarded_ip":
        return _forwarded(rule.forwarded_ip, context)
    if name == "principal":
        return lambda request, route, decision: (
            f"{decision.authorizer}\x00{decision.principal.id}"
            if decision is not None and decision.principal is not None
            else None
        )
    if name == "api_key":
        assert keys is not None  # the config refuses an api_key part without `api_keys:`
        if keys.source == "authorizer":
            return lambda request, route, decision: getattr(
                decision.principal if decision is not None else None, "usage_identifier_key", None
            )
        header = keys.header
        return lambda request, route, decision: request.headers.get(header) or None
    if name == "route":
        return lambda request, route, decision: route
    if name == "method":
        return lambda request, route, decision: judged_method(request.method)
    header = name.split(":", 1)[1]
    return lambda request, route, decision: request.headers.get(header) or None


def needs_caller(rule: RateLimitSettings, keys: ApiKeySettings | None) -> bool:
    """Whether a rule's key names the caller, known only after authentication (then it meters allows)."""
    return "principal" in rule.key or ("api_key" in rule.key and keys is not None and keys.source == "authorizer")


class RateLimitGate(AdmitGate, MeterGate):
    """One rate-based rule, in the admit phase (or, for a key naming the caller, the meter phase)."""

    def __init__(self, rule: RateLimitSettings, parts: tuple[Part, ...], counters: Counters, secret: bytes) -> None:
        self.name = f"rate_limit:{rule.name}"
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)
        """HMAC-SHA256 under the key secret, its key schedule done once (`copy` per request)."""
        self.rule = rule.name
        self.window = Window(rule.window, rule.limit)
        self.count_only = rule.action == "count"
        self.methods = frozenset(rule.methods)
        self.parts = parts
        self.counters = counters
        self.refused = reasons.deny(reasons.RATE_LIMITED, "Forbidden" if rule.status == 403 else "", rule.status)
        self.noted = replace(_COUNTED, gate=f"count:{rule.name}")
        self._ok = tally(GATE_DECISIONS, "rate_limit", rule.name, "ok").inc
        self._counted = tally(GATE_DECISIONS, "rate_limit", rule.name, "counted").inc
        self._blocked = tally(GATE_DECISIONS, "rate_limit", rule.name, "blocked").inc

    async def admit(self, request: Request, route: str) -> Decision | None:
        return await self._judge(request, route, None)

    async def meter(self, request: Request, route: str, allowed: Decision) -> Decision | None:
        return await self._judge(request, route, allowed)

    async def _judge(self, request: Request, route: str, decision: Decision | None) -> Decision | None:
        if self.methods and judged_method(request.method) not in self.methods:
            return None
        values = []
        for part in self.parts:
            value = part(request, route, decision)
            if value is None:
                return None  # WAF: a request missing a key component is not counted
            values.append(value)
        keyed = self._keyed.copy()
        keyed.update("\x00".join(values).encode("utf-8", "surrogatepass"))
        digest = keyed.hexdigest()[:32]
        admission = await self.counters.hit(f"{self.rule}:{digest}", self.window, self.count_only)
        if not admission.exceeded:
            self._ok()
            return None
        if self.count_only:
            self._counted()
            return self.noted
        self._blocked()
        return refusal(
            admission,
            self.refused.reason,
            self.refused.message,
            self.refused.status,
            self.rule,
            self.name,
        )


@dataclass(frozen=True, slots=True)
class GateSet:
    """The gates of one config: per route key, its admit and meter gates, in order; and what they share."""

    admit: Mapping[str, tuple[AdmitGate, ...]]
    meter: Mapping[str, tuple[MeterGate, ...]]
    unrouted: tuple[AdmitGate, ...]
    """The rules that watch every request (no `routes` scope, keyed before authentication), for the requests no
    route takes: a scanner probing unknown paths is counted like any other caller."""
    counters: Counters | None
    keys: ApiKeyStore | None
    plans: Mapping[str, CompiledPlan]

    async def close(self) -> None:
        """Stop the key file's watch and release the counters' connections (the process's own counters stay)."""
        if self.keys is not None:
            await self.keys.stop()
        if self.counters is not None:
            await self.counters.close()


def compile_gates(
    config: Config,
    context: ContextSettings,
    counters: Counters | None,
    keys: ApiKeyStore | None,
    key_secret: bytes,
    clock: Callable[[], float] = time.time,
) -> GateSet:
    """Every route's gates. WAF rules come before the usage plan in the meter phase, as WAF judges before API
    Gateway does; the admit phase has only rules, whose aggregation keys are HMACs under `key_secret`
    (`build.key_secret`)."""
    plans = {name: CompiledPlan.of(name, settings) for name, settings in config.usage_plans.items()}
    routes = [route.match.strip() for route in config.routes]
    admit: dict[str, list[AdmitGate]] = {key: [] for key in routes}
    meter: dict[str, list[MeterGate]] = {key: [] for key in routes}
    unrouted: list[AdmitGate] = []
    if config.rate_limits:
        assert counters is not None
        for rule in config.rate_limits:
            parts = tuple(_part(name, rule, context, config.api_keys) for name in rule.key)
            gate = RateLimitGate(rule, parts, counters, key_secret)
            after = needs_caller(rule, config.api_keys)
            if not after and not rule.routes:
                unrouted.append(gate)
            for key in rule.routes or routes:
                if after:
                    meter[key.strip()].append(gate)
                else:
                    admit[key.strip()].append(gate)
    if config.api_keys is not None and keys is not None:
        assert counters is not None
        plan_gate = UsagePlanGate(keys, config.api_keys, plans, counters, clock, config.limits.key_id_labels)
        for route in config.routes:
            if route.api_key_required:
                meter[route.match.strip()].append(plan_gate)
    return GateSet(
        admit={key: tuple(gates) for key, gates in admit.items() if gates},
        meter={key: tuple(gates) for key, gates in meter.items() if gates},
        unrouted=tuple(unrouted),
        counters=counters,
        keys=keys,
        plans=plans,
    )
