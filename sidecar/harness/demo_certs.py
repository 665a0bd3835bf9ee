"""The demo's certificates, made at run time with `cryptography` (nothing is shipped): a CA, the server certificate
Envoy's TLS listener presents, a partner's client certificate named by a SPIFFE id, and a stranger's from a CA the
sidecar does not trust. Keys are EC P-256 (fast to make, and within API Gateway's minimums); everything is valid
from an hour ago for a day, and lives in a temporary directory the demo removes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .envoy import DownstreamTls

PARTNER_ID = "spiffe://demo.example/ns/partners/sa/acme"
"""The partner's URI SAN: the principal `type: mtls` names it by (`mtls.principal: san.uri`)."""


@dataclass(frozen=True, slots=True)
class _Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    organization = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "authz-sidecar demo")
    return x509.Name([organization, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(cn: str, issuer: _Issued | None, extensions: Sequence[x509.ExtensionType], *, ca: bool = False) -> _Issued:
    """A certificate for `cn` signed by `issuer` (self-signed without one), with what the Web PKI profile the
    sidecar's verifier applies asks for: basic constraints, key identifiers, key usage."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer = issuer.key if issuer is not None else key
    now = dt.datetime.now(dt.UTC)
    usage = (True, False, False, False, False, False, False, False, False)  # digitalSignature
    if ca:
        usage = (False, False, False, False, False, True, True, False, False)  # keyCertSign, cRLSign
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer is not None else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(*usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return _Issued(builder.sign(signer, hashes.SHA256()), key)


def _client(cn: str, uri: str, issuer: _Issued) -> _Issued:
    names = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)])
    return _issue(cn, issuer, [names, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])])


class DemoCertificates:
    """The demo's CA and certificates, written to a temporary directory (`cleanup` removes it)."""

    CLIENTS = ("partner", "stranger")

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="authz-demo-tls-")
        self.directory = Path(self._dir.name)
        ca = _issue("Demo CA", None, [], ca=True)
        stranger_ca = _issue("Stranger CA", None, [], ca=True)
        hosts = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        server = _issue(
            "localhost",
            ca,
            [x509.SubjectAlternativeName(hosts), x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])],
        )
        self.truststore = self._write_cert("ca.pem", ca)
        self._write_pair("server", server)
        self._write_pair("partner", _client("partner", PARTNER_ID, ca))
        self._write_pair("stranger", _client("stranger", "spiffe://elsewhere.example/sa/unknown", stranger_ca))

    def _write_cert(self, name: str, issued: _Issued) -> Path:
        path = self.directory / name
        path.write_bytes(issued.cert.public_bytes(Encoding.PEM))
        return path

    def _write_pair(self, name: str, issued: _Issued) -> None:
        self._write_cert(f"{name}.pem", issued)
        key = issued.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        (self.directory / f"{name}.key").write_bytes(key)

    def envoy_tls(self) -> DownstreamTls:
        """Envoy's TLS listener with the demo's server certificate: it asks for client certificates and lets the
        sidecar verify them (the shipped way), without the private listener."""
        return DownstreamTls(
            certificate_chain=str(self.directory / "server.pem"),
            private_key=str(self.directory / "server.key"),
            private=False,
        )

    def client_context(self, client: str = "") -> ssl.SSLContext:
        """A TLS client trusting the demo CA, presenting `client`'s certificate (one of `CLIENTS`; "": none)."""
        context = ssl.create_default_context(cafile=str(self.truststore))
        if client:
            context.load_cert_chain(self.directory / f"{client}.pem", self.directory / f"{client}.key")
        return context

    def cleanup(self) -> None:
        self._dir.cleanup()
