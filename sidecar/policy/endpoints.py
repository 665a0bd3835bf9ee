"""VPC endpoint policies (`policy.vpc_endpoint_policies`): the second IAM policy a request through an endpoint must
satisfy, as AWS evaluates an interface endpoint's policy on every call through it (docs/private-apis.md).

The endpoint is the request's network origin (`aws:SourceVpce`, `context.origin_value`: Envoy's word in gRPC mode,
a trusted peer's header in HTTP mode). With policies configured:

- a request through a listed endpoint needs an Allow from that endpoint's policy and no Deny in it, besides what
  the identity side and the resource policy say (`combine.through_endpoint`);
- a request through an endpoint the map does not list is denied: nothing gives it a policy, and we fail closed
  where AWS would apply the endpoint's default full-access policy (list it with such a policy to get AWS's);
- a request through no endpoint is denied on a private API (AWS never delivers one) and judged as before on a
  public one.

Policies are parsed, validated and compiled once per config load, like the resource policy; the hot path
evaluates at most one of them, and none when the request came through no endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..issues import ConfigError, ConfigIssue
from .combine import ALLOW, EXPLICIT_DENY, Outcome, through_endpoint
from .compile import CompiledPolicy, Effect, Evaluation, load_policy
from .context import HEADER_PREFIX, REQUEST_KEYS, EvalContext

if TYPE_CHECKING:
    from ..settings import ApiSettings

VPC_ENDPOINT_POLICY_MAX = 20_480
"""AWS's limit on an endpoint policy's size, in characters."""
SOURCE_VPCE = "aws:sourcevpce"
AUTHORIZER_ALLOWS = Outcome(True, ALLOW, "none")
"""The verdict where no identity or resource policy applies (the authorizer's word), for an endpoint to judge."""


@dataclass(frozen=True, eq=False, slots=True)
class EndpointPolicies:
    """The compiled `vpc_endpoint_policies` of one config, and whether the API is private."""

    policies: Mapping[str, CompiledPolicy]
    private_api: bool = False
    context_keys: frozenset[str] = field(init=False)
    """Every condition key the policies read, and `aws:SourceVpce` (decision caches key on them)."""
    reads_request: bool = field(init=False)
    """Whether a policy reads more of the request than its origin, method and path (`aws:SourceIp`, a header, the
    clock): the pipeline then remembers no verdict across requests."""

    def __post_init__(self) -> None:
        keys = frozenset({SOURCE_VPCE}).union(*(policy.context_keys for policy in self.policies.values()))
        object.__setattr__(self, "context_keys", keys)
        reads = any(k != SOURCE_VPCE and (k in REQUEST_KEYS or k.startswith(HEADER_PREFIX)) for k in keys)
        object.__setattr__(self, "reads_request", reads)

    def judge(self, ctx: EvalContext, outcome: Outcome) -> Outcome:
        """`outcome` (the identity and resource sides combined) with the endpoint's word added."""
        if outcome.effect == EXPLICIT_DENY:
            return outcome  # nothing an endpoint policy says can change it
        vpce = ctx.get(SOURCE_VPCE)
        if not isinstance(vpce, str):
            return through_endpoint(outcome, None) if self.private_api else outcome
        policy = self.policies.get(vpce)
        return through_endpoint(outcome, policy.evaluate(ctx) if policy is not None else _unlisted(vpce, ctx))


def _unlisted(vpce: str, ctx: EvalContext) -> Evaluation:
    """The verdict on a request through an endpoint no policy is configured for: nothing allows it."""
    return Evaluation(
        Effect.NEITHER, source=f"VPC endpoint {vpce}, which policy.vpc_endpoint_policies does not list", context=ctx
    )


def load_endpoint_policies(files: Mapping[str, Path], api: ApiSettings, private_api: bool) -> EndpointPolicies:
    """Compile each endpoint's policy file (`files`: endpoint id -> resolved path); `ConfigError` with every
    problem located in its file (file:line:col, JSON path) when one does not load."""
    compiled: dict[str, CompiledPolicy] = {}
    issues: list[ConfigIssue] = []
    for vpce, path in files.items():
        try:
            policy = load_policy(path, kind="resource", api=api, max_size=VPC_ENDPOINT_POLICY_MAX)
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        # Named as what it is in explanations and denials ("resource policy" is the kind its grammar shares).
        policy.label = f"VPC endpoint policy of {vpce} ({policy.source})"
        compiled[vpce] = policy
    if issues:
        raise ConfigError(issues)
    return EndpointPolicies(compiled, private_api)
