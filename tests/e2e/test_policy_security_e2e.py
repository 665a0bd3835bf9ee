"""The policy findings of the adversarial review, through the real path: a real Envoy from our template (or the
shipped HTTP-mode Envoy / nginx configs), the sidecar, an echo upstream, all on loopback.

- trusted_proxy_hops: the test client plays the load balancer in front of Envoy. It connects from 127.0.0.1 (for
  which Envoy appends its host's own address to X-Forwarded-For) or 127.0.0.2 (appended as is) and sends the
  X-Forwarded-For a balancer would: the client's own entries, then the real client's address. An IP deny list
  must match that address; a forged leftmost entry must decide nothing.
- NotPrincipal with Deny: SigV4 callers of one account; only the named user and the account are exempt.
- an IPv4-mapped CIDR in a policy matches an IPv4 client.
- a signed JWT whose claims are named like aws: keys satisfies no condition on those keys.
"""

from __future__ import annotations

import json
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import tests.e2e.test_http_mode_e2e as http_mode
from sidecar.runtime import compile_runtime
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.test_http_mode_e2e import HttpStack, HttpStackFactory, http_stack  # noqa: F401 - fixture
from tests.e2e.test_proxies_e2e import NginxStackFactory, nginx_stack  # noqa: F401 - fixture
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, Issuer, rsa_key

pytestmark = pytest.mark.e2e

API = 'api: {id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}'
ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"
REAL_CLIENT, FORGED, OTHER_CLIENT = "203.0.113.7", "198.51.100.66", "198.18.0.77"


def statement(effect: str = "Allow", **extra: Any) -> dict[str, Any]:
    return {"Effect": effect, "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*", **extra}


def write_policy(tmp_path: Path, *statements: dict[str, Any]) -> Path:
    path = tmp_path / "resource.json"
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}))
    return path


def open_config(policy: Path, hops: int = 0) -> str:
    return textwrap.dedent(
        f"""\
        {API}
        server: {{watch_config: false}}
        policy: {{trusted_proxy_hops: {hops}}}
        resource_policy: {policy}
        authorizers:
          open: {{type: none}}
        routes:
          - {{match: "ANY /{{proxy+}}", authorizer: open}}
        """
    )


def deny_client_policy(tmp_path: Path) -> Path:
    """Everyone is allowed except REAL_CLIENT."""
    return write_policy(
        tmp_path,
        statement(),
        statement("Deny", Sid="DenyClient", Condition={"IpAddress": {"aws:SourceIp": f"{REAL_CLIENT}/32"}}),
    )


def balancer(stack: Stack, address: str) -> httpx.Client:
    """A client connecting to Envoy from `address`, as a load balancer on this host would."""
    client = httpx.Client(base_url=stack.base_url, timeout=10.0, transport=httpx.HTTPTransport(local_address=address))
    stack.clients.append(client)
    return client


# --- trusted_proxy_hops ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deny_list_stack(module_authz_stack: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """The deny-list stack behind one trusted hop, shared by both balancer addresses (requests only)."""
    return module_authz_stack(open_config(deny_client_policy(tmp_path_factory.mktemp("deny-list")), hops=1))


@pytest.mark.parametrize("balancer_address", ["127.0.0.1", "127.0.0.2"])
def test_ip_deny_list_matches_the_client_behind_one_balancer(deny_list_stack: Stack, balancer_address: str) -> None:
    stack = deny_list_stack
    lb = balancer(stack, balancer_address)
    # The client wrote FORGED, the balancer appended the client's real address.
    denied = lb.get("/orders/1", headers={"x-forwarded-for": f"{FORGED}, {REAL_CLIENT}"})
    assert denied.status_code == 403, stack.logs()
    assert denied.json()["reason"] == "AccessDenied"
    # The client forges the denied address leftmost; it is ignored.
    allowed = lb.get("/orders/1", headers={"x-forwarded-for": f"{REAL_CLIENT}, {FORGED}"})
    assert allowed.status_code == 200, stack.logs()
    seen = [p.strip() for p in allowed.json()["headers"]["x-forwarded-for"].split(",")]
    assert seen[:2] == [REAL_CLIENT, FORGED] and len(seen) == 3  # Envoy appended exactly one entry of its own
    if balancer_address != "127.0.0.1":
        assert seen[2] == balancer_address
    # Even forging the balancer's own address last (to pass for Envoy's entry) moves nothing.
    tricked = lb.get("/orders/1", headers={"x-forwarded-for": f"{balancer_address}, {REAL_CLIENT}"})
    assert tricked.status_code == 403


