"""The transports' table (`sidecar.transports.TRANSPORTS`): every entry resolves to a `start` of the same shape,
and every `server.grpc_engine` value has one."""

from __future__ import annotations

import inspect
import typing

import pytest

from sidecar.settings import ServerSettings
from sidecar.transports import TRANSPORTS, load


@pytest.mark.parametrize("name", sorted(TRANSPORTS))
def test_every_entry_is_a_start(name: str) -> None:
    start = load(name)
    assert inspect.iscoroutinefunction(start)
    parameters = inspect.signature(start).parameters
    assert list(parameters) == ["address", "checker", "config", "reuse_port", "sock"]
    assert parameters["reuse_port"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["sock"].kind is inspect.Parameter.KEYWORD_ONLY


def test_every_grpc_engine_has_an_entry() -> None:
    engines = typing.get_args(typing.get_type_hints(ServerSettings)["grpc_engine"])
    assert set(engines) | {"http"} == set(TRANSPORTS)
