"""Findings of the adversarial review of the policy layer, one section each:

4. `trusted_proxy_hops` behind a proxy that appends to X-Forwarded-For itself (Envoy), and never a forged entry;
5. `NotPrincipal` names identities one by one (an account ARN is not its users, a role not its sessions);
10. IPv4-mapped CIDRs in policies match the IPv4 addresses requests are compared as;
11. no token claim (nor any authorizer context but the principal's own identity) supplies an `aws:` key.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_support import API, allow, deny, effect, jwt_user, policy, request

from sidecar.authorizers.sigv4.authorizer import build_principal
from sidecar.authorizers.sigv4.credentials import Credential
from sidecar.authorizers.sigv4.settings import SigV4UpstreamHeaders
from sidecar.config import ConfigError, parse_config
from sidecar.pipeline import Pipeline
from sidecar.policy import ContextSettings, EvalContext
from sidecar.policy.context import client_address
from sidecar.request import ANONYMOUS, Principal, Request
from sidecar.runtime import RuntimeHolder, compile_runtime
from sidecar.transports.ext_authz import to_request
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, Issuer, rsa_key

# --- 4. trusted_proxy_hops ---------------------------------------------------------------------------------------

ENVOY_HOST = "192.0.2.2"
"""What Envoy appended for a 127.0.0.1 peer in the measurement (its host's first non-loopback address)."""


def forwarded(source: str, xff: str | None, *, grpc: bool) -> Request:
    """A request as the adapters build it: gRPC ones carry Envoy's protocol, HTTP-mode ones none."""
    headers = {} if xff is None else {"x-forwarded-for": xff}
    return request(source=source, headers=headers)._replace(protocol="HTTP/1.1" if grpc else "")


@pytest.mark.parametrize(
    ("source", "xff", "hops", "expected"),
    [
        # What a real Envoy (shipped config) sent: the client 203.0.113.7 behind one balancer.
        ("127.0.0.1", f"198.51.100.66, 203.0.113.7,{ENVOY_HOST}", 1, "203.0.113.7"),  # loopback balancer
        ("10.0.0.5", "198.51.100.66, 203.0.113.7,10.0.0.5", 1, "203.0.113.7"),
        ("10.0.0.5", "203.0.113.7,10.0.0.5", 1, "203.0.113.7"),
        # The client writes the balancer's own address last: still only Envoy's entry is dropped.
        ("10.0.0.5", "10.0.0.5, 203.0.113.7,10.0.0.5", 1, "203.0.113.7"),
        # Two balancers on one host (they see each other as 127.0.0.1).
        ("127.0.0.1", f"198.51.100.66, 203.0.113.7, 127.0.0.1,{ENVOY_HOST}", 2, "203.0.113.7"),
        ("10.0.0.6", "198.51.100.66, 203.0.113.7, 10.0.0.5,10.0.0.6", 2, "203.0.113.7"),
        ("10.0.0.5", "10.0.0.5", 1, "10.0.0.5"),  # the balancer appended nothing: the chain's leftmost
        ("10.0.0.5", "198.51.100.66, 203.0.113.7,10.0.0.5", 0, "10.0.0.5"),  # no hops: the peer
        ("::ffff:10.0.0.5", "203.0.113.7,::ffff:10.0.0.5", 1, "203.0.113.7"),  # dual-stack listener
        # An Envoy that does not append (not the shipped config): nothing is dropped.
        ("10.0.0.5", "198.51.100.66, 203.0.113.7", 1, "203.0.113.7"),
    ],
)
def test_source_ip_behind_envoy_grpc(source: str, xff: str, hops: int, expected: str) -> None:
    ctx = EvalContext(forwarded(source, xff, grpc=True), ANONYMOUS, API, ContextSettings(trusted_proxy_hops=hops))
    assert ctx.get("aws:sourceip") == expected


@pytest.mark.parametrize(
    ("appends", "source", "xff", "hops", "expected"),
    [
        # Envoy's http_service: x-authz-source-address is the peer, XFF carries Envoy's append.
        (True, "127.0.0.1", f"198.51.100.66, 203.0.113.7,{ENVOY_HOST}", 1, "203.0.113.7"),
        (True, "10.0.0.5", "198.51.100.66, 203.0.113.7,10.0.0.5", 1, "203.0.113.7"),
        # Traefik: the adapter takes the source from XFF's last entry, Traefik's own append.
        (True, "10.0.0.5", "198.51.100.66, 203.0.113.7, 10.0.0.5", 1, "203.0.113.7"),
        # The shipped nginx config: X-Authz-Source-Address $remote_addr, the client's XFF untouched.
        (False, "10.0.0.5", "198.51.100.66, 203.0.113.7", 1, "203.0.113.7"),
        (False, "127.0.0.1", "198.51.100.66, 203.0.113.7", 1, "203.0.113.7"),
        # nginx behind two balancers on its host: the last entry equals the peer and is still the real hop.
        (False, "127.0.0.1", "198.51.100.66, 203.0.113.7, 127.0.0.1", 2, "203.0.113.7"),
        (False, "10.0.0.5", "", 1, "10.0.0.5"),
    ],
)
def test_source_ip_in_http_mode(appends: bool, source: str, xff: str, hops: int, expected: str) -> None:
    settings = ContextSettings(trusted_proxy_hops=hops, http_proxy_appends=appends)
    ctx = EvalContext(forwarded(source, xff or None, grpc=False), ANONYMOUS, API, settings)
    assert ctx.get("aws:sourceip") == expected


def test_the_grpc_adapter_marks_its_requests_and_an_ip_deny_list_matches_the_real_client() -> None:
    """gRPC Checks are told from HTTP-mode requests by the protocol Envoy reports; the deny list then sees the
    client, not the balancer (the old code read Envoy's own entry)."""
    check = CheckRequest()
    http = check.attributes.request.http
    http.method, http.path, http.protocol = "GET", "/pets", "HTTP/1.1"
    http.headers["x-forwarded-for"] = f"198.51.100.66, 203.0.113.7,{ENVOY_HOST}"
    check.attributes.source.address.socket_address.address = "127.0.0.1"
    req = to_request(check)
    assert req.protocol == "HTTP/1.1"
    deny_client = policy(allow(), deny(Condition={"IpAddress": {"aws:SourceIp": "203.0.113.7/32"}}))
    hops = ContextSettings(trusted_proxy_hops=1)
    assert effect(deny_client, req=req, settings=hops) == "Deny"
    deny_forged = policy(allow(), deny(Condition={"IpAddress": {"aws:SourceIp": "198.51.100.66/32"}}))
    assert effect(deny_forged, req=req, settings=hops) == "Allow"
    allow_balancer = policy(allow(Condition={"IpAddress": {"aws:SourceIp": [ENVOY_HOST, "127.0.0.1"]}}))
    assert effect(allow_balancer, req=req, settings=hops) == "Neither"  # naming a proxy admits no one


ADDRESSES = ["203.0.113.7", "198.51.100.66", "10.0.0.5", "10.0.0.6", "127.0.0.1", "127.0.0.2", "::1", "2001:db8::9"]
FRONT_PROXIES = ["envoy-grpc", "envoy-http", "nginx", "traefik"]


@settings(max_examples=400, deadline=None)
@given(
    client=st.sampled_from(ADDRESSES),
    written=st.lists(st.sampled_from([*ADDRESSES, "unknown", "", " ", "10.0.0.5:80"]), max_size=4),
    proxies=st.lists(st.sampled_from(ADDRESSES), max_size=4),
    front=st.sampled_from(FRONT_PROXIES),
)
def test_a_client_never_chooses_its_source_ip(client: str, written: list[str], proxies: list[str], front: str) -> None:
    """Whatever X-Forwarded-For the client writes, with N trusted proxies in front of the asking proxy (any N,
    addresses repeating as on one host), each transport yields the address the outermost proxy saw."""
    # What reaches the asking proxy: the client's entries, then each trusted proxy's entry for the hop before it.
    xff = [*written, client, *proxies[:-1]] if proxies else list(written)
    peer = proxies[-1] if proxies else client
    if front.startswith("envoy"):  # as measured: Envoy appends the peer, or its host's address for a loopback one
        xff.append(ENVOY_HOST if peer in ("127.0.0.1", "::1") else peer)
    elif front == "traefik":  # Traefik appends the peer; the adapter takes the source from that entry
        xff.append(peer)
    req = forwarded(peer, ", ".join(xff), grpc=front == "envoy-grpc")
    wired = ContextSettings(trusted_proxy_hops=len(proxies), http_proxy_appends=front in ("envoy-http", "traefik"))
    assert client_address(req, wired) == client
    if front in ("envoy-http", "traefik") and proxies:  # `http_proxy_appends` left off: one hop short, never forged
        assert client_address(req, ContextSettings(trusted_proxy_hops=len(proxies))) == [*proxies[:-1], xff[-1]][0]


def test_an_http_proxy_of_unknown_habits_never_yields_a_forged_entry() -> None:
    """Left at its default, `http_proxy_appends` reads Envoy's http_service one hop too far right: the answer is a
    proxy's address, never the entry the client wrote."""
    req = forwarded("127.0.0.1", f"198.51.100.66, 203.0.113.7,{ENVOY_HOST}", grpc=False)
    assert client_address(req, ContextSettings(trusted_proxy_hops=1)) == ENVOY_HOST
    assert client_address(req, ContextSettings(trusted_proxy_hops=1, http_proxy_appends=True)) == "203.0.113.7"


# --- 5. NotPrincipal --------------------------------------------------------------------------------------------

ACCOUNT = "111122223333"
BOB = f"arn:aws:iam::{ACCOUNT}:user/Bob"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/Auditor"
SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/Auditor/audit-app"


def caller(arn: str) -> Principal:
    account = arn.split(":")[4]
    return Principal(kind="sigv4", id=arn, arn=arn, account=account)


def deny_all_but(*entries: str, **other: Any) -> dict[str, Any]:
    statement = {k: v for k, v in deny().items() if k != "Principal"}
    return {**statement, "NotPrincipal": {"AWS": list(entries), **other}}


def test_not_principal_deny_exempts_only_what_it_names() -> None:
    """IAM's documented pattern: Bob and the account itself are exempt, nobody else in the account is."""
    compiled = policy(allow(), deny_all_but(BOB, ROOT))
    assert effect(compiled, principal=caller(BOB)) == "Allow"
    assert effect(compiled, principal=caller(ROOT)) == "Allow"
    assert effect(compiled, principal=caller(f"arn:aws:iam::{ACCOUNT}:user/Alice")) == "Deny"
    assert effect(compiled, principal=caller(SESSION)) == "Deny"
    assert effect(compiled, principal=caller("arn:aws:iam::444455556666:user/Bob")) == "Deny"
    assert effect(compiled, principal=ANONYMOUS) == "Deny"
    assert compiled.warnings == ()


def test_not_principal_an_account_id_is_the_account_alone() -> None:
    compiled = policy(allow(), deny_all_but(ACCOUNT))
    assert effect(compiled, principal=caller(ROOT)) == "Allow"
    assert effect(compiled, principal=caller(BOB)) == "Deny"
    assert effect(compiled, principal=caller(SESSION)) == "Deny"
    assert effect(policy(allow(), deny(Principal={"AWS": ACCOUNT})), principal=caller(BOB)) == "Deny"  # Principal


def test_not_principal_exempts_a_session_named_with_its_role_and_account() -> None:
    compiled = policy(allow(), deny_all_but(SESSION, ROLE, ROOT))
    assert effect(compiled, principal=caller(SESSION)) == "Allow"
    assert effect(compiled, principal=caller(f"arn:aws:sts::{ACCOUNT}:assumed-role/Auditor/other")) == "Deny"
    assert effect(compiled, principal=caller(ROLE)) == "Allow"
    role_only = policy(allow(), deny_all_but(ROLE, ROOT))
    assert effect(role_only, principal=caller(SESSION)) == "Deny"  # a role ARN is not its sessions here
    assert any("exempts the role alone" in w.message for w in role_only.warnings)


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [((BOB,), f"must also list its account {ROOT}"), ((SESSION, ROOT), f"must also list its role {ROLE}")],
)
def test_not_principal_deny_missing_a_level_still_denies_and_warns(entries: tuple[str, ...], fragment: str) -> None:
    """AWS: "you must also specify the account ARN ... otherwise the policy might deny access to the entire
    account"; read strictly, so the identity is denied, and the validator says why."""
    compiled = policy(allow(), deny_all_but(*entries))
    assert effect(compiled, principal=caller(entries[0])) == "Deny"
    assert any(fragment in w.message and w.field == "Statement[1].NotPrincipal" for w in compiled.warnings)


