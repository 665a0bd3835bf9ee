"""Mutual TLS through a real Envoy terminating TLS on 127.0.0.1 (the TLS variant that renders the shipped
deploy/envoy/envoy-mtls.yaml, with certificates made now) and a real TLS client presenting a client certificate.

Envoy asks for a certificate and lets any through (the shipped way); the sidecar, a child process, verifies it
and answers with the `ClientCert*` reasons. Envoy's `source.certificate` is the leaf alone, so the `envoy` source's
truststore holds the intermediate (an anchor); the chain tests read Envoy's own XFCC, which carries the chain the
client presented. The other way round (Envoy verifying at the handshake) runs in front of the same sidecar. HTTP
mode: Envoy's TLS variant of envoy-http.yaml, and the sidecar's HTTP listener driven directly with XFCC and RFC
9440 headers from a trusted and from an untrusted peer.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidecar.harness.envoy import SHIPPED, DownstreamTls, EnvoyPorts, render_envoy_config, validate_envoy_config
from tests.conftest import REPO
from tests.e2e.conftest import metric
from tests.e2e.limits_testkit import scrape, wait_until
from tests.e2e.tls_testkit import TlsStack, start_tls_stack, with_tls_files
from tests.unit.authorizers.custom.lambda_testkit import ARN
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, Issuer, rsa_key
from tests.unit.authorizers.mtls.certs_testkit import (
    API,
    DAY,
    SERVER_AUTH,
    SPIFFE_ID,
    Issued,
    Pki,
    byte_sequence,
    client_cert_headers,
    write_crl,
    write_truststore,
    xfcc,
)

pytestmark = pytest.mark.e2e

BILLING_ID = "spiffe://example.org/ns/billing/sa/api"
ISSUER_URL = "https://idp.example.test"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki(now=time.time())  # Envoy and the client judge validity on the real clock


@pytest.fixture(scope="module")
def certs(pki: Pki) -> dict[str, Issued]:
    """The client certificates of the tests, by what they are."""
    now = pki.now
    return {
        "good": pki.leaf(),
        "billing": pki.leaf(uri=(BILLING_ID,)),
        "stranger": Pki("Other", now=now).leaf(),
        "expired": pki.leaf(not_before=now - 10 * DAY, not_after=now - DAY),
        "not_yet": pki.leaf(not_before=now + DAY, not_after=now + 10 * DAY),
        "revoked": pki.leaf(),
        "revoked_later": pki.leaf(),
        "server_eku": pki.leaf(eku=SERVER_AUTH),
    }


def policy(directory: Path) -> Path:
    """A resource policy: everyone, but /b2b/payments/ only for the payments service's SPIFFE id."""
    statements = [
        {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*"},
        {
            "Sid": "PaymentsOnly",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "execute-api:Invoke",
            "Resource": f"{ARN}/*/b2b/payments/*",
            "Condition": {"StringNotEquals": {"mtls:san:uri": SPIFFE_ID}},
        },
    ]
    path = directory / "resource-policy.json"
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": statements}))
    return path


def grpc_config(directory: Path, pki: Pki, certs: dict[str, Issued], issuer: Issuer) -> str:
    """The `envoy` source (Envoy's source.certificate), a CRL, a type: mtls route, a JWT route that requires a
    client certificate too, and the test-origin route the private listener is judged by."""
    write_truststore(directory / "ca.pem", pki.root, pki.intermediate)
    write_crl(directory / "intermediate.crl.pem", pki.crl([certs["revoked"]]))
    (directory / "jwks.json").write_text(json.dumps(issuer.jwks()))
    data: dict[str, Any] = {
        **yaml.safe_load(API),
        "server": {"watch_config": False},
        "plugins": ["tests.e2e.plugins.origin"],
        "mtls": {
            "truststore": str(directory / "ca.pem"),
            "crls": [str(directory / "intermediate.crl.pem")],
            "sources": ["envoy"],
            "principal": "san.uri",
        },
        "authorizers": {
            "peers": {"type": "mtls"},
            "corp": {
                "type": "jwt",
                "issuer": ISSUER_URL,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
                "jwks_file": str(directory / "jwks.json"),
            },
            "origin": {"type": "test-origin"},
        },
        "resource_policy": str(policy(directory)),
        "routes": [
            {"match": "ANY /b2b/{proxy+}", "authorizer": "peers"},
            {"match": "GET /orders/{id}", "authorizer": "corp", "scopes": ["orders.read"], "require_client_cert": True},
            {"match": "ANY /origin/{proxy+}", "authorizer": "origin"},
        ],
    }
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer(ISSUER_URL, {"rsa": (rsa_key(0), "RS256")})


@pytest.fixture(scope="module")
def grpc_stack(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, certs: dict[str, Issued], issuer: Issuer
) -> Iterator[tuple[TlsStack, EnvoyPorts]]:
    directory = tmp_path_factory.mktemp("mtls-grpc")
    with ExitStack() as exits:
        stack = start_tls_stack(exits, pki, directory, grpc_config(directory, pki, certs, issuer))
        yield stack, stack.envoy("envoy-mtls.yaml")


def seen(response: httpx.Response) -> dict[str, str]:
    """The headers the upstream received (the echo upstream's JSON)."""
    assert response.status_code == 200, response.text
    headers: dict[str, str] = response.json()["headers"]
    return headers


def refusal(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json().get("reason", "")


def test_a_valid_client_certificate_is_allowed_with_its_spiffe_id_upstream(
    grpc_stack: tuple[TlsStack, EnvoyPorts], certs: dict[str, Issued]
) -> None:
    stack, ports = grpc_stack
    good = certs["good"]
    client = stack.client(ports.listen_port, good, stack.pki.intermediate)
    spoofs = {"x-authz-principal": "spiffe://evil", "x-forwarded-client-cert": "Hash=00;URI=spiffe://evil"}
    upstream = seen(client.get("/b2b/payments/42", headers={**spoofs, "client-cert": byte_sequence(b"forged")}))
    assert upstream["x-authz-principal"] == SPIFFE_ID, stack.logs()
    assert upstream["x-authz-authorizer"] == "peers"
    # the XFCC the upstream sees is Envoy's own (SANITIZE_SET), the client's copy and its Client-Cert dropped
    assert upstream["x-forwarded-client-cert"].startswith(f"Hash={good.sha256};Cert=")
    assert f"URI={SPIFFE_ID}" in upstream["x-forwarded-client-cert"]
    assert "client-cert" not in upstream
    assert upstream["x-forwarded-proto"] == "https"


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("stranger", 403, "ClientCertUntrusted"),
        ("expired", 403, "ClientCertExpired"),
        ("not_yet", 403, "ClientCertExpired"),
        ("revoked", 403, "ClientCertRevoked"),
        ("server_eku", 403, "ClientCertInvalid"),
    ],
)
def test_refused_client_certificates(
    grpc_stack: tuple[TlsStack, EnvoyPorts], certs: dict[str, Issued], name: str, status: int, reason: str
) -> None:
    stack, ports = grpc_stack
    response = stack.client(ports.listen_port, certs[name], stack.pki.intermediate).get("/b2b/payments/42")
    assert refusal(response) == (status, reason), stack.logs()


