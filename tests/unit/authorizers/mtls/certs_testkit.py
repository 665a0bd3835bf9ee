"""Certificates made at test time with `cryptography`, for the mtls tests here and the e2e tests through Envoy.

`Pki` is a root CA with one intermediate; it issues client (and server) certificates, more intermediates, and CRLs,
and writes truststores and CRL files. The helpers below render certificates the way each source carries them:
Envoy's URL-encoded PEM, an XFCC element, RFC 9440 headers. Keys are EC P-256 unless a test asks for another
(they are fast to make); everything is valid around `T0`, the lambda tests' clock.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.runtime import RuntimeHolder, compile_runtime

T0 = 1_800_000_000.0
"""The tests' request time (2027-01-15): every certificate here is valid a day before it to 30 days after."""
DAY = 86_400.0
SPIFFE_ID = "spiffe://example.org/ns/payments/sa/api"
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
CLIENT_AUTH = (ExtendedKeyUsageOID.CLIENT_AUTH,)
SERVER_AUTH = (ExtendedKeyUsageOID.SERVER_AUTH,)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _time(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def _name(cn: str, org: str = "Example") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(Encoding.PEM).decode()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @property
    def key_pem(self) -> str:
        """The private key, unencrypted PKCS#8 PEM (for a TLS client or Envoy's listener)."""
        return self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()

    def write(self, directory: Path, name: str, *chain: Issued) -> tuple[Path, Path]:
        """`name.pem` (the certificate, then `chain`: what a TLS peer presents) and `name.key` in `directory`."""
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_text(pem(self, *chain))
        key.write_text(self.key_pem)
        return cert, key


@dataclass
class Pki:
    """A root CA (`root`) and an intermediate (`intermediate`) under it, issuing whatever a test needs."""

    name: str = "Test"
    now: float = T0
    key_factory: Any = ec_key
    root: Issued = field(init=False)
    intermediate: Issued = field(init=False)

    def __post_init__(self) -> None:
        key = self.key_factory()
        self.root = Issued(self._build(_name(f"{self.name} Root CA"), key, None, ca=True, path_length=None), key)
        self.intermediate = self.ca(f"{self.name} Intermediate CA")

    def _build(
        self,
        subject: x509.Name,
        key: PrivateKey,
        issuer: Issued | None,
        *,
        ca: bool,
        path_length: int | None = None,
        not_before: float | None = None,
        not_after: float | None = None,
        extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
        serial: int | None = None,
    ) -> x509.Certificate:
        signer = issuer.key if issuer is not None else key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert.subject if issuer is not None else subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(_time(not_before if not_before is not None else self.now - DAY))
            .not_valid_after(_time(not_after if not_after is not None else self.now + 30 * DAY))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if ca:
            usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
            builder = builder.add_extension(usage, critical=True)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    def ca(
        self,
        cn: str,
        issuer: Issued | None = None,
        *,
        ca_bit: bool = True,
        key: PrivateKey | None = None,
        **options: Any,
    ) -> Issued:
        """A CA under `issuer` (default: the root). `ca_bit=False` makes one without basicConstraints.cA."""
        key = key or self.key_factory()
        return Issued(self._build(_name(cn), key, issuer or self.root, ca=ca_bit, **options), key)

    def chain_of(self, depth: int) -> list[Issued]:
        """`depth` intermediates, each under the previous (the first under the root), nearest the leaf last."""
        chain: list[Issued] = []
        for level in range(depth):
            chain.append(self.ca(f"{self.name} Level {level} CA", chain[-1] if chain else None))
        return chain

    def leaf(
        self,
        cn: str = "client",
        *,
        uri: Sequence[str] = (SPIFFE_ID,),
        dns: Sequence[str] = (),
        email: Sequence[str] = (),
        eku: Sequence[x509.ObjectIdentifier] | None = CLIENT_AUTH,
        issuer: Issued | None = None,
        key: PrivateKey | None = None,
        **options: Any,
    ) -> Issued:
        """A client certificate under `issuer` (default: the intermediate) with the SANs and EKU asked for."""
        key = key or self.key_factory()
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uri]
        names += [x509.DNSName(d) for d in dns] + [x509.RFC822Name(e) for e in email]
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
        ]
        if names:
            extensions.append((x509.SubjectAlternativeName(names), False))
        if eku is not None:
            extensions.append((x509.ExtendedKeyUsage(list(eku)), False))
        cert = self._build(_name(cn), key, issuer or self.intermediate, ca=False, extensions=extensions, **options)
        return Issued(cert, key)

    def server(self, hosts: Sequence[str] = ("localhost",), addresses: Sequence[str] = ("127.0.0.1",)) -> Issued:
        """A TLS server certificate (serverAuth) for `hosts` and `addresses`, under the intermediate: what a listener
        that asks for client certificates presents."""
        key = self.key_factory()
        names: list[x509.GeneralName] = [x509.DNSName(host) for host in hosts]
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.SubjectAlternativeName(names), False),
            (x509.ExtendedKeyUsage(list(SERVER_AUTH)), False),
        ]
        cert = self._build(
            _name(hosts[0] if hosts else "server"), key, self.intermediate, ca=False, extensions=extensions
        )
        return Issued(cert, key)

    def crl(
        self,
        revoked: Iterable[Issued] = (),
        issuer: Issued | None = None,
        *,
        last_update: float | None = None,
        next_update: float | None = None,
        signer: PrivateKey | None = None,
    ) -> x509.CertificateRevocationList:
        """A CRL of `issuer` (default: the intermediate) listing `revoked`, signed by its key (or `signer`)."""
        issuer = issuer or self.intermediate
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.cert.subject)
            .last_update(_time(last_update if last_update is not None else self.now - DAY))
            .next_update(_time(next_update if next_update is not None else self.now + 7 * DAY))
        )
        for item in revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(item.cert.serial_number)
                .revocation_date(_time(self.now - 3600))
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(signer or issuer.key, hashes.SHA256())  # type: ignore[arg-type]


