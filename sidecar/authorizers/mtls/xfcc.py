"""Envoy's `x-forwarded-client-cert` (XFCC) header, read exactly as Envoy writes it.

The value is a list of elements separated by `,`, one per proxy that handled the request; each element is a list of
`key=value` pairs separated by `;`. Keys are case-insensitive (`By`, `Hash`, `Cert`, `Chain`, `Subject`, `URI`,
`DNS`; `URI` and `DNS` repeat, once per SAN). A value holding `,`, `;` or `=` is double-quoted, and a `"` inside a
quoted value is written `\\"`. `Cert` is the client's certificate and `Chain` its whole chain, leaf first, both as
URL-encoded PEM.

Which element is believed: the **last**. A proxy appends its element to the end (`APPEND_FORWARD`) or replaces the
header with its own (`SANITIZE_SET`), so the last element is always the one the nearest proxy wrote: the proxy that
terminated the client's TLS and that the trusted-peer check vouches for. Earlier elements were written by hops
further away, which nobody here can vouch for (a client can write any it likes before the first proxy).

Only `Cert`, `Chain` and `Hash` are read: the identity comes from the certificate itself once it is verified, never
from `Subject`, `URI` or `DNS`, which are the proxy's copies of its fields. A value that does not parse is a
`CertificateError` (`ClientCertInvalid`), never an exception or a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .cert import CertificateError

XFCC_HEADER = "x-forwarded-client-cert"
MAX_ELEMENTS = 32
"""Elements one header may hold: one per proxy hop, so a few in practice."""
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class XfccElement:
    """One proxy's element: its pairs in order, keys lower-cased, values unquoted."""

    pairs: tuple[tuple[str, str], ...]

    def first(self, key: str) -> str | None:
        """The first value of `key` (lower case), or None."""
        return next((value for name, value in self.pairs if name == key), None)

    def values(self, key: str) -> tuple[str, ...]:
        """Every value of `key` (lower case), in order (`uri` and `dns` repeat)."""
        return tuple(value for name, value in self.pairs if name == key)


def parse_xfcc(header: str) -> tuple[XfccElement, ...]:
    """Every element of an XFCC value, in order; `CertificateError` for anything Envoy would not have written
    (an empty element or pair, a key without `=`, an unterminated quote, a stray `"`). An empty value holds none."""
    parser = _Parser(header)
    if not header.strip(_OWS):
        return ()
    elements = [parser.element()]
    while parser.take(","):
        if len(elements) >= MAX_ELEMENTS:
            raise CertificateError(f"the XFCC header holds more than {MAX_ELEMENTS} elements")
        elements.append(parser.element())
    return tuple(elements)


def nearest_element(header: str) -> XfccElement | None:
    """The element the nearest proxy wrote (the last; see the module's docstring), or None for an empty header."""
    elements = parse_xfcc(header)
    return elements[-1] if elements else None


class _Parser:
    """A cursor over the header; each method consumes what it reads or raises `CertificateError`."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _skip_ows(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _OWS:
            self.pos += 1

    def take(self, char: str) -> bool:
        """Consume `char` (after optional white space) if it is next."""
        self._skip_ows()
        if self.pos < len(self.text) and self.text[self.pos] == char:
            self.pos += 1
            return True
        return False

    def element(self) -> XfccElement:
        pairs = [self._pair()]
        while self.take(";"):
            pairs.append(self._pair())
        self._skip_ows()
        if self.pos < len(self.text) and self.text[self.pos] != ",":
            raise CertificateError("the XFCC header is malformed (unexpected text after a value)")
        return XfccElement(tuple(pairs))

    def _pair(self) -> tuple[str, str]:
        self._skip_ows()
        text = self.text
        end = _until(_KEY_END, text, self.pos)
        key = text[self.pos : end].strip(_OWS).lower()
        if not key or end >= len(text) or text[end] != "=":
            raise CertificateError("the XFCC header is malformed (a pair without key=value)")
        self.pos = end + 1
        self._skip_ows()
        return key, self._quoted() if self.pos < len(text) and text[self.pos] == '"' else self._bare()

    def _bare(self) -> str:
        text = self.text
        end = _until(_BARE_END, text, self.pos)
        if end < len(text) and text[end] == '"':
            raise CertificateError('the XFCC header is malformed (a " inside an unquoted value)')
        value = text[self.pos : end].strip(_OWS)
        self.pos = end
        return value

    def _quoted(self) -> str:
        text = self.text
        self.pos += 1  # the opening quote
        out: list[str] = []
        while True:
            end = _until(_QUOTED_STOP, text, self.pos)
            out.append(text[self.pos : end])
            if end >= len(text) or (text[end] == "\\" and end + 1 >= len(text)):
                raise CertificateError("the XFCC header is malformed (an unterminated quoted value)")
            if text[end] == '"':
                self.pos = end + 1
                return "".join(out)
            out.append(text[end + 1])  # a backslash: the next character as it is
            self.pos = end + 2


_KEY_END = re.compile(r'[=;,"]')
_BARE_END = re.compile(r'[;,"]')
_QUOTED_STOP = re.compile(r'["\\]')


def _until(stop: re.Pattern[str], text: str, pos: int) -> int:
    """The position of the next `stop` character from `pos`, or the end of `text`: one C-speed search where a
    loop over a 3 KiB URL-encoded certificate would cost a Python step per character."""
    found = stop.search(text, pos)
    return found.start() if found is not None else len(text)
