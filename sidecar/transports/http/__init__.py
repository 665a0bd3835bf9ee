"""The HTTP transport: Envoy's `http_service` (and nginx `auth_request`, Traefik ForwardAuth) over HTTP/1.1.

This is the second transport over the same pipeline as the gRPC engines: it turns one authorization request into
our immutable `Request`, awaits `checker.check(request)` and renders the `Decision` as an HTTP response
(200 = allow, with the headers to add upstream; anything else = deny, with our status, headers and JSON body).

Why a hand-written `asyncio.Protocol` over `httptools` and not a framework: a framework costs several times the
raw server per request (see docs/http-mode.md), and the warm path here is a few hundred bytes in, a few dozen
out. So the per-request work is kept to: the parser callbacks, one dict of headers, one `Request`, one
`checker.check`, and one response assembled from pre-encoded parts. Checks that complete without suspending
(cache hits, CPU-only authorizers) are driven inline without creating a Task; only a check that really waits
gets one. Responses always leave in request order, so pipelining is safe.

Trust: `x-authz-source-address` / `x-authz-peer-certificate` (or the forwarded headers of the nginx and Traefik
flavors) are honoured only when the TCP peer is one of `http.trusted_peers` (`sidecar.settings.HttpModeSettings`);
the shipped Envoy config removes client copies of them before adding its own (deploy/envoy/envoy-http.yaml).

- `flavors.py`: what each proxy sends, as a table of one small function per flavor (`Request` from the head),
  and how a proxy that relays only some deny statuses (nginx) is answered;
- `render.py`: `Decision` -> response bytes, and the canned answers to requests we refuse;
- `protocol.py`: one proxy connection (`HttpAuthzProtocol`) and what a listener's connections share;
- `server.py`: the running listener (`HttpAuthzServer`, `start_http_server`).
"""

from .render import HEADERS_TOO_LARGE, PAYLOAD_TOO_LARGE, REQUEST_TIMEOUT, SERVER_BUSY
from .server import HttpAuthzServer, start_http_server

__all__ = [
    "HEADERS_TOO_LARGE",
    "PAYLOAD_TOO_LARGE",
    "REQUEST_TIMEOUT",
    "SERVER_BUSY",
    "HttpAuthzServer",
    "start_http_server",
]
