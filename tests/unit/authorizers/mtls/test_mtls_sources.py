"""Where a certificate is read: Envoy's `source.certificate`, XFCC and RFC 9440 headers, and whose headers count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar import reasons
from sidecar.authorizers.mtls import CertificateError, ClientCertVerifier, build_engine
from sidecar.authorizers.mtls.rfc9440 import parse_byte_sequence, parse_byte_sequence_list
from sidecar.authorizers.mtls.xfcc import nearest_element, parse_xfcc
from sidecar.metrics import REGISTRY
from sidecar.reasons import Denied
from sidecar.request import Request
from sidecar.settings import MtlsSettings
from tests.unit.authorizers.custom.lambda_testkit import request
from tests.unit.authorizers.mtls.certs_testkit import (
    SPIFFE_ID,
    T0,
    Pki,
    client_cert_headers,
    envoy_value,
    write_truststore,
    xfcc,
)

PROXY = "10.0.0.7"
STRANGER = "203.0.113.9"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def engine(tmp_path: Path, pki: Pki, **mtls: Any) -> ClientCertVerifier:
    write_truststore(tmp_path / "ca.pem", pki.root)
    mtls.setdefault("trusted_peers", (PROXY,))
    settings = MtlsSettings(truststore="ca.pem", **mtls)
    return build_engine(settings, tmp_path, str(tmp_path / "config.yaml"), (PROXY,), clock=lambda: T0)


def http_mode(headers: dict[str, str], source: str = PROXY, **fields: Any) -> Request:
    """What the HTTP transport builds: no protocol, the source the proxy reported (or the TCP peer)."""
    return request("/b2b/x", headers=headers, source_address=source, protocol="", **fields)


def ignored(source: str) -> float:
    return REGISTRY.get_sample_value("authz_mtls_headers_ignored_total", {"source": source}) or 0.0


def reason(verifier: ClientCertVerifier, req: Request) -> str:
    with pytest.raises(Denied) as caught:
        verifier.verify_request(req)
    return caught.value.reason


# -- the XFCC format


def test_envoys_documented_example_parses() -> None:
    header = (
        "By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;"
        'Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com'
    )
    (element,) = parse_xfcc(header)
    assert element.first("by") == "http://frontend.lyft.com"
    assert element.first("subject") == "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client"
    assert element.values("uri") == ("http://testclient.lyft.com",)


def test_quoted_values_keep_separators_and_escaped_quotes() -> None:
    (element,) = parse_xfcc('Subject="CN=a\\"b, O=c;d";DNS=x.example;DNS=y.example')
    assert element.first("subject") == 'CN=a"b, O=c;d'
    assert element.values("dns") == ("x.example", "y.example")


def test_the_nearest_proxys_element_is_the_last() -> None:
    header = "By=spiffe://far;URI=spiffe://forged, By=spiffe://near;URI=spiffe://real"
    element = nearest_element(header)
    assert element is not None and element.first("by") == "spiffe://near"
    assert nearest_element("  ") is None


@pytest.mark.parametrize(
    "header",
    ['Subject="unterminated', "By", "By=a;;Hash=b", "By=a,", 'By=a"b', 'Subject="a"b', "=a", "By=a,,By=b"],
)
def test_malformed_xfcc_is_an_error(header: str) -> None:
    with pytest.raises(CertificateError):
        parse_xfcc(header)


# -- the RFC 9440 format


def test_byte_sequences_with_and_without_padding_and_parameters() -> None:
    assert parse_byte_sequence(":aGk=:") == b"hi"
    assert parse_byte_sequence(" :aGk: ") == b"hi"
    assert parse_byte_sequence(":aGk=:;x=1;y") == b"hi"
    assert parse_byte_sequence_list(":aGk=:,  :aG8=:") == [b"hi", b"ho"]
    assert parse_byte_sequence_list("") == []


@pytest.mark.parametrize("value", [":aGk=:, :aG8=:", "aGk=", ":a$k=:", ":aGk=", ":a:", "token"])
def test_client_cert_must_be_one_byte_sequence(value: str) -> None:
    with pytest.raises(CertificateError):
        parse_byte_sequence(value)


@pytest.mark.parametrize("value", [":aGk=:,", ":aGk=: :aG8=:", ":aGk=:,,:aG8=:", '"text"'])
def test_client_cert_chain_must_be_a_list_of_byte_sequences(value: str) -> None:
    with pytest.raises(CertificateError):
        parse_byte_sequence_list(value)


# -- sources through the engine


def test_xfcc_from_a_trusted_peer_is_verified(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf()
    verifier = engine(tmp_path, pki, sources=("xfcc",))
    cert = verifier.verify_request(http_mode({"x-forwarded-client-cert": xfcc(leaf, [pki.intermediate])}))
    assert cert.san_uri == (SPIFFE_ID,) and cert.fingerprint_hex == leaf.sha256


def test_xfcc_from_an_untrusted_peer_is_ignored_and_counted(tmp_path: Path, pki: Pki) -> None:
    verifier = engine(tmp_path, pki, sources=("xfcc",))
    before = ignored("xfcc")
    req = http_mode({"x-forwarded-client-cert": xfcc(pki.leaf(), [pki.intermediate])}, source=STRANGER)
    assert reason(verifier, req) == reasons.CLIENT_CERT_MISSING
    assert ignored("xfcc") == before + 1


def test_client_cert_from_a_trusted_peer_is_verified(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf()
    verifier = engine(tmp_path, pki, sources=("client-cert-header",))
    cert = verifier.verify_request(http_mode(client_cert_headers(leaf, [pki.intermediate])))
    assert cert.fingerprint_hex == leaf.sha256 and len(cert.chain) == 1


def test_client_cert_from_an_untrusted_peer_is_ignored_and_counted(tmp_path: Path, pki: Pki) -> None:
    verifier = engine(tmp_path, pki, sources=("client-cert-header",))
    before = ignored("client-cert-header")
    req = http_mode(client_cert_headers(pki.leaf(), [pki.intermediate]), source=STRANGER)
    assert reason(verifier, req) == reasons.CLIENT_CERT_MISSING
    assert ignored("client-cert-header") == before + 1


def test_grpc_mode_xfcc_is_envoys_own_and_client_cert_is_not(tmp_path: Path, pki: Pki) -> None:
    """In gRPC mode Envoy wrote XFCC itself (SANITIZE_SET); Client-Cert reached Envoy from its downstream."""
    leaf = pki.leaf()
    grpc_xfcc = request("/b2b/x", headers={"x-forwarded-client-cert": xfcc(leaf, [pki.intermediate])})
    assert grpc_xfcc.protocol and grpc_xfcc.source_address == STRANGER
    assert engine(tmp_path, pki, sources=("xfcc",)).verify_request(grpc_xfcc).fingerprint_hex == leaf.sha256
    grpc_client_cert = request("/b2b/x", headers=client_cert_headers(leaf, [pki.intermediate]))
    assert reason(engine(tmp_path, pki, sources=("client-cert-header",)), grpc_client_cert) == (
        reasons.CLIENT_CERT_MISSING
    )


def test_without_mtls_trusted_peers_no_one_may_write_a_certificate_header(tmp_path: Path, pki: Pki) -> None:
    """`http.trusted_peers` says who may ask (often a whole network): a client inside it sending a victim's
    certificate (public, no key needed) in a header must not be that victim."""
    verifier = engine(tmp_path, pki, sources=("client-cert-header", "xfcc"), trusted_peers=None)
    victim = pki.leaf("victim")
    forged = {**client_cert_headers(victim, [pki.intermediate]), "x-forwarded-client-cert": xfcc(victim)}
    assert reason(verifier, http_mode(forged, source=PROXY)) == reasons.CLIENT_CERT_MISSING


def test_mtls_trusted_peers_replace_the_http_ones(tmp_path: Path, pki: Pki) -> None:
    verifier = engine(tmp_path, pki, sources=("xfcc",), trusted_peers=("192.0.2.0/24",))
    header = {"x-forwarded-client-cert": xfcc(pki.leaf(), [pki.intermediate])}
    assert reason(verifier, http_mode(header, source=PROXY)) == reasons.CLIENT_CERT_MISSING
    assert verifier.verify_request(http_mode(header, source="192.0.2.44"))
    assert verifier.verify_request(http_mode(header, source="::ffff:192.0.2.44"))
    assert reason(verifier, http_mode(header, source="not an address")) == reasons.CLIENT_CERT_MISSING


def test_sources_are_read_in_order_and_an_ignored_header_falls_through(tmp_path: Path, pki: Pki) -> None:
    from_envoy, from_header = pki.leaf("envoy"), pki.leaf("header")
    verifier = engine(tmp_path, pki, sources=("xfcc", "envoy"))
    headers = {"x-forwarded-client-cert": xfcc(from_header, [pki.intermediate])}
    both = {"headers": headers, "peer_certificate": envoy_value(from_envoy, pki.intermediate)}
    assert verifier.verify_request(http_mode(**both)).common_name == "header"
    assert verifier.verify_request(http_mode(**both, source=STRANGER)).common_name == "envoy"


def test_a_broken_believed_header_does_not_fall_through(tmp_path: Path, pki: Pki) -> None:
    verifier = engine(tmp_path, pki, sources=("xfcc", "envoy"))
    req = http_mode({"x-forwarded-client-cert": 'Cert="oops'}, peer_certificate=envoy_value(pki.leaf()))
    assert reason(verifier, req) == reasons.CLIENT_CERT_INVALID


def test_an_xfcc_hash_that_is_not_the_certificates_is_invalid(tmp_path: Path, pki: Pki) -> None:
    leaf, other = pki.leaf(), pki.leaf("other")
    forged = xfcc(leaf, [pki.intermediate]).replace(leaf.sha256, other.sha256)
    verifier = engine(tmp_path, pki, sources=("xfcc",))
    assert reason(verifier, http_mode({"x-forwarded-client-cert": forged})) == reasons.CLIENT_CERT_INVALID


def test_an_xfcc_element_without_a_certificate_is_invalid(tmp_path: Path, pki: Pki) -> None:
    """Hash, Subject and URI alone name a certificate nobody here can verify: never enough for an allow."""
    leaf = pki.leaf()
    header = f"By=spiffe://proxy;Hash={leaf.sha256};URI={SPIFFE_ID}"
    verifier = engine(tmp_path, pki, sources=("xfcc",))
    with pytest.raises(Denied) as caught:
        verifier.verify_request(http_mode({"x-forwarded-client-cert": header}))
    assert caught.value.reason == reasons.CLIENT_CERT_INVALID and "set_current_client_cert_details" in (
        caught.value.message
    )


def test_an_xfcc_chain_alone_carries_the_leaf_first(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf()
    header = f'By=spiffe://proxy;Chain="{envoy_value(leaf, pki.intermediate)}"'
    verifier = engine(tmp_path, pki, sources=("xfcc",))
    assert verifier.verify_request(http_mode({"x-forwarded-client-cert": header})).fingerprint_hex == leaf.sha256


def test_only_the_last_xfcc_element_counts(tmp_path: Path, pki: Pki) -> None:
    """A client's own element before the proxy's is never read, even with a certificate that would verify."""
    mine, theirs = pki.leaf("mine"), pki.leaf("theirs")
    header = f"{xfcc(theirs, [pki.intermediate])},{xfcc(mine, [pki.intermediate])}"
    verifier = engine(tmp_path, pki, sources=("xfcc",))
    assert verifier.verify_request(http_mode({"x-forwarded-client-cert": header})).common_name == "mine"


def test_a_parsed_certificate_is_remembered_by_its_text(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sidecar.authorizers.mtls import sources

    calls = []
    real = sources.from_pem
    monkeypatch.setattr(sources, "from_pem", lambda text: calls.append(1) or real(text))
    verifier = engine(tmp_path, pki)
    value = envoy_value(pki.leaf(), pki.intermediate)
    for _ in range(3):
        verifier.verify_request(request("/b2b/x", peer_certificate=value))
    assert len(calls) == 1
