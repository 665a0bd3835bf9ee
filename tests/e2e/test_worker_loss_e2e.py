"""A worker killed under traffic costs no request: the shipped Envoy asks another worker again for a Check that
never reached one (`retry_policy` on the ext_authz gRPC service: refused connection or stream, reset before it
was sent), until its health check takes the dead endpoint out and the supervisor brings the worker back."""

from __future__ import annotations

import os
import signal
import tempfile
import urllib.request
from pathlib import Path

import httpx
import pytest

from benchmarks import procs, scenarios
from benchmarks.harness import authz_ports, envoy, sidecar
from sidecar.harness.envoy import free_port

pytestmark = pytest.mark.e2e


def envoy_stat(admin_port: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats?filter=^{name}$", timeout=5) as answer:
        text = answer.read().decode()
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines() if line.strip())


def test_a_killed_worker_costs_no_request() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        listen = free_port()
        fx = scenarios.Fixtures(Path(tmp), f"127.0.0.1:{listen}", cold_tokens=1)
        warm = scenarios.jwt_warm(fx)
        port = authz_ports()
        with sidecar(scenarios.sidecar_config([warm]), port, workers=2) as side, envoy(listen, port) as proxy:
            assert side.proc is not None
            workers = [w for w in procs.children(side.proc.pid) if "spawn_main" in procs.cmdline(w)]
            assert len(workers) == 2
            url = f"http://127.0.0.1:{listen}{warm.path}"
            headers = dict(warm.headers())
            with httpx.Client(timeout=5) as client:
                assert all(client.get(url, headers=headers).status_code == 200 for _ in range(20))  # both endpoints
                os.kill(workers[0], signal.SIGKILL)
                statuses = [client.get(url, headers=headers).status_code for _ in range(200)]
            retried = envoy_stat(proxy.admin_port, "cluster.authz.upstream_rq_retry")
    assert statuses == [200] * 200, {s: statuses.count(s) for s in set(statuses)}
    assert retried > 0  # the dead endpoint was still listed: Envoy asked again rather than failing closed
