"""Where a request's client certificate is read (`mtls.sources`, in order), and which of those places are believed.

- `envoy`: `Request.peer_certificate`, the URL-encoded PEM Envoy sends as `source.certificate` (gRPC mode,
  `include_peer_certificate: true`) or the HTTP transport fills from `x-authz-peer-certificate`. Always believed:
  the transports only fill it from Envoy (gRPC) or from a trusted TCP peer (`http.trusted_peers`). A PEM bundle
  (the leaf, then its chain) is accepted as well as the leaf alone.
- `xfcc`: the `x-forwarded-client-cert` element the nearest proxy wrote (`xfcc.py`: the last one).
- `client-cert-header`: RFC 9440's `Client-Cert` with `Client-Cert-Chain` (`rfc9440.py`).

A header is believed only when whoever wrote it is trusted:

- in gRPC mode (`Request.protocol` set: the CheckRequest came from Envoy) the XFCC header is Envoy's own: Envoy
  removes a client's copy unless told to forward it (`forward_client_cert_details`, default `SANITIZE`) and
  writes its element with `SANITIZE_SET` (or appends it last with `APPEND_FORWARD`, which the last-element rule
  reads correctly). It is believed. Envoy never writes `Client-Cert`, so that header reached Envoy from its
  downstream and is judged like an HTTP mode header, below;
- otherwise the header was written by the hop that sent the request to the proxy that asks us, whose address is
  `Request.source_address` (in HTTP mode: the address a trusted proxy reported, or the TCP peer itself when that
  peer is not trusted): believed only when that address is in `mtls.trusted_peers` (by default nobody).
  A proxy that terminates the client's TLS itself and asks us directly sends the certificate as
  `x-authz-peer-certificate` instead (source `envoy`).

A header that is not believed is ignored (the next source is read), counted in
`authz_mtls_headers_ignored_total{source}`; with nothing else, the request has no certificate (`ClientCertMissing`).
A believed value that does not parse is a `CertificateError` (`ClientCertInvalid`): the engine does not go on to
the next source, as a forged or broken value must never be papered over by another.

Parsed certificates are remembered by the exact text that carried them (a bounded memo per source), so a client
presenting the same certificate again costs a dictionary lookup, not a parse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Final, Literal
from urllib.parse import unquote

from ...memo import BoundedMemo
from ...metrics import MTLS_HEADERS_IGNORED
from ...policy.conditions import policy_network
from ...policy.context import parse_ip
from ...request import Request
from .cert import CertificateError, ClientCert, from_certificates, from_der, from_pem, load_pem_bundle
from .rfc9440 import CLIENT_CERT_CHAIN_HEADER, CLIENT_CERT_HEADER, parse_byte_sequence, parse_byte_sequence_list
from .xfcc import XFCC_HEADER, XfccElement, nearest_element

SourceName = Literal["envoy", "xfcc", "client-cert-header"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_VALUE_CHARS: Final = 128 * 1024
"""The longest value a source is parsed from (a chain of `MAX_CHAIN` URL-encoded certificates fits)."""
DEFAULT_MEMO = 4096


class CertSources:
    """Reads one request's client certificate from the configured sources (see the module's docstring)."""

    def __init__(
        self, names: Iterable[SourceName], trusted_peers: Iterable[str], memo_size: int = DEFAULT_MEMO
    ) -> None:
        readers: dict[SourceName, Callable[[Request], ClientCert | None]] = {
            "envoy": self._envoy,
            "xfcc": self._xfcc,
            "client-cert-header": self._client_cert,
        }
        self.names = tuple(names)
        self._readers = tuple(readers[name] for name in self.names)
        self._networks = tuple(policy_network(peer) for peer in trusted_peers)
        self._trusted: BoundedMemo[str, bool] = BoundedMemo(4096)
        self._parsed: BoundedMemo[tuple[str, str, str], ClientCert] = BoundedMemo(max(1, memo_size))
        self._ignored = {name: MTLS_HEADERS_IGNORED.labels(name) for name in ("xfcc", "client-cert-header")}

    def read(self, request: Request) -> ClientCert | None:
        """The certificate of the first source that has one, None if none has (or only untrusted headers have);
        `CertificateError` if a believed source holds one that cannot be read."""
        for reader in self._readers:
            cert = reader(request)
            if cert is not None:
                return cert
        return None

    # the sources
    def _envoy(self, request: Request) -> ClientCert | None:
        text = request.peer_certificate
        if not text:
            return None
        return self._remembered(("envoy", text, ""), lambda: from_pem(_url_decoded(text)))

    def _xfcc(self, request: Request) -> ClientCert | None:
        header = request.headers.get(XFCC_HEADER)
        if header is None or not self._believed(request, "xfcc", envoy_writes_it=True):
            return None
        found = self._parsed.get(("xfcc", header, ""))
        if found is not None:
            return found
        element = nearest_element(_bounded(header))
        return None if element is None else self._parsed.put(("xfcc", header, ""), _from_xfcc(element))

    def _client_cert(self, request: Request) -> ClientCert | None:
        header = request.headers.get(CLIENT_CERT_HEADER)
        if header is None or not self._believed(request, "client-cert-header", envoy_writes_it=False):
            return None
        chain = request.headers.get(CLIENT_CERT_CHAIN_HEADER, "")
        return self._remembered(
            ("client-cert-header", header, chain),
            lambda: from_der(parse_byte_sequence(_bounded(header)), parse_byte_sequence_list(_bounded(chain))),
        )

    def _remembered(self, key: tuple[str, str, str], parse: Callable[[], ClientCert]) -> ClientCert:
        found = self._parsed.get(key)
        return found if found is not None else self._parsed.put(key, parse())

    # trust
    def _believed(self, request: Request, source: str, *, envoy_writes_it: bool) -> bool:
        if envoy_writes_it and request.protocol:
            return True  # gRPC mode: Envoy's own header (see the module's docstring)
        address = request.source_address
        trusted = self._trusted.get(address)
        if trusted is None:
            trusted = self._trusted.put(address, _in_networks(address, self._networks))
        if not trusted:
            self._ignored[source].inc()
        return trusted


def _in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether `address` is in one of `networks`, read as the policies read `aws:SourceIp` (an IPv4-mapped IPv6
    address is its IPv4 one, a zone is allowed); never for text that is not an address."""
    parsed = parse_ip(address)
    if parsed is None:
        return False
    version, number = parsed
    return any(n.version == version and int(n.network_address) <= number <= int(n.broadcast_address) for n in networks)


