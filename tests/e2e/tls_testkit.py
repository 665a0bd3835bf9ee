"""Real TLS in front of the sidecar: Envoy's TLS variant (`sidecar.harness.envoy.DownstreamTls`) rendered with
certificates made now (`certs_testkit.Pki` on the real clock: Envoy and the client check validity at the real
time), and TLS clients presenting a client certificate, with its chain, or none.

`TlsStack` runs the sidecar as a child process, the echo upstream and one or more Envoys in front of it, all on
127.0.0.1 and free ports; everything started is stopped when its `ExitStack` closes. `with_tls_files` points a
shipped file's `/etc/envoy/tls/` paths at files made here, so `envoy --mode validate` can read them.
"""

from __future__ import annotations

import ssl
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sidecar.harness.demo import EchoUpstream, SidecarProcess, config_with_ports
from sidecar.harness.envoy import TLS_DIR, DownstreamTls, EnvoyPorts, EnvoyProcess, free_port, render_envoy_config
from tests.conftest import REPO
from tests.unit.authorizers.mtls.certs_testkit import Issued, Pki, write_truststore


def server_tls(pki: Pki, directory: Path, **options: object) -> DownstreamTls:
    """The TLS variant with a server certificate for 127.0.0.1/localhost from `pki` (and its intermediate)."""
    cert, key = pki.server().write(directory, "envoy-server", pki.intermediate)
    return DownstreamTls(certificate_chain=str(cert), private_key=str(key), **options)  # type: ignore[arg-type]


def with_tls_files(text: str, directory: Path) -> str:
    """A shipped Envoy file's text with its TLS files (`TLS_DIR`) made in `directory` (self-contained: a fresh
    `Pki`): what `envoy --mode validate` needs, since it loads every certificate it is given."""
    if TLS_DIR not in text:
        return text
    pki = Pki("Validate")
    pki.server().write(directory, "server", pki.intermediate)
    (directory / "server.crt").write_text((directory / "server.pem").read_text())
    write_truststore(directory / "clients-ca.crt", pki.root)
    return text.replace(f"{TLS_DIR}/", f"{directory}/")


@dataclass
class TlsStack:
    """A sidecar (child process) with an upstream and the Envoys started in front of it by `envoy`."""

    pki: Pki
    directory: Path
    exits: ExitStack
    sidecar: SidecarProcess
    upstream: EchoUpstream
    authz_port: int
    admin_port: int
    envoys: list[EnvoyProcess] = field(default_factory=list)
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def envoy(self, template: str = "envoy-mtls.yaml", **tls: object) -> EnvoyPorts:
        """Start an Envoy rendered from `template` with the TLS variant (`tls`: `DownstreamTls` fields) in front
        of the sidecar; its ports (the private listener's is free too)."""
        ports = EnvoyPorts(
            listen_port=free_port(),
            private_port=free_port(),
            authz_port=self.authz_port,
            upstream_port=self.upstream.port,
            admin_port=free_port(),
        )
        variant = server_tls(self.pki, self.directory, **tls)
        envoy = EnvoyProcess(render_envoy_config(ports, template, variant), ports.admin_port)
        self.envoys.append(self.exits.enter_context(envoy))
        return ports

    def client(self, port: int, cert: Issued | None = None, *chain: Issued) -> httpx.Client:
        """An HTTPS client of `port` trusting the server's root, presenting `cert` and `chain` (or no certificate)."""
        context = ssl.create_default_context(cafile=str(self.directory / "server-root.pem"))
        if cert is not None:
            cert_file, key_file = cert.write(self.directory, f"client-{cert.sha256[:16]}-{len(chain)}", *chain)
            context.load_cert_chain(cert_file, key_file)
        client = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context, timeout=10.0)
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()

    def logs(self) -> str:
        envoys = "\n".join(f"--- envoy ---\n{envoy.log()}" for envoy in self.envoys)
        return f"--- sidecar ---\n{self.sidecar.log()}\n{envoys}"


def start_tls_stack(exits: ExitStack, pki: Pki, directory: Path, config_text: str, http: bool = False) -> TlsStack:
    """The sidecar on `config_text` (its listeners moved to free ports; `http`: HTTP mode's listener, which the
    stack's Envoys then ask), ready, and the upstream; start Envoys with `TlsStack.envoy`."""
    write_truststore(directory / "server-root.pem", pki.root)
    grpc_port, admin_port = free_port(), free_port()
    http_port = free_port() if http else None
    sidecar = SidecarProcess(
        config_with_ports(config_text, grpc_port, admin_port, http_port),
        admin_port,
        env={"PYTHONPATH": str(REPO)},  # so `plugins:` can name test modules
    )
    exits.callback(sidecar.cleanup)
    exits.callback(sidecar.stop)
    sidecar.start()
    upstream = exits.enter_context(EchoUpstream())
    stack = TlsStack(pki, directory, exits, sidecar, upstream, http_port or grpc_port, admin_port)
    exits.callback(stack.close_clients)
    return stack
