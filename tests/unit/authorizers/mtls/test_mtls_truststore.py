"""The truststore and CRL files: located errors on the first load, reloads that keep the last good snapshot."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from sidecar import reasons
from sidecar.authorizers.mtls import ClientCertVerifier, build_engine
from sidecar.authorizers.mtls.truststore import TrustStore
from sidecar.config import ConfigError, parse_config
from sidecar.metrics import REGISTRY
from sidecar.reasons import Denied
from sidecar.runtime import compile_runtime
from sidecar.settings import MtlsSettings
from tests.unit.authorizers.custom.lambda_testkit import request
from tests.unit.authorizers.mtls.certs_testkit import (
    T0,
    Pki,
    envoy_value,
    mtls_config,
    pem,
    write_crl,
    write_truststore,
)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def replace(path: Path, data: str | bytes) -> None:
    """Write `path` as editors and deploy tools do: a new file renamed over the old one."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(staged, path)


def engine(tmp_path: Path, crls: tuple[str, ...] = ()) -> ClientCertVerifier:
    settings = MtlsSettings(truststore="ca.pem", crls=crls)
    return build_engine(settings, tmp_path, str(tmp_path / "config.yaml"), (), clock=lambda: T0)


def verdict(verifier: ClientCertVerifier, *issued: object) -> str:
    try:
        verifier.verify_request(request("/b2b/x", peer_certificate=envoy_value(*issued)))  # type: ignore[arg-type]
    except Denied as denied:
        return denied.reason
    return "allowed"


def reloads(outcome: str) -> float:
    return REGISTRY.get_sample_value("authz_config_reloads_total", {"source": "mtls", "outcome": outcome}) or 0.0


def load_error(tmp_path: Path, mtls: str) -> ConfigError:
    path = tmp_path / "config.yaml"
    path.write_text(mtls_config(mtls))
    config = parse_config(path.read_text(), str(path))
    with pytest.raises(ConfigError) as caught:
        compile_runtime(config)
    return caught.value


def line_of(tmp_path: Path, text: str) -> int:
    lines = (tmp_path / "config.yaml").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


# -- the first load


def test_a_missing_truststore_is_an_error_at_its_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, "truststore: nowhere.pem")
    (issue,) = error.issues
    assert issue.field == "mtls.truststore" and issue.line == line_of(tmp_path, "truststore:")
    assert "cannot read truststore" in issue.message


def test_a_truststore_without_certificates_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not pem at all\n")
    (issue,) = load_error(tmp_path, "truststore: ca.pem").issues
    assert issue.field == "mtls.truststore" and "no readable PEM certificate" in issue.message