def test_not_principal_allow_applies_only_where_nothing_is_named() -> None:
    compiled = policy({**deny_all_but(BOB), "Effect": "Allow"})
    assert effect(compiled, principal=caller(BOB)) == "Neither"
    assert effect(compiled, principal=caller(f"arn:aws:iam::{ACCOUNT}:user/Alice")) == "Allow"
    by_account = policy({**deny_all_but(ROOT), "Effect": "Allow"})
    assert effect(by_account, principal=caller(BOB)) == "Neither"  # the reading that allows less
    assert effect(by_account, principal=caller("arn:aws:iam::444455556666:user/Bob")) == "Allow"


def test_not_principal_federated_and_service_callers() -> None:
    compiled = policy(allow(), deny_all_but(ROOT, Federated="idp.example.com", Service="events.amazonaws.com"))
    assert effect(compiled, principal=jwt_user()) == "Allow"
    assert effect(compiled, principal=jwt_user(iss="https://evil.example.net")) == "Deny"
    service = Principal(kind="service", id="events.amazonaws.com")
    assert effect(compiled, principal=service) == "Allow"
    assert effect(compiled, principal=Principal(kind="custom", id="x", account=ACCOUNT)) == "Deny"


# --- 10. IPv4-mapped CIDRs --------------------------------------------------------------------------------------

