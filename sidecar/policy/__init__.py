"""IAM-style policies for API Gateway resources: load and validate once, evaluate per request, explain on demand.

Typical use (the pipeline does this):

    policy = load_policy("policies/resource.json", api=config.api)           # at config load; ConfigError if bad
    ctx = EvalContext(request, principal, config.api, ContextSettings(...))  # per request, cheap
    outcome = authorize(identity_side, policy.evaluate(ctx), same_account=..., private_api=...)
    if not outcome.allowed:
        raise outcome.to_denied()

The language, the context keys the sidecar provides and the evaluation rules are documented in docs/policies.md.
"""

from __future__ import annotations

from .combine import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, Outcome, authorize
from .compile import (
    AUTHENTICATED,
    NOT_AUTHENTICATED,
    CompiledPolicy,
    Effect,
    Evaluation,
    StatementRef,
    evaluate_all,
    load_policy,
    parse_policy,
)
from .context import PROVIDED_KEYS, ContextSettings, EvalContext
from .document import RESOURCE_POLICY_MAX, PolicyDocument

__all__ = [
    "ALLOW",
    "AUTHENTICATED",
    "EXPLICIT_DENY",
    "IMPLICIT_DENY",
    "NOT_AUTHENTICATED",
    "PROVIDED_KEYS",
    "RESOURCE_POLICY_MAX",
    "CompiledPolicy",
    "ContextSettings",
    "Effect",
    "EvalContext",
    "Evaluation",
    "Outcome",
    "PolicyDocument",
    "StatementRef",
    "authorize",
    "evaluate_all",
    "load_policy",
    "parse_policy",
]
