"""The pipeline's combination of authorizers, scopes and policies, with in-memory authorizers and real policies."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.config import parse_config
from sidecar.explanation import text_lines
from sidecar.metrics import RECORDER, Recorder
from sidecar.pipeline import Pipeline
from sidecar.request import Request
from sidecar.runtime import RuntimeHolder, compile_runtime

ARN = "arn:aws:execute-api:us-east-1:000000000000:local/prod"


def pipeline(
    tmp_path: Path, extra: str = "", policy: dict[str, object] | None = None, recorder: Recorder = RECORDER
) -> Pipeline:
    text = "authorizers:\n  open: {type: none}\nroutes:\n  - {match: 'ANY /{proxy+}', authorizer: open}\n" + extra
    if policy is not None:
        path = tmp_path / "policy.json"
        path.write_text(json.dumps(policy))
        text += f"resource_policy: {path}\n"
    return Pipeline(RuntimeHolder(compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))), recorder=recorder)


def request(path: str = "/x", source: str = "127.0.0.1") -> Request:
    return Request(method="GET", raw_path=path, path=path, headers={"host": "h"}, source_address=source, time=1e9)


async def test_open_route_without_policy_allows(tmp_path: Path) -> None:
    decision = await pipeline(tmp_path).decide(request())
    assert decision.allowed
    assert dict(decision.all_headers())["x-authz-principal"] == "anonymous"
    assert decision.headers_to_remove == ("x-authz-route",)  # off by default: a client's copy is removed


async def test_switched_off_identity_headers_are_removed(tmp_path: Path) -> None:
    p = pipeline(tmp_path, "upstream_headers: {principal: null, authorizer: null}\n")
    decision = await p.decide(request())
    assert decision.all_headers() == ()
    assert set(decision.headers_to_remove) == {"x-authz-principal", "x-authz-authorizer", "x-authz-route"}


async def test_private_api_without_resource_policy_denies(tmp_path: Path) -> None:
    decision = await pipeline(tmp_path, "policy: {private_api: true}\n").decide(request())
    assert not decision.allowed
    assert (decision.status, decision.reason) == (403, "AccessDenied")


async def test_private_api_with_allowing_policy(tmp_path: Path) -> None:
    statement = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*"}
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    p = pipeline(tmp_path, "policy: {private_api: true}\n", policy)
    assert (await p.decide(request())).allowed


async def test_policy_deny_names_statement_and_keeps_principal(tmp_path: Path) -> None:
    allow = {"Sid": "All", "Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*"}
    deny = {
        "Sid": "NoTen",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "*",
        "Resource": f"{ARN}/*",
        "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
    }
    p = pipeline(tmp_path, policy={"Version": "2012-10-17", "Statement": [allow, deny]})
    denied = await p.decide(request(source="10.1.2.3"))
    assert (denied.allowed, denied.statement, denied.reason) == (False, "NoTen", "AccessDenied")
    assert denied.principal is not None and denied.principal.id == "anonymous"
    allowed = await p.decide(request(source="192.0.2.1"))
    assert (allowed.allowed, allowed.statement) == (True, "All")
    assert await p.decide(request(source="192.0.2.1")) is allowed  # warm: the same Decision object


async def test_explain_mode_attaches_explanations(tmp_path: Path) -> None:
    statement = {"Sid": "All", "Effect": "Allow", "Principal": "*", "Action": "*", "Resource": f"{ARN}/*"}
    p = pipeline(tmp_path, policy={"Version": "2012-10-17", "Statement": [statement]})
    p.explain = True
    decision = await p.decide(request())
    assert decision.allowed
    assert [step.stage for step in decision.explanation] == ["route", "authenticate", "policy"]
    assert any("All" in line for line in text_lines(decision.explanation))


async def test_ambiguous_path_is_a_malformed_request(tmp_path: Path) -> None:
    for path in ("/admin/x%2F..%2F..%2Fpublic/a", "/a/%2e%2e/b", "/a%5Cb"):
        decision = await pipeline(tmp_path).decide(request(path))
        assert (decision.allowed, decision.status, decision.reason) == (False, 400, "MalformedRequest")


async def test_a_reload_empties_the_allow_memo_of_the_old_runtimes_routes(tmp_path: Path) -> None:
    p = pipeline(tmp_path, "cache: {ttl: 0, deny_ttl: 0}\n")  # no decision cache: every Check computes
    old = p.holder.current
    assert (await p.decide(request())).allowed
    assert p._allowed and all(key[0].authorizer is old.authorizers["open"] for key in p._allowed)
    new = compile_runtime(old.config)
    await p.holder.swap(new)
    assert (await p.decide(request())).allowed
    assert p._allowed and all(key[0].authorizer is new.authorizers["open"] for key in p._allowed)


async def test_allows_keep_a_principal_without_claims_and_share_their_headers(tmp_path: Path) -> None:
    """Cached decisions are most of the sidecar's memory: what differs per caller is only the principal's
    identity, never its claims, and the route's headers are one tuple for every caller."""
    from sidecar.pipeline import allow_decision
    from sidecar.request import Principal

    p = pipeline(tmp_path, "upstream_headers: {route: x-authz-route}\n")
    runtime = p.holder.current
    match = runtime.routes.match("GET", "/x")
    assert match is not None
    route = match.target
    claims = {"sub": "alice", "iat": 1}
    alice = Principal(kind="jwt", id="alice", claims=claims, context={"jwt:sub": "alice"}, expires_at=5.0)
    bob = Principal(kind="jwt", id="bob", claims={"sub": "bob"}, expires_at=6.0)
    first = allow_decision(route, alice, runtime.upstream_headers)
    second = allow_decision(route, bob, runtime.upstream_headers)
    assert first.principal is not None and second.principal is not None
    assert (first.principal.id, first.principal.expires_at, first.principal.kind) == ("alice", 5.0, "jwt")
    assert not first.principal.claims and not first.principal.context
    assert first.headers is second.headers  # one tuple per route
    assert dict(first.all_headers()) == {
        "x-authz-principal": "alice",
        "x-authz-authorizer": "open",
        "x-authz-route": route.key,
    }
    assert dict(second.all_headers())["x-authz-principal"] == "bob"
    assert "x-authz-principal" not in first.headers_to_remove