MAPPED_DENY = policy(allow(), deny(Condition={"IpAddress": {"aws:SourceIp": "::ffff:198.51.100.0/120"}}))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("198.51.100.7", "Deny"),
        ("::ffff:198.51.100.7", "Deny"),  # a dual-stack Envoy's form of the same client
        ("::ffff:c633:6407", "Deny"),
        ("198.51.101.7", "Allow"),
        ("::ffff:198.51.101.7", "Allow"),
        ("2001:db8::7", "Allow"),
    ],
)
def test_mapped_cidr_in_a_policy_matches_ipv4_clients(source: str, expected: str) -> None:
    assert effect(MAPPED_DENY, req=request(source=source)) == expected


def test_mapped_request_addresses_match_ipv4_policies_and_not_allow_lists_of_mapped_forms() -> None:
    v4 = policy(allow(), deny(Condition={"IpAddress": {"aws:SourceIp": "198.51.100.0/24"}}))
    assert effect(v4, req=request(source="::ffff:198.51.100.7")) == "Deny"
    allow_list = policy(allow(), deny(Condition={"NotIpAddress": {"aws:SourceIp": ["::ffff:10.0.0.0/104"]}}))
    assert effect(allow_list, req=request(source="10.1.2.3")) == "Allow"
    assert effect(allow_list, req=request(source="::ffff:10.1.2.3")) == "Allow"
    assert effect(allow_list, req=request(source="11.1.2.3")) == "Deny"
    hops = ContextSettings(trusted_proxy_hops=1)
    via_xff = request(source="10.0.0.5", headers={"x-forwarded-for": "::ffff:198.51.100.7"})
    assert effect(MAPPED_DENY, req=via_xff, settings=hops) == "Deny"
    everything_v6 = policy(allow(), deny(Condition={"IpAddress": {"aws:SourceIp": "::/0"}}))
    assert effect(everything_v6, req=request(source="198.51.100.7")) == "Allow"  # IPv4 stays IPv4, as in AWS


