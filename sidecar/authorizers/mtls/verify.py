"""Whether a client certificate is good at a given time: a `Verdict`, with the window in which it holds.

The chain is built and checked by `cryptography.x509.verification`'s client verifier, never by code of ours: it
finds a path from the leaf through the presented certificates to a truststore anchor, checks every signature,
validity at the request's time (`Request.time`, so `check --at` is honoured), CA bits and path lengths, name
constraints and the leaf's extended key usage (clientAuth, or none at all, as RFC 5280 reads an absent EKU). Its
extension policy is the Web PKI one but for the subject alternative names, which a client certificate need not
have (API Gateway does not ask for them; `subject.cn` principals live without).

Around it, what API Gateway adds and the verifier does not check, and what the reasons need told apart:

- key strength, API Gateway's minimums (RSA of 2048 bits or more, EC P-256 or P-384), for the leaf and for every
  certificate of the path (presented intermediates before verifying, the anchor after);
- the leaf's EKU and validity before verifying, so they get their own reasons (`ClientCertInvalid`,
  `ClientCertExpired`) rather than the verifier's one error;
- `mtls.max_chain_depth` counts the certificates above the client's, its anchor included (API Gateway: 4); the
  verifier's depth counts intermediates only, so it is given one less;
- revocation: for every certificate of the verified path but the anchor (which the operator trusts by listing it),
  the newest CRL of its issuer that verifies against the issuer's key in the path; listed is `ClientCertRevoked`.
  A CRL past its nextUpdate under `stale_crl: deny`, or CRLs of the issuer's name none of which verifies, leave
  revocation unknown: `ClientCertUntrusted` (fail closed).

A good verdict holds from the latest notBefore to the earliest notAfter of the path, and no later than the
nextUpdate of a CRL it read (under `stale_crl: deny`); a refusal holds for `REFUSAL_TTL` seconds at most, and not
past the moment the leaf becomes valid, so a cached refusal never outlives what it judged by much.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, VerificationError

from ...reasons import (
    CLIENT_CERT_EXPIRED,
    CLIENT_CERT_INVALID,
    CLIENT_CERT_REVOKED,
    CLIENT_CERT_UNTRUSTED,
)
from .cert import ClientCert, openssl_time
from .truststore import TrustSnapshot, signature_valid

REFUSAL_TTL = 60.0
"""Seconds a refusal may be reused from the verify cache (a flood of one bad certificate costs one verification
a minute), never past a change the verdict depends on."""
MIN_RSA_BITS = 2048
EC_CURVES = frozenset({"secp256r1", "secp384r1"})
"""API Gateway's minimums for client certificate keys: RSA 2048 bits or more, ECDSA P-256 or P-384."""

_EE_POLICY = ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


@dataclass(frozen=True, slots=True)
class Rules:
    """What the `mtls:` section says about verification."""

    max_chain_depth: int = 4
    stale_crl: Literal["deny", "allow"] = "deny"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A judgement of one certificate and chain against one snapshot, good for `valid_from <= t < valid_until`.
    `reason` is "" for a verified chain, else the reason code; `detail` is for `check --explain` only."""

    reason: str
    message: str
    valid_from: float
    valid_until: float
    detail: str = ""

    def holds_at(self, at: float) -> bool:
        return self.valid_from <= at < self.valid_until


def verify_chain(cert: ClientCert, snapshot: TrustSnapshot, at: float, depth: int) -> list[x509.Certificate]:
    """The verified path, leaf first and anchor last (the only call into the X.509 verifier; tests count it)."""
    verifier = (
        PolicyBuilder()
        .store(snapshot.store)
        .time(datetime.fromtimestamp(at, UTC))
        .max_chain_depth(depth)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    return verifier.verify(cert.leaf, list(cert.chain)).chain


def judge(cert: ClientCert, snapshot: TrustSnapshot, at: float, rules: Rules) -> Verdict:
    """The verdict on `cert` at `at` (epoch seconds) against `snapshot` (see the module's docstring)."""
    early = _leaf_refusal(cert, at)
    if early is not None:
        return early
    try:
        path = verify_chain(cert, snapshot, at, rules.max_chain_depth - 1)
    except VerificationError as exc:
        return _unverified(str(exc), cert, at, rules)
    except (ValueError, TypeError) as exc:  # what the verifier cannot even try: not a chain anyone could verify
        return _refused(CLIENT_CERT_UNTRUSTED, "the certificate chain cannot be verified", cert, at, type(exc).__name__)
    for above in path[1:]:
        weak = weak_key(above)
        if weak is not None:
            message = f"a CA certificate of its chain has a weak key ({weak})"
            return _refused(CLIENT_CERT_INVALID, message, cert, at, above.subject.rfc4514_string())
    return _revocation(cert, path, snapshot, at, rules)


def weak_key(cert: x509.Certificate) -> str | None:
    """What is wrong with the certificate's key by API Gateway's minimums, or None when it is strong enough."""
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return "a key type that cannot be read"
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size >= MIN_RSA_BITS else f"RSA {key.key_size} bits, at least {MIN_RSA_BITS} needed"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return None if key.curve.name in EC_CURVES else f"EC {key.curve.name}, P-256 or P-384 needed"
    return f"{type(key).__name__.removeprefix('_')}: RSA or EC P-256/P-384 needed"


def _leaf_refusal(cert: ClientCert, at: float) -> Verdict | None:
    """What the leaf and the presented certificates alone refuse: weak keys, the EKU, validity at `at`."""
    return _weak_presented(cert, at) or _wrong_usage(cert, at) or _outside_validity(cert, at)


def _weak_presented(cert: ClientCert, at: float) -> Verdict | None:
    for presented in (cert.leaf, *cert.chain):
        weak = weak_key(presented)
        if weak is not None:
            whose = "the client certificate" if presented is cert.leaf else "a presented chain certificate"
            return _refused(CLIENT_CERT_INVALID, f"{whose} has a weak key ({weak})", cert, at)
    return None


def _wrong_usage(cert: ClientCert, at: float) -> Verdict | None:
    """An extended key usage without clientAuth (the verifier refuses it too, without saying so apart)."""
    try:
        usage = cert.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension):
        return _refused(CLIENT_CERT_INVALID, "the certificate's extensions cannot be read", cert, at)
    if ExtendedKeyUsageOID.CLIENT_AUTH in usage:
        return None
    message = "the certificate may not be used for client authentication (its extended key usage lacks clientAuth)"
    return _refused(CLIENT_CERT_INVALID, message, cert, at)