async def test_routes_with_cached_decisions_do_not_fill_the_token_cache(tmp_path: Path) -> None:
    """Where the decision cache keeps allows per token, a verified token is not also kept in the token cache (it
    would hold each token twice); a route without decision caching still fills it, and every route reads it."""
    import time

    from sidecar.authorizers.jwt.authorizer import JwtAuthorizer
    from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, ISSUER, Issuer

    issuer = Issuer.default()
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks()))
    text = (
        f"authorizers:\n  corp: {{type: jwt, issuer: '{ISSUER}', audiences: [{AUDIENCE}], jwks_file: jwks.json}}\n"
        "routes:\n"
        "  - {match: 'ANY /cached/{proxy+}', authorizer: corp}\n"
        "  - {match: 'ANY /fresh/{proxy+}', authorizer: corp, cache_ttl: 0}\n"
    )
    runtime = compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))
    await runtime.start()
    p = Pipeline(RuntimeHolder(runtime))
    shared = runtime.authorizers["corp"]
    assert isinstance(shared, JwtAuthorizer)

    def call(path: str, token: str) -> Request:
        headers = {"host": "h", "authorization": f"Bearer {token}"}
        return Request(method="GET", raw_path=path, path=path, headers=headers, time=time.time())

    first, second = (issuer.token(issuer.claims(now=time.time(), sub=sub)) for sub in ("alice", "bob"))
    assert (await p.check(call("/cached/a", first))).allowed
    assert len(shared._cache) == 0  # the decision cache holds alice's allow; the token cache does not hold her
    assert (await p.check(call("/cached/a", first))).allowed  # a decision-cache hit
    assert (await p.check(call("/fresh/a", second))).allowed
    assert len(shared._cache) == 1  # bob, from the route whose decisions are not cached
    assert (await p.check(call("/cached/b", second))).allowed  # verified once, found in the token cache
    await runtime.stop()


