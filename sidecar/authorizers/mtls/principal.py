"""Who a verified certificate names, and what it tells the policies.

The principal is the field `mtls.principal` names: `san.uri` (the first URI SAN, e.g. a SPIFFE ID
`spiffe://trust-domain/ns/x/sa/y`: SPIFFE allows exactly one), `san.dns` (the first DNS SAN), `san.email` (the
first email SAN) or `subject.cn` (the subject's first CN). A certificate without that field, or whose value could
not travel upstream unchanged (control characters, white space at an end), names nobody: `ClientCertInvalid`.

Every certificate field is also a policy condition key, whatever the principal (`Principal.context`):

| key | value |
| --- | --- |
| `mtls:subject` | the subject DN, RFC 4514 (`CN=client,O=Example`) |
| `mtls:issuer` | the issuer DN |
| `mtls:serial` | the serial, colon hex as API Gateway writes it |
| `mtls:san:uri`, `mtls:san:dns`, `mtls:san:email` | every SAN of that type (multi-valued: `ForAnyValue:`) |
| `mtls:fingerprint` | the SHA-256 of the certificate, lower-case hex |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ...reasons import CLIENT_CERT_INVALID, STATUS_FORBIDDEN, Denied
from ...request import header_safe
from .cert import ClientCert

PrincipalField = Literal["san.uri", "san.dns", "san.email", "subject.cn"]

_FIELDS: Mapping[str, str] = {
    "san.uri": "URI SAN",
    "san.dns": "DNS SAN",
    "san.email": "email SAN",
    "subject.cn": "subject CN",
}


def principal_id(cert: ClientCert, field: PrincipalField) -> str:
    """The value of `field` in `cert`, or `Denied` (`ClientCertInvalid`) when it has none that can be sent."""
    if field == "subject.cn":
        value = cert.common_name
    else:
        values = {"san.uri": cert.san_uri, "san.dns": cert.san_dns, "san.email": cert.san_email}[field]
        value = values[0] if values else ""
    if not value:
        message = f"the certificate has no {_FIELDS[field]} to name the caller by (mtls.principal: {field})"
        raise Denied(CLIENT_CERT_INVALID, message, STATUS_FORBIDDEN)
    if not header_safe(value):
        raise Denied(
            CLIENT_CERT_INVALID, f"the certificate's {field} cannot be sent upstream as it is", STATUS_FORBIDDEN
        )
    return value


def policy_context(cert: ClientCert) -> dict[str, Any]:
    """The `mtls:*` condition keys of `cert` (see the module's docstring)."""
    return {
        "mtls:subject": cert.subject,
        "mtls:issuer": cert.issuer,
        "mtls:serial": cert.serial,
        "mtls:san:uri": cert.san_uri,
        "mtls:san:dns": cert.san_dns,
        "mtls:san:email": cert.san_email,
        "mtls:fingerprint": cert.fingerprint_hex,
    }
