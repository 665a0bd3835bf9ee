"""How API Gateway combines the identity side with the resource policy into one outcome.

The identity side is the authorizer's result: an IAM identity policy evaluation for SigV4 callers, a Lambda-style
authorizer's returned policy, or `AUTHENTICATED` for JWT/Cognito callers that carry no policy. None means there is
no identity-side decision at all (an open route), so the resource policy alone decides and must explicitly allow.

| identity \\ resource | Allow | Neither | Deny |      (same account)
| Allow               | Allow | Allow   | Deny |
| Neither             | Allow | deny    | Deny |
| Deny                | Deny  | Deny    | Deny |

Cross-account callers (`same_account=False`) need an explicit Allow on both sides. Private APIs
(`private_api=True`) deny unless the resource policy explicitly allows, whatever the identity side says.
A request through a VPC endpoint that has a policy must also be allowed by it (`through_endpoint`): its explicit
Deny, or no Allow, denies (`decided_by` `vpc-endpoint`), as AWS evaluates endpoint policies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .. import reasons
from ..explanation import DENY, PASS, POLICY, Step
from ..reasons import Denied
from .compile import NOT_AUTHENTICATED, Evaluation, StatementRef

if TYPE_CHECKING:
    from .context import EvalContext

ALLOW = "Allow"
EXPLICIT_DENY = "ExplicitDeny"
IMPLICIT_DENY = "ImplicitDeny"


class Outcome(NamedTuple):
    """The combined verdict. `decided_by` is `identity`, `resource`, `private-api`, `cross-account`,
    `vpc-endpoint` or `none`. `endpoint` is the VPC endpoint policy's evaluation, when one was judged.

    A NamedTuple: one is built per request, and that is several times cheaper than a frozen dataclass.
    """

    allowed: bool
    effect: str
    decided_by: str
    identity: Evaluation | None = None
    resource: Evaluation | None = None
    endpoint: Evaluation | None = None

    @property
    def deciding(self) -> StatementRef | None:
        """The statement that decided, when a statement did (for decision logs)."""
        side = self._deciding_side()
        return side.deciding if side is not None else None

    def _deciding_side(self) -> Evaluation | None:
        if self.decided_by == "identity":
            return self.identity
        return self.endpoint if self.decided_by == "vpc-endpoint" else self.resource

    @property
    def reason(self) -> str:
        """The reason code for decisions and metrics."""
        return reasons.ALLOWED if self.allowed else reasons.ACCESS_DENIED

    @property
    def message(self) -> str:
        """API Gateway's wording for the client (no statement or policy details)."""
        if self.allowed:
            return ""
        ctx = self._context()
        if ctx is None:
            return "User is not authorized to access this resource"
        who = ctx.principal.arn or ctx.principal.id
        tail = " with an explicit deny" if self.effect == EXPLICIT_DENY else ""
        if self.decided_by == "vpc-endpoint":
            tail = _ENDPOINT_TAILS[self.effect if self.endpoint is not None else ""]
        return f"User: {who} is not authorized to perform: execute-api:Invoke on resource: {ctx.resource}{tail}"

    def explain(self) -> tuple[str, ...]:
        """The combined verdict followed by each side's explanation."""
        lines = [f"outcome: {self.effect} (decided by {self.decided_by})"]
        for name, side in (("identity", self.identity), ("resource", self.resource)):
            if side is None:
                lines.append(f"{name}: no policy")
            else:
                lines.extend(side.explain())
        if self.endpoint is not None:
            lines.extend(self.endpoint.explain())
        return tuple(lines)

    def step(self, caller: str = "") -> Step:
        """The policy stage's explanation step: the verdict in one line (why, in words, for the implicit denies
        users trip over), the trace of `explain()` as its details. `caller` names the principal when no side
        has a context to name it from (a SigV4 caller with no identity policy and no resource policy)."""
        ctx = self._context()
        who = caller or (ctx.principal.arn or ctx.principal.id if ctx is not None else "the caller")
        facts = (("action", ctx.action), ("resource", ctx.resource)) if ctx is not None else ()
        return Step(POLICY, PASS if self.allowed else DENY, self._summary(who), facts, self.explain())

    def _context(self) -> EvalContext | None:
        """The request context either side was evaluated with (the resource side's first)."""
        for side in (self.resource, self.identity, self.endpoint):
            if side is not None and side.context is not None:
                return side.context
        return None

    def _summary(self, who: str) -> str:
        deciding = self.deciding
        side = self._deciding_side()
        if deciding is not None and side is not None:
            return f"{self.effect} by statement {deciding.label!r} of {side.source} (decided by {self.decided_by})"
        if self.allowed:
            return f"{self.effect}: {who} is authenticated and no policy denies (decided by {self.decided_by})"
        if self.decided_by == "vpc-endpoint":
            return f"{self.effect}: {_endpoint_says(self.endpoint)}"
        resource = _resource_says(self.resource)
        if self.decided_by == "private-api":
            return f"{self.effect}: a private API admits only what the resource policy allows, and {resource}"
        if self.decided_by == "cross-account":
            return (
                f"{self.effect}: {who} is from another account, which needs an Allow from both its identity "
                f"policies and the resource policy; {_identity_says(self.identity, who)}, and {resource}"
            )
        if self.identity is None:
            return (
                f"{self.effect}: the route identifies no caller, so only the resource policy can allow, and {resource}"
            )
        if self.identity is NOT_AUTHENTICATED:
            return (
                f"{self.effect}: {who}'s credential has no identity policy attached, and {resource}; IAM callers "
                "(sigv4) need an identity policy or a resource policy that allows the request (API Gateway's rule "
                "for AWS_IAM routes)"
            )
        return f"{self.effect}: {_identity_says(self.identity, who)}, and {resource}"

    def to_denied(self) -> Denied:
        """A 403 `Denied` for this outcome (call only when not allowed); its explainer is `step`."""
        return Denied(self.reason, self.message, reasons.STATUS_FORBIDDEN, explain=self.step)


