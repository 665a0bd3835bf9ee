"""Fixtures that run the real thing on loopback: the sidecar as a child process, a real Envoy, an echo upstream.

Use `authz_stack(config_text, **envoy_options)`: it moves the config's listeners to free ports, starts the sidecar
(waiting for /readyz), the echo upstream and Envoy (waiting for its /ready), and returns a `Stack` whose `client`
sends requests through Envoy. Everything started is stopped at the end of the test (`module_authz_stack`: of the
module, for tests that share one stack).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import httpx
import pytest

from sidecar.harness.demo import EchoUpstream, SidecarProcess, config_with_ports
from sidecar.harness.envoy import EnvoyPorts, EnvoyProcess, free_port, render_envoy_config
from tests.conftest import REPO


@dataclass
class Stack:
    """A running sidecar + Envoy + upstream (Envoy asks over gRPC, or over HTTP with template envoy-http.yaml)."""

    sidecar: SidecarProcess
    envoy: EnvoyProcess
    upstream: EchoUpstream
    ports: EnvoyPorts
    grpc_port: int
    admin_port: int
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.listen_port}"

    @property
    def client(self) -> httpx.Client:
        if not self.clients:
            self.clients.append(httpx.Client(base_url=self.base_url, timeout=10.0))
        return self.clients[0]

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def logs(self) -> str:
        return f"--- sidecar ---\n{self.sidecar.log()}\n--- envoy ---\n{self.envoy.log()}"


StackFactory = Callable[..., Stack]


def _starter(stack: ExitStack) -> StackFactory:
    """A `StackFactory` whose processes `stack` stops when it closes."""

    def start(
        config_text: str,
        template: str = "envoy.yaml",
        sidecar_args: tuple[str, ...] = (),
        envoy_edit: Callable[[str], str] | None = None,
        log_level: str | None = None,
        envoy_render: Callable[[EnvoyPorts, str], str] | None = None,
        **envoy_options: object,
    ) -> Stack:
        grpc_port, admin_port = free_port(), free_port()
        http_port = free_port() if template == "envoy-http.yaml" else None
        sidecar = SidecarProcess(
            config_with_ports(config_text, grpc_port, admin_port, http_port),
            admin_port,
            sidecar_args,
            env={"PYTHONPATH": str(REPO)},  # so `plugins:` can name test modules
            log_level=log_level,
        )
        stack.callback(sidecar.cleanup)
        stack.callback(sidecar.stop)
        sidecar.start()
        upstream = stack.enter_context(EchoUpstream())
        ports = replace(
            EnvoyPorts(),
            listen_port=free_port(),
            authz_port=http_port or grpc_port,
            upstream_port=upstream.port,
            admin_port=free_port(),
            **envoy_options,  # type: ignore[arg-type]
        )
        # `envoy_render`: another rendering of the template for these ports (`envoy-config`'s).
        envoy_text = (envoy_render or render_envoy_config)(ports, template)
        if envoy_edit is not None:  # a documented variation of the shipped file (e.g. normalization off)
            envoy_text = envoy_edit(envoy_text)
        envoy = stack.enter_context(EnvoyProcess(envoy_text, ports.admin_port))
        result = Stack(sidecar, envoy, upstream, ports, grpc_port, admin_port)
        stack.callback(lambda: [c.close() for c in result.clients])
        return result

    return start


@pytest.fixture
def authz_stack() -> Iterator[StackFactory]:
    """Stacks stopped at the end of the test."""
    with ExitStack() as stack:
        yield _starter(stack)


@pytest.fixture(scope="module")
def module_authz_stack() -> Iterator[StackFactory]:
    """Stacks stopped at the end of the module: for tests that can share one (the same config, and nothing one
    test leaves behind changes what another sees). Each start costs seconds; a module of such tests pays once."""
    with ExitStack() as stack:
        yield _starter(stack)


@pytest.fixture(scope="module")
def shared_authz_stack(module_authz_stack: StackFactory) -> StackFactory:
    """`authz_stack`, but a call with the same arguments as an earlier one in the module returns that stack
    (callables compared by identity): parametrized tests that start the same stack share it. Only for tests
    that leave nothing behind that changes another's answers (no counters, no replay guard, no reload)."""
    started: dict[str, tuple[Stack, dict[str, object]]] = {}

    def start(config_text: str, template: str = "envoy.yaml", **options: object) -> Stack:
        named = sorted((k, id(v) if callable(v) else v) for k, v in options.items())
        key = repr((config_text, template, named))
        if key not in started:  # the options kept with the stack: a callable's id is not reused while it lives
            started[key] = (module_authz_stack(config_text, template=template, **options), options)
        return started[key][0]

    return start


def metric(text: str, name: str, /, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent); `name` positional, as gates label `name`."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        sample, _, label_text = series.partition("{")
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if sample == name and got == want:
            return float(value)
    return 0.0
