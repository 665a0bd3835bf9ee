"""`check --http` normalizes a request file's target as the shipped Envoy does (sidecar/proxy_path.py); the real
Envoy comparison is tests/e2e/test_check_parity_e2e.py, this is the table and the CLI's face of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.offline import InputError, parse_http_request
from sidecar.proxy_path import GRPC_MODE, HTTP_MODE, ProxyRejects, envoy_body, envoy_framing, envoy_path

FORWARDED = [
    ("/public/../admin/x", "/admin/x"),
    ("/a//b", "/a/b"),
    ("/a/%2E%2e/b", "/b"),
    ("/a\\b", "/a/b"),
    ("/%41dmin", "/Admin"),
    ("/a%7eb", "/a~b"),
    ("/a%3bb", "/a%3bb"),
    ("/a/..;x/b", "/b"),
    ("/a/.;/b", "/a/b"),
    ('/a"b', "/a%22b"),
    ("/a/b/..", "/a/"),
    ("/..", "/"),
    ("///", "//"),
    ("/a/..?x=/../y", "/?x=/../y"),
]
REFUSED = ["/a%2fb", "/a%5Cb", "/a#f", "/a?b#c", "/a%00", "/a b", "/\u00e9"]


@pytest.mark.parametrize(("target", "forwarded"), FORWARDED)
def test_the_path_envoy_forwards(target: str, forwarded: str) -> None:
    assert envoy_path(target) == forwarded


@pytest.mark.parametrize("target", REFUSED)
def test_targets_envoy_answers_itself(target: str) -> None:
    with pytest.raises(ProxyRejects):
        envoy_path(target)


CONFIG = """
authorizers: {open: {type: none}, closed: {type: deny}}
routes:
  - {match: "ANY /{proxy+}", authorizer: open}
  - {match: "ANY /admin/{proxy+}", authorizer: closed}
"""


def run(tmp_path: Path, target: str, *extra: str) -> int:
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "r.req").write_text(f"GET {target} HTTP/1.1\nHost: api.test\n\n", encoding="latin-1")
    args = ["check", "--config", str(tmp_path / "config.yaml"), "--http", str(tmp_path / "r.req"), "--output", "json"]
    return main([*args, *extra])


def test_check_judges_the_normalized_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(tmp_path, "/public/../admin/x")
    result = json.loads(capsys.readouterr().out)
    assert (code, result["decision"], result["reason"], result["request"]) == (1, "deny", "RouteDeny", "GET /admin/x")


def test_raw_path_judges_the_target_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(tmp_path, "/public/../admin/x", "--raw-path")
    result = json.loads(capsys.readouterr().out)
    assert (code, result["status"], result["reason"]) == (1, 400, "MalformedRequest")  # the sidecar's own rule


def test_a_target_envoy_refuses_is_its_400_with_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(tmp_path, "/public%2F..%2Fadmin")
    result = json.loads(capsys.readouterr().out)
    assert (code, result["status"], result["reason"]) == (1, 400, "MalformedRequest")
    assert "Envoy (as shipped) answers 400 itself" in str(result["message"])
    assert "escaped slash" in str(result["message"])


def test_bodies_as_envoy_sends_them() -> None:
    headers = {"transfer-encoding": "chunked"}
    assert envoy_body(b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n", headers, GRPC_MODE) == (
        b"helloabc",
        8,
    )
    assert headers == {"x-envoy-auth-partial-body": "false"}
    headers = {"content-length": "70000"}
    body, size = envoy_body(b"x" * 70000, headers, GRPC_MODE)
    assert (len(body), size, headers["x-envoy-auth-partial-body"]) == (65536, 70000, "true")
    assert envoy_body(b"", {}, GRPC_MODE) == (b"", 0)
    with pytest.raises(ProxyRejects) as refused:
        envoy_body(b"x" * (HTTP_MODE.max_bytes + 1), {}, HTTP_MODE)
    assert refused.value.status == 413


@pytest.mark.parametrize("chunked", [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhel", b"5\r\nhelloXX0\r\n\r\n", b"5"])
def test_a_malformed_chunked_body_is_envoys_400(chunked: bytes) -> None:
    with pytest.raises(ProxyRejects) as refused:
        envoy_body(chunked, {"transfer-encoding": "chunked"}, GRPC_MODE)
    assert refused.value.status == 400


@pytest.mark.parametrize("size", [b"0x5", b"+5", b"0_5", b" 5", b"5 ", b"-5", b"\xc2\xb2"])
def test_chunk_sizes_int_would_take_but_envoy_refuses(size: bytes) -> None:
    with pytest.raises(ProxyRejects):
        envoy_body(size + b"\r\nhello\r\n0\r\n\r\n", {"transfer-encoding": "chunked"}, GRPC_MODE)


@pytest.mark.parametrize("length", ["\u00b2", "5\u0660", "0x5", "-5", ""])
def test_a_content_length_of_anything_but_ascii_digits_is_envoys_400(length: str) -> None:
    with pytest.raises(ProxyRejects):
        envoy_framing({"host": "h", "content-length": length}, set())


def test_a_body_is_cut_to_its_content_length_and_a_short_one_is_an_input_error() -> None:
    body, size = envoy_body(b"helloEXTRA", {"content-length": "5"}, GRPC_MODE)
    assert (body, size) == (b"hello", 5)
    with pytest.raises(InputError, match="less than its Content-Length 9"):
        parse_http_request(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nhello")
