"""Route precedence and syntax, API Gateway style."""

from __future__ import annotations

import pytest

from sidecar.routes import AmbiguousPath, RouteSyntaxError, RouteTable, parse_match, path_segments

ROUTES = [
    "GET /orders",
    "GET /orders/{id}",
    "GET /orders/latest",
    "ANY /orders/{id}",
    "DELETE /orders/{id}",
    "GET /orders/{id}/items/{item}",
    "ANY /orders/{proxy+}",
    "ANY /admin/{proxy+}",
    "POST /admin/login",
    "GET /",
    "$default",
]


@pytest.fixture(scope="module")
def table() -> RouteTable[str]:
    return RouteTable([(r, r) for r in ROUTES])


@pytest.mark.parametrize(
    ("method", "path", "expected", "params"),
    [
        ("GET", "/orders", "GET /orders", {}),
        ("GET", "/orders/latest", "GET /orders/latest", {}),  # literal beats {param}
        ("GET", "/orders/42", "GET /orders/{id}", {"id": "42"}),  # method beats ANY on the same path
        ("PUT", "/orders/42", "ANY /orders/{id}", {"id": "42"}),
        ("DELETE", "/orders/42", "DELETE /orders/{id}", {"id": "42"}),
        ("GET", "/orders/42/items/7", "GET /orders/{id}/items/{item}", {"id": "42", "item": "7"}),
        ("POST", "/orders/42/items/7", "ANY /orders/{proxy+}", {"proxy": "42/items/7"}),  # {param} path lacks POST
        ("GET", "/orders/42/x/y/z", "ANY /orders/{proxy+}", {"proxy": "42/x/y/z"}),
        ("POST", "/admin/login", "POST /admin/login", {}),
        ("GET", "/admin/login", "ANY /admin/{proxy+}", {"proxy": "login"}),
        ("GET", "/admin", "$default", {}),  # {proxy+} needs at least one segment
        ("GET", "/", "GET /", {}),
        ("GET", "/elsewhere", "$default", {}),
        ("GET", "/%61dmin/x", "ANY /admin/{proxy+}", {"proxy": "x"}),  # escapes decoded
    ],
)
def test_precedence(table: RouteTable[str], method: str, path: str, expected: str, params: dict[str, str]) -> None:
    match = table.match(method, path)
    assert match is not None
    assert (match.target, dict(match.params)) == (expected, params)


def test_no_default_means_no_match() -> None:
    table = RouteTable([("GET /a", "a")])
    assert table.match("GET", "/b") is None
    assert table.match("POST", "/a") is None
    assert table.match("GET", "/a") is not None


def test_literal_only_table_still_decodes_and_refuses() -> None:
    table = RouteTable([("GET /a/b", "ab")])
    assert table.match("GET", "/a/%62") is not None
    with pytest.raises(AmbiguousPath):
        table.match("GET", "/a/./b")


# API Gateway's documented priority: a full match (literals and {param}) before any greedy match, then $default.
PRIORITY_ROUTES = [
    "ANY /users/public/{proxy+}",
    "GET /users/{id}/profile",
    "GET /pets/dog/1",
    "GET /pets/dog/{id}",
    "GET /pets/{proxy+}",
    "ANY /{proxy+}",
    "$default",
]


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/users/public/profile", "GET /users/{id}/profile"),  # the review's case: full beats greedy
        ("GET", "/users/public/other", "ANY /users/public/{proxy+}"),
        ("POST", "/users/public/profile", "ANY /users/public/{proxy+}"),  # no full match for POST
        ("GET", "/pets/dog/1", "GET /pets/dog/1"),  # AWS's own example table
        ("GET", "/pets/dog/2", "GET /pets/dog/{id}"),
        ("GET", "/pets/cat/1", "GET /pets/{proxy+}"),
        ("POST", "/pets/dog/1", "ANY /{proxy+}"),
        ("GET", "/", "$default"),
    ],
)
def test_full_match_beats_greedy(method: str, path: str, expected: str) -> None:
    table = RouteTable([(r, r) for r in PRIORITY_ROUTES])
    match = table.match(method, path)
    assert match is not None and match.target == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("FETCH /a", "unknown method"),
        ("GET a", "must start with '/'"),
        ("GET /{proxy+}/a", "must be the last segment"),
        ("GET /{id}/{id}", "appears twice"),
        ("GET /a{b}", "malformed segment"),
        ("GET", "must start with '/'"),
    ],
)
def test_syntax_errors(text: str, why: str) -> None:
    with pytest.raises(RouteSyntaxError, match=why):
        parse_match(text)


def test_path_segments() -> None:
    assert path_segments("/") == []
    assert path_segments("/a/b/") == ["a", "b"]  # one trailing slash is the same resource
    assert path_segments("/a%20b/%7Ec") == ["a b", "~c"]
    assert path_segments("/a/.well-known/b..c") == ["a", ".well-known", "b..c"]
    assert path_segments("/a%3Bb") == ["a;b"]  # an encoded ';' is data to Tomcat and Spring too