def test_a_bad_crl_is_an_error_at_its_index(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    write_crl(tmp_path / "good.crl", pki.crl())
    (tmp_path / "bad.crl").write_bytes(b"\x30\x03garbage")
    (issue,) = load_error(tmp_path, "truststore: ca.pem\ncrls: [good.crl, bad.crl]").issues
    assert issue.field == "mtls.crls[1]" and issue.line == line_of(tmp_path, "crls:")


def test_a_crl_of_a_truststore_ca_must_carry_its_signature(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    write_crl(tmp_path / "root.crl", pki.crl(issuer=pki.root, signer=Pki("Other").root.key))
    (issue,) = load_error(tmp_path, "truststore: ca.pem\ncrls: [root.crl]").issues
    assert issue.field == "mtls.crls[0]" and "not signed by that CA" in issue.message


def test_a_pem_file_without_a_crl_block_is_an_error(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    (tmp_path / "x.crl").write_text(pem(pki.root))
    (issue,) = load_error(tmp_path, "truststore: ca.pem\ncrls: [x.crl]").issues
    assert issue.field == "mtls.crls[0]" and "X509 CRL" in issue.message


# -- reloads


def test_a_new_ca_in_the_truststore_is_trusted_after_a_reload(tmp_path: Path, pki: Pki) -> None:
    other = Pki("Other")
    write_truststore(tmp_path / "ca.pem", pki.root)
    verifier = engine(tmp_path)
    leaf = other.leaf()
    assert verdict(verifier, leaf, other.intermediate) == reasons.CLIENT_CERT_UNTRUSTED
    before, version = reloads("ok"), verifier.store.current.version
    replace(tmp_path / "ca.pem", pem(pki.root, other.root))
    assert verifier.store.reload_if_changed("test") is True
    assert verifier.store.current.version != version and reloads("ok") == before + 1
    assert verdict(verifier, leaf, other.intermediate) == "allowed"  # the cached refusal named the old snapshot
    assert verifier.store.status.last is not None and verifier.store.status.last.outcome == "ok"


def test_a_reloaded_crl_revokes_a_certificate_already_verified(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    write_crl(tmp_path / "intermediate.crl", pki.crl())
    verifier = engine(tmp_path, ("intermediate.crl",))
    leaf = pki.leaf()
    assert verdict(verifier, leaf, pki.intermediate) == "allowed"
    write_crl(tmp_path / "intermediate.crl.new", pki.crl([leaf]))
    os.replace(tmp_path / "intermediate.crl.new", tmp_path / "intermediate.crl")
    assert verifier.store.reload_if_changed() is True
    assert verdict(verifier, leaf, pki.intermediate) == reasons.CLIENT_CERT_REVOKED


def test_a_bad_file_keeps_the_last_good_snapshot(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    verifier = engine(tmp_path)
    leaf = pki.leaf()
    serving = verifier.store.current
    before = reloads("rejected")
    replace(tmp_path / "ca.pem", "garbage")
    assert verifier.store.reload_if_changed("test") is False
    assert verifier.store.current is serving and reloads("rejected") == before + 1
    assert verifier.store.status.problem.startswith("mtls.truststore:")
    assert verdict(verifier, leaf, pki.intermediate) == "allowed"
    assert verifier.store.reload_if_changed() is False  # nothing changed since: not even read again
    assert reloads("rejected") == before + 1
    replace(tmp_path / "ca.pem", pem(pki.root))
    assert verifier.store.reload_if_changed() is False  # the same bytes as the serving snapshot
    assert verifier.store.status.last is not None and verifier.store.status.last.outcome == "unchanged"
    assert verifier.store.status.problem == ""


def test_a_deleted_crl_is_rejected_and_its_revocations_stay(tmp_path: Path, pki: Pki) -> None:
    write_truststore(tmp_path / "ca.pem", pki.root)
    leaf = pki.leaf()
    write_crl(tmp_path / "intermediate.crl", pki.crl([leaf]))
    verifier = engine(tmp_path, ("intermediate.crl",))
    (tmp_path / "intermediate.crl").unlink()
    assert verifier.store.reload_if_changed() is False
    assert verifier.store.status.problem.startswith("mtls.crls[0]: cannot read CRL file")
    assert verdict(verifier, leaf, pki.intermediate) == reasons.CLIENT_CERT_REVOKED


async def test_recheck_files_reloads_off_the_loop_and_the_poller_starts_and_stops(tmp_path: Path, pki: Pki) -> None:
    other = Pki("Other")
    write_truststore(tmp_path / "ca.pem", pki.root)
    store = TrustStore(tmp_path / "ca.pem", (), str(tmp_path / "config.yaml"), reload_interval=3600)
    await store.start()
    assert store._poller.running
    replace(tmp_path / "ca.pem", pem(pki.root, other.root))
    await store.recheck_files("SIGHUP")
    assert len(store.current.anchors) == 2
    assert store.status.last is not None and store.status.last.why == "SIGHUP"
    await store.stop()
    assert not store._poller.running


def _with(pki: Pki, extension: x509.ExtensionType) -> x509.CertificateRevocationList:
    """A CRL of the intermediate carrying `extension` (a delta indicator, a scoped distribution point)."""
    issuer = pki.intermediate
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(dt.datetime.fromtimestamp(T0 - 3600, dt.UTC))
        .next_update(dt.datetime.fromtimestamp(T0 + 86_400, dt.UTC))
        .add_extension(extension, critical=True)
    )
    return builder.sign(issuer.key, hashes.SHA256())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extension", "words"),
    [
        (x509.DeltaCRLIndicator(1), "a delta CRL"),
        (
            x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier("http://crl.example.test/part1.crl")],
                relative_name=None,
                only_contains_user_certs=False,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            ),
            "a partitioned CRL",
        ),
    ],
)
def test_delta_and_partitioned_crls_are_refused_at_their_index(
    tmp_path: Path, pki: Pki, extension: x509.ExtensionType, words: str
) -> None:
    """Revocation reads an issuer's newest CRL as the whole list: a delta would hide the base's revocations."""
    write_truststore(tmp_path / "ca.pem", pki.root)
    write_crl(tmp_path / "base.crl", pki.crl())
    write_crl(tmp_path / "other.crl", _with(pki, extension))
    (issue,) = load_error(tmp_path, "truststore: ca.pem\ncrls: [base.crl, other.crl]").issues
    assert issue.field == "mtls.crls[1]" and words in issue.message
