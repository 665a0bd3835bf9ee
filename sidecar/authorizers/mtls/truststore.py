"""The truststore (the CA bundle client certificates must chain to) and the CRLs, as one immutable snapshot that a
background poller replaces when a file changes.

`mtls.truststore` is a PEM bundle, as API Gateway's truststore is; every certificate in it is a trust anchor, roots
and intermediates alike (a chain may end at any of them). `mtls.crls` are CRL files, PEM (one or more `X509 CRL`
blocks) or DER. A CRL whose issuer is in the truststore must verify against it when it loads (a mismatch is a bad
file); one whose issuer is an intermediate the clients present is verified at use, against the certificate of
that name in the verified chain (`verify.py`).

Reloading follows the other file-backed stores (`sidecar/watched_file.py`): the files are stat'ed every
`RELOAD_INTERVAL` seconds and on SIGHUP; a changed file is read whole and, if everything loads, becomes the new
snapshot (`ok`), or keeps the old one when nothing it means changed (`unchanged`); a file that does not load keeps
the previous snapshot serving and says why (`rejected`, on /readyz and in `authz_config_reloads_total{source=
"mtls"}`). The first load failing is a `ConfigError` at the config key that names the file (`mtls.truststore`,
`mtls.crls[i]`), so a broken truststore never starts serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.x509.verification import Store

from ...issues import ConfigError, format_loc, issue_at
from ...memo import BoundedMemo
from ...metrics import ReloadStatus
from ...watched_file import FilePoller, WatchedStore, fingerprint, why_unreadable

log = logging.getLogger(__name__)

RELOAD_INTERVAL = 2.0
"""Seconds between looks at the truststore and CRL files (the credential store's default)."""
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


class TrustFileError(Exception):
    """A truststore or CRL file that does not load: `loc` is the config key naming it, `message` says why (never
    what the file holds)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


@dataclass(frozen=True, slots=True)
class TrustSnapshot:
    """What one load of the files holds; never changed after it is built (the memo is a cache of pure checks)."""

    store: Store
    anchors: tuple[x509.Certificate, ...]
    crls: Mapping[bytes, tuple[x509.CertificateRevocationList, ...]]
    """The CRLs by their issuer's name (its DER: `Name.public_bytes()`, hashed at C speed where a `Name` hashes in
    Python), newest (`last_update`) first."""
    version: str
    """A digest of every file's bytes: the verify cache's key part, what logs and /readyz show."""
    signed: BoundedMemo[tuple[int, bytes], bool] = field(default_factory=lambda: BoundedMemo(1024))
    """(CRL id, issuer certificate SHA-256) -> whether that CRL verifies against that issuer's key."""


def load_snapshot(truststore: Path, crls: Sequence[Path]) -> TrustSnapshot:
    """Read and check every file; `TrustFileError` at the first that does not load."""
    digest = hashlib.sha256()
    data = _read(truststore, ("mtls", "truststore"), "truststore")
    digest.update(hashlib.sha256(data).digest())
    anchors = _anchors(data)
    by_issuer: dict[bytes, list[x509.CertificateRevocationList]] = {}
    for index, path in enumerate(crls):
        loc: tuple[str | int, ...] = ("mtls", "crls", index)
        raw = _read(path, loc, "CRL file")
        digest.update(hashlib.sha256(raw).digest())
        for crl in _crls(raw, loc):
            _check_signed_by_anchor(crl, anchors, loc)
            by_issuer.setdefault(crl.issuer.public_bytes(), []).append(crl)
    ordered = {name: tuple(sorted(found, key=_issued, reverse=True)) for name, found in by_issuer.items()}
    return TrustSnapshot(Store(list(anchors)), anchors, MappingProxyType(ordered), digest.hexdigest()[:16])


