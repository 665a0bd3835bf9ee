"""Client certificates for the mTLS rows, made with `cryptography` when a run starts (benchmarks never import tests).

`BenchPki` is a private CA as an operator would run one: a root and an intermediate (RSA 2048 by default, the
usual key of a private CA; EC P-256 on request), a truststore holding both (API Gateway's advice: the whole
chain, since Envoy's `source.certificate` carries the client's certificate alone) and a CRL of the intermediate
listing a few revoked serials, so a cold Check also looks revocation up. Client certificates carry a SPIFFE ID as
their URI SAN and the clientAuth EKU, and are valid from a day ago for 30 days: a run judges them at the real
clock (the CheckRequests carry no time).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KeyKind = Literal["rsa", "ec"]
TRUST_DOMAIN = "spiffe://bench.local"
DAY = 86_400.0
REVOKED = 50
"""Serials the intermediate's CRL lists (none of them a certificate the rows present)."""


def new_key(kind: KeyKind) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def envoy_value(cert: x509.Certificate) -> str:
    """`source.certificate` as Envoy sends it (`include_peer_certificate: true`): the URL-encoded PEM."""
    return quote(cert.public_bytes(Encoding.PEM).decode(), safe="")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bench"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _when(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


class BenchPki:
    """A root CA and an intermediate under it, with their truststore and CRL files in `directory`."""

    def __init__(self, directory: Path, kind: KeyKind = "rsa") -> None:
        self.now = time.time()
        self.root_key = new_key(kind)
        self.root = self._certificate(_name("Bench Root CA"), self.root_key, None, None, ca=True)
        self.intermediate_key = new_key(kind)
        self.intermediate = self._certificate(
            _name("Bench Intermediate CA"), self.intermediate_key, self.root, self.root_key, ca=True
        )
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        """One key for every client certificate: a new certificate is what makes a Check cold (the verify cache
        and the parse memo go by the certificate's bytes), and signing one is cheap next to making a key."""
        self.truststore = directory / f"truststore-{kind}.pem"
        self.truststore.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in (self.root, self.intermediate)))
        self.crl = directory / f"intermediate-{kind}.crl.pem"
        self.crl.write_bytes(self._crl().public_bytes(Encoding.PEM))

    def leaf(self, name: str) -> x509.Certificate:
        """A client certificate for workload `name` (URI SAN `spiffe://bench.local/ns/bench/sa/<name>`)."""
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True),
            (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(self.spiffe_id(name))]), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ]
        return self._certificate(
            _name(name), self.leaf_key, self.intermediate, self.intermediate_key, ca=False, extensions=extensions
        )

    def leaves(self, count: int, prefix: str = "client") -> list[str]:
        """`count` distinct client certificates as Envoy sends them (`envoy_value`)."""
        return [envoy_value(self.leaf(f"{prefix}-{i}")) for i in range(count)]

    @staticmethod
    def spiffe_id(name: str) -> str:
        return f"{TRUST_DOMAIN}/ns/bench/sa/{name}"

    def _certificate(
        self,
        subject: x509.Name,
        key: PrivateKey,
        issuer: x509.Certificate | None,
        issuer_key: PrivateKey | None,
        *,
        ca: bool,
        extensions: list[tuple[x509.ExtensionType, bool]] | None = None,
    ) -> x509.Certificate:
        signer = issuer_key or key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer is not None else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_when(self.now - DAY))
            .not_valid_after(_when(self.now + 30 * DAY))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        )
        if ca:
            usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
            builder = builder.add_extension(usage, critical=True)
        for extension, critical in extensions or ():
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    def _crl(self) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.intermediate.subject)
            .last_update(_when(self.now - DAY))
            .next_update(_when(self.now + 7 * DAY))
        )
        for _ in range(REVOKED):
            entry = x509.RevokedCertificateBuilder().serial_number(x509.random_serial_number())
            builder = builder.add_revoked_certificate(entry.revocation_date(_when(self.now - 3600)).build())
        return builder.sign(self.intermediate_key, hashes.SHA256())
