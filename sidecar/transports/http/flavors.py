"""Flavors: what each proxy sends to ask for a decision, one small function per flavor, chosen once per listener.

Every function has the same shape, `(method, url, headers, body, peer, trusted, prefix) -> Request | None` (None:
the head lacks what the flavor requires), and builds the `Request` itself, so a request costs one call whatever
the flavor. `trusted` says whether the TCP peer may vouch for the client (`http.trusted_peers`): only then are
the forwarded source address, certificate and scheme believed; otherwise the peer itself is the source.

A flavor may also say how its proxy must be answered on a deny (`DENY_STATUSES`): nginx relays only some
statuses, so a refusal it would turn into its own 500 travels as a 403 that names the real status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final

from ...request import EMPTY_MAP, Request, is_canonical_method

SOURCE_ADDRESS_HEADER: Final = "x-authz-source-address"
PEER_CERTIFICATE_HEADER: Final = "x-authz-peer-certificate"
PARTIAL_BODY_HEADER: Final = "x-envoy-auth-partial-body"

BuildRequest = Callable[[str, str, dict[str, str], bytes, str, bool, str], Request | None]
"""A flavor: (method, url, headers, body, peer, trusted, path prefix) -> the `Request`, or None."""


def _strip_prefix(url: str, prefix: str) -> str | None:
    """`url` without the configured prefix; None if it does not carry it (the proxy is misconfigured)."""
    if not url.startswith(prefix):
        return None
    rest = url[len(prefix) :]
    if not rest:
        return "/"
    if rest[0] == "/":
        return rest
    return "/" + rest if rest[0] == "?" else None


def _mark_unseen_body(headers: dict[str, str]) -> None:
    """nginx's `auth_request` never carries the body; the shipped config passes its length and transfer coding
    instead. A request that has a body is marked as Envoy marks a body it cut short, so SigV4 denies it
    (`PartialBody`) rather than verifying the signature over an empty body while the upstream gets another."""
    length = headers.pop("x-original-content-length", "").strip()
    coding = headers.pop("x-original-transfer-encoding", "").strip()
    headers.pop(PARTIAL_BODY_HEADER, None)  # a client's own copy never counts
    if coding or (length and length != "0"):
        headers[PARTIAL_BODY_HEADER] = "true"


def _last_hop(forwarded_for: str) -> str:
    """The address the proxy itself saw: the last entry of X-Forwarded-For."""
    return forwarded_for.rpartition(",")[2].strip()


def envoy(
    method: str, url: str, headers: dict[str, str], body: bytes, peer: str, trusted: bool, prefix: str
) -> Request | None:
    """Envoy's `http_service`: the original method and path (after `path_prefix`), Envoy's own forwarded headers."""
    raw_path = _strip_prefix(url, prefix) if prefix else url
    if trusted:
        source = headers.get(SOURCE_ADDRESS_HEADER, "")
        cert = headers.get(PEER_CERTIFICATE_HEADER, "")
        scheme = headers.get("x-forwarded-proto", "http")
    else:
        source, cert, scheme = peer, "", "http"  # nobody vouches for a client: the connection's peer is the truth
    return _request(method, raw_path, headers, scheme, source, cert, body, trusted)


def nginx(
    method: str, url: str, headers: dict[str, str], body: bytes, peer: str, trusted: bool, prefix: str
) -> Request | None:
    """nginx `auth_request`: the original request in X-Original-URI / X-Original-Method, no body (see
    `_mark_unseen_body`)."""
    raw_path = headers.get("x-original-uri")
    method = headers.get("x-original-method", method)
    _mark_unseen_body(headers)
    if trusted:
        source = headers.get(SOURCE_ADDRESS_HEADER, "")
        cert = headers.get(PEER_CERTIFICATE_HEADER, "")
        scheme = headers.get("x-forwarded-proto", "http")
    else:
        source, cert, scheme = peer, "", "http"
    return _request(method, raw_path, headers, scheme, source, cert, body, trusted)


def traefik(
    method: str, url: str, headers: dict[str, str], body: bytes, peer: str, trusted: bool, prefix: str
) -> Request | None:
    """Traefik ForwardAuth: the original request in the X-Forwarded-* headers; the source is the hop Traefik saw."""
    raw_path = headers.get("x-forwarded-uri")
    method = headers.get("x-forwarded-method", method)
    forwarded_host = headers.get("x-forwarded-host")
    if forwarded_host:
        headers["host"] = forwarded_host
    if trusted:
        source = _last_hop(headers.get("x-forwarded-for", ""))
        scheme = headers.get("x-forwarded-proto", "http")
    else:
        source, scheme = peer, "http"
    return _request(method, raw_path, headers, scheme, source, "", body, trusted)


FLAVORS: Final[Mapping[str, BuildRequest]] = {"envoy": envoy, "nginx": nginx, "traefik": traefik}
"""`http.flavor` -> its function (the names `sidecar.settings.HttpModeSettings.flavor` accepts)."""

DenyStatus = Callable[[int], int]
"""A deny's status -> the status to answer the proxy with (the real one then travels in `x-authz-status`)."""

NGINX_RELAYED: Final = frozenset({401, 403})
"""The deny statuses nginx's `auth_request` hands to the client; it answers every other one with its own 500."""


def nginx_deny_status(status: int) -> int:
    """nginx relays 401 and 403 only: a refusal it cannot relay (429 Throttled / QuotaExceeded, a WAF rule's own
    4xx, a 400 MalformedRequest) is answered 403, so that the shipped config's `error_page 403` can answer the
    client with the real status and the Retry-After / RateLimit headers nginx would otherwise drop with the
    response. A 5xx stays: nginx's 500 is the honest answer to our own failure, and must not read as a deny."""
    return status if status in NGINX_RELAYED or status >= 500 else 403


DENY_STATUSES: Final[Mapping[str, DenyStatus]] = {"nginx": nginx_deny_status}
"""The flavors whose proxy cannot relay every deny status; the others (Envoy, Traefik) get ours as it is."""


def _request(
    method: str,
    raw_path: str | None,
    headers: dict[str, str],
    scheme: str,
    source: str,
    cert: str,
    body: bytes,
    trusted: bool,
) -> Request | None:
    """The `Request` every flavor builds from what it read, or None when the path or method cannot be judged.
    Positional, in field order (sidecar/request.py): keywords cost several times as much, once per request.
    `trusted` becomes `Request.trusted_peer`: only then are the proxy's origin headers (`policy.vpce_header`) read."""
    if not raw_path or raw_path[0] != "/" or not is_canonical_method(method):
        return None
    return Request(
        method,
        raw_path,
        raw_path.partition("?")[0],
        headers,
        headers.get("host", ""),
        scheme,
        "",
        source,
        0,
        cert,
        body,
        EMPTY_MAP,
        headers.get("x-request-id", ""),
        time.time(),
        EMPTY_MAP,
        trusted,
    )
