"""API Gateway's combination of the identity side with the resource policy, and explanations."""

from __future__ import annotations

import pytest
from policy_support import allow, deny, evaluate, iam_user, policy, request

from sidecar import reasons
from sidecar.policy import (
    AUTHENTICATED,
    EXPLICIT_DENY,
    IMPLICIT_DENY,
    Effect,
    EvalContext,
    Evaluation,
    authorize,
    evaluate_all,
)
from sidecar.request import ANONYMOUS

A = Evaluation(Effect.ALLOW, source="identity")
N = Evaluation(Effect.NEITHER, source="identity")
D = Evaluation(Effect.DENY, source="identity")
RA = Evaluation(Effect.ALLOW, source="resource")
RN = Evaluation(Effect.NEITHER, source="resource")
RD = Evaluation(Effect.DENY, source="resource")


@pytest.mark.parametrize(
    ("identity", "resource", "same_account", "allowed", "effect"),
    [
        # same account (API Gateway's table for IAM / Lambda authorizers with a resource policy)
        (A, RA, True, True, "Allow"),
        (A, RN, True, True, "Allow"),
        (A, RD, True, False, EXPLICIT_DENY),
        (N, RA, True, True, "Allow"),
        (N, RN, True, False, IMPLICIT_DENY),
        (N, RD, True, False, EXPLICIT_DENY),
        (D, RA, True, False, EXPLICIT_DENY),
        (D, RN, True, False, EXPLICIT_DENY),
        (D, RD, True, False, EXPLICIT_DENY),
        # cross account: both sides must explicitly allow
        (A, RA, False, True, "Allow"),
        (A, RN, False, False, IMPLICIT_DENY),
        (N, RA, False, False, IMPLICIT_DENY),
        (N, RN, False, False, IMPLICIT_DENY),
        (A, RD, False, False, EXPLICIT_DENY),
        (D, RA, False, False, EXPLICIT_DENY),
        # no resource policy: the identity side decides (cross-account cannot be allowed without one)
        (A, None, True, True, "Allow"),
        (N, None, True, False, IMPLICIT_DENY),
        (D, None, True, False, EXPLICIT_DENY),
        (A, None, False, False, IMPLICIT_DENY),
        # no identity decision (open route): the resource policy must explicitly allow
        (None, RA, True, True, "Allow"),
        (None, RN, True, False, IMPLICIT_DENY),
        (None, RD, True, False, EXPLICIT_DENY),
        (None, None, True, False, IMPLICIT_DENY),
        # JWT / Cognito callers authenticate without policies
        (AUTHENTICATED, RN, True, True, "Allow"),
        (AUTHENTICATED, RD, True, False, EXPLICIT_DENY),
    ],
)
def test_combination_table(
    identity: Evaluation | None, resource: Evaluation | None, same_account: bool, allowed: bool, effect: str
) -> None:
    outcome = authorize(identity, resource, same_account=same_account)
    assert outcome.allowed is allowed
    assert outcome.effect == effect
    assert outcome.reason == (reasons.ALLOWED if allowed else reasons.ACCESS_DENIED)


@pytest.mark.parametrize(
    ("identity", "resource", "allowed"),
    [(A, RA, True), (A, RN, False), (None, RN, False), (A, None, False), (N, RA, True), (D, RA, False)],
)
def test_private_api_needs_a_resource_policy_allow(
    identity: Evaluation | None, resource: Evaluation | None, allowed: bool
) -> None:
    outcome = authorize(identity, resource, same_account=True, private_api=True)
    assert outcome.allowed is allowed
    if not allowed and identity is not D:
        assert outcome.decided_by == "private-api"


def test_real_policies_through_the_combination() -> None:
    resource = policy(allow(Sid="Open"), deny(Sid="NoDeletes", Resource="execute-api:/prod/DELETE/*"))
    identity = policy(
        {"Sid": "ReadOnly", "Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"}, kind="identity"
    )
    user = iam_user()
    get = authorize(evaluate(identity, principal=user), evaluate(resource, principal=user))
    assert get.allowed and get.deciding is not None and get.deciding.sid == "ReadOnly"
    delete_req = request(method="DELETE")
    delete = authorize(evaluate(identity, delete_req, user), evaluate(resource, delete_req, user))
    assert not delete.allowed and delete.deciding is not None and delete.deciding.sid == "NoDeletes"
    assert delete.message == (
        "User: arn:aws:iam::123456789012:user/alice is not authorized to perform: execute-api:Invoke on resource: "
        "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod/DELETE/pets with an explicit deny"
    )
    denied = delete.to_denied()
    assert denied.status == 403 and denied.reason == reasons.ACCESS_DENIED
    assert denied.explain is not None
    step = denied.explain()
    assert (step.stage, step.outcome) == ("policy", "deny")
    assert step.summary.startswith("ExplicitDeny by statement 'NoDeletes' of ")
    assert any("NoDeletes" in line and "matched" in line for line in step.details)


