"""How a flavor's proxy is answered on a deny: nginx's `auth_request` relays 401 and 403 only (anything else is
its own 500), so the nginx flavor answers other refusals 403 with the real status in `x-authz-status`, keeping
Retry-After and the RateLimit headers for the shipped config's `@authz_denied` (deploy/nginx/nginx-authz.conf)."""

from __future__ import annotations

import pytest

from sidecar import reasons
from sidecar.limits.counters import Admission
from sidecar.limits.gates import refusal
from sidecar.request import Decision, Request
from sidecar.transports.http.flavors import DENY_STATUSES, nginx_deny_status
from sidecar.transports.http.render import INTERNAL, STATUS_HEADER, render

from .client import Conn, get
from .conftest import Serve
from .test_render import parse

THROTTLED = refusal(
    Admission(allowed=False, reason="throttle", limit=2, remaining=0, reset=20.0, retry_after=9.2, window=20.0),
    reasons.THROTTLED,
    "Too Many Requests",
    429,
    "throttle",
    "usage_plan:gold",
)
CHALLENGE = reasons.Denied(reasons.UNAUTHORIZED, "Unauthorized", 401).decision(challenge="Bearer")
FORBIDDEN = reasons.Denied(reasons.ACCESS_DENIED, "Forbidden", 403).decision()


@pytest.mark.parametrize(
    ("status", "sent"),
    [(401, 401), (403, 403), (429, 403), (400, 403), (418, 403), (451, 403), (302, 403), (500, 500), (503, 503)],
)
def test_nginx_relays_401_403_and_5xx_and_carries_every_other_deny_as_403(status: int, sent: int) -> None:
    assert nginx_deny_status(status) == sent


def test_only_nginx_rewrites_deny_statuses() -> None:
    assert set(DENY_STATUSES) == {"nginx"}  # Envoy and Traefik hand our status to the client as it is


def test_a_throttled_deny_for_nginx_is_403_with_the_real_status_and_its_headers() -> None:
    status, headers, body = parse(render(THROTTLED, False, b"", set(), nginx_deny_status))
    assert status == 403
    assert headers[STATUS_HEADER] == "429"
    assert headers["retry-after"] == "10"
    assert headers["ratelimit-policy"] == '"throttle";q=2;w=20'
    assert headers["ratelimit"] == '"throttle";r=0;t=20'
    assert body == b'{"message":"Too Many Requests","reason":"Throttled"}'  # the body is the decision's own


def test_a_head_request_gets_the_carried_status_without_a_body() -> None:
    status, headers, body = parse(render(THROTTLED, True, b"", set(), nginx_deny_status))
    assert (status, headers[STATUS_HEADER], body) == (403, "429", b"")


@pytest.mark.parametrize("decision", [CHALLENGE, FORBIDDEN, INTERNAL], ids=["401", "403", "500"])
def test_statuses_nginx_relays_or_fails_on_are_sent_as_they_are(decision: Decision) -> None:
    status, headers, _ = parse(render(decision, False, b"", set(), nginx_deny_status))
    assert status == decision.status
    assert STATUS_HEADER not in headers
    assert render(decision, False, b"", set(), nginx_deny_status) == render(decision, False, b"", set())


def test_without_a_flavor_rewrite_the_deny_keeps_its_status() -> None:
    status, headers, _ = parse(render(THROTTLED, False, b"", set()))
    assert (status, STATUS_HEADER in headers, headers["retry-after"]) == (429, False, "10")


class Refuses:
    """A pipeline that throttles every request."""

    async def check(self, request: Request) -> Decision:
        return THROTTLED


NGINX_HEAD = ("X-Original-URI: /pets/1", "X-Original-Method: GET")


@pytest.mark.parametrize(("flavor", "status"), [("nginx", 403), ("envoy", 429), ("traefik", 429)])
async def test_the_listener_answers_as_its_flavor_says(serve: Serve, flavor: str, status: int) -> None:
    server = await serve(pipeline=Refuses(), flavor=flavor)
    conn = await Conn.open(server.port)
    head = (*NGINX_HEAD, "X-Forwarded-Uri: /pets/1", "X-Forwarded-Method: GET")
    await conn.send(get("/pets/1", *head) * 2)  # the second answer comes from the listener's memo of wire forms
    for response in await conn.responses(2):
        assert response.status == status
        assert response.headers.get(STATUS_HEADER) == (None if status == 429 else "429")
        assert response.headers["retry-after"] == "10"
        assert response.json()["reason"] == reasons.THROTTLED


async def test_a_request_nginx_described_badly_is_403_carrying_400(serve: Serve) -> None:
    server = await serve(pipeline=Refuses(), flavor="nginx")
    conn = await Conn.open(server.port)
    await conn.send(get("/_authz", "X-Original-Method: GET"))  # no X-Original-URI: nothing to judge
    response = await conn.response()
    assert (response.status, response.headers[STATUS_HEADER]) == (403, "400")
    assert response.json()["reason"] == reasons.MALFORMED_REQUEST