@pytest.mark.parametrize("cidr", ["::ffff:0.0.0.0/80", "::ffff:198.51.100.0/95"])
def test_mapped_cidr_wider_than_the_mapped_range_is_refused(cidr: str) -> None:
    with pytest.raises(ConfigError) as caught:
        policy(allow(), deny(Condition={"IpAddress": {"aws:SourceIp": cidr}}))
    assert "/96 or more" in str(caught.value)
    assert "Statement[1].Condition.IpAddress.aws:SourceIp" in str(caught.value)


# --- 11. aws: keys from claims and authorizer context -------------------------------------------------------------

FORGED_CLAIMS = {
    "aws:PrincipalOrgID": "o-trusted",
    "aws:PrincipalTag/team": "payments",
    "aws:MultiFactorAuthPresent": True,
    "AWS:TokenIssueTime": "2026-01-01T00:00:00Z",
}


def test_claims_named_like_aws_keys_are_not_aws_keys() -> None:
    principal = jwt_user(**FORGED_CLAIMS, tenant="acme")
    ctx = EvalContext(request(), principal, API)
    for key in FORGED_CLAIMS:
        assert ctx.get(key.lower()) is None
    assert ctx.get("jwt:tenant") == "acme"  # claims still read under jwt:
    aws_issuer = jwt_user(iss="https://aws", principalorgid="o-trusted")
    assert EvalContext(request(), aws_issuer, API).get("aws:principalorgid") is None  # not a provider key either