def _bounded(text: str) -> str:
    if len(text) > MAX_VALUE_CHARS:
        raise CertificateError("the certificate header is too large")
    return text


def _url_decoded(text: str) -> str:
    """URL-encoded PEM as Envoy writes it (`%0A` for each newline, `+` left as it is); plain PEM stays as it is."""
    if "%" not in _bounded(text):
        return text
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise CertificateError("the certificate is not URL-encoded text") from None


def _from_xfcc(element: XfccElement) -> ClientCert:
    """The nearest element's certificate: `Cert` (the leaf), its chain from `Chain` (which repeats the leaf first),
    or the leaf and chain both from `Chain` when `Cert` is absent. A `Hash` must be the leaf's SHA-256."""
    cert_text, chain_text = element.first("cert"), element.first("chain")
    if cert_text is None and chain_text is None:
        raise CertificateError(
            "the XFCC element carries no Cert or Chain (Envoy: set_current_client_cert_details: {cert: true})"
        )
    chain = load_pem_bundle(_url_decoded(chain_text)) if chain_text is not None else []
    if cert_text is not None:
        presented = load_pem_bundle(_url_decoded(cert_text))
        leaf, rest = presented[0], [*presented[1:], *(c for c in chain if c != presented[0])]
    else:
        leaf, rest = chain[0], chain[1:]
    cert = from_certificates(leaf, rest)
    expected = element.first("hash")
    if expected is not None and expected.lower() != cert.fingerprint_hex:
        raise CertificateError("the XFCC element's Hash is not its certificate's SHA-256")
    return cert
