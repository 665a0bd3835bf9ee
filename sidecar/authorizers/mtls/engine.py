"""The client-certificate engine: one request in, its verified `ClientCert` out, or `Denied`.

It ties the parts together in a fixed order: read the certificate from the configured sources (`sources.py`),
find a verdict the verify cache (`cache.py`) still holds for it against the serving truststore snapshot
(`truststore.py`), or judge it (`verify.py`) and remember the verdict. Both the `type: mtls` authorizer and any
route with `require_client_cert: true` call `verify_request`, so a certificate is judged the same way whichever
asks. Refusals carry the `ClientCert*` reason codes (`sidecar/reasons.py`): 401 for a missing certificate (sent
without `WWW-Authenticate`: there is no HTTP scheme to ask for a TLS certificate), 403 for the rest.

The request is judged at `Request.time` (the proxy's stamp, `check --at`'s time), the clock only when a request
carries none. Nothing here logs a certificate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from ...explanation import Step, refused, shown_value, when
from ...hop import HopNeeds
from ...metrics import ReloadStatus
from ...reasons import CLIENT_CERT_INVALID, CLIENT_CERT_MISSING, STATUS_FORBIDDEN, STATUS_UNAUTHORIZED, Denied
from ...request import Request
from ...watched_file import WatchedStore
from .cache import VerifyCache
from .cert import CertificateError, ClientCert
from .sources import CertSources
from .truststore import TrustStore
from .verify import Rules, Verdict, judge


class ClientCertVerifier(WatchedStore):
    """Verifies requests' client certificates (see the module's docstring); owns the truststore's reloads."""

    def __init__(
        self,
        sources: CertSources,
        store: TrustStore,
        rules: Rules,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = sources
        self.store = store
        self.rules = rules
        self.cache = VerifyCache(cache_size)
        self._clock = clock

    def hop_needs(self, who: str) -> HopNeeds:
        """What the certificate sources read: Envoy's `source.certificate` (in HTTP mode the header Envoy adds),
        the XFCC header, RFC 9440's two headers."""
        headers = {"envoy": ("x-authz-peer-certificate",), "xfcc": ("x-forwarded-client-cert",)}
        names = [h for n in self.sources.names for h in headers.get(n, ("client-cert", "client-cert-chain"))]
        return HopNeeds.of(names, f"{who} reads a client certificate", peer_cert="envoy" in self.sources.names)

    def verify_request(self, request: Request) -> ClientCert:
        """The request's verified client certificate, or `Denied` (`ClientCertMissing` 401, the others 403)."""
        return self.verified(request)[0]

    def verified(self, request: Request) -> tuple[ClientCert, Verdict]:
        """The verified certificate and the verdict that passed it (its window bounds what may be cached)."""
        try:
            cert = self.sources.read(request)
        except CertificateError as exc:
            raise _denied(CLIENT_CERT_INVALID, str(exc), partial(_unreadable_step, str(exc), self.sources)) from None
        if cert is None:
            message = "A client certificate is required"
            raise _denied(CLIENT_CERT_MISSING, message, partial(_missing_step, message, self.sources))
        at = request.time or self._clock()
        snapshot = self.store.current
        verdict = self.cache.get(cert, snapshot.version, at)
        if verdict is None:
            verdict = judge(cert, snapshot, at, self.rules)
            self.cache.put(cert, snapshot.version, verdict)
        if verdict.reason:
            raise _denied(verdict.reason, verdict.message, partial(_verdict_step, verdict, cert, at, snapshot.version))
        return cert, verdict

    # lifecycle: the truststore's
    async def start(self) -> None:
        await self.store.start()

    async def stop(self) -> None:
        await self.store.stop()

    def reload_statuses(self) -> tuple[ReloadStatus, ...]:
        return self.store.reload_statuses()

    async def recheck_files(self, why: str) -> None:
        await self.store.recheck_files(why)


def _denied(reason: str, message: str, explain: Callable[[], Step]) -> Denied:
    status = STATUS_UNAUTHORIZED if reason == CLIENT_CERT_MISSING else STATUS_FORBIDDEN
    return Denied(reason, message, status, explain=explain)


def _missing_step(message: str, sources: CertSources) -> Step:
    """ClientCertMissing explained: where the engine looked, and why a header may not have counted."""
    return refused(
        CLIENT_CERT_MISSING,
        message,
        ("looked_in", ", ".join(sources.names)),
        ("note", "xfcc and client-cert-header are read only from trusted peers (mtls.trusted_peers)"),
    )


def _unreadable_step(message: str, sources: CertSources) -> Step:
    return refused(CLIENT_CERT_INVALID, message, ("looked_in", ", ".join(sources.names)))


def _verdict_step(verdict: Verdict, cert: ClientCert, at: float, version: str) -> Step:
    """A refused certificate explained: what it is (public fields), when it was judged, against which truststore,
    and the verifier's own words."""
    return refused(
        verdict.reason,
        verdict.message,
        ("subject", shown_value(cert.subject)),
        ("issuer", shown_value(cert.issuer)),
        ("serial", cert.serial),
        ("fingerprint", cert.fingerprint_hex),
        ("not_before", when(cert.not_before)),
        ("not_after", when(cert.not_after)),
        ("judged_at", when(at)),
        ("truststore", version),
        ("detail", shown_value(verdict.detail) or "(none)"),
    )