def pem(*issued: Issued) -> str:
    """A PEM bundle, in the order given."""
    return "".join(item.pem for item in issued)


def write_truststore(path: Path, *cas: Issued) -> Path:
    path.write_text(pem(*cas))
    return path


def write_crl(path: Path, *crls: x509.CertificateRevocationList, der: bool = False) -> Path:
    if der:
        path.write_bytes(crls[0].public_bytes(Encoding.DER))
    else:
        path.write_bytes(b"".join(crl.public_bytes(Encoding.PEM) for crl in crls))
    return path


def envoy_value(*issued: Issued) -> str:
    """`source.certificate` / `x-authz-peer-certificate`: URL-encoded PEM, as Envoy writes it."""
    return quote(pem(*issued), safe="")


def xfcc(leaf: Issued, chain: Sequence[Issued] = (), *, with_hash: bool = True, by: str = "spiffe://proxy") -> str:
    """One XFCC element as Envoy writes it (`Cert`, and `Chain` repeating the leaf first when there is a chain)."""
    parts = [f"By={by}"]
    if with_hash:
        parts.append(f"Hash={leaf.sha256}")
    parts.append(f'Cert="{envoy_value(leaf)}"')
    if chain:
        parts.append(f'Chain="{envoy_value(leaf, *chain)}"')
    parts.append(f'Subject="{leaf.cert.subject.rfc4514_string()}"')
    parts += [f"URI={uri}" for uri in _sans(leaf, x509.UniformResourceIdentifier)]
    return ";".join(parts)


def _sans(issued: Issued, kind: type[x509.GeneralName]) -> list[str]:
    try:
        names = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(names.get_values_for_type(kind))  # type: ignore[arg-type]


def byte_sequence(data: bytes) -> str:
    return f":{base64.b64encode(data).decode()}:"


def client_cert_headers(leaf: Issued, chain: Sequence[Issued] = ()) -> dict[str, str]:
    """RFC 9440's `Client-Cert` (and `Client-Cert-Chain` when there is a chain)."""
    headers = {"client-cert": byte_sequence(leaf.der)}
    if chain:
        headers["client-cert-chain"] = ", ".join(byte_sequence(item.der) for item in chain)
    return headers


API = "api:\n  id: a1b2c3d4e5\n  stage: prod\n  account: '123456789012'\n  region: us-east-1\n"
ROUTES = "  - {match: 'ANY /b2b/{proxy+}', authorizer: peers}\n"


def mtls_config(mtls: str, routes: str = ROUTES, extra: str = "") -> str:
    """A config with an `mtls:` section (`mtls`, its keys, unindented) and one `type: mtls` authorizer `peers`."""
    section = textwrap.indent(textwrap.dedent(mtls).strip(), "  ")
    return f"{API}mtls:\n{section}\nauthorizers:\n  peers: {{type: mtls}}\nroutes:\n{routes}{extra}"


def mtls_pipeline(tmp_path: Path, mtls: str, routes: str = ROUTES, extra: str = "") -> Pipeline:
    """A pipeline over the real config loader and runtime, the config file in `tmp_path` (relative paths in
    `mtls` resolve there)."""
    path = tmp_path / "config.yaml"
    text = mtls_config(mtls, routes, extra)
    path.write_text(text)
    config = parse_config(text, str(path))
    return Pipeline(RuntimeHolder(compile_runtime(config, clock=lambda: T0)))
