"""Envoy asking the sidecar over Unix domain sockets, as `deploy/envoy/envoy-uds.yaml` does: a real Envoy and
`authz-sidecar serve --workers 2`, gRPC on a socket per worker (`listen.grpc_per_worker`, one Envoy endpoint each)
and HTTP mode on one socket the supervisor binds and every worker accepts from. Both decide (an allowed route
reaches the upstream with the sidecar's identity headers, a closed one is denied with its reason); Envoy's
Checks reach both gRPC workers; the sockets are 0660; the files are gone once the sidecar stops."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import httpx

from sidecar.harness.demo import EchoUpstream, SidecarProcess
from sidecar.harness.envoy import SHIPPED, EnvoyPorts, EnvoyProcess, free_port, render_envoy_config

REQUESTS = 40

CONFIG = """\
listen:
  grpc: "unix:{dir}/grpc-{{worker}}.sock"
  grpc_per_worker: true
  http: "unix:{dir}/http.sock"
  admin: "127.0.0.1:{admin}"
server: {{watch_config: false, grace_period: 1}}
http: {{path_prefix: /authz}}
authorizers:
  open: {{type: none}}
  closed: {{type: deny, message: closed}}
routes:
  - {{match: "GET /open", authorizer: open}}
  - {{match: "GET /closed", authorizer: closed}}
"""


def envoy_ports(upstream: int, socket: str, template: str) -> EnvoyPorts:
    """The shipped file's values for `template`, on loopback, asking the sidecar on `socket`."""
    shipped = SHIPPED["envoy-uds.yaml" if template == "envoy.yaml" else template]
    return replace(
        shipped,
        listen_host="127.0.0.1",
        listen_port=free_port(),
        admin_port=free_port(),
        upstream_port=upstream,
        authz_socket=socket,
    )


def host_requests(envoy: EnvoyProcess) -> dict[str, int]:
    """Requests Envoy sent to each authz endpoint (admin /clusters: `authz::<address>::rq_total::<n>`)."""
    with httpx.Client() as client:
        text = client.get(f"http://127.0.0.1:{envoy.admin_port}/clusters", timeout=5).text
    counts = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "authz" and parts[2] == "rq_total":
            counts[parts[1]] = int(parts[3])
    return counts


def decide_through(envoy_port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{envoy_port}", timeout=5) as client:
        for _ in range(REQUESTS):
            response = client.get("/open")
            assert response.status_code == 200, response.text
            assert response.json()["headers"]["x-authz-authorizer"] == "open"
        closed = client.get("/closed")
        assert closed.status_code == 403 and "closed" in closed.text


def test_envoy_asks_two_workers_over_unix_sockets(tmp_path: Path) -> None:
    sockets = tmp_path / "run"
    sockets.mkdir(mode=0o750)
    admin = free_port()
    grpc_files = [sockets / "grpc-0.sock", sockets / "grpc-1.sock"]
    with (
        EchoUpstream() as upstream,
        SidecarProcess(CONFIG.format(dir=sockets, admin=admin), admin, ("--workers", "2")) as sidecar,
    ):
        for path in (*grpc_files, sockets / "http.sock"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o660, path
        grpc_ports = envoy_ports(upstream.port, f"{sockets}/grpc-{{worker}}.sock", "envoy.yaml")
        http_ports = envoy_ports(upstream.port, f"{sockets}/http.sock", "envoy-http.yaml")
        with (
            EnvoyProcess(render_envoy_config(grpc_ports, "envoy-uds.yaml"), grpc_ports.admin_port) as grpc_envoy,
            EnvoyProcess(render_envoy_config(http_ports, "envoy-http.yaml"), http_ports.admin_port),
        ):
            decide_through(grpc_ports.listen_port)
            decide_through(http_ports.listen_port)
            counts = host_requests(grpc_envoy)
        assert set(counts) == {str(p) for p in grpc_files}, counts
        assert all(n >= REQUESTS // 4 for n in counts.values()), counts  # round robin: about half each
    assert sidecar.proc is not None and sidecar.proc.returncode == 0, sidecar.log()
    assert list(sockets.iterdir()) == []
