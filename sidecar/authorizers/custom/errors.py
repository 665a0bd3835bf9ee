"""The answers a `lambda` authorizer gives other than an allow, in API Gateway's reason codes and words, so a
client (and a runbook) written against API Gateway reads them unchanged. A leaf of the package: the identity,
response and authorizer modules all refuse through these."""

from __future__ import annotations

from functools import partial

from ... import reasons
from ...explanation import AUTHENTICATE, DENY, Step
from ...reasons import STATUS_FORBIDDEN, STATUS_UNAUTHORIZED, Denied

UNAUTHORIZED = reasons.UNAUTHORIZED
ACCESS_DENIED = reasons.ACCESS_DENIED
CONFIGURATION = reasons.AUTHORIZER_CONFIGURATION_EXCEPTION

UNAUTHORIZED_MESSAGE = "Unauthorized"
EXPLICIT_DENY_MESSAGE = "User is not authorized to access this resource with an explicit deny"
IMPLICIT_DENY_MESSAGE = "User is not authorized to access this resource"
FORBIDDEN_MESSAGE = "Forbidden"
"""An HTTP API simple response's `isAuthorized: false`."""
CONFIGURATION_MESSAGE = "Internal Server Error"
STATUS_CONFIGURATION = 500

__all__ = [
    "ACCESS_DENIED",
    "CONFIGURATION",
    "EXPLICIT_DENY_MESSAGE",
    "IMPLICIT_DENY_MESSAGE",
    "UNAUTHORIZED",
    "configuration_error",
    "forbidden",
    "unauthorized",
]


def _step(reason: str, why: str) -> Step:
    return Step(AUTHENTICATE, DENY, f"{reason}: {why}")


def unauthorized(why: str) -> Denied:
    """401 `Unauthorized`. `why` (what was checked, never a value) reaches only `check --explain`."""
    return Denied(UNAUTHORIZED, UNAUTHORIZED_MESSAGE, STATUS_UNAUTHORIZED, explain=partial(_step, UNAUTHORIZED, why))


def forbidden(why: str) -> Denied:
    """403 `AccessDenied` for a simple response that said `isAuthorized: false`."""
    return Denied(ACCESS_DENIED, FORBIDDEN_MESSAGE, STATUS_FORBIDDEN, explain=partial(_step, ACCESS_DENIED, why))


def configuration_error(kind: str) -> Denied:
    """500 `AuthorizerConfigurationException`: the handler failed (`kind`: `timeout`, `exception:TypeError`,
    `malformed`, ...). The client learns nothing more than API Gateway would tell it; `check --explain` the kind."""
    why = f"the handler failed ({kind}); API Gateway answers this 500 too"
    explain = partial(_step, CONFIGURATION, why)
    return Denied(CONFIGURATION, CONFIGURATION_MESSAGE, STATUS_CONFIGURATION, explain=explain)