_ENDPOINT_TAILS = {
    EXPLICIT_DENY: " with an explicit deny in a VPC endpoint policy",
    IMPLICIT_DENY: " because no VPC endpoint policy allows the execute-api:Invoke action",
    "": " because the request did not come through a VPC endpoint",
}
"""IAM's wording for a denial by an endpoint policy, and ours for a private API reached through no endpoint."""


def _endpoint_says(endpoint: Evaluation | None) -> str:
    if endpoint is None:
        return (
            "the API is private and has VPC endpoint policies, and the request came through no VPC endpoint (no "
            "origin from Envoy's context_extensions or PROXY protocol, nor a trusted peer's header)"
        )
    if endpoint.policy is None:  # an endpoint `vpc_endpoint_policies` does not list (`EndpointPolicies.judge`)
        return f"the request came through {endpoint.source}, so nothing allows it"
    return f"the request came through a VPC endpoint, and no statement of its {endpoint.source} allows it"


def through_endpoint(outcome: Outcome, endpoint: Evaluation | None) -> Outcome:
    """`outcome` for a request through a VPC endpoint judged by `endpoint`, its policy's evaluation (None: the
    request came through no endpoint, and the API admits none such). An explicit Deny anywhere wins and is
    reported where it was found first; then any implicit deny; the endpoint's Allow is needed as well."""
    if outcome.effect == EXPLICIT_DENY:
        return outcome._replace(endpoint=endpoint)
    if endpoint is not None and endpoint.denied:
        return Outcome(False, EXPLICIT_DENY, "vpc-endpoint", outcome.identity, outcome.resource, endpoint)
    if not outcome.allowed:
        return outcome._replace(endpoint=endpoint)
    if endpoint is None or not endpoint.allowed:
        return Outcome(False, IMPLICIT_DENY, "vpc-endpoint", outcome.identity, outcome.resource, endpoint)
    return outcome._replace(endpoint=endpoint)


def _resource_says(resource: Evaluation | None) -> str:
    if resource is None:
        return "there is no resource policy"
    return f"no statement of the {resource.source} allows it"


def _identity_says(identity: Evaluation | None, who: str) -> str:
    if identity is None or identity is NOT_AUTHENTICATED:
        return f"{who}'s credential has no identity policy attached"
    if identity.allowed:
        return f"the {identity.source} allows it"
    names = [part.source for part in identity.parts] or [identity.source]
    return f"none of {who}'s identity policies allows it (" + "; ".join(names) + ")"


def authorize(
    identity: Evaluation | None,
    resource: Evaluation | None,
    same_account: bool = True,
    private_api: bool = False,
) -> Outcome:
    """Combine the identity-side and resource-policy results as API Gateway does (see the module table)."""
    if identity is not None and identity.denied:
        return Outcome(False, EXPLICIT_DENY, "identity", identity, resource)
    if resource is not None and resource.denied:
        return Outcome(False, EXPLICIT_DENY, "resource", identity, resource)
    resource_allows = resource is not None and resource.allowed
    identity_allows = identity is not None and identity.allowed
    if private_api and not resource_allows:
        return Outcome(False, IMPLICIT_DENY, "private-api", identity, resource)
    if identity is None:
        if resource_allows:
            return Outcome(True, ALLOW, "resource", identity, resource)
        return Outcome(False, IMPLICIT_DENY, "resource" if resource is not None else "none", identity, resource)
    if not same_account:
        if identity_allows and resource_allows:
            return Outcome(True, ALLOW, "resource", identity, resource)
        return Outcome(False, IMPLICIT_DENY, "cross-account", identity, resource)
    if identity_allows:
        return Outcome(True, ALLOW, "identity", identity, resource)
    if resource_allows:
        return Outcome(True, ALLOW, "resource", identity, resource)
    return Outcome(False, IMPLICIT_DENY, "identity" if resource is None else "resource", identity, resource)
