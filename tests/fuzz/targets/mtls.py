"""PEM, XFCC and RFC 9440 Client-Cert parsing, and the mTLS engine that believes them (sidecar/authorizers/mtls/).

The first byte picks where the rest goes: Envoy's URL-encoded PEM (`source.certificate`), an
`X-Forwarded-Client-Cert` header, an RFC 9440 `Client-Cert` (with the good chain) or `Client-Cert-Chain` (with
the good leaf), or the three parsers alone. One PKI per run (root, intermediate, a CRL revoking one leaf), the
engine trusting loopback's headers at a fixed time. Seeds: each source's good value, the revoked leaf's, an
expired one, a self-signed one, broken ones. Oracle: the parsers raise only `CertificateError`; the engine answers
a `ClientCert*` refusal with its documented status (401 missing, else 403), or a certificate that is not the
revoked one, is within its validity, and whose chain `cryptography`'s verifier accepts on its own against the
truststore (checked here, independently of the engine's cache).
"""

from __future__ import annotations

import contextlib
import tempfile
from functools import cache
from pathlib import Path

from sidecar import reasons
from sidecar.authorizers.mtls import CertificateError, ClientCert, ClientCertVerifier, build_engine
from sidecar.authorizers.mtls.rfc9440 import parse_byte_sequence, parse_byte_sequence_list
from sidecar.authorizers.mtls.verify import verify_chain
from sidecar.authorizers.mtls.xfcc import parse_xfcc
from sidecar.reasons import Denied
from sidecar.request import Request
from sidecar.settings import MtlsSettings
from tests.unit.authorizers.mtls.certs_testkit import (
    T0,
    Pki,
    client_cert_headers,
    envoy_value,
    write_crl,
    write_truststore,
    xfcc,
)

from ..harness import OneInput, Target, text

REFUSALS = frozenset(
    {
        reasons.CLIENT_CERT_MISSING,
        reasons.CLIENT_CERT_UNTRUSTED,
        reasons.CLIENT_CERT_EXPIRED,
        reasons.CLIENT_CERT_REVOKED,
        reasons.CLIENT_CERT_INVALID,
    }
)
SOURCES = ("envoy", "xfcc", "client-cert", "client-cert-chain", "parsers")


class Mtls:
    """One PKI, an engine reading every source from a trusted peer, and the good values to start from."""

    def __init__(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="authz-fuzz-mtls-"))
        self.pki = Pki("Fuzz")
        self.revoked = self.pki.leaf("revoked")
        write_truststore(folder / "ca.pem", self.pki.root)
        write_crl(folder / "intermediate.crl", self.pki.crl([self.revoked]))
        settings = MtlsSettings(
            truststore="ca.pem",
            crls=("intermediate.crl",),
            sources=("xfcc", "client-cert-header", "envoy"),
            trusted_peers=("127.0.0.1",),
        )
        self.engine: ClientCertVerifier = build_engine(
            settings, folder, str(folder / "config.yaml"), ("127.0.0.1",), clock=lambda: T0
        )
        self.leaf = self.pki.leaf()
        chain = [self.pki.intermediate]
        headers = client_cert_headers(self.leaf, chain)
        self.good = {
            "envoy": envoy_value(self.leaf, *chain),
            "xfcc": xfcc(self.leaf, chain),
            "client-cert": headers["client-cert"],
            "client-cert-chain": headers["client-cert-chain"],
        }
        self.others = {
            "revoked": client_cert_headers(self.revoked, chain)["client-cert"],
            "expired": client_cert_headers(self.pki.leaf("old", not_after=T0 - 60), chain)["client-cert"],
        }

    def request(self, source: str, value: str) -> Request:
        headers: dict[str, str] = {}
        peer = ""
        if source == "envoy":
            peer = value
        elif source == "xfcc":
            headers["x-forwarded-client-cert"] = value
        elif source == "client-cert":
            headers = {"client-cert": value, "client-cert-chain": self.good["client-cert-chain"]}
        else:
            headers = {"client-cert": self.good["client-cert"], "client-cert-chain": value}
        return Request(
            method="GET",
            raw_path="/b2b/x",
            path="/b2b/x",
            headers=headers,
            source_address="127.0.0.1",
            peer_certificate=peer,
            time=T0,
        )

    def one_input(self, data: bytes) -> None:
        if not data:
            return
        source = SOURCES[data[0] % len(SOURCES)]
        value = text(data[1:])
        if source == "parsers":
            for parse in (parse_xfcc, parse_byte_sequence, parse_byte_sequence_list):
                with contextlib.suppress(CertificateError):
                    parse(value)  # type: ignore[operator]
            return
        self.judge(self.request(source, value))

    def judge(self, request: Request) -> ClientCert | None:
        try:
            cert = self.engine.verify_request(request)
        except Denied as denied:
            assert denied.reason in REFUSALS, denied.reason
            assert denied.status == (401 if denied.reason == reasons.CLIENT_CERT_MISSING else 403), denied.status
            return None
        assert cert.leaf != self.revoked.cert, "the revoked certificate was accepted"
        path = verify_chain(cert, self.engine.store.current, T0, 3)  # raises if it would not verify
        assert path[0] == cert.leaf and path[-1] == self.pki.root.cert
        return cert


@cache
def _mtls() -> Mtls:
    return Mtls()


def seeds() -> list[bytes]:
    world = _mtls()
    found = [bytes([SOURCES.index(source)]) + value.encode() for source, value in world.good.items()]
    found += [bytes([2]) + value.encode() for value in world.others.values()]
    found += [
        b'\x01By=spiffe://a;Hash=00;Cert="-----BEGIN%20CERTIFICATE-----%0AAA%3D%3D%0A-----END%20CERTIFICATE-----"',
        b"\x02:AAAA:",
        b"\x03:AAAA:, :=:",
        b"\x04By=a;URI=b,By=c",
        b"\x04:YWJj:, *x",
        b"\x00-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----",
    ]
    return found


def prepare() -> OneInput:
    return _mtls().one_input


TARGET = Target(
    name="mtls",
    summary=(
        "PEM (Envoy's URL-encoded source.certificate), XFCC and RFC 9440 Client-Cert/Client-Cert-Chain parsing and "
        "the mTLS engine (truststore, CRL, fixed time); oracle: the parsers raise only CertificateError, the engine "
        "refuses with a ClientCert* reason and its documented status, or accepts a certificate that is not revoked "
        "and whose chain cryptography's verifier accepts on its own"
    ),
    prepare=prepare,
    seeds=seeds,
)