def test_no_client_certificate_is_a_401_without_a_challenge(grpc_stack: tuple[TlsStack, EnvoyPorts]) -> None:
    stack, ports = grpc_stack
    response = stack.client(ports.listen_port).get("/b2b/payments/42")
    assert refusal(response) == (401, "ClientCertMissing")
    assert "www-authenticate" not in response.headers


def test_a_spiffe_id_in_a_resource_policy_condition(
    grpc_stack: tuple[TlsStack, EnvoyPorts], certs: dict[str, Issued]
) -> None:
    stack, ports = grpc_stack
    billing = stack.client(ports.listen_port, certs["billing"], stack.pki.intermediate)
    assert refusal(billing.get("/b2b/payments/42")) == (403, "AccessDenied")
    assert seen(billing.get("/b2b/invoices/7"))["x-authz-principal"] == BILLING_ID
    payments = stack.client(ports.listen_port, certs["good"], stack.pki.intermediate)
    assert seen(payments.get("/b2b/payments/42"))["x-authz-principal"] == SPIFFE_ID


def test_mtls_and_jwt_on_one_route_need_both(
    grpc_stack: tuple[TlsStack, EnvoyPorts], certs: dict[str, Issued], issuer: Issuer
) -> None:
    stack, ports = grpc_stack
    bearer = {"authorization": f"Bearer {issuer.token(issuer.claims(time.time()))}"}
    with_cert = stack.client(ports.listen_port, certs["good"], stack.pki.intermediate)
    both = seen(with_cert.get("/orders/7", headers=bearer))
    assert (both["x-authz-principal"], both["x-authz-authorizer"]) == ("user-123", "corp")
    assert refusal(stack.client(ports.listen_port).get("/orders/7", headers=bearer)) == (401, "ClientCertMissing")
    no_token = with_cert.get("/orders/7")
    assert refusal(no_token) == (401, "TokenMissing") and no_token.headers["www-authenticate"] == "Bearer"
    stranger = stack.client(ports.listen_port, certs["stranger"])
    assert refusal(stranger.get("/orders/7", headers=bearer)) == (403, "ClientCertUntrusted")


