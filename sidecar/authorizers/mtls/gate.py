"""`ClientCertGate`: what `require_client_cert: true` adds to a route whatever its authorizer (API Gateway's
mutual TLS in front of any authorizer: mTLS **and** JWT).

An admit gate, first on its route: a request without a verified certificate is refused before anything else
is judged, as API Gateway refuses it at the TLS handshake, before WAF and the authorizer. The certificate is
only required, not the caller: the route's own authorizer still names who calls.
"""

from __future__ import annotations

from ...hop import HopNeeds
from ...limits import AdmitGate
from ...reasons import Denied
from ...request import Decision, Request
from .engine import ClientCertVerifier


class ClientCertGate(AdmitGate):
    """Refuses a request whose client certificate is missing or does not verify (`ClientCert*` reasons)."""

    name = "client_cert"

    def __init__(self, engine: ClientCertVerifier) -> None:
        self.engine = engine

    def hop_needs(self, route: str) -> HopNeeds:
        """What the engine's certificate sources read (`envoy-config`)."""
        return self.engine.hop_needs(f"route {route}'s require_client_cert")

    async def admit(self, request: Request, route: str) -> Decision | None:
        try:
            self.engine.verify_request(request)
        except Denied as denied:
            return denied.decision(route=route, challenge=None)
        return None
