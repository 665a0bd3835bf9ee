"""`type: lambda` settings: every mistake is a located config error from `authz-sidecar validate`, in plain words."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.authorizers.custom.invoke import HandlerImportError, resolve_handler
from tests.unit.validate_testkit import run_validate

from . import handlers
from .lambda_testkit import API, HANDLERS


def validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str) -> tuple[int, list[str]]:
    text = (
        f"{API}authorizers:\n  auth:\n    type: lambda\n{settings}routes:\n  - {{match: 'GET /x', authorizer: auth}}\n"
    )
    return run_validate(tmp_path, capsys, text)


CASES = [
    ("    handler: no_colon_here\n", 9, "handler", "expected 'package.module:function'"),
    ("    handler: tests.unit.no_such_module:handler\n", 9, "handler", "no module named 'tests.unit.no_such_module'"),
    (f"    handler: {HANDLERS}:no_such_function\n", 9, "handler", "has no attribute 'no_such_function'"),
    (f"    handler: {HANDLERS}:NOT_CALLABLE\n", 9, "handler", "int is not callable"),
    (f"    handler: {HANDLERS}:token_handler\n    simple_responses: true\n", 10, "simple_responses", "http-2.0"),
    (
        f"    handler: {HANDLERS}:token_handler\n    event_format: token\n"
        "    identity_sources: [method.request.header.A, method.request.header.B]\n",
        11,
        "identity_sources",
        "event_format: token takes exactly one identity source, a header",
    ),
    (
        f"    handler: {HANDLERS}:token_handler\n    event_format: token\n"
        "    identity_sources: [method.request.querystring.token]\n",
        11,
        "identity_sources",
        "event_format: token takes exactly one identity source, a header",
    ),
    (f"    handler: {HANDLERS}:token_handler\n    target: grpc://127.0.0.1:9300\n", 10, "target", "not both"),
    ("    event_format: token\n", 8, "auth", "set handler (package.module:function, in process) or target"),
    (
        f"    handler: {HANDLERS}:token_handler\n    identity_sources: [header.Authorization]\n",
        10,
        "identity_sources",
        "expected method.request.header.NAME",
    ),
    (
        f"    handler: {HANDLERS}:token_handler\n    event_format: token\n    token_validation: '^Bearer [a-z'\n",
        11,
        "token_validation",
        "not a regular expression",
    ),
    (f"    handler: {HANDLERS}:token_handler\n    token_validation: '.*'\n", 10, "token_validation", "token only"),
    (f"    handler: {HANDLERS}:token_handler\n    timeout: 0\n", 10, "timeout", "greater than 0"),
    (f"    handler: {HANDLERS}:token_handler\n    timeout: 31\n", 10, "timeout", "at most 30"),
    (f"    handler: {HANDLERS}:token_handler\n    result_ttl: 3601\n", 10, "result_ttl", "at most 3600"),
    (f"    handler: {HANDLERS}:token_handler\n    cache_key: route\n", 10, "cache_key", "'identity+route'"),
    (f"    handler: {HANDLERS}:token_handler\n    target_typo: 1\n", 10, "target_typo", "did you mean `target`"),
    ("    target: http://127.0.0.1:9300\n", 9, "target", "expected grpc://HOST:PORT"),
    (
        f"    handler: {HANDLERS}:token_handler\n    context_to_headers: {{tenant: 'bad header'}}\n",
        10,
        "context_to_headers",
        "is not a header name",
    ),
]


@pytest.mark.parametrize(("settings", "line", "field", "words"), CASES)
def test_mistakes_are_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, line: int, field: str, words: str
) -> None:
    code, errors = validate(tmp_path, capsys, settings)
    assert code != 0
    found = [e for e in errors if f"cfg.yaml:{line}:" in e and field in e]
    assert found, errors
    assert any(words in e for e in found), errors
    assert not any("Value error" in e for e in errors)


RESERVED = [
    ("x-authz-principal", "the sidecar's own identity header"),
    ("X-Authz-Authorizer", "the sidecar's own identity header"),
    ("x-authz-route", "the sidecar's own identity header"),
    ("connection", "hop-by-hop"),
    ("keep-alive", "hop-by-hop"),
    ("te", "hop-by-hop"),
    ("trailer", "hop-by-hop"),
    ("transfer-encoding", "hop-by-hop"),
    ("upgrade", "hop-by-hop"),
    ("proxy-authorization", "hop-by-hop"),
    ("host", "the request's own"),
    ("':authority'", "pseudo-header"),
    ("x-envoy-original-path", "Envoy's"),
]


@pytest.mark.parametrize(("header", "words"), RESERVED)
def test_context_headers_may_not_name_headers_the_sidecar_or_the_proxy_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], header: str, words: str
) -> None:
    settings = f"    handler: {HANDLERS}:token_handler\n    context_to_headers:\n      tenant: {header}\n"
    code, errors = validate(tmp_path, capsys, settings)
    assert code != 0
    found = [e for e in errors if "cfg.yaml:11:" in e and "context_to_headers" in e]
    assert found and any(words in e for e in found), errors


def test_context_headers_may_not_name_the_configured_identity_headers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        f"{API}upstream_headers: {{principal: x-caller, route: x-matched}}\nauthorizers:\n  auth:\n"
        f"    type: lambda\n    handler: {HANDLERS}:token_handler\n    context_to_headers:\n      tenant: x-caller\n"
        "      level: x-matched\n      fine: x-tenant\nroutes:\n  - {match: 'GET /x', authorizer: auth}\n"
    )
    code, errors = run_validate(tmp_path, capsys, text)
    assert code != 0
    assert any("cfg.yaml:12:" in e and "upstream_headers.principal" in e for e in errors), errors
    assert any("cfg.yaml:13:" in e and "upstream_headers.route" in e for e in errors), errors
    assert not any("cfg.yaml:14:" in e for e in errors), errors


def test_a_valid_config_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = (
        f"    handler: {HANDLERS}:request_handler\n    event_format: http-2.0\n    simple_responses: true\n"
        "    identity_sources: '$request.header.Authorization, $context.routeKey'\n"
        "    stage_variables: {env: test}\n    context_to_headers: {tenant: X-Tenant}\n"
    )
    code, errors = validate(tmp_path, capsys, settings)
    assert code == 0, errors


def test_a_module_that_fails_to_import_is_named_with_its_exception_type() -> None:
    with pytest.raises(HandlerImportError, match="raised ZeroDivisionError"):
        resolve_handler("tests.unit.authorizers.custom.broken_module:handler")
    assert resolve_handler(f"{HANDLERS}:token_handler") is handlers.token_handler
