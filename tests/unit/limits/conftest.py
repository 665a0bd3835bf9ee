"""Fixtures of the limits tests: a real Redis Cluster, started once per session (it takes a second or two)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.limits.cluster_testkit import RedisClusterServers


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
