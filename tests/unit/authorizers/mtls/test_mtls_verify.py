"""The engine's verdicts, one per way a client certificate can be good or bad, on certificates made here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar import reasons
from sidecar.authorizers.mtls import ClientCert, ClientCertVerifier, build_engine
from sidecar.reasons import Denied
from sidecar.settings import MtlsSettings
from tests.unit.authorizers.custom.lambda_testkit import request
from tests.unit.authorizers.mtls.certs_testkit import (
    DAY,
    SERVER_AUTH,
    SPIFFE_ID,
    T0,
    Issued,
    Pki,
    ec_key,
    envoy_value,
    rsa_key,
    write_crl,
    write_truststore,
)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def engine(tmp_path: Path, *cas: Issued, **mtls: Any) -> ClientCertVerifier:
    write_truststore(tmp_path / "ca.pem", *cas)
    settings = MtlsSettings(truststore="ca.pem", **mtls)
    return build_engine(settings, tmp_path, str(tmp_path / "config.yaml"), ("127.0.0.1",), clock=lambda: T0)


def presented(*issued: Issued, at: float = T0) -> Any:
    """A gRPC-mode request carrying the certificates as Envoy's `source.certificate` (leaf first)."""
    return request("/b2b/x", peer_certificate=envoy_value(*issued), time=at)


def refusal(verifier: ClientCertVerifier, req: Any) -> Denied:
    with pytest.raises(Denied) as caught:
        verifier.verify_request(req)
    return caught.value


