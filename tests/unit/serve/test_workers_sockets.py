"""`serve --workers N` and its listeners: what a worker group cannot serve is refused at file:line before any
worker starts (grpc.aio cannot take the supervisor's shared Unix socket; per-worker gRPC ports must not run into
the HTTP or admin port), and the supervisor binds the shared Unix sockets once (`shared_sockets`)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.issues import ConfigError
from sidecar.serve.supervisor import check_workers, shared_sockets

ROUTES = "authorizers: {open: {type: none}}\nroutes: [{match: 'GET /open', authorizer: open}]\n"


def config_at(tmp_path: Path, listen: str, server: str = "{}") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"listen:\n{listen}server: {server}\n{ROUTES}")
    return path


def refusal(path: Path, workers: int) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as refused:
        check_workers(load_config(path), workers)
    return [(i.field, i.line, i.message) for i in refused.value.issues]


def test_grpcio_cannot_share_a_unix_socket(tmp_path: Path) -> None:
    path = config_at(tmp_path, f"  grpc: 'unix:{tmp_path}/g.sock'\n", "{grpc_engine: grpcio}")
    check_workers(load_config(path), 1)
    [(field, line, message)] = refusal(path, 2)
    assert (field, line) == ("listen.grpc", 2) and "grpcio engine cannot serve" in message


def test_grpcio_serves_a_socket_per_worker(tmp_path: Path) -> None:
    listen = f"  grpc: 'unix:{tmp_path}/g-{{worker}}.sock'\n  grpc_per_worker: true\n"
    check_workers(load_config(config_at(tmp_path, listen, "{grpc_engine: grpcio}")), 4)


def test_per_worker_ports_must_not_take_another_listeners(tmp_path: Path) -> None:
    listen = "  grpc: 127.0.0.1:9191\n  grpc_per_worker: true\n  http: 127.0.0.1:9192\n  admin: 127.0.0.1:9195\n"
    path = config_at(tmp_path, listen)
    check_workers(load_config(path), 1)
    [(field, line, message)] = refusal(path, 3)
    assert (field, line) == ("listen.http", 4) and "takes listen.http's" in message
    assert [f for f, _, _ in refusal(path, 5)] == ["listen.http", "listen.admin"]


def test_the_supervisor_binds_shared_unix_sockets_once(tmp_path: Path) -> None:
    listen = f"  grpc: 'unix:{tmp_path}/g-{{worker}}.sock'\n  grpc_per_worker: true\n  http: 'unix:{tmp_path}/h.sock'\n"
    bound = shared_sockets(load_config(config_at(tmp_path, listen)))
    try:
        assert list(bound) == ["http"]  # the per-worker gRPC sockets are each worker's own
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(tmp_path / "h.sock"))
    finally:
        for b in bound.values():
            b.sock.close()
            b.file.remove()
    assert not (tmp_path / "h.sock").exists()


def test_a_live_shared_socket_is_an_error_naming_it(tmp_path: Path) -> None:
    listen = f"  grpc: 'unix:{tmp_path}/g.sock'\n  http: 'unix:{tmp_path}/h.sock'\n"
    config = load_config(config_at(tmp_path, listen))
    first = shared_sockets(config)
    try:
        with pytest.raises(OSError, match=r"cannot listen on unix:.*/h.sock \(http\): .*in use"):
            shared_sockets(config)
        for name in ("g.sock", "h.sock"):
            assert (tmp_path / name).exists()  # the first group's, untouched by the failed second
    finally:
        for b in first.values():
            b.sock.close()
            b.file.remove()
