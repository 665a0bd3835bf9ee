"""A real Redis Cluster on loopback: three redis-server processes in cluster mode, the 16384 slots spread over them
by `redis-cli --cluster create`, no replicas. The `redis_cluster` fixture (conftest.py) starts one per session."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sidecar.harness.envoy import free_port
from tests.conftest import RedisServer


class RedisClusterServers:
    """Three cluster-mode nodes; `url` names one (a cluster client finds the others)."""

    def __init__(self, tmp: Path, size: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for index in range(size):
            folder = tmp / f"node{index}"
            folder.mkdir(parents=True, exist_ok=True)
            options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            # the bus port is named: the default (port + 10000) can be above 65535 for an ephemeral port
            self.nodes.append(RedisServer(folder, (*options, "--cluster-port", str(free_port()))))

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed (it comes with redis-server: scripts/ensure-system-deps.sh)")
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed: {created.stdout.decode()[-500:]}")
        self._wait_until_ok(cli)
        return self

    def _wait_until_ok(self, cli: str) -> None:
        """Until every node reports `cluster_state:ok` (the nodes agree on the slots a moment after create)."""
        deadline = time.monotonic() + 20
        for node in self.nodes:
            while (
                b"cluster_state:ok"
                not in subprocess.run(
                    [cli, "-p", str(node.port), "cluster", "info"], capture_output=True, timeout=10, check=False
                ).stdout
            ):
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("the Redis Cluster never reached cluster_state:ok")
                time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