def test_the_private_listener_names_its_vpc_endpoint(grpc_stack: tuple[TlsStack, EnvoyPorts]) -> None:
    """The private listener's route sets context_extensions `vpce` and `vpc`; the public one sets none, and no
    header a client sends stands in for them."""
    stack, ports = grpc_stack
    tls = DownstreamTls()
    private = seen(stack.client(ports.private_port).get("/origin/x"))
    assert private["x-authz-principal"] == tls.vpce
    claims = {"x-vpce": tls.vpce, "x-amzn-vpce-id": tls.vpce, "vpce": tls.vpce}
    assert refusal(stack.client(ports.listen_port).get("/origin/x", headers=claims)) == (401, "NoOrigin")


def test_envoy_verifying_at_the_handshake_and_the_sidecar_after_it(
    grpc_stack: tuple[TlsStack, EnvoyPorts], certs: dict[str, Issued]
) -> None:
    """The documented other way: Envoy requires a certificate chaining to the truststore (a TLS failure, no HTTP
    answer, for the others); the sidecar still checks what Envoy does not (the CRL)."""
    stack, _ = grpc_stack
    strict = stack.envoy("envoy-mtls.yaml", trusted_ca=str(stack.directory / "ca.pem"), private=False)
    for cert in (None, certs["stranger"]):
        client = stack.client(strict.listen_port, cert) if cert else stack.client(strict.listen_port)
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            client.get("/b2b/payments/42")
    good = stack.client(strict.listen_port, certs["good"], stack.pki.intermediate)
    assert seen(good.get("/b2b/payments/42"))["x-authz-principal"] == SPIFFE_ID
    revoked = stack.client(strict.listen_port, certs["revoked"], stack.pki.intermediate)
    assert refusal(revoked.get("/b2b/payments/42")) == (403, "ClientCertRevoked")


def test_a_crl_reloaded_while_serving_revokes(
    grpc_stack: tuple[TlsStack, EnvoyPorts], certs: dict[str, Issued]
) -> None:
    stack, ports = grpc_stack
    later = stack.client(ports.listen_port, certs["revoked_later"], stack.pki.intermediate)
    assert seen(later.get("/b2b/x"))["x-authz-principal"] == SPIFFE_ID  # verified, and now in the verify cache
    reloads = metric(scrape(stack.admin_url), "authz_config_reloads_total", source="mtls", outcome="ok")
    crl = stack.pki.crl([certs["revoked"], certs["revoked_later"]], last_update=time.time() - 60)
    write_crl(stack.directory / "intermediate.crl.pem", crl)
    assert stack.sidecar.proc is not None
    stack.sidecar.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: metric(scrape(stack.admin_url), "authz_config_reloads_total", source="mtls", outcome="ok") > reloads,
        "the CRL reload",
    )
    assert refusal(later.get("/b2b/x")) == (403, "ClientCertRevoked")