def test_a_valid_chain_gives_its_certificate(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf(dns=("api.example.org",), email=("ops@example.org",))
    cert = engine(tmp_path, pki.root).verify_request(presented(leaf, pki.intermediate))
    assert isinstance(cert, ClientCert)
    assert cert.san_uri == (SPIFFE_ID,) and cert.san_dns == ("api.example.org",)
    assert cert.san_email == ("ops@example.org",)
    assert cert.subject == "CN=client,O=Example" and cert.issuer == "CN=Test Intermediate CA,O=Example"
    assert cert.fingerprint_hex == leaf.sha256
    assert cert.serial == ":".join(f"{b:02x}" for b in leaf.cert.serial_number.to_bytes(20, "big").lstrip(b"\0"))


def test_an_intermediate_in_the_truststore_is_an_anchor(tmp_path: Path, pki: Pki) -> None:
    """API Gateway's truststore may hold intermediates: a leaf presented alone chains to one."""
    assert engine(tmp_path, pki.intermediate).verify_request(presented(pki.leaf())).common_name == "client"


def test_no_certificate_is_a_401(tmp_path: Path, pki: Pki) -> None:
    denied = refusal(engine(tmp_path, pki.root), request("/b2b/x"))
    assert (denied.reason, denied.status) == (reasons.CLIENT_CERT_MISSING, 401)
    assert denied.headers == ()


def test_a_certificate_from_another_ca_is_untrusted(tmp_path: Path, pki: Pki) -> None:
    other = Pki("Other")
    denied = refusal(engine(tmp_path, pki.root), presented(other.leaf(), other.intermediate))
    assert (denied.reason, denied.status) == (reasons.CLIENT_CERT_UNTRUSTED, 403)


def test_a_leaf_without_its_intermediate_is_untrusted(tmp_path: Path, pki: Pki) -> None:
    assert refusal(engine(tmp_path, pki.root), presented(pki.leaf())).reason == reasons.CLIENT_CERT_UNTRUSTED


def test_an_expired_certificate(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf(not_before=T0 - 30 * DAY, not_after=T0 - DAY)
    denied = refusal(engine(tmp_path, pki.root), presented(leaf, pki.intermediate))
    assert (denied.reason, denied.status) == (reasons.CLIENT_CERT_EXPIRED, 403)
    assert "expired" in denied.message


def test_a_certificate_not_yet_valid(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf(not_before=T0 + DAY, not_after=T0 + 30 * DAY)
    denied = refusal(engine(tmp_path, pki.root), presented(leaf, pki.intermediate))
    assert denied.reason == reasons.CLIENT_CERT_EXPIRED and "not valid before" in denied.message


def test_an_expired_intermediate(tmp_path: Path, pki: Pki) -> None:
    intermediate = pki.ca("Short CA", not_before=T0 - 10 * DAY, not_after=T0 - DAY)
    leaf = pki.leaf(issuer=intermediate, not_before=T0 - 5 * DAY)
    assert refusal(engine(tmp_path, pki.root), presented(leaf, intermediate)).reason == reasons.CLIENT_CERT_EXPIRED


def test_judged_at_the_request_time_as_check_at_sets_it(tmp_path: Path, pki: Pki) -> None:
    """`check --at T` stamps the request with T: the same certificate is good inside its validity, not outside,
    whatever the clock says."""
    verifier = engine(tmp_path, pki.root)
    leaf = pki.leaf(not_before=T0 + 10 * DAY, not_after=T0 + 20 * DAY)
    assert verifier.verify_request(presented(leaf, pki.intermediate, at=T0 + 15 * DAY)).common_name == "client"
    for outside in (T0, T0 + 25 * DAY):
        assert refusal(verifier, presented(leaf, pki.intermediate, at=outside)).reason == reasons.CLIENT_CERT_EXPIRED
    assert verifier.verify_request(presented(leaf, pki.intermediate, at=T0 + 11 * DAY)).common_name == "client"


def test_a_revoked_certificate(tmp_path: Path, pki: Pki) -> None:
    revoked, good = pki.leaf("revoked"), pki.leaf("good")
    write_crl(tmp_path / "intermediate.crl", pki.crl([revoked]))
    verifier = engine(tmp_path, pki.root, crls=("intermediate.crl",))
    denied = refusal(verifier, presented(revoked, pki.intermediate))
    assert (denied.reason, denied.status) == (reasons.CLIENT_CERT_REVOKED, 403)
    assert verifier.verify_request(presented(good, pki.intermediate)).common_name == "good"


def test_a_revoked_intermediate_from_a_der_crl_of_the_root(tmp_path: Path, pki: Pki) -> None:
    write_crl(tmp_path / "root.crl", pki.crl([pki.intermediate], issuer=pki.root), der=True)
    verifier = engine(tmp_path, pki.root, crls=("root.crl",))
    denied = refusal(verifier, presented(pki.leaf(), pki.intermediate))
    assert denied.reason == reasons.CLIENT_CERT_REVOKED and "chain" in denied.message


def test_a_stale_crl_denies_by_default_and_is_used_under_allow(tmp_path: Path, pki: Pki) -> None:
    revoked, good = pki.leaf("revoked"), pki.leaf("good")
    write_crl(tmp_path / "old.crl", pki.crl([revoked], last_update=T0 - 10 * DAY, next_update=T0 - DAY))
    strict = engine(tmp_path, pki.root, crls=("old.crl",))
    denied = refusal(strict, presented(good, pki.intermediate))
    assert denied.reason == reasons.CLIENT_CERT_UNTRUSTED and "nextUpdate" in denied.message
    lenient = engine(tmp_path, pki.root, crls=("old.crl",), stale_crl="allow")
    assert lenient.verify_request(presented(good, pki.intermediate)).common_name == "good"
    assert refusal(lenient, presented(revoked, pki.intermediate)).reason == reasons.CLIENT_CERT_REVOKED


def test_a_crl_that_does_not_verify_against_the_chain_leaves_revocation_unknown(tmp_path: Path, pki: Pki) -> None:
    """A CRL naming the intermediate but signed by another key: revocation cannot be checked, so no allow."""
    write_crl(tmp_path / "forged.crl", pki.crl([], signer=ec.generate_private_key(ec.SECP256R1())))
    verifier = engine(tmp_path, pki.root, crls=("forged.crl",))
    assert refusal(verifier, presented(pki.leaf(), pki.intermediate)).reason == reasons.CLIENT_CERT_UNTRUSTED


def test_the_newest_crl_of_an_issuer_is_read(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf()
    older = pki.crl([], last_update=T0 - 5 * DAY)
    newer = pki.crl([leaf], last_update=T0 - DAY)
    write_crl(tmp_path / "both.crl", older, newer)
    assert refusal(engine(tmp_path, pki.root, crls=("both.crl",)), presented(leaf, pki.intermediate)).reason == (
        reasons.CLIENT_CERT_REVOKED
    )


def test_a_server_only_eku_is_refused(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf(eku=SERVER_AUTH)
    denied = refusal(engine(tmp_path, pki.root), presented(leaf, pki.intermediate))
    assert denied.reason == reasons.CLIENT_CERT_INVALID and "clientAuth" in denied.message


def test_no_eku_at_all_is_accepted(tmp_path: Path, pki: Pki) -> None:
    """RFC 5280: an absent extended key usage restricts nothing (the client verifier reads it so)."""
    assert engine(tmp_path, pki.root).verify_request(presented(pki.leaf(eku=None), pki.intermediate))


def test_the_verifier_itself_refuses_a_server_eku(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clientAuth check does not rest on our pre-check alone: without it, cryptography's verifier refuses."""
    from sidecar.authorizers.mtls import verify

    monkeypatch.setattr(verify, "_leaf_refusal", lambda cert, at: None)
    denied = refusal(engine(tmp_path, pki.root), presented(pki.leaf(eku=SERVER_AUTH), pki.intermediate))
    assert denied.reason == reasons.CLIENT_CERT_INVALID


def test_an_intermediate_without_the_ca_bit(tmp_path: Path, pki: Pki) -> None:
    not_a_ca = pki.ca("Not A CA", ca_bit=False)
    leaf = pki.leaf(issuer=not_a_ca)
    assert refusal(engine(tmp_path, pki.root), presented(leaf, not_a_ca)).reason == reasons.CLIENT_CERT_UNTRUSTED


@pytest.mark.parametrize(("depth", "allowed"), [(3, True), (4, False)])
def test_the_chain_depth_counts_the_certificates_above_the_client(
    tmp_path: Path, pki: Pki, depth: int, allowed: bool
) -> None:
    """max_chain_depth 4 (API Gateway's): three intermediates and the root pass, four and the root do not."""
    chain = pki.chain_of(depth)
    leaf = pki.leaf(issuer=chain[-1])
    verifier = engine(tmp_path, pki.root, max_chain_depth=4)
    if allowed:
        assert verifier.verify_request(presented(leaf, *reversed(chain)))
    else:
        denied = refusal(verifier, presented(leaf, *reversed(chain)))
        assert denied.reason == reasons.CLIENT_CERT_INVALID and "more than 4 certificates" in denied.message


def test_a_weak_rsa_leaf(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf(key=rsa_key(1024))
    denied = refusal(engine(tmp_path, pki.root), presented(leaf, pki.intermediate))
    assert denied.reason == reasons.CLIENT_CERT_INVALID and "RSA 1024" in denied.message


def test_strong_rsa_and_p384_leaves_pass_and_p521_does_not(tmp_path: Path, pki: Pki) -> None:
    verifier = engine(tmp_path, pki.root)
    assert verifier.verify_request(presented(pki.leaf(key=rsa_key(2048)), pki.intermediate))
    assert verifier.verify_request(presented(pki.leaf(key=ec.generate_private_key(ec.SECP384R1())), pki.intermediate))
    p521 = pki.leaf(key=ec.generate_private_key(ec.SECP521R1()))
    assert refusal(verifier, presented(p521, pki.intermediate)).reason == reasons.CLIENT_CERT_INVALID


def test_a_weak_key_in_the_chain(tmp_path: Path) -> None:
    weak = Pki("Weak", key_factory=lambda: rsa_key(1024))
    leaf = weak.leaf(key=ec_key())
    denied = refusal(engine(tmp_path, weak.root), presented(leaf, weak.intermediate))
    assert denied.reason == reasons.CLIENT_CERT_INVALID and "weak key" in denied.message


def test_a_weak_anchor_is_refused_after_verifying(tmp_path: Path) -> None:
    """The anchor is not presented: its key is checked on the verified path."""
    weak = Pki("Weak", key_factory=lambda: rsa_key(1024))
    strong_intermediate = weak.ca("Strong CA", key=ec_key())
    leaf = weak.leaf(issuer=strong_intermediate, key=ec_key())
    verifier = engine(tmp_path, weak.root)
    assert refusal(verifier, presented(leaf, strong_intermediate)).reason == reasons.CLIENT_CERT_INVALID


@pytest.mark.parametrize(
    "value", ["not a certificate", "%ZZ", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"]
)
def test_an_unreadable_certificate_is_invalid(tmp_path: Path, pki: Pki, value: str) -> None:
    denied = refusal(engine(tmp_path, pki.root), request("/b2b/x", peer_certificate=value))
    assert (denied.reason, denied.status) == (reasons.CLIENT_CERT_INVALID, 403)


def test_a_refusal_explains_itself_without_the_certificate(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf(not_before=T0 - 30 * DAY, not_after=T0 - DAY)
    denied = refusal(engine(tmp_path, pki.root), presented(leaf, pki.intermediate))
    assert denied.explain is not None
    text = "\n".join(denied.explain().lines())
    assert leaf.sha256 in text and "judged_at" in text
    assert leaf.pem.splitlines()[1] not in text
