"""Hostile certificate values never crash the mtls engine, and nothing but a verified chain is ever accepted.

The parsers (XFCC, RFC 9440 byte sequences, URL-encoded PEM) get arbitrary text and raise only `CertificateError`;
the engine gets arbitrary and mutated values in every source and answers a `ClientCert*` refusal, or a certificate
whose chain `cryptography`'s verifier accepts on its own (checked again here, independently of the engine's cache).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import reasons
from sidecar.authorizers.mtls import CertificateError, ClientCert, ClientCertVerifier, build_engine
from sidecar.authorizers.mtls.rfc9440 import parse_byte_sequence, parse_byte_sequence_list
from sidecar.authorizers.mtls.verify import verify_chain
from sidecar.authorizers.mtls.xfcc import parse_xfcc
from sidecar.reasons import Denied
from sidecar.request import Request
from sidecar.settings import MtlsSettings
from tests.unit.authorizers.custom.lambda_testkit import request
from tests.unit.authorizers.mtls.certs_testkit import (
    T0,
    Pki,
    byte_sequence,
    client_cert_headers,
    envoy_value,
    write_crl,
    write_truststore,
    xfcc,
)

REFUSALS = {
    reasons.CLIENT_CERT_MISSING,
    reasons.CLIENT_CERT_UNTRUSTED,
    reasons.CLIENT_CERT_EXPIRED,
    reasons.CLIENT_CERT_REVOKED,
    reasons.CLIENT_CERT_INVALID,
}
XFCC_ALPHABET = st.sampled_from(list('=;,"\\ \t%0AaBy=Hash=Cert=Chain=URI=DNS=Subject-----BEGIN CERTIFICATE-----'))
ANY_CHARACTER = st.characters(exclude_categories=())
"""Surrogates included: the HTTP transport decodes header bytes with `surrogateescape`."""
HOSTILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class World:
    """One PKI, an engine reading every source from a trusted peer, and good values to mutate."""

    def __init__(self, directory: Path) -> None:
        self.pki = Pki("Fuzz")
        self.revoked = self.pki.leaf("revoked")
        write_truststore(directory / "ca.pem", self.pki.root)
        write_crl(directory / "intermediate.crl", self.pki.crl([self.revoked]))
        mtls = MtlsSettings(
            truststore="ca.pem",
            crls=("intermediate.crl",),
            sources=("xfcc", "client-cert-header", "envoy"),
            trusted_peers=("127.0.0.1",),
        )
        self.engine: ClientCertVerifier = build_engine(
            mtls, directory, str(directory / "config.yaml"), ("127.0.0.1",), clock=lambda: T0
        )
        self.leaf = self.pki.leaf()
        chain = [self.pki.intermediate]
        self.good = {
            "envoy": envoy_value(self.leaf, *chain),
            "xfcc": xfcc(self.leaf, chain),
            "client-cert": client_cert_headers(self.leaf, chain)["client-cert"],
            "client-cert-chain": client_cert_headers(self.leaf, chain)["client-cert-chain"],
        }

    def request(self, **values: str) -> Request:
        headers = {"x-forwarded-client-cert": values["xfcc"]} if "xfcc" in values else {}
        headers.update({name: values[name] for name in ("client-cert", "client-cert-chain") if name in values})
        return request(
            "/b2b/x",
            headers=headers,
            peer_certificate=values.get("envoy", ""),
            source_address="127.0.0.1",
            protocol="",
            time=T0,
        )

    def judge(self, req: Request) -> ClientCert | None:
        """The engine's answer, checked: a refusal with a ClientCert* reason, or a chain that verifies alone."""
        try:
            cert = self.engine.verify_request(req)
        except Denied as denied:
            assert denied.reason in REFUSALS
            assert denied.status == (401 if denied.reason == reasons.CLIENT_CERT_MISSING else 403)
            return None
        assert cert.leaf != self.revoked.cert
        path = verify_chain(cert, self.engine.store.current, T0, 3)  # raises if it would not verify
        assert path[0] == cert.leaf and path[-1] == self.pki.root.cert
        return cert


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("mtls-fuzz"))


def _mutated(draw: Any, text: str) -> str:
    """`text` with a few characters replaced, deleted or inserted, or cut short."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, max(0, len(chars) - 1)))
        action = draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
        char = draw(ANY_CHARACTER)
        if action == "truncate":
            chars = chars[:position]
        elif action == "delete" and chars:
            del chars[position]
        elif action == "insert":
            chars.insert(position, char)
        elif chars:
            chars[position] = char
    return "".join(chars)


mutations = st.composite(_mutated)


@HOSTILE
@given(st.text(XFCC_ALPHABET, max_size=200))
def test_xfcc_text_parses_or_is_a_certificate_error(text: str) -> None:
    try:
        elements = parse_xfcc(text)
    except CertificateError:
        return
    assert all(element.pairs for element in elements)


@HOSTILE
@given(st.text(st.sampled_from(list(':;,= \t"*aZ09+/=x')), max_size=80))
def test_structured_field_text_parses_or_is_a_certificate_error(text: str) -> None:
    for parse in (parse_byte_sequence, parse_byte_sequence_list):
        with contextlib.suppress(CertificateError):
            parse(text)


@HOSTILE
@given(source=st.sampled_from(["envoy", "xfcc", "client-cert", "client-cert-chain"]), data=st.data())
def test_a_mutated_value_is_refused_or_verifies(world: World, source: str, data: st.DataObject) -> None:
    """Only the mutated source is presented (with its companion header), so it is the one read."""
    companions = {"client-cert": "client-cert-chain", "client-cert-chain": "client-cert"}
    values = {source: data.draw(mutations(world.good[source]))}
    if source in companions:
        values[companions[source]] = world.good[companions[source]]
    world.judge(world.request(**values))


@HOSTILE
@given(source=st.sampled_from(["envoy", "xfcc", "client-cert"]), text=st.text(ANY_CHARACTER, max_size=300))
def test_arbitrary_text_in_any_source_is_refused(world: World, source: str, text: str) -> None:
    assert world.judge(world.request(**{source: text})) is None


@HOSTILE
@given(st.binary(max_size=600), st.lists(st.binary(max_size=200), max_size=3))
def test_arbitrary_der_in_client_cert_is_refused(world: World, der: bytes, chain: list[bytes]) -> None:
    values = {"client-cert": byte_sequence(der), "client-cert-chain": ", ".join(map(byte_sequence, chain))}
    assert world.judge(world.request(**values)) is None


@HOSTILE
@given(st.integers(0, 40), st.binary(min_size=1, max_size=4))
def test_a_flipped_byte_in_the_der_never_passes_as_another_certificate(world: World, offset: int, junk: bytes) -> None:
    der = bytearray(world.leaf.der)
    position = len(der) - 1 - offset * 7 % len(der)
    der[position : position + len(junk)] = junk
    values = {"client-cert": byte_sequence(bytes(der)), "client-cert-chain": world.good["client-cert-chain"]}
    cert = world.judge(world.request(**values))
    assert cert is None or cert.fingerprint_hex == world.leaf.sha256  # accepted only when the bytes came back


def test_the_good_values_are_accepted(world: World) -> None:
    """The fuzzed values start from ones that verify: mutations are tested against a real acceptance."""
    for source in ("envoy", "xfcc", "client-cert"):
        values = {source: world.good[source]}
        if source == "client-cert":
            values["client-cert-chain"] = world.good["client-cert-chain"]
        cert = world.judge(world.request(**values))
        assert cert is not None and cert.leaf == world.leaf.cert