def test_allow_list_naming_the_balancer_admits_no_one_behind_it(authz_stack: StackFactory, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, statement(Condition={"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}))
    stack = authz_stack(open_config(policy, hops=1))
    lb = balancer(stack, "127.0.0.2")
    assert lb.get("/orders/1", headers={"x-forwarded-for": REAL_CLIENT}).status_code == 403, stack.logs()
    forged = lb.get("/orders/1", headers={"x-forwarded-for": f"127.0.0.9, {REAL_CLIENT}"})
    assert forged.status_code == 403
    assert lb.get("/orders/1", headers={"x-forwarded-for": "127.0.0.9"}).status_code == 200  # a loopback client


def test_without_trusted_hops_x_forwarded_for_is_not_read(authz_stack: StackFactory, tmp_path: Path) -> None:
    stack = authz_stack(open_config(deny_client_policy(tmp_path), hops=0))
    assert stack.client.get("/orders/1", headers={"x-forwarded-for": REAL_CLIENT}).status_code == 200, stack.logs()


@pytest.mark.parametrize("appends", [True, False])
def test_envoy_http_service_mode(
    http_stack: HttpStackFactory,  # noqa: F811 - the imported fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    appends: bool,
) -> None:
    """The shipped envoy-http.yaml: with `http_proxy_appends` (what `http.flavor: envoy` should set) the client is
    exact; left at its default the answer is at worst a proxy's address, never the forged entry."""

    def compiled(config: Any) -> Any:
        runtime = compile_runtime(config)
        return replace(runtime, context_settings=replace(runtime.context_settings, http_proxy_appends=appends))

    monkeypatch.setattr(http_mode, "compile_runtime", compiled)
    policy = write_policy(
        tmp_path,
        statement(),
        statement("Deny", Condition={"IpAddress": {"aws:SourceIp": [f"{REAL_CLIENT}/32", f"{FORGED}/32"]}}),
    )
    stack: HttpStack = http_stack(open_config(policy, hops=1))
    lb = stack.client("127.0.0.1")
    clean = lb.get("/orders/1", headers={"x-forwarded-for": OTHER_CLIENT})
    assert clean.status_code == 200, stack.proxy.log()
    request = stack.sidecar.seen[-1]
    assert request.source_address == "127.0.0.1"  # x-authz-source-address: the peer
    forwarded = [p.strip() for p in request.headers["x-forwarded-for"].split(",")]
    assert forwarded[0] == OTHER_CLIENT and len(forwarded) == 2  # and Envoy's own entry after it
    forged = lb.get("/orders/1", headers={"x-forwarded-for": f"{FORGED}, {OTHER_CLIENT}"})
    assert forged.status_code == 200  # the forged leftmost entry never decides
    real = lb.get("/orders/1", headers={"x-forwarded-for": f"{OTHER_CLIENT}, {REAL_CLIENT}"})
    assert real.status_code == (403 if appends else 200)


def test_nginx_mode(nginx_stack: NginxStackFactory, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """The shipped nginx config passes the client's X-Forwarded-For untouched and its peer as the source."""
    stack = nginx_stack(open_config(deny_client_policy(tmp_path), hops=1))
    lb = stack.client("127.0.0.1")
    denied = lb.get("/orders/1", headers={"x-forwarded-for": f"{FORGED}, {REAL_CLIENT}"})
    assert denied.status_code == 403, stack.proxy.log()
    assert stack.sidecar.seen[-1].headers["x-forwarded-for"] == f"{FORGED}, {REAL_CLIENT}"
    assert lb.get("/orders/1", headers={"x-forwarded-for": f"{REAL_CLIENT}, {FORGED}"}).status_code == 200
    # The balancer's entry equals nginx's peer (a client on the balancer's host): it is still the balancer's entry,
    # nginx added none, so the client-written REAL_CLIENT before it decides nothing.
    assert lb.get("/orders/1", headers={"x-forwarded-for": f"{REAL_CLIENT}, 127.0.0.1"}).status_code == 200


# --- NotPrincipal with Deny -------------------------------------------------------------------------------------

ACCOUNT = "123456789012"
USERS = {"bob": "AKIABOBEXAMPLE", "alice": "AKIAALICEEXAMPLE"}
SECRET = "notPrincipalSecret/EXAMPLE+abcdefghijklmnop"


def sigv4_get(stack: Stack, path: str, access_key: str) -> httpx.Response:
    aws = AWSRequest(method="GET", url=stack.base_url + path)
    SigV4Auth(Credentials(access_key, SECRET), "execute-api", "us-east-1").add_auth(aws)
    headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in aws.headers.items()}
    return stack.client.get(path, headers=headers)


def test_not_principal_deny_exempts_only_the_named_user(authz_stack: StackFactory, tmp_path: Path) -> None:
    identity = '[{Version: "2012-10-17", Statement: [{Effect: Allow, Action: "execute-api:Invoke", Resource: "*"}]}]'
    entries = [
        f"  - {{access_key_id: {key}, secret_access_key: '{SECRET}', principal_arn: "
        f"'arn:aws:iam::{ACCOUNT}:user/{name}', policies: {identity}}}"
        for name, key in USERS.items()
    ]
    credentials = tmp_path / "credentials.yaml"
    credentials.write_text("credentials:\n" + "\n".join(entries) + "\n")
    deny = {k: v for k, v in statement("Deny").items() if k != "Principal"}
    exempt = [f"arn:aws:iam::{ACCOUNT}:user/bob", f"arn:aws:iam::{ACCOUNT}:root"]
    policy = write_policy(tmp_path, statement(), {**deny, "Sid": "OnlyBob", "NotPrincipal": {"AWS": exempt}})
    config = textwrap.dedent(
        f"""\
        {API}
        resource_policy: {policy}
        authorizers:
          iam: {{type: sigv4, credentials: {{file: {credentials}}}}}
        routes:
          - {{match: "ANY /{{proxy+}}", authorizer: iam}}
        """
    )
    stack = authz_stack(config)
    assert sigv4_get(stack, "/orders/1", USERS["bob"]).status_code == 200, stack.logs()
    alice = sigv4_get(stack, "/orders/1", USERS["alice"])
    assert alice.status_code == 403
    assert "explicit deny" in alice.json()["message"]


# --- IPv4-mapped CIDRs ------------------------------------------------------------------------------------------


def test_mapped_cidr_in_the_policy_matches_an_ipv4_client(authz_stack: StackFactory, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        statement(),
        statement(
            "Deny", Resource=f"{ARN}/GET/admin/*", Condition={"IpAddress": {"aws:SourceIp": "::ffff:127.0.0.0/104"}}
        ),
    )
    stack = authz_stack(open_config(policy))
    assert stack.client.get("/admin/1").status_code == 403, stack.logs()
    assert stack.client.get("/orders/1").status_code == 200


# --- aws: keys from token claims --------------------------------------------------------------------------------


def test_token_claims_named_like_aws_keys_satisfy_nothing(authz_stack: StackFactory, tmp_path: Path) -> None:
    issuer = Issuer("https://idp.example.test", {"rsa": (rsa_key(0), "RS256")})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))

    def gate(path: str, condition: dict[str, Any]) -> dict[str, Any]:
        return statement("Deny", Resource=f"{ARN}/GET/{path}/*", Condition=condition)

    policy = write_policy(
        tmp_path,
        statement(),
        gate("org", {"StringNotEquals": {"aws:PrincipalOrgID": "o-trusted"}}),
        gate("mfa", {"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}}),
        gate("tenant", {"StringNotEquals": {"jwt:tenant": "acme"}}),
    )
    config = textwrap.dedent(
        f"""\
        {API}
        resource_policy: {policy}
        authorizers:
          corp: {{type: jwt, issuer: "{issuer.url}", audiences: [{AUDIENCE}], algorithms: [RS256], jwks_file: {jwks}}}
        routes:
          - {{match: "ANY /{{proxy+}}", authorizer: corp}}
        """
    )
    stack = authz_stack(config)
    claims = issuer.claims(time.time(), tenant="acme", **{"aws:PrincipalOrgID": "o-trusted"})
    claims["aws:MultiFactorAuthPresent"] = True
    headers = {"authorization": f"Bearer {issuer.token(claims)}"}
    assert stack.client.get("/tenant/1", headers=headers).status_code == 200, stack.logs()
    for path in ("/org/1", "/mfa/1"):
        response = stack.client.get(path, headers=headers)
        assert response.status_code == 403, path
        assert "explicit deny" in response.json()["message"]
