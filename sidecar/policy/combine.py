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
"""

from __future__ import annotations

from typing import NamedTuple

from .. import reasons
from ..reasons import Denied
from .compile import Evaluation, StatementRef

ALLOW = "Allow"
EXPLICIT_DENY = "ExplicitDeny"
IMPLICIT_DENY = "ImplicitDeny"


class Outcome(NamedTuple):
    """The combined verdict. `decided_by` is `identity`, `resource`, `private-api`, `cross-account` or `none`.

    A NamedTuple: one is built per request, and that is several times cheaper than a frozen dataclass.
    """

    allowed: bool
    effect: str
    decided_by: str
    identity: Evaluation | None = None
    resource: Evaluation | None = None

    @property
    def deciding(self) -> StatementRef | None:
        """The statement that decided, when a statement did (for decision logs)."""
        side = self.identity if self.decided_by == "identity" else self.resource
        return side.deciding if side is not None else None

    @property
    def reason(self) -> str:
        """The reason code for decisions and metrics."""
        return reasons.ALLOWED if self.allowed else reasons.ACCESS_DENIED

    @property
    def message(self) -> str:
        """API Gateway's wording for the client (no statement or policy details)."""
        if self.allowed:
            return ""
        ctx = None
        for side in (self.resource, self.identity):
            if side is not None and side.context is not None:
                ctx = side.context
                break
        if ctx is None:
            return "User is not authorized to access this resource"
        who = ctx.principal.arn or ctx.principal.id
        tail = " with an explicit deny" if self.effect == EXPLICIT_DENY else ""
        return f"User: {who} is not authorized to perform: execute-api:Invoke on resource: {ctx.resource}{tail}"

    def explain(self) -> tuple[str, ...]:
        """The combined verdict followed by each side's explanation."""
        lines = [f"outcome: {self.effect} (decided by {self.decided_by})"]
        for name, side in (("identity", self.identity), ("resource", self.resource)):
            if side is None:
                lines.append(f"{name}: no policy")
            else:
                lines.extend(side.explain())
        return tuple(lines)

    def to_denied(self, explain: bool = False) -> Denied:
        """A 403 `Denied` for this outcome (call only when not allowed); `explain` attaches the full trace."""
        return Denied(
            self.reason,
            self.message,
            reasons.STATUS_FORBIDDEN,
            explanation=self.explain() if explain else (),
        )


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
