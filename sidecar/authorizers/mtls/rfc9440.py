"""RFC 9440's `Client-Cert` and `Client-Cert-Chain` headers: a proxy's way of saying which certificate its client
presented, as Structured Field values (RFC 8941).

`Client-Cert` is one Byte Sequence, the DER certificate in base64 between colons (`:MIIB...:`); `Client-Cert-Chain`
a List of them, comma-separated, the certificates that chain it (the leaf not repeated). Parameters, which RFC 9440
defines none of, are accepted and ignored, as RFC 8941 asks of a recipient; anything else that is not a Byte
Sequence (a token, a string, a second item in `Client-Cert`, which a repeated header joined with `,` becomes) is a
`CertificateError`. Base64 without its `=` padding is accepted (RFC 8941 4.2.7: parsers SHOULD NOT fail on it).
"""

from __future__ import annotations

import base64
import binascii
import re

from .cert import MAX_CHAIN, CertificateError

CLIENT_CERT_HEADER = "client-cert"
CLIENT_CERT_CHAIN_HEADER = "client-cert-chain"

_PARAMETER = r';[ ]*[a-z*][a-z0-9_\-.*]*(?:=(?:[A-Za-z0-9_\-.*:/%!#$&\'+^`|~]+|"(?:[^"\\]|\\.)*"|:[A-Za-z0-9+/=]*:))?'
_MEMBER = re.compile(rf":(?P<b64>[A-Za-z0-9+/]*={{0,2}}):(?:{_PARAMETER})*")
_OWS = " \t"


def parse_byte_sequence(text: str) -> bytes:
    """The bytes of a `Client-Cert` value (one Byte Sequence, optionally with parameters)."""
    member = _MEMBER.fullmatch(text.strip(" "))
    if member is None:
        raise CertificateError("the Client-Cert header is not one structured-field byte sequence")
    return _decode(member.group("b64"))


def parse_byte_sequence_list(text: str) -> list[bytes]:
    """The bytes of each member of a `Client-Cert-Chain` value, in order (an empty value is an empty list)."""
    text = text.strip(" ")
    out: list[bytes] = []
    pos = 0
    while pos < len(text):
        member = _MEMBER.match(text, pos)
        if member is None:
            raise CertificateError("the Client-Cert-Chain header is not a list of byte sequences")
        out.append(_decode(member.group("b64")))
        if len(out) > MAX_CHAIN:
            raise CertificateError(f"the Client-Cert-Chain header holds more than {MAX_CHAIN} certificates")
        pos = _after_comma(text, member.end())
    return out


def _after_comma(text: str, pos: int) -> int:
    """Where the next member starts: past optional white space, one comma and optional white space; the end of
    `text` after the last member. A trailing comma or text where a comma belongs is an error."""
    while pos < len(text) and text[pos] in _OWS:
        pos += 1
    if pos == len(text):
        return pos
    if text[pos] != ",":
        raise CertificateError("the Client-Cert-Chain header is not a list of byte sequences")
    pos += 1
    while pos < len(text) and text[pos] in _OWS:
        pos += 1
    if pos == len(text):
        raise CertificateError("the Client-Cert-Chain header ends with a comma")
    return pos


def _decode(b64: str) -> bytes:
    core = b64.rstrip("=")
    try:
        return base64.b64decode(core + "=" * (-len(core) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError("a structured-field byte sequence is not base64") from None
