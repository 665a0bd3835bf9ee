"""The Envoy matchers `envoy-config` renders are sound: whatever Envoy files under a sidecar route, the sidecar's
own table picks that route too (else a request could cross the hop with another route's trimmed settings)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.harness.envoy_routes import envoy_routes, first_match, path_regex
from sidecar.request import is_canonical_method, judged_method
from sidecar.routes import AmbiguousPath, RouteTable, parse_match

LITERALS = ["a", "b", "pets", "v1", "x.json", "%41", "caf\u00e9"]
METHODS = ["GET", "POST", "ANY", "DELETE"]


@st.composite
def route_keys(draw: st.DrawFn) -> str:
    drawn = draw(st.lists(st.sampled_from([*LITERALS, "{id}", "{other}"]), max_size=3))
    segments = [s.replace("}", f"{i}}}") if s.startswith("{") else s for i, s in enumerate(drawn)]
    if draw(st.booleans()):
        segments.append(draw(st.sampled_from(["{proxy+}", "{rest+}"])))
    return f"{draw(st.sampled_from(METHODS))} /" + "/".join(segments)


@st.composite
def tables(draw: st.DrawFn) -> list[str]:
    keys = draw(st.lists(route_keys(), min_size=1, max_size=8, unique_by=lambda k: parse_match(k).key))
    if draw(st.booleans()):
        keys.append("$default")
    return keys


PATH_SEGMENTS = [*LITERALS, "A", "c", "42", ".", "..", "", "%2F", "a;b", "%61", "..."]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    segments = draw(st.lists(st.sampled_from(PATH_SEGMENTS), max_size=5))
    path = "/" + "/".join(segments) + draw(st.sampled_from(["", "", "/"]))
    return draw(st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PATCH", "delete", "Get", "get", "M-SEARCH"])), path


def sidecar_pick(table: RouteTable[str], method: str, path: str) -> str | None:
    """The route the sidecar judges (method, path) under; None when it routes it nowhere or refuses the request
    first (a method that is not an upper-case token: 400)."""
    if not is_canonical_method(method):
        return None
    try:
        found = table.match(judged_method(method), path)
    except AmbiguousPath:
        return None
    return found.target if found is not None else None


@settings(max_examples=400, deadline=None)
@given(tables(), st.lists(requests(), min_size=1, max_size=20))
def test_envoy_never_files_a_request_under_a_route_the_sidecar_would_not_pick(
    keys: list[str], sent: list[tuple[str, str]]
) -> None:
    table = RouteTable([(k, k) for k in keys])
    routes, _ = envoy_routes(table)
    for method, path in sent:
        chosen = first_match(routes, method, path)
        if chosen is not None:
            assert sidecar_pick(table, method, path) == chosen.key, (keys, method, path, chosen.key)


@settings(max_examples=200, deadline=None)
@given(tables())
def test_every_route_with_plain_literals_gets_its_own_envoy_route(keys: list[str]) -> None:
    """Soundness alone would be met by sending everything to the catch-all: each route's own sample is filed
    under it, unless it is left to the catch-all for a stated reason."""
    table = RouteTable([(k, k) for k in keys])
    routes, left = envoy_routes(table)
    assert {r.key for r in routes} | {k for k, _ in left} == {k.strip() for k in keys}


def test_precedence_follows_api_gateway() -> None:
    table = RouteTable(
        [(k, k) for k in ("ANY /{proxy+}", "GET /pets/{id}", "GET /pets/mine", "ANY /pets/{proxy+}", "ANY /pets/mine")]
    )
    routes, _ = envoy_routes(table)
    assert [r.key for r in routes] == [
        "GET /pets/mine",
        "ANY /pets/mine",
        "GET /pets/{id}",
        "ANY /pets/{proxy+}",
        "ANY /{proxy+}",
    ]
    assert first_match(routes, "HEAD", "/pets/7").key == "GET /pets/{id}"  # type: ignore[union-attr]
    assert first_match(routes, "POST", "/pets/7").key == "ANY /pets/{proxy+}"  # type: ignore[union-attr]
    assert first_match(routes, "GET", "/pets/7/") is None  # a trailing slash: the catch-all judges it


def test_matchers_refuse_what_the_sidecar_reads_otherwise() -> None:
    regex = path_regex(parse_match("GET /files/{name}"))
    assert regex is not None
    for path in ("/files/%61", "/files/..", "/files/.", "/files/a;b", "/files/", "/files//x", "/files/a\\b"):
        assert re.fullmatch(regex, path) is None, path
    assert re.fullmatch(regex, "/files/...x") and re.fullmatch(regex, "/files/x.json")
    assert path_regex(parse_match("GET /caf\u00e9")) is None  # not plain: left to the catch-all


def test_a_method_the_sidecar_refuses_is_filed_under_no_route() -> None:
    """HTTP/2 passes a lower-case method through: `delete` must not miss `DELETE /items/{id}` and land on the
    `ANY` route below it (open, or offloaded), but reach the catch-all, so the sidecar refuses it."""
    table = RouteTable([(k, k) for k in ("DELETE /items/{id}", "ANY /items/{id}")])
    routes, _ = envoy_routes(table)
    assert first_match(routes, "DELETE", "/items/1").key == "DELETE /items/{id}"
    assert first_match(routes, "PATCH", "/items/1").key == "ANY /items/{id}"
    for method in ("delete", "Delete", "patch", "GET ", "X" * 40):
        assert first_match(routes, method, "/items/1") is None, method
    assert first_match(routes, "X" * 32, "/items/1").key == "ANY /items/{id}"  # the sidecar's longest method
    any_route = next(r for r in routes if r.key == "ANY /items/{id}")
    token, length = any_route.match()["headers"]
    assert token["name"] == length["name"] == ":method" and length["invert_match"] is True
