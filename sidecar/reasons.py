"""Reason codes and the `Denied` exception every stage raises to stop a request.

Reason codes are part of our public contract: they appear in deny bodies, decision logs and the
`authz_decisions_total{reason=...}` metric, so they are a closed, documented set (docs/reasons.md). Where API
Gateway or AWS has a name for the failure we reuse it, so users can keep their runbooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .request import Decision

if TYPE_CHECKING:
    from .explanation import Explainer

# Routing / generic
MISSING_AUTHENTICATION_TOKEN = "MissingAuthenticationToken"  # no route matched (API Gateway's wording)
ACCESS_DENIED = "AccessDenied"  # policy or authorizer said no
ALLOWED = "Allowed"
ANONYMOUS = "Anonymous"
ROUTE_DENY = "RouteDeny"  # route uses the `deny` authorizer
INSUFFICIENT_SCOPE = "InsufficientScope"
MALFORMED_REQUEST = "MalformedRequest"  # the CheckRequest itself is unusable
INTERNAL_ERROR = "InternalError"  # a bug or an unexpected exception: fail closed
NOT_READY = "NotReady"  # config or keys not loaded yet
UNAUTHORIZED = "Unauthorized"  # missing or invalid credentials, no more specific code
AUTHORIZER_CONFIGURATION_EXCEPTION = "AuthorizerConfigurationException"  # a custom authorizer failed (API Gateway's)
# Gates (`limits/`): API Gateway's gateway responses INVALID_API_KEY, THROTTLED, QUOTA_EXCEEDED; WAF's block
INVALID_API_KEY = "InvalidApiKey"  # 403 Forbidden: no key, an unknown, disabled or expired one, or one in no plan
THROTTLED = "Throttled"  # 429 Too Many Requests: the usage plan's token bucket is empty
QUOTA_EXCEEDED = "QuotaExceeded"  # 429 Limit Exceeded: the usage plan's quota for this period is used up
RATE_LIMITED = "RateLimited"  # a rate-based rule's block (403 Forbidden unless the rule sets its status)
# Client certificates (`authorizers/mtls/`): a missing one is 401 (sent without WWW-Authenticate), the rest 403
CLIENT_CERT_MISSING = "ClientCertMissing"  # no certificate from any configured source (or only untrusted headers)
CLIENT_CERT_UNTRUSTED = "ClientCertUntrusted"  # no path to the truststore, or its revocation cannot be checked
CLIENT_CERT_EXPIRED = "ClientCertExpired"  # outside its validity (or a chain certificate's) at the request's time
CLIENT_CERT_REVOKED = "ClientCertRevoked"  # listed in its issuer's CRL (or a certificate of its chain is)
CLIENT_CERT_INVALID = "ClientCertInvalid"  # unreadable, wrong EKU, weak key, chain too deep, no principal field

STATUS_UNAUTHORIZED = 401
STATUS_FORBIDDEN = 403


class Denied(Exception):
    """Raised by an authorizer or policy stage; the pipeline turns it into a deny `Decision`.

    `status` 401 means "who are you?" (missing or bad credentials) and carries a `WWW-Authenticate` challenge;
    403 means "I know who you are and the answer is no".

    `explain` builds the explanation step of this refusal (what was checked, what was found); the pipeline
    calls it only under `check --explain`, so a refusal on the hot path costs no text, and nothing it says can
    reach a decision log or the client. Without one, the step says the reason and the message.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        status: int = STATUS_UNAUTHORIZED,
        headers: tuple[tuple[str, str], ...] = (),
        explain: Explainer | None = None,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.status = status
        self.headers = headers
        self.explain = explain

    def decision(self, route: str = "", challenge: str | None = "", authorizer: str = "") -> Decision:
        """The deny `Decision` for this exception; 401s get a `WWW-Authenticate` challenge (`Bearer` unless one
        is given), except when `challenge` is None: an authorizer whose 401 API Gateway sends bare (Lambda)."""
        headers = self.headers
        if (
            self.status == STATUS_UNAUTHORIZED
            and challenge is not None
            and not any(k == "www-authenticate" for k, _ in headers)
        ):
            headers = (*headers, ("www-authenticate", challenge or "Bearer"))
        return Decision(
            allowed=False,
            status=self.status,
            reason=self.reason,
            message=self.message,
            headers=headers,
            route=route,
            authorizer=authorizer,
        )


def deny(reason: str, message: str, status: int = STATUS_FORBIDDEN, route: str = "") -> Decision:
    """A deny `Decision` built directly, for stages that do not raise."""
    return Denied(reason, message, status).decision(route=route)


INTERNAL = Decision(allowed=False, status=500, reason=INTERNAL_ERROR, message="Internal authorization error")
"""The decision for an unexpected failure: deny (fail closed) and say it is our fault, not the caller's."""
