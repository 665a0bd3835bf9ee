"""Explanations: why a policy decided what it did, statement by statement, for `check --explain` and logs.

Computed only on request (never on the hot path): the trace re-runs each statement's checks in document order and
reports the first element that does not apply. Context values are shown only for `aws:` keys, whose values are
addresses, times and ARNs; header and claim values may be secrets and are never printed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .compile import Evaluation
    from .context import EvalContext

MAX_LINES = 200
"""Statements listed per policy before the trace is cut short (a 10,000-statement policy stays readable)."""
_AUTHORIZER_SIDE = {
    "Allow": "identity: Allow (the authorizer authenticated the caller; no identity policy applies)",
    "Neither": "identity: Neither (no identity policy is attached to the caller)",
    "Deny": "identity: Deny (the authorizer refused the caller)",
}
"""The identity side an authorizer decides without a policy (`AUTHENTICATED`, `NOT_AUTHENTICATED`)."""


def explain_evaluation(evaluation: Evaluation) -> tuple[str, ...]:
    """Lines describing one evaluation: verdict and deciding statement, then each statement's result."""
    if evaluation.policy is None and not evaluation.parts and evaluation.source == "authorizer":
        return (_AUTHORIZER_SIDE[evaluation.effect.value],)
    head = f"{evaluation.source or 'policy'}: {evaluation.effect.value}"
    if evaluation.deciding is not None:
        ref = evaluation.deciding
        head += f" by statement {ref.label!r} ({ref.path}, Effect {ref.effect})"
    elif evaluation.policy is not None:
        head += " (no statement matched: implicit deny)"
    policy, ctx = evaluation.policy, evaluation.context
    if evaluation.parts:
        return (head, *(line for part in evaluation.parts for line in explain_evaluation(part)))
    if policy is None or ctx is None:
        return (head,)
    lines = [head, f"  action {ctx.action} on {ctx.resource}"]
    for count, statement in enumerate(policy.statements):
        if count >= MAX_LINES:
            lines.append(f"  ... {len(policy.statements) - MAX_LINES} more statements not shown")
            break
        label = f"{statement.ref.label} ({statement.ref.effect})"
        failure = statement.first_failure(ctx)
        if failure is None:
            lines.append(f"  {label}: matched")
        else:
            lines.append(f"  {label}: no match at {failure}{_hint(failure, ctx)}")
    return tuple(lines)


def _hint(failure: str, ctx: EvalContext) -> str:
    if failure.endswith("Principal"):
        principal = ctx.principal
        return f" (caller {principal.arn or principal.id}, account {principal.account or 'none'})"
    if not failure.startswith("Condition."):
        return ""
    key = failure.split(".", 2)[-1]
    if not key.lower().startswith("aws:"):
        return ""
    value = ctx.get(key.lower())
    if value is None:
        return f" ({key} is absent)"
    shown = value if isinstance(value, str) else ", ".join(value)
    return f" ({key} = {shown})"
