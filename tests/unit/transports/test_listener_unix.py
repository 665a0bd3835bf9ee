"""Unix domain socket listeners (`listen.grpc` / `listen.http` as `unix:/path`): a stale file left by a crash is
replaced, a live socket or a file that is not a socket never is; the socket gets `listen.socket_mode`; the file
goes at shutdown unless another process has put its own there; bad paths are config errors at file:line; and a
real sidecar serves gRPC and HTTP on sockets, one process and `--workers 2`, removing its files when it stops."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from sidecar.config import load_config
from sidecar.serve.server import Sidecar
from sidecar.transports.listener import (
    SocketInUse,
    bind_listener,
    remove_stale_socket,
    socket_file,
    worker_address,
)
from tests.unit.validate_testkit import run_validate

CHECK = "/envoy.service.auth.v3.Authorization/Check"


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a killed process leaves it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "grpc.sock"
    stale_socket(path)
    bound = bind_listener(f"unix:{path}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # the new one listens
    finally:
        bound.sock.close()
        bound.file.remove()
    assert not path.exists()


def test_a_live_socket_is_never_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "grpc.sock"
    live = bind_listener(f"unix:{path}")
    try:
        with pytest.raises(SocketInUse, match="in use"):
            bind_listener(f"unix:{path}")
        assert stat.S_ISSOCK(path.lstat().st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # still the first listener's
    finally:
        live.sock.close()
        live.file.remove()


def test_a_file_that_is_not_a_socket_is_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("precious\n")
    with pytest.raises(SocketInUse, match="not a socket"):
        remove_stale_socket(str(path))
    assert path.read_text() == "precious\n"


def test_the_socket_gets_the_configured_mode(tmp_path: Path) -> None:
    old = os.umask(0)  # whatever the umask, the mode is the setting's
    try:
        bound = bind_listener(f"unix:{tmp_path / 'a.sock'}", mode=0o600)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE((tmp_path / "a.sock").stat().st_mode) == 0o600
    finally:
        bound.sock.close()
        bound.file.remove()


def test_a_replaced_file_is_left_to_its_new_owner(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    first = bind_listener(f"unix:{path}")
    second = bind_listener(f"unix:{tmp_path / 'b.sock'}")
    os.rename(tmp_path / "b.sock", path)  # another process's socket put in its place
    second = replace(second, file=socket_file(str(path)))
    try:
        first.sock.close()
        first.file.remove()
        assert path.exists()
    finally:
        second.sock.close()
        second.file.remove()
    assert not path.exists()


def test_worker_addresses() -> None:
    assert worker_address("127.0.0.1:9191", 0) == "127.0.0.1:9191"
    assert worker_address("127.0.0.1:9191", 1) == "127.0.0.1:9192"
    assert worker_address("[::1]:9191", 2) == "[::1]:9193"
    assert worker_address("unix:/run/a/grpc-{worker}.sock", 1) == "unix:/run/a/grpc-1.sock"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen: {grpc: 'unix:grpc.sock'}\n", "DIR/cfg.yaml:1:16: listen.grpc: a Unix socket path must be absolute"),
        ("listen: {http: 'unix:/run/a/{worker}.sock'}\n", "DIR/cfg.yaml:1:16: listen.http: {worker} names each"),
        ("listen: {grpc: 'unix:/run/a.sock', grpc_per_worker: true}\n", "DIR/cfg.yaml:1:16: listen.grpc: with grpc_"),
        ("listen: {grpc: '127.0.0.1:{worker}'}\n", "DIR/cfg.yaml:1:16: listen.grpc: {worker} belongs in a Unix"),
        (f"listen: {{grpc: 'unix:/{'a' * 120}'}}\n", "DIR/cfg.yaml:1:16: listen.grpc: a Unix socket path holds"),
        ("listen: {socket_mode: rw}\n", "DIR/cfg.yaml:1:23: listen.socket_mode: expected an octal mode"),
        ("listen: {socket_mode: 01777}\n", "DIR/cfg.yaml:1:23: listen.socket_mode:"),
    ],
)
def test_bad_socket_settings_are_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    code, lines = run_validate(tmp_path, capsys, text)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_an_octal_mode_reads_either_way(tmp_path: Path) -> None:
    for written in ("0640", "'0640'", "'640'"):
        path = tmp_path / "cfg.yaml"
        path.write_text(f"listen: {{socket_mode: {written}}}\n")
        assert load_config(path).listen.socket_mode == 0o640, written


def check_over(path: Path) -> int:
    """One ext_authz Check over the Unix socket at `path`: its gRPC status code."""
    with grpc.insecure_channel(f"unix:{path}") as channel:
        call = channel.unary_unary(CHECK, request_serializer=None, response_deserializer=CheckResponse.FromString)
        request = CheckRequest()
        request.attributes.request.http.method, request.attributes.request.http.path = "GET", "/open"
        return int(call(request.SerializeToString(), timeout=5).status.code)


@pytest.mark.parametrize("engine", ["lean", "grpcio"])
async def test_one_process_serves_on_sockets_and_removes_them(tmp_path: Path, engine: str) -> None:
    grpc_path, http_path = tmp_path / "grpc.sock", tmp_path / "http.sock"
    stale_socket(grpc_path)  # left by a crash: replaced
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"listen: {{grpc: 'unix:{grpc_path}', http: 'unix:{http_path}', admin: null, socket_mode: 0640}}\n"
        f"server: {{grpc_engine: {engine}, watch_config: false, grace_period: 1}}\n"
        "authorizers: {open: {type: none}}\nroutes: [{match: 'GET /open', authorizer: open}]\n"
    )
    sidecar = Sidecar(load_config(config), config)
    await sidecar.start()
    try:
        for path in (grpc_path, http_path):
            assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert await asyncio.to_thread(check_over, grpc_path) == 0
        reader, writer = await asyncio.open_unix_connection(str(http_path))
        writer.write(b"GET /open HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await sidecar.drain_and_stop()
    assert not grpc_path.exists() and not http_path.exists()