def test_evaluate_all_combines_identity_policies() -> None:
    from policy_support import API

    reader = policy({"Effect": "Allow", "Action": "*", "Resource": "*"}, kind="identity")
    blocker = policy(
        {"Sid": "B", "Effect": "Deny", "Action": "*", "Resource": "arn:aws:execute-api:*:*:*/*/POST/*"}, kind="identity"
    )
    nothing = policy({"Effect": "Allow", "Action": "s3:*", "Resource": "*"}, kind="identity")
    get_ctx = EvalContext(request(), iam_user(), API)
    post_ctx = EvalContext(request(method="POST"), iam_user(), API)
    assert evaluate_all([], get_ctx) is None
    assert evaluate_all(["not a policy"], get_ctx) is None
    assert evaluate_all([nothing, reader, blocker], get_ctx).effect is Effect.ALLOW  # type: ignore[union-attr]
    result = evaluate_all([reader, blocker], post_ctx)
    assert result is not None and result.effect is Effect.DENY and result.deciding is not None
    assert result.deciding.sid == "B"
    assert evaluate_all([nothing], get_ctx).effect is Effect.NEITHER  # type: ignore[union-attr]
    both = evaluate_all([nothing, nothing], get_ctx)
    assert both is not None and both.effect is Effect.NEITHER
    lines = both.explain()
    assert lines[0] == "identity policies: Neither"
    assert sum("Statement[0] (Allow): no match at Action" in line for line in lines) == 2


def test_explanation_names_deciding_statement_and_first_failures() -> None:
    compiled = policy(
        allow(Sid="Open"),
        deny(Sid="BadNets", Condition={"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}}),
        deny(Sid="Writes", Resource="execute-api:/prod/POST/*"),
        deny(Sid="Partner", Principal={"AWS": "444455556666"}),
        deny(Sid="Header", Condition={"StringEquals": {"request:header/authorization": "secret-token"}}),
    )
    result = evaluate(compiled, request(source="203.0.113.9", headers={"authorization": "Bearer abc.def"}))
    assert result.effect is Effect.ALLOW
    lines = result.explain()
    assert lines[0].endswith("Allow by statement 'Open' (Statement[0], Effect Allow)")
    text = "\n".join(lines)
    assert "Open (Allow): matched" in text
    assert "BadNets (Deny): no match at Condition.IpAddress.aws:SourceIp (aws:SourceIp = 203.0.113.9)" in text
    assert "Writes (Deny): no match at Resource" in text
    assert "Partner (Deny): no match at Principal (caller anonymous, account none)" in text
    assert "Header (Deny): no match at Condition.StringEquals.request:header/authorization" in text
    assert "abc.def" not in text  # header values are never printed


def test_explanation_of_implicit_deny_and_action_failure() -> None:
    compiled = policy(allow(Action="execute-api:ManageConnections"))
    result = evaluate(compiled)
    assert result.effect is Effect.NEITHER
    assert "implicit deny" in result.explain()[0]
    assert "no match at Action" in result.explain()[2]
    outcome = authorize(None, result)
    assert outcome.explain()[0] == "outcome: ImplicitDeny (decided by resource)"
    assert outcome.explain()[1] == "identity: no policy"
    assert not outcome.message.endswith("explicit deny")


def test_explanation_is_bounded_for_huge_policies() -> None:
    compiled = policy(*[allow(Resource=f"execute-api:/prod/GET/r{i}") for i in range(300)], max_size=None)
    lines = evaluate(compiled, request(path="/r5")).explain()
    assert len(lines) < 210 and "100 more statements" in lines[-1]
    assert any("Statement[5] (Allow): matched" in line for line in lines)


def test_anonymous_outcome_without_context_has_generic_message() -> None:
    outcome = authorize(None, None)
    assert not outcome.allowed and outcome.decided_by == "none"
    assert outcome.message == "User is not authorized to access this resource"
    assert ANONYMOUS.id == "anonymous"


def test_the_policy_step_says_why_in_words() -> None:
    """`Outcome.step`, the policy stage of `check --explain`: one summary per way of being denied."""
    from policy_support import ARN_BASE

    from sidecar.policy import NOT_AUTHENTICATED

    user = iam_user()
    nobody = evaluate(policy(allow(Principal={"AWS": "111122223333"})), principal=user)
    everyone = evaluate(policy(allow()), principal=user)
    assert nobody.source == "resource policy test.json"
    cases = {
        "private-api": (authorize(AUTHENTICATED, None, private_api=True), "a private API admits only what the "
                        "resource policy allows, and there is no resource policy"),
        "cross-account": (authorize(AUTHENTICATED, nobody, same_account=False), f"{user.arn} is from another "
                          "account, which needs an Allow from both its identity policies and the resource policy; "
                          "the authorizer allows it, and no statement of the resource policy test.json allows it"),
        "open route": (authorize(None, nobody), "the route identifies no caller, so only the resource policy can "
                       "allow, and no statement of the resource policy test.json allows it"),
        "no identity policy": (authorize(NOT_AUTHENTICATED, nobody), f"{user.arn}'s credential has no identity "
                               "policy attached, and no statement of the resource policy test.json allows it; IAM "
                               "callers (sigv4) need an identity policy or a resource policy that allows the request "
                               "(API Gateway's rule for AWS_IAM routes)"),
    }  # fmt: skip
    for name, (outcome, why) in cases.items():
        step = outcome.step(user.arn)
        assert (step.stage, step.outcome) == ("policy", "deny"), name
        assert step.summary == f"{IMPLICIT_DENY}: {why}", name
        assert step.details == outcome.explain(), name
    allowed = authorize(AUTHENTICATED, everyone).step()
    assert (allowed.outcome, allowed.summary) == ("pass", f"Allow: {user.arn} is authenticated and no policy denies "
                                                          "(decided by identity)")  # fmt: skip
    assert dict(allowed.facts) == {"action": "execute-api:invoke", "resource": f"{ARN_BASE}/GET/pets"}
