"""The verify cache: a warm Check does no cryptography; an entry holds only while its verdict does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar import reasons
from sidecar.authorizers.mtls import ClientCertVerifier, build_engine, verify
from sidecar.authorizers.mtls.verify import REFUSAL_TTL
from sidecar.reasons import Denied
from sidecar.settings import MtlsSettings
from tests.unit.authorizers.custom.lambda_testkit import request
from tests.unit.authorizers.mtls.certs_testkit import (
    DAY,
    T0,
    Issued,
    Pki,
    envoy_value,
    mtls_pipeline,
    write_crl,
    write_truststore,
)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


class Counted:
    """Counts the calls of a function of `verify` it replaces."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.calls = 0
        real: Callable[..., Any] = getattr(verify, name)

        def counting(*args: Any) -> Any:
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(verify, name, counting)


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> Counted:
    return Counted(monkeypatch, "verify_chain")


def engine(tmp_path: Path, pki: Pki, **mtls: Any) -> ClientCertVerifier:
    write_truststore(tmp_path / "ca.pem", pki.root)
    settings = MtlsSettings(truststore="ca.pem", **mtls)
    return build_engine(settings, tmp_path, str(tmp_path / "config.yaml"), (), clock=lambda: T0)


def judged(verifier: ClientCertVerifier, *issued: Issued, at: float = T0) -> str:
    try:
        verifier.verify_request(request("/b2b/x", peer_certificate=envoy_value(*issued), time=at))
    except Denied as denied:
        return denied.reason
    return "allowed"


def test_a_warm_check_does_no_cryptography(
    tmp_path: Path, pki: Pki, verifications: Counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    crl_checks = Counted(monkeypatch, "signature_valid")
    write_crl(tmp_path / "intermediate.crl", pki.crl())
    verifier = engine(tmp_path, pki, crls=("intermediate.crl",))
    leaf = pki.leaf()
    assert judged(verifier, leaf, pki.intermediate) == "allowed"
    assert (verifications.calls, crl_checks.calls) == (1, 1)
    for offset in range(5):
        assert judged(verifier, leaf, pki.intermediate, at=T0 + offset * 3600) == "allowed"
    assert (verifications.calls, crl_checks.calls) == (1, 1)


async def test_a_warm_check_through_the_pipeline_does_no_cryptography(
    tmp_path: Path, pki: Pki, verifications: Counted
) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    pipe = mtls_pipeline(tmp_path, "truststore: ca.pem")
    value = envoy_value(pki.leaf(), pki.intermediate)
    first = await pipe.check(request("/b2b/orders", peer_certificate=value))
    again = await pipe.check(request("/b2b/orders", peer_certificate=value))
    assert first.allowed and again.allowed and verifications.calls == 1


def test_another_chain_for_the_same_leaf_is_verified_again(tmp_path: Path, pki: Pki, verifications: Counted) -> None:
    verifier = engine(tmp_path, pki)
    leaf = pki.leaf()
    assert judged(verifier, leaf, pki.intermediate) == "allowed"
    assert judged(verifier, leaf, pki.intermediate, pki.root) == "allowed"
    assert verifications.calls == 2


def test_a_verified_entry_ends_at_the_certificates_not_after(tmp_path: Path, pki: Pki, verifications: Counted) -> None:
    verifier = engine(tmp_path, pki)
    leaf = pki.leaf(not_after=T0 + DAY)
    assert judged(verifier, leaf, pki.intermediate) == "allowed"
    assert judged(verifier, leaf, pki.intermediate, at=T0 + DAY - 1) == "allowed"
    assert verifications.calls == 1
    assert judged(verifier, leaf, pki.intermediate, at=T0 + DAY + 1) == reasons.CLIENT_CERT_EXPIRED


def test_a_verified_entry_ends_at_the_crls_next_update(tmp_path: Path, pki: Pki, verifications: Counted) -> None:
    write_crl(tmp_path / "intermediate.crl", pki.crl(next_update=T0 + 3600))
    verifier = engine(tmp_path, pki, crls=("intermediate.crl",))
    leaf = pki.leaf()
    assert judged(verifier, leaf, pki.intermediate) == "allowed"
    assert judged(verifier, leaf, pki.intermediate, at=T0 + 3599) == "allowed"
    assert verifications.calls == 1
    assert judged(verifier, leaf, pki.intermediate, at=T0 + 3601) == reasons.CLIENT_CERT_UNTRUSTED
    assert verifications.calls == 2


def test_an_entry_is_not_used_for_a_time_before_its_window(tmp_path: Path, pki: Pki, verifications: Counted) -> None:
    """`check --at` may judge an earlier time than the entry was made for: the leaf was not valid yet then."""
    verifier = engine(tmp_path, pki)
    leaf = pki.leaf(not_before=T0 - 3600)
    assert judged(verifier, leaf, pki.intermediate) == "allowed"
    assert judged(verifier, leaf, pki.intermediate, at=T0 - 7200) == reasons.CLIENT_CERT_EXPIRED


def test_a_refusal_is_remembered_for_a_while(tmp_path: Path, pki: Pki, verifications: Counted) -> None:
    other = Pki("Other")
    verifier = engine(tmp_path, pki)
    leaf = other.leaf()
    for _ in range(3):
        assert judged(verifier, leaf, other.intermediate) == reasons.CLIENT_CERT_UNTRUSTED
    assert verifications.calls == 1
    assert judged(verifier, leaf, other.intermediate, at=T0 + REFUSAL_TTL + 1) == reasons.CLIENT_CERT_UNTRUSTED
    assert verifications.calls == 2


def test_the_cache_is_bounded_least_recently_used_first(tmp_path: Path, pki: Pki, verifications: Counted) -> None:
    verifier = engine(tmp_path, pki, verify_cache_size=2)
    a, b, c = pki.leaf("a"), pki.leaf("b"), pki.leaf("c")
    for leaf in (a, b, a, c):  # c evicts b, the least recently used
        judged(verifier, leaf, pki.intermediate)
    assert verifications.calls == 3 and len(verifier.cache) == 2
    judged(verifier, a, pki.intermediate)
    assert verifications.calls == 3
    judged(verifier, b, pki.intermediate)
    assert verifications.calls == 4


def test_a_size_of_zero_turns_the_cache_off(tmp_path: Path, pki: Pki, verifications: Counted) -> None:
    verifier = engine(tmp_path, pki, verify_cache_size=0)
    leaf = pki.leaf()
    for _ in range(3):
        assert judged(verifier, leaf, pki.intermediate) == "allowed"
    assert verifications.calls == 3


def test_a_new_snapshot_empties_the_cache(tmp_path: Path, pki: Pki, verifications: Counted) -> None:
    verifier = engine(tmp_path, pki)
    leaf = pki.leaf()
    judged(verifier, leaf, pki.intermediate)
    write_truststore(tmp_path / "ca.pem", pki.root, Pki("Other").root)
    assert verifier.store.reload_if_changed()
    assert judged(verifier, leaf, pki.intermediate) == "allowed"
    assert verifications.calls == 2 and len(verifier.cache) == 1
