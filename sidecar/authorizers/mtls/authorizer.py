"""The `type: mtls` authorizer: the caller is whoever its verified client certificate names.

Everything about the certificate is the engine's (`engine.py`); this class turns a verified certificate into a
Principal (`principal.py`: the `mtls.principal` field as its id, the `mtls:*` policy keys as its context, the
verdict's window as `expires_at`) and remembers it, so a warm Check returns the same Principal object (and the
pipeline's memos of allows and policy outcomes find it).

`fingerprint` returns None: the decision cache must not key on the certificate before authenticating, because a
verdict about it is not a pure function of its bytes within a decision's TTL (a CRL reload revokes it, its
validity ends, a truststore reload drops its CA). The verify cache, which is keyed by the truststore snapshot
and bounded by the verdict's window, makes a warm Check just as cheap without that risk.
"""

from __future__ import annotations

from typing import ClassVar

from ...hop import HopNeeds
from ...memo import BoundedMemo
from ...metrics import ReloadStatus
from ...request import Principal, Request
from ..base import Authorizer, IdentitySide
from .cert import ClientCert
from .engine import ClientCertVerifier
from .principal import PrincipalField, policy_context, principal_id
from .verify import Verdict


class MtlsAuthorizer(Authorizer):
    """Callers identified by a verified client certificate (type `mtls`)."""

    kind: ClassVar[str] = "mtls"
    challenge: ClassVar[str | None] = None
    identity_side: ClassVar[IdentitySide] = "authenticated"

    def __init__(
        self, name: str, engine: ClientCertVerifier, principal: PrincipalField, memo_size: int = 10_000
    ) -> None:
        super().__init__(name)
        self.engine = engine
        self.principal_field: PrincipalField = principal
        self._principals: BoundedMemo[tuple[bytes, float], Principal] = BoundedMemo(max(1, memo_size))

    async def authenticate(self, request: Request) -> Principal:
        cert, verdict = self.engine.verified(request)
        key = (cert.fingerprint, verdict.valid_until)
        found = self._principals.get(key)
        return found if found is not None else self._principals.put(key, self._principal(cert, verdict))

    def _principal(self, cert: ClientCert, verdict: Verdict) -> Principal:
        return Principal(
            kind=self.kind,
            id=principal_id(cert, self.principal_field),
            authorizer=self.name,
            context=policy_context(cert),
            expires_at=verdict.valid_until,
        )

    def hop_needs(self) -> HopNeeds:
        return self.engine.hop_needs(f"authorizer {self.name} (mtls)")

    def fingerprint(self, request: Request) -> bytes | None:
        """None: see the module's docstring."""
        return None

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    def reload_statuses(self) -> tuple[ReloadStatus, ...]:
        return self.engine.reload_statuses()

    async def recheck_files(self, why: str) -> None:
        await self.engine.recheck_files(why)