@pytest.mark.parametrize(
    "path",
    [
        "/admin/x%2F..%2F..%2Fpublic/a",
        "/orders/%2e%2e/admin/x",
        "/a/%2E/b",
        "/a%5Cb",
        "/a\\b",
        "/a%00b",
        "/a%FFb",
        # The review's cases: nginx forwards the raw URI, so the upstream resolves these, not we.
        "/admin/secret/../../public/x",
        "/admin/secret#/../../public/x",
        "/admin/secret%23/../../public/x",
        "/a/./b",
        "/a/..",
        "/../x",
        "//admin",
        "/admin//x",
        "/a//",
        "/public/..;/admin",  # Tomcat reads '..;' as '..'
        "/admin;jsessionid=1",  # and serves this as /admin
        "/admin#frag",
    ],
)
def test_ambiguous_paths_are_refused(table: RouteTable[str], path: str) -> None:
    # Encoded separators and dots mean different things to different upstreams: refuse rather than guess.
    with pytest.raises(AmbiguousPath):
        table.match("GET", path)


def test_repeated_matches_are_remembered_bounded_and_still_exact() -> None:
    from sidecar import routes

    table = RouteTable([(r, r) for r in ROUTES])
    first = table.match("GET", "/orders/42/items/7")
    assert first is not None and dict(first.params) == {"id": "42", "item": "7"}
    assert table.match("GET", "/orders/42/items/7") is first  # the remembered answer, not a new walk
    other = table.match("GET", "/orders/43/items/7")
    assert other is not None and other.params["id"] == "43"  # keyed by the whole path
    assert table.match("PUT", "/orders/42/items/7").key == "ANY /orders/{proxy+}"  # and by the method
    for _ in range(2):  # an ambiguous path raises every time; nothing is remembered for it
        with pytest.raises(AmbiguousPath):
            table.match("GET", "/orders/a%2Fb")
    for i in range(routes._MEMO_SIZE + 10):
        assert table.match("GET", f"/admin/u{i}").key == "ANY /admin/{proxy+}"
    assert len(table._memo) <= routes._MEMO_SIZE


def test_long_paths_are_matched_but_not_remembered() -> None:
    from sidecar import routes

    table = RouteTable([(r, r) for r in ROUTES])
    long_path = "/admin/" + "x" * routes._MEMO_PATH_CHARS
    match = table.match("GET", long_path)
    assert match is not None and match.key == "ANY /admin/{proxy+}"
    assert match.params["proxy"] == "x" * routes._MEMO_PATH_CHARS
    assert table._memo == {}


@pytest.mark.parametrize(
    ("routes", "path", "expected"),
    [
        (["ANY /admin/{proxy+}", "$default"], "/admin/", "ANY /admin/{proxy+}"),  # the review's case: not $default
        (["GET /admin", "$default"], "/admin/", "GET /admin"),
        (["GET /orders/{id}", "$default"], "/orders/", "$default"),  # an empty {param} is no match
        (["GET /orders/{id}", "ANY /{proxy+}"], "/orders/7/", "GET /orders/{id}"),
        (["ANY /{proxy+}"], "/orders/", "ANY /{proxy+}"),
    ],
)
def test_a_trailing_slash_is_judged_by_both_readings(routes: list[str], path: str, expected: str) -> None:
    match = RouteTable([(r, r) for r in routes]).match("GET", path)
    assert match is not None and match.target == expected


def test_a_trailing_slash_that_names_two_routes_is_refused() -> None:
    # Flask serves `/orders/` as its own view; others as `/orders`: when the two readings pick different routes,
    # guessing either one could be a bypass.
    table = RouteTable([("GET /orders", "list"), ("ANY /orders/{proxy+}", "closed")])
    with pytest.raises(AmbiguousPath):
        table.match("GET", "/orders/")
    assert table.match("GET", "/orders") is not None


def test_policies_read_the_trailing_slash() -> None:
    from sidecar.routes import canonical_path

    assert canonical_path("/admin/") == "/admin/"
    assert canonical_path("/%61dmin/") == "/admin/"
    assert canonical_path("/") == "/"


def test_two_names_at_one_position_never_crash_a_match() -> None:
    # The final review: the deeper `{a}` shared the name of the first position's and its cleanup removed it.
    table = RouteTable([(r, r) for r in ("GET /{a}/x/y", "GET /{b}/{a}/z", "ANY /{proxy+}")])
    for path in ("/p/q/w", "/p/q/z", "/p/x/y", "/p/x/q"):
        match = table.match("GET", path)
        assert match is not None, path
    assert table.match("GET", "/p/q/w").target == "ANY /{proxy+}"  # type: ignore[union-attr]