# -- the chain from Envoy's XFCC ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xfcc_stack(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[TlsStack, EnvoyPorts]]:
    """`sources: [xfcc]` in gRPC mode (Envoy's own header) and only the root in the truststore: every chain is the
    one the client presented, as Envoy's XFCC `Chain` carries it."""
    directory = tmp_path_factory.mktemp("mtls-xfcc")
    write_truststore(directory / "root.pem", pki.root)
    config = API + (
        f"server: {{watch_config: false}}\nmtls: {{truststore: {directory / 'root.pem'}, sources: [xfcc]}}\n"
        "authorizers:\n  peers: {type: mtls}\nroutes:\n  - {match: 'ANY /b2b/{proxy+}', authorizer: peers}\n"
    )
    with ExitStack() as exits:
        stack = start_tls_stack(exits, pki, directory, config)
        yield stack, stack.envoy("envoy-mtls.yaml", private=False)


def test_the_presented_chain_through_envoys_xfcc(xfcc_stack: tuple[TlsStack, EnvoyPorts]) -> None:
    stack, ports = xfcc_stack
    pki = stack.pki
    good = stack.client(ports.listen_port, pki.leaf(), pki.intermediate)
    assert seen(good.get("/b2b/x"))["x-authz-principal"] == SPIFFE_ID, stack.logs()
    alone = stack.client(ports.listen_port, pki.leaf())  # without its intermediate it chains to nothing trusted
    assert refusal(alone.get("/b2b/x")) == (403, "ClientCertUntrusted")


def test_an_intermediate_without_the_ca_bit(xfcc_stack: tuple[TlsStack, EnvoyPorts]) -> None:
    stack, ports = xfcc_stack
    not_a_ca = stack.pki.ca("Not A CA", ca_bit=False)
    client = stack.client(ports.listen_port, stack.pki.leaf(issuer=not_a_ca), not_a_ca)
    assert refusal(client.get("/b2b/x")) == (403, "ClientCertUntrusted")


def test_a_chain_deeper_than_the_limit(xfcc_stack: tuple[TlsStack, EnvoyPorts]) -> None:
    """max_chain_depth 4 (API Gateway's) counts the certificates above the client's: three intermediates and the
    root pass, four and the root do not."""
    stack, ports = xfcc_stack
    for depth, expected in ((3, 200), (4, 403)):
        chain = stack.pki.chain_of(depth)
        client = stack.client(ports.listen_port, stack.pki.leaf(issuer=chain[-1]), *reversed(chain))
        response = client.get("/b2b/x")
        assert response.status_code == expected, (depth, response.text)
    assert response.json()["reason"] == "ClientCertInvalid"


# -- HTTP mode ---------------------------------------------------------------------------------------------------

PROXY = "10.0.0.9"
"""The proxy in front of the HTTP listener's Envoy that wrote the certificate headers (mtls.trusted_peers)."""


@pytest.fixture(scope="module")
def http_stack(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[TlsStack, EnvoyPorts]]:
    """The HTTP listener (only 127.0.0.1 may vouch for the client: http.trusted_peers) believing certificate
    headers only from `PROXY`'s network (mtls.trusted_peers), and Envoy's TLS variant of envoy-http.yaml."""
    directory = tmp_path_factory.mktemp("mtls-http")
    write_truststore(directory / "ca.pem", pki.root, pki.intermediate)
    mtls = {
        "truststore": str(directory / "ca.pem"),
        "sources": ["envoy", "xfcc", "client-cert-header"],
        "trusted_peers": ["10.0.0.0/24"],
    }
    data = {
        **yaml.safe_load(API),
        "server": {"watch_config": False},
        "http": {"trusted_peers": ["127.0.0.1"]},
        "mtls": mtls,
        "authorizers": {"peers": {"type": "mtls"}},
        "routes": [{"match": "ANY /b2b/{proxy+}", "authorizer": "peers"}],
    }
    with ExitStack() as exits:
        stack = start_tls_stack(exits, pki, directory, yaml.safe_dump(data), http=True)
        yield stack, stack.envoy("envoy-http.yaml", private=False)


def direct(stack: TlsStack, local_address: str = "127.0.0.1") -> httpx.Client:
    """A client of the sidecar's HTTP listener itself, from `local_address` (as Envoy's http_service asks it)."""
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{stack.authz_port}/authz",
        transport=httpx.HTTPTransport(local_address=local_address),
        timeout=10.0,
    )
    stack.clients.append(client)
    return client


