"""`ClientCert`: a client's certificate and the chain it presented, parsed once into what every later stage reads.

Whatever source carried it (Envoy's `source.certificate`, XFCC, RFC 9440), a certificate becomes one of these,
so the verifier, the principal, the policy keys and a Lambda event's `clientCert` all read the same fields. The
fields are computed here, once per distinct certificate (the sources keep a memo of what they parsed), never on a
warm Check. Anything that cannot be read is a `CertificateError`, which the engine turns into a
`ClientCertInvalid` deny: never an exception escaping, never an allow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

MAX_CHAIN = 16
"""Certificates a client may present above its own: more than any real chain (`mtls.max_chain_depth` is at most
10), few enough that a hostile header cannot make the verifier try thousands of paths."""
MAX_DER_BYTES = 16 * 1024
"""One certificate's size at most (real ones are 1 to 3 KiB)."""

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_PARSE_ERRORS = (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType, x509.InvalidVersion)
"""What `cryptography` raises for a certificate it cannot read, or an extension it cannot decode (extensions are
decoded lazily, when first read). `InvalidVersion` (a version field other than v1-v3) is no ValueError: the mtls
fuzzer found it escaping from an XFCC chain."""


class CertificateError(ValueError):
    """A certificate (or the text that should carry one) cannot be read. The message says what, never the bytes."""


@dataclass(frozen=True, eq=False, slots=True)
class ClientCert:
    """A client certificate (`leaf`) and the certificates it presented to chain it (`chain`, leaf excluded, in
    the order presented), with the fields API Gateway and the policies read, computed once."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    fingerprint: bytes
    """SHA-256 of the leaf's DER: what the verify cache and Envoy's XFCC `Hash` name it by."""
    chain_fingerprints: tuple[bytes, ...]
    subject: str
    """The subject DN, RFC 4514 (`CN=client,O=Example`), as API Gateway's `subjectDN`."""
    issuer: str
    serial: str
    """API Gateway's `serialNumber`: the serial's bytes in lower-case hex, colon-separated (`0a:1b:...`)."""
    not_before: float
    not_after: float
    san_uri: tuple[str, ...]
    san_dns: tuple[str, ...]
    san_email: tuple[str, ...]
    common_name: str
    """The subject's first CN ("" without one)."""
    pem: str
    """The leaf alone, PEM (`clientCertPem`)."""

    @property
    def fingerprint_hex(self) -> str:
        """The SHA-256 in lower-case hex, as Envoy writes XFCC's `Hash` (the `mtls:fingerprint` policy key)."""
        return self.fingerprint.hex()

    def api_gateway(self) -> dict[str, Any]:
        """API Gateway's `clientCert` object (`requestContext.identity.clientCert`, `authentication.clientCert`):
        a fresh dict each time, as a handler may change its event."""
        return {
            "clientCertPem": self.pem,
            "subjectDN": self.subject,
            "issuerDN": self.issuer,
            "serialNumber": self.serial,
            "validity": {"notBefore": openssl_time(self.not_before), "notAfter": openssl_time(self.not_after)},
        }


def openssl_time(seconds: float) -> str:
    """`May 28 12:30:02 2019 GMT`, `Aug  5 09:36:04 2021 GMT`: OpenSSL's form, which API Gateway shows."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{_MONTHS[moment.month - 1]} {moment.day:2d} {moment:%H:%M:%S} {moment.year} GMT"


def serial_hex(serial: int) -> str:
    """A serial as API Gateway writes it: big-endian bytes in colon hex. A negative serial (RFC 5280 forbids it,
    some CAs wrote them) keeps its two's-complement bytes rather than failing."""
    length = (serial.bit_length() + 8) // 8 if serial < 0 else (serial.bit_length() + 7) // 8 or 1
    return ":".join(f"{byte:02x}" for byte in serial.to_bytes(length, "big", signed=serial < 0))


def from_certificates(leaf: x509.Certificate, chain: Sequence[x509.Certificate]) -> ClientCert:
    """The model of `leaf` presented with `chain`; `CertificateError` if a field it needs cannot be read."""
    if len(chain) > MAX_CHAIN:
        raise CertificateError(f"the client presented {len(chain)} chain certificates (at most {MAX_CHAIN})")
    try:
        der = leaf.public_bytes(Encoding.DER)
        uris, dns, emails = _sans(leaf)
        return ClientCert(
            leaf=leaf,
            chain=tuple(chain),
            fingerprint=hashlib.sha256(der).digest(),
            chain_fingerprints=tuple(hashlib.sha256(c.public_bytes(Encoding.DER)).digest() for c in chain),
            subject=leaf.subject.rfc4514_string(),
            issuer=leaf.issuer.rfc4514_string(),
            serial=serial_hex(leaf.serial_number),
            not_before=leaf.not_valid_before_utc.timestamp(),
            not_after=leaf.not_valid_after_utc.timestamp(),
            san_uri=uris,
            san_dns=dns,
            san_email=emails,
            common_name=_common_name(leaf.subject),
            pem=leaf.public_bytes(Encoding.PEM).decode("ascii"),
        )
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"the certificate cannot be read ({type(exc).__name__})") from None


def from_der(leaf: bytes, chain: Sequence[bytes] = ()) -> ClientCert:
    """The model of DER-encoded certificates (RFC 9440's byte sequences)."""
    return from_certificates(_load_der(leaf), [_load_der(item) for item in chain])


def from_pem(text: str) -> ClientCert:
    """The model of a PEM bundle: the client's certificate first, then any chain it presented."""
    certificates = load_pem_bundle(text)
    return from_certificates(certificates[0], certificates[1:])


def load_pem_bundle(text: str) -> list[x509.Certificate]:
    """Every certificate of a PEM text, in order (at least one), or `CertificateError`."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise CertificateError("the PEM text is not ASCII") from None
    if len(data) > (MAX_CHAIN + 1) * MAX_DER_BYTES * 2:
        raise CertificateError("the PEM text is too large")
    try:
        return x509.load_pem_x509_certificates(data)
    except _PARSE_ERRORS:
        raise CertificateError("no readable PEM certificate") from None


def _load_der(data: bytes) -> x509.Certificate:
    if not data or len(data) > MAX_DER_BYTES:
        raise CertificateError("a certificate is empty or too large")
    try:
        return x509.load_der_x509_certificate(data)
    except _PARSE_ERRORS:
        raise CertificateError("a DER certificate cannot be read") from None


def _sans(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(URI, DNS, email) subject alternative names, each in the certificate's order; empty without the
    extension."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), (), ()
    return (
        tuple(names.get_values_for_type(x509.UniformResourceIdentifier)),
        tuple(names.get_values_for_type(x509.DNSName)),
        tuple(names.get_values_for_type(x509.RFC822Name)),
    )


def _common_name(name: x509.Name) -> str:
    for attribute in name.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attribute.value, str):
            return attribute.value
    return ""