def test_authorizer_context_sets_only_the_principals_identity_keys() -> None:
    credential = Credential(
        access_key_id="AKIAEXAMPLE",
        secret_access_key="s",
        principal_arn="arn:aws:iam::123456789012:user/alice",
        account="123456789012",
        principal_type="User",
        user_id="AIDAEXAMPLEUSERID",
        username="alice",
    )
    sigv4 = build_principal(credential, "iam", SigV4UpstreamHeaders())
    ctx = EvalContext(request(), sigv4, API)
    assert ctx.get("aws:userid") == "AIDAEXAMPLEUSERID"  # SigV4 owns its principal's keys
    assert ctx.get("aws:principalarn") == "arn:aws:iam::123456789012:user/alice"
    assert ctx.get("aws:principalaccount") == "123456789012"
    assert ctx.get("aws:principaltype") == "User"
    assert ctx.get("aws:username") == "alice"
    custom = Principal(kind="custom", id="p", context={"aws:PrincipalOrgID": "o-trusted", "custom:tier": "gold"})
    ctx = EvalContext(request(), custom, API)
    assert ctx.get("aws:principalorgid") is None
    assert ctx.get("custom:tier") == "gold"


def test_conditions_on_aws_keys_the_sidecar_never_provides_warn() -> None:
    compiled = policy(allow(), deny(Condition={"StringNotEquals": {"aws:PrincipalOrgID": "o-trusted"}}))
    assert any("aws:PrincipalOrgID is always absent" in w.message for w in compiled.warnings)
    assert effect(compiled, principal=jwt_user(**FORGED_CLAIMS)) == "Deny"
    provided = policy(allow(), deny(Condition={"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}}))
    assert provided.warnings == ()


JWT_POLICY_CONFIG = """\
api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
server: {{watch_config: false}}
resource_policy: {policy}
authorizers:
  corp: {{type: jwt, issuer: "{issuer}", audiences: [{audience}], algorithms: [RS256], jwks_file: {jwks}}}
routes:
  - {{match: "ANY /{{proxy+}}", authorizer: corp}}
"""
ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"


def claim_gated_policy() -> dict[str, Any]:
    """Allow all, but deny each path unless its condition holds: one per aws: key a claim could try to set, and a
    jwt: one to show that claims do reach conditions under their own prefix."""

    def gate(path: str, condition: dict[str, Any]) -> dict[str, Any]:
        return {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "execute-api:Invoke",
            "Resource": f"{ARN}/GET/{path}/*",
            "Condition": condition,
        }

    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*"},
            gate("org", {"StringNotEquals": {"aws:PrincipalOrgID": "o-trusted"}}),
            gate("team", {"StringNotEquals": {"aws:PrincipalTag/team": "payments"}}),
            gate("mfa", {"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}}),
            gate("tenant", {"StringNotEquals": {"jwt:tenant": "acme"}}),
        ],
    }


async def test_a_signed_token_with_aws_claims_is_denied_through_the_pipeline(tmp_path: Path) -> None:
    issuer = Issuer("https://idp.example.test", {"rsa": (rsa_key(0), "RS256")})
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks()))
    (tmp_path / "resource.json").write_text(json.dumps(claim_gated_policy()))
    text = JWT_POLICY_CONFIG.format(
        policy=tmp_path / "resource.json", issuer=issuer.url, audience=AUDIENCE, jwks=tmp_path / "jwks.json"
    )
    runtime = compile_runtime(parse_config(text, str(tmp_path / "config.yaml")))
    await runtime.start()
    try:
        pipeline = Pipeline(RuntimeHolder(runtime))
        token = issuer.token(issuer.claims(time.time(), tenant="acme", **FORGED_CLAIMS))
        headers = {"authorization": f"Bearer {token}"}

        async def status(path: str) -> int:
            decision = await pipeline.check(Request("GET", path, path, headers, "api.test", source_address="10.0.0.1"))
            return decision.status

        assert await status("/tenant/1") == 200  # the token verified and its jwt: claims are read
        for path in ("/org/1", "/team/1", "/mfa/1"):
            assert await status(path) == 403, path
    finally:
        await runtime.stop()