def test_http_mode_through_envoys_tls_listener(http_stack: tuple[TlsStack, EnvoyPorts]) -> None:
    """x-authz-peer-certificate (%DOWNSTREAM_PEER_CERT%: the leaf) is the `envoy` source in HTTP mode."""
    stack, ports = http_stack
    client = stack.client(ports.listen_port, stack.pki.leaf(), stack.pki.intermediate)
    assert seen(client.get("/b2b/x"))["x-authz-principal"] == SPIFFE_ID, stack.logs()
    assert refusal(stack.client(ports.listen_port).get("/b2b/x")) == (401, "ClientCertMissing")


def test_http_mode_certificate_headers_from_a_trusted_peer(http_stack: tuple[TlsStack, EnvoyPorts]) -> None:
    stack, _ = http_stack
    pki = stack.pki
    leaf = pki.leaf()
    via = {"x-authz-source-address": PROXY}
    for headers in ({"x-forwarded-client-cert": xfcc(leaf, [pki.intermediate])}, client_cert_headers(leaf)):
        allowed = direct(stack).get("/b2b/x", headers={**via, **headers})
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["x-authz-principal"] == SPIFFE_ID


def test_http_mode_certificate_headers_from_an_untrusted_peer_are_ignored(
    http_stack: tuple[TlsStack, EnvoyPorts],
) -> None:
    """Ignored, not refused: the request has no certificate (401), and each ignored header is counted. Untrusted:
    a source address outside mtls.trusted_peers from the trusted Envoy, or a TCP peer that may not vouch at all
    (127.0.0.2: its x-authz-source-address is not believed either)."""
    stack, _ = http_stack
    leaf = stack.pki.leaf()
    before = scrape(stack.admin_url)
    forged = {"x-forwarded-client-cert": xfcc(leaf, [stack.pki.intermediate]), **client_cert_headers(leaf)}
    for client, source in ((direct(stack), "203.0.113.7"), (direct(stack, "127.0.0.2"), PROXY)):
        response = client.get("/b2b/x", headers={"x-authz-source-address": source, **forged})
        assert refusal(response) == (401, "ClientCertMissing")
    after = scrape(stack.admin_url)
    for source in ("xfcc", "client-cert-header"):
        ignored = metric(after, "authz_mtls_headers_ignored_total", source=source)
        assert ignored - metric(before, "authz_mtls_headers_ignored_total", source=source) == 2, source


# -- the shipped file --------------------------------------------------------------------------------------------


def test_the_shipped_mtls_file_is_the_rendered_template_and_validates(tmp_path: Path) -> None:
    shipped = REPO / "deploy" / "envoy" / "envoy-mtls.yaml"
    assert shipped.read_text() == render_envoy_config(SHIPPED["envoy-mtls.yaml"], "envoy-mtls.yaml")
    doc = yaml.safe_load(shipped.read_text())
    ingress, private = doc["static_resources"]["listeners"]
    tls = ingress["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is False
    assert tls["common_tls_context"]["validation_context"] == {"trust_chain_verification": "ACCEPT_UNTRUSTED"}
    route = private["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    extensions = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"]
    assert extensions["context_extensions"] == {"vpce": "vpce-0123456789abcdef0", "vpc": "vpc-0123456789abcdef0"}
    strict = render_envoy_config(
        SHIPPED["envoy-mtls.yaml"], "envoy.yaml", DownstreamTls(trusted_ca="/etc/envoy/tls/clients-ca.crt")
    )
    http = render_envoy_config(SHIPPED["envoy-http.yaml"], "envoy-http.yaml", DownstreamTls(private=False))
    for index, text in enumerate((shipped.read_text(), strict, http)):
        path = tmp_path / f"envoy-{index}.yaml"
        path.write_text(with_tls_files(text, tmp_path))
        result = validate_envoy_config(path)
        assert result.returncode == 0, f"variant {index}: {result.stdout}{result.stderr}"


def test_a_private_listener_needs_grpc() -> None:
    with pytest.raises(ValueError, match="context extensions"):
        render_envoy_config(EnvoyPorts(), "envoy-http.yaml", DownstreamTls())
