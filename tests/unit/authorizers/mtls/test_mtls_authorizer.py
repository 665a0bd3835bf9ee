"""`type: mtls` through the real config loader, runtime and pipeline: principals, policy keys, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar import reasons
from sidecar.authorizers.custom.events import client_certificate
from sidecar.authorizers.mtls import MtlsAuthorizer
from sidecar.authorizers.mtls.cert import from_pem
from sidecar.config import ConfigError, parse_config
from sidecar.runtime import compile_runtime
from tests.unit.authorizers.custom.lambda_testkit import ARN, request
from tests.unit.authorizers.mtls.certs_testkit import (
    API,
    ROUTES,
    SPIFFE_ID,
    Issued,
    Pki,
    envoy_value,
    mtls_pipeline,
    write_truststore,
)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def deny(sid: str, resource: str, condition: dict[str, Any]) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "execute-api:Invoke",
        "Resource": f"{ARN}/{resource}",
        "Condition": condition,
    }


def with_certs(path: str, *issued: Issued) -> Any:
    return request(path, peer_certificate=envoy_value(*issued))


def policy_file(tmp_path: Path, *statements: dict[str, Any]) -> str:
    path = tmp_path / "resource-policy.json"
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}))
    return f"resource_policy: {path}\n"


async def test_a_spiffe_id_principal_in_a_resource_policy_condition(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    only_payments_api = deny("PaymentsOnly", "*/b2b/payments/*", {"StringNotEquals": {"mtls:san:uri": SPIFFE_ID}})
    pipe = mtls_pipeline(tmp_path, "truststore: ca.pem", extra=policy_file(tmp_path, only_payments_api))
    payments = pki.leaf(uri=(SPIFFE_ID,))
    billing = pki.leaf(uri=("spiffe://example.org/ns/billing/sa/api",))
    allowed = await pipe.check(with_certs("/b2b/payments/42", payments, pki.intermediate))
    assert allowed.allowed and allowed.principal is not None
    assert (allowed.principal.kind, allowed.principal.id, allowed.principal.authorizer) == ("mtls", SPIFFE_ID, "peers")
    refused = await pipe.check(with_certs("/b2b/payments/42", billing, pki.intermediate))
    assert (refused.status, refused.reason, refused.statement) == (403, reasons.ACCESS_DENIED, "PaymentsOnly")
    assert (await pipe.check(with_certs("/b2b/other", billing, pki.intermediate))).allowed


async def test_every_certificate_field_is_a_policy_key(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    leaf = pki.leaf("svc", dns=("svc.example.org",), email=("ops@example.org",))
    cert = from_pem(leaf.pem)
    # A negated operator matches a key that is absent: each Deny stays silent only if its key has this value.
    expected = [
        ("StringNotEquals", "mtls:subject", "CN=svc,O=Example"),
        ("StringNotEquals", "mtls:issuer", "CN=Test Intermediate CA,O=Example"),
        ("StringNotEquals", "mtls:serial", cert.serial),
        ("StringNotEquals", "mtls:fingerprint", leaf.sha256),
        ("ForAllValues:StringNotEquals", "mtls:san:uri", SPIFFE_ID),
        ("ForAllValues:StringNotEquals", "mtls:san:dns", "svc.example.org"),
        ("ForAllValues:StringNotEquals", "mtls:san:email", "ops@example.org"),
    ]
    statements = [deny(f"Key{i}", "*", {op: {key: value}}) for i, (op, key, value) in enumerate(expected)]
    pipe = mtls_pipeline(tmp_path, "truststore: ca.pem", extra=policy_file(tmp_path, *statements))
    assert (await pipe.check(with_certs("/b2b/x", leaf, pki.intermediate))).allowed
    other = await pipe.check(with_certs("/b2b/x", pki.leaf("other"), pki.intermediate))
    assert not other.allowed and other.statement.startswith("Key")


@pytest.mark.parametrize(
    ("principal", "expected"),
    [("san.uri", SPIFFE_ID), ("san.dns", "svc.example.org"), ("san.email", "ops@example.org"), ("subject.cn", "svc")],
)
async def test_the_principal_is_the_configured_field(tmp_path: Path, pki: Pki, principal: str, expected: str) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    pipe = mtls_pipeline(tmp_path, f"truststore: ca.pem\nprincipal: {principal}")
    leaf = pki.leaf("svc", dns=("svc.example.org", "b.example.org"), email=("ops@example.org",))
    decision = await pipe.check(with_certs("/b2b/x", leaf, pki.intermediate))
    assert decision.allowed and decision.principal is not None and decision.principal.id == expected


async def test_a_certificate_without_the_principal_field_is_invalid(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    pipe = mtls_pipeline(tmp_path, "truststore: ca.pem\nprincipal: san.uri")
    decision = await pipe.check(with_certs("/b2b/x", pki.leaf(uri=(), dns=("svc.example.org",)), pki.intermediate))
    assert (decision.status, decision.reason) == (403, reasons.CLIENT_CERT_INVALID)
    assert "URI SAN" in decision.message


async def test_a_subject_cn_principal_needs_no_san_at_all(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    pipe = mtls_pipeline(tmp_path, "truststore: ca.pem\nprincipal: subject.cn")
    decision = await pipe.check(with_certs("/b2b/x", pki.leaf("legacy", uri=()), pki.intermediate))
    assert decision.allowed and decision.principal is not None and decision.principal.id == "legacy"


async def test_a_missing_certificate_is_a_401_without_a_challenge(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    pipe = mtls_pipeline(tmp_path, "truststore: ca.pem")
    decision = await pipe.check(request("/b2b/x"))
    assert (decision.status, decision.reason) == (401, reasons.CLIENT_CERT_MISSING)
    assert not any(name == "www-authenticate" for name, _ in decision.headers)


async def test_a_warm_check_returns_the_same_principal(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    pipe = mtls_pipeline(tmp_path, "truststore: ca.pem")
    authorizer = pipe.holder.current.authorizers["peers"]
    assert isinstance(authorizer, MtlsAuthorizer)
    req = with_certs("/b2b/x", pki.leaf(), pki.intermediate)
    first, again = await authorizer.authenticate(req), await authorizer.authenticate(req)
    assert first is again and first.expires_at is not None
    assert authorizer.fingerprint(req) is None
    assert [status.source for status in authorizer.reload_statuses()] == ["mtls"]


def test_type_mtls_needs_the_mtls_section(tmp_path: Path) -> None:
    text = f"{API}authorizers:\n  peers: {{type: mtls}}\nroutes:\n{ROUTES}"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        compile_runtime(parse_config(text, str(path)))
    (issue,) = caught.value.issues
    assert "type: mtls needs the mtls: section" in issue.message
    assert issue.line == next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith("  peers:"))


def test_type_mtls_takes_no_settings(tmp_path: Path) -> None:
    text = f"{API}authorizers:\n  peers: {{type: mtls, principal: san.uri}}\nroutes: []\n"
    with pytest.raises(ConfigError):
        parse_config(text, str(tmp_path / "config.yaml"))


def test_a_lambda_events_client_cert_is_the_model_api_gateway_shows(pki: Pki) -> None:
    leaf = pki.leaf()
    shown = client_certificate(envoy_value(leaf))
    assert shown == from_pem(leaf.pem).api_gateway()
    assert shown is not None and shown["clientCertPem"] == leaf.pem
    assert shown["subjectDN"] == "CN=client,O=Example" and shown["issuerDN"] == "CN=Test Intermediate CA,O=Example"
    assert shown["validity"]["notAfter"] == leaf.cert.not_valid_after_utc.strftime("%b %e %H:%M:%S %Y GMT")
    assert client_certificate("garbage") is None and client_certificate("") is None