def _read(path: Path, loc: tuple[str | int, ...], what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TrustFileError(loc, f"cannot read {what} {path}: {why_unreadable(exc)}") from None


def _anchors(data: bytes) -> tuple[x509.Certificate, ...]:
    try:
        anchors = tuple(x509.load_pem_x509_certificates(data))
    except (ValueError, x509.InvalidVersion):
        raise TrustFileError(("mtls", "truststore"), "the truststore holds no readable PEM certificate") from None
    return anchors


def _crls(data: bytes, loc: tuple[str | int, ...]) -> list[x509.CertificateRevocationList]:
    """The CRLs of one file: every PEM block, or the file as one DER CRL; each a complete CRL (`_complete`)."""
    try:
        if b"-----BEGIN" in data:
            blocks = _PEM_CRL.findall(data)
            if not blocks:
                raise TrustFileError(loc, "the file holds no PEM `X509 CRL` block")
            crls = [x509.load_pem_x509_crl(block) for block in blocks]
        else:
            crls = [x509.load_der_x509_crl(data)]
    except ValueError:
        raise TrustFileError(loc, "not a readable CRL (PEM or DER)") from None
    for crl in crls:
        _complete(crl, loc)
    return crls


def _complete(crl: x509.CertificateRevocationList, loc: tuple[str | int, ...]) -> None:
    """Refuse a delta CRL or a partitioned one (an issuing distribution point naming a scope): revocation reads
    an issuer's newest CRL as the whole list, so a delta would hide the base's revocations and a partition the
    others'. Publish full CRLs (Microsoft AD CS: turn delta CRLs off, or list only the base)."""
    extensions = crl.extensions
    try:
        extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    except x509.ExtensionNotFound:
        pass
    else:
        raise TrustFileError(loc, "a delta CRL: list the issuer's full (base) CRL instead")
    try:
        point = extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return
    if (
        point.full_name
        or point.relative_name
        or point.only_some_reasons
        or point.indirect_crl
        or point.only_contains_user_certs
        or point.only_contains_ca_certs
        or point.only_contains_attribute_certs
    ):
        raise TrustFileError(loc, "a partitioned CRL (its issuing distribution point names a scope): list full CRLs")


def _check_signed_by_anchor(
    crl: x509.CertificateRevocationList, anchors: Sequence[x509.Certificate], loc: tuple[str | int, ...]
) -> None:
    """A CRL issued by a truststore CA must carry that CA's signature; one from another issuer waits for its use."""
    issuers = [anchor for anchor in anchors if anchor.subject == crl.issuer]
    if issuers and not any(signature_valid(crl, issuer) for issuer in issuers):
        message = f"the CRL of {crl.issuer.rfc4514_string()} is not signed by that CA in the truststore"
        raise TrustFileError(loc, message)


def signature_valid(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Whether `crl` verifies against `issuer`'s public key (a key type it cannot be checked with: no)."""
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _issued(crl: x509.CertificateRevocationList) -> float:
    return crl.last_update_utc.timestamp()


class TrustStore(WatchedStore):
    """The serving `TrustSnapshot` (`current`), reloaded when the files change (see the module's docstring).

    Built by the config load: the first load raises `ConfigError` located in the config file `source`."""

    def __init__(
        self, truststore: Path, crls: Sequence[Path], source: str, reload_interval: float = RELOAD_INTERVAL
    ) -> None:
        self.truststore = truststore
        self.crl_paths = tuple(crls)
        self._paths = (truststore, *self.crl_paths)
        self._fingerprint = fingerprint(self._paths)
        try:
            self._snapshot = load_snapshot(truststore, self.crl_paths)
        except TrustFileError as exc:
            raise ConfigError([issue_at(source, exc.loc, exc.message)]) from None
        self._reloading = threading.Lock()
        self._poller = FilePoller(self.reload_if_changed, reload_interval, f"mtls-watch:{truststore}")
        self.status = ReloadStatus("mtls")
        """Every reload (`authz_config_reloads_total{source="mtls"}`, /readyz)."""

    @property
    def current(self) -> TrustSnapshot:
        return self._snapshot

    def reload_if_changed(self, why: str = "file change") -> bool:
        """Reload when a file changed; True if a new snapshot now serves. Never raises for a bad file.

        One at a time (the poller's thread and a SIGHUP's may ask together), so an older read is never installed
        after a newer one: a CRL revoking a certificate must not be undone by a slower load of the previous one."""
        with self._reloading:
            return self._reload(why)

    def _reload(self, why: str) -> bool:
        seen = fingerprint(self._paths)
        if seen == self._fingerprint:
            return False
        self._fingerprint = seen
        serving = self._snapshot.version
        try:
            snapshot = load_snapshot(self.truststore, self.crl_paths)
        except TrustFileError as exc:
            self.status.record("rejected", why, serving, f"{format_loc(exc.loc)}: {exc.message}")
            log.error("mtls truststore/CRLs (%s) rejected; still serving %s: %s", why, serving, exc.message)
            return False
        if snapshot.version == serving:
            self.status.record("unchanged", why, serving)
            return False
        self._snapshot = snapshot
        self.status.record("ok", why, snapshot.version)
        log.info("mtls truststore/CRLs (%s): now serving %s (%d CAs)", why, snapshot.version, len(snapshot.anchors))
        return True

    def reload_statuses(self) -> tuple[ReloadStatus, ...]:
        return (self.status,)

    async def recheck_files(self, why: str) -> None:
        await asyncio.to_thread(self.reload_if_changed, why)  # file reads stay off the event loop

    async def start(self) -> None:
        await self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()
