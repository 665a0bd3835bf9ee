"""Config validation: every mistake names file, line and field; good configs compile."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, default_config, load_config, parse_config
from sidecar.runtime import compile_runtime

GOOD = """\
listen: {grpc: "127.0.0.1:9191", admin: "127.0.0.1:9190"}
api: {id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}
authorizers:
  open: {type: none}
  closed: {type: deny}
routes:
  - {match: "GET /orders/{id}", authorizer: open, scopes: [orders.read]}
  - {match: "ANY /admin/{proxy+}", authorizer: closed}
  - {match: "$default", authorizer: closed}
"""


def issues_of(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "cfg.yaml")
    return [(i.line, i.field, i.message) for i in caught.value.issues]


def test_good_config_compiles() -> None:
    config = parse_config(GOOD, "cfg.yaml")
    runtime = compile_runtime(config)
    assert runtime.routes.match("GET", "/orders/1") is not None
    assert config.api.account == "123456789012"
    assert len(runtime.version) == 16


def test_default_config_is_valid() -> None:
    config = default_config()
    assert config.listen.grpc == "127.0.0.1:9191"
    assert config.listen.admin == "127.0.0.1:9190"
    assert config.cache.redis is None
    compile_runtime(config)


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("listen: {grpc: nope}\n", 1, "listen.grpc", "HOST:PORT"),
        ("api:\n  account: '123'\n", 2, "api.account", "12 digits"),
        ("apii: {}\n", 1, "apii", "unknown key"),
        ("authorizers:\n  a: {type: nonesuch}\n", 2, "authorizers.a.type", "unknown authorizer type"),
        ("authorizers:\n  a:\n    type: deny\n    colour: red\n", 4, "authorizers.a.colour", "unknown key"),
        (
            "authorizers:\n  a: {type: none}\nroutes:\n  - {match: 'GET /x', authorizer: b}\n",
            4,
            "routes[0].authorizer",
            "unknown authorizer 'b'",
        ),
        (
            "authorizers:\n  a: {type: none}\nroutes:\n  - match: 'GIT /x'\n    authorizer: a\n",
            4,
            "routes[0].match",
            "unknown method",
        ),
        (
            "authorizers:\n  a: {type: none}\nroutes:\n  - {match: 'GET /x', authorizer: a}\n"
            "  - {match: 'GET /x/', authorizer: a}\n",
            5,
            "routes[1].match",
            "duplicates routes[0]",
        ),
        ("routes:\n  - {authorizer: a}\n", 2, "routes[0].match", "missing required key"),
        ("cache: {local: {max_entries: -1}}\n", 1, "cache.local.max_entries", "must be at least 0"),
        ("plugins: [no.such.module]\n", 1, "plugins[0]", "cannot import plugin"),
        (
            "listen: {http: '127.0.0.1:9192'}\nupstream_headers:\n  principal: remote-user\n",
            3,
            "upstream_headers.principal",
            "must start with 'x-'",
        ),
        (
            'authorizers:\n  a: {type: none}\nupstream_headers:\n  principal: "x-who\\udc80"\n',
            4,
            "upstream_headers.principal",
            "unpaired surrogate",
        ),
    ],
)
def test_errors_name_line_and_field(text: str, line: int, field: str, message: str) -> None:
    found = issues_of(text)
    assert any(i[0] == line and i[1] == field and message in i[2] for i in found), found


def test_yaml_syntax_error_has_line() -> None:
    found = issues_of("listen:\n  grpc: [unclosed\n")
    assert found[0][0] >= 2
    assert "invalid YAML" in found[0][2]


def test_all_issues_reported_at_once() -> None:
    found = issues_of("listen: {grpc: bad}\napi: {account: x}\n")
    assert {f for _, f, _ in found} == {"listen.grpc", "api.account"}


def test_error_text_is_file_line_col(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("api:\n  stage: 'no spaces allowed'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:2:10: api.stage: ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_top_level_must_be_mapping() -> None:
    assert "mapping" in issues_of("- a\n- b\n")[0][2]


def test_shipped_configs_validate(repo_root: Path) -> None:
    shipped = sorted((repo_root / "deploy" / "config").glob("*.yaml"))
    assert shipped
    for path in shipped:
        compile_runtime(load_config(path))


def test_a_head_route_is_refused_since_head_is_judged_as_get() -> None:
    with pytest.raises(ConfigError, match="HEAD is judged as GET"):
        parse_config("authorizers: {open: {type: none}}\nroutes:\n  - {match: 'HEAD /x', authorizer: open}\n", "c.yaml")