def _outside_validity(cert: ClientCert, at: float) -> Verdict | None:
    if at < cert.not_before:
        message = f"the certificate is not valid before {openssl_time(cert.not_before)}"
        return _refused(CLIENT_CERT_EXPIRED, message, cert, at)
    if at > cert.not_after:
        return _refused(CLIENT_CERT_EXPIRED, f"the certificate expired {openssl_time(cert.not_after)}", cert, at)
    return None


_VERIFIER_WORDS: tuple[tuple[str, str, str], ...] = (
    ("max depth", CLIENT_CERT_INVALID, "the chain has more than {depth} certificates above the client's"),
    ("not valid at validation time", CLIENT_CERT_EXPIRED, "a certificate of its chain is outside its validity"),
    ("too weak", CLIENT_CERT_INVALID, "a CA certificate of its chain has a weak key"),  # the anchor's, too
    ("EKU", CLIENT_CERT_INVALID, "the certificate may not be used for client authentication"),
)
"""What the verifier's error says -> the reason and message. Only the reason code depends on its wording; wording
not recognised is `ClientCertUntrusted`."""


def _unverified(error: str, cert: ClientCert, at: float, rules: Rules) -> Verdict:
    """The verifier's refusal as a reason (`_VERIFIER_WORDS`), its own words kept for `check --explain`."""
    detail = error.removeprefix("validation failed: ")[:300]
    for words, reason, message in _VERIFIER_WORDS:
        if words in error:
            return _refused(reason, message.format(depth=rules.max_chain_depth), cert, at, detail)
    return _refused(CLIENT_CERT_UNTRUSTED, "the certificate does not chain to a CA of the truststore", cert, at, detail)


def _revocation(
    cert: ClientCert, path: Sequence[x509.Certificate], snapshot: TrustSnapshot, at: float, rules: Rules
) -> Verdict:
    """Revocation along the verified path, then the good verdict and its window."""
    valid_from = max(c.not_valid_before_utc.timestamp() for c in path)
    valid_until = min(c.not_valid_after_utc.timestamp() for c in path)
    for index in range(len(path) - 1):
        found = _crl_check(cert, path, index, snapshot, at, rules)
        if isinstance(found, Verdict):
            return found
        valid_until = min(valid_until, found)
    return Verdict("", "", valid_from, valid_until)


def _crl_check(
    cert: ClientCert, path: Sequence[x509.Certificate], index: int, snapshot: TrustSnapshot, at: float, rules: Rules
) -> Verdict | float:
    """Whether `path[index]` is revoked by its issuer's (`path[index + 1]`) CRL: a refusal, or until when the
    answer holds (the CRL's nextUpdate under `stale_crl: deny`; forever without a CRL to read)."""
    subject, issuer = path[index], path[index + 1]
    crls = snapshot.crls.get(subject.issuer.public_bytes())
    if not crls:
        return math.inf
    crl = _newest_signed(crls, issuer, snapshot)
    if crl is None:
        message = "revocation cannot be checked: no CRL of its issuer verifies against the issuer's key"
        return _refused(CLIENT_CERT_UNTRUSTED, message, cert, at, issuer.subject.rfc4514_string())
    if crl.get_revoked_certificate_by_serial_number(subject.serial_number) is not None:
        whose = "the certificate is revoked" if index == 0 else "a CA certificate of its chain is revoked"
        return _refused(CLIENT_CERT_REVOKED, whose, cert, at, f"by the CRL of {issuer.subject.rfc4514_string()}")
    if rules.stale_crl == "allow" or crl.next_update_utc is None:
        return math.inf
    next_update = crl.next_update_utc.timestamp()
    if at > next_update:
        message = f"revocation cannot be checked: its issuer's CRL is past its nextUpdate ({openssl_time(next_update)})"
        return _refused(CLIENT_CERT_UNTRUSTED, message, cert, at, issuer.subject.rfc4514_string())
    return next_update


def _newest_signed(
    crls: Sequence[x509.CertificateRevocationList], issuer: x509.Certificate, snapshot: TrustSnapshot
) -> x509.CertificateRevocationList | None:
    """The newest of the issuer's CRLs that its key signed (each check remembered in the snapshot)."""
    issuer_id = issuer.fingerprint(SHA256())
    for crl in crls:
        key = (id(crl), issuer_id)
        signed = snapshot.signed.get(key)
        if signed is None:
            signed = snapshot.signed.put(key, signature_valid(crl, issuer))
        if signed:
            return crl
    return None


def _refused(reason: str, message: str, cert: ClientCert, at: float, detail: str = "") -> Verdict:
    """A refusal, reusable for `REFUSAL_TTL` seconds but not past the leaf's notBefore when that is still ahead."""
    until = at + REFUSAL_TTL
    if cert.not_before > at:
        until = min(until, cert.not_before)
    return Verdict(reason, message, at, until, detail)