async def test_identity_headers_of_every_authorizer_are_removed_where_not_set(tmp_path: Path) -> None:
    """Finding 2 of #17: a JWT claim header and a SigV4 header are removed on the anonymous route too, and a
    claim header the token cannot fill is removed rather than left to the client."""
    from sidecar.pipeline import allow_decision
    from sidecar.request import Principal
    from tests.unit.authorizers.jwt.jwt_testkit import Issuer, rsa_key

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(Issuer("https://i.example", {"k": (rsa_key(0), "RS256")}).jwks()))
    credentials = tmp_path / "credentials.yaml"
    credentials.write_text("credentials: []\n")
    extra = (
        "  corp: {type: jwt, issuer: 'https://i.example', audiences: [a], jwks_file: "
        f"{jwks}, claim_to_headers: {{sub: x-user-id, email: x-user-email}}}}\n"
        f"  iam: {{type: sigv4, credentials: {{file: {credentials}}}, upstream_headers: {{principal_arn: x-arn}}}}\n"
    )
    text = "authorizers:\n  open: {type: none}\n" + extra + "routes:\n  - {match: 'ANY /{proxy+}', authorizer: open}\n"
    runtime = compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))
    assert {"x-user-id", "x-user-email", "x-arn", "x-authz-route"} <= runtime.identity_headers
    decision = await Pipeline(RuntimeHolder(runtime)).decide(request())
    assert decision.allowed
    assert {"x-user-id", "x-user-email", "x-arn", "x-authz-route"} <= set(decision.headers_to_remove)
    match = runtime.routes.match("GET", "/x")
    assert match is not None
    jwt_user = Principal(kind="jwt", id="u", upstream_headers=(("x-user-id", "u"), ("x-user-email", "")))
    allowed = allow_decision(match.target, jwt_user, runtime.upstream_headers, runtime.identity_headers)
    assert ("x-user-id", "u") in allowed.all_headers()
    assert "x-user-email" not in dict(allowed.all_headers())
    assert "x-user-email" in allowed.headers_to_remove and "x-user-id" not in allowed.headers_to_remove


async def test_an_identity_that_cannot_reach_the_upstream_unchanged_is_denied(tmp_path: Path) -> None:
    """Finding 12's rule for every authorizer: a principal id Envoy would refuse (control characters) or a parser
    would trim (edge spaces) is a deny, never an allow that Envoy turns into a 503 or that names someone else."""
    from sidecar import reasons

    text = (
        "plugins: [tests.e2e.plugins.token]\n"
        "authorizers:\n  tok: {type: test-token}\n"
        "routes:\n  - {match: 'ANY /{proxy+}', authorizer: tok}\n"
    )
    p = Pipeline(RuntimeHolder(compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))))
    p.explain = False

    def with_token(token: str) -> Request:
        return Request(method="GET", raw_path="/x", path="/x", headers={"x-token": token}, time=1e9)

    assert (await p.decide(with_token("alice"))).allowed
    for token in ("a\tb", "al\x7fice", " alice", "alice ", "a\x85b"):
        decision = await p.decide(with_token(token))
        assert not decision.allowed and decision.reason == reasons.INTERNAL_ERROR, token
    assert (await p.decide(with_token("José"))).allowed  # other UTF-8 text passes unchanged


def test_each_route_compiles_its_allow_template(tmp_path: Path) -> None:
    p = pipeline(tmp_path, "upstream_headers: {route: x-authz-route, authorizer: null}\n")
    match = p.holder.current.routes.match("GET", "/x")
    assert match is not None
    assert match.target.allow_headers == (("x-authz-route", "ANY /{proxy+}"),)


def test_a_settings_class_builds_its_authorizer_and_register_needs_no_build_function() -> None:
    from sidecar.authorizers.base import registry
    from sidecar.authorizers.static import NoneAuthorizer

    entry = registry()["none"]
    config = parse_config("authorizers:\n  open: {type: none}\n")
    runtime = compile_runtime(config)
    assert isinstance(runtime.authorizers["open"], NoneAuthorizer)
    assert entry.build.__name__ == "_settings_build"


class StageRecorder(Recorder):
    """A recorder that keeps the stage names it is given (not registered for `metrics.flush`)."""

    def __init__(self) -> None:
        self.stages: list[str] = []

    def stage(self, stage: str, seconds: float) -> None:
        self.stages.append(stage)


async def test_a_refused_credential_is_timed_in_the_authenticate_stage(tmp_path: Path) -> None:
    """A bad credential costs verification too (a flood of bad tokens shows in the stage's time and count); a
    refusal after the caller was identified (scopes, policy) is not timed twice."""
    text = "authorizers:\n  closed: {type: deny}\nroutes:\n  - {match: 'ANY /{proxy+}', authorizer: closed}\n"
    recorder = StageRecorder()
    runtime = compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))
    refused = await Pipeline(RuntimeHolder(runtime), recorder=recorder).decide(request())
    assert not refused.allowed and recorder.stages.count("authenticate") == 1
    recorder.stages.clear()
    await pipeline(tmp_path, "policy: {private_api: true}\n", recorder=recorder).decide(request())
    assert recorder.stages.count("authenticate") == 1
