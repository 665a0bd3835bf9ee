"""Rendering the Helm chart and reading what it rendered (tests of deploy/helm, deploy/kubernetes, deploy/istio).

Every tool is real and installed by `make test` (scripts/ensure-kube-tools.sh, the [test] extra); a missing one
fails the test that needs it with the command that installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from sidecar.harness.kubernetes import CHART, DEPLOY, helm_binary, helm_template
from tests.conftest import REPO

CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
KUBERNETES_VERSIONS = ("1.29.0", "1.35.0")
"""The oldest release the chart supports (native sidecars) and the newest the bundled helm/kubectl know."""

EXAMPLE = DEPLOY / "helm" / "examples" / "my-app"
"""A workload chart of its own that adds the sidecars with the chart's library templates (sidecar mode)."""

CRDS = REPO / "tests" / "data" / "crds"
SECRETS_DIR = "/etc/authz-sidecar/secrets"


def tool(name: str, *where: Path) -> str:
    """A tool's path: one of `where`, beside this Python, or on PATH; else the test fails saying how to get it."""
    for path in (*where, Path(sys.executable).with_name(name)):
        if path.exists():
            return str(path)
    found = shutil.which(name)
    assert found, f"no `{name}`: run `bash scripts/ensure-kube-tools.sh` (make test does)"
    return found


def render(
    values: Sequence[str] = (), *args: str, tests: bool = False, chart: Path = CHART, **names: str
) -> list[dict[str, Any]]:
    """The chart's objects for these ci/ values files and `helm template` arguments (`tests`: the test pod too;
    `chart`: another chart, e.g. `build_example`'s; `names`: release= and namespace=)."""
    extra = ("--skip-tests=false",) if tests else ()
    text = helm_template(list(values), [*args, *extra], chart=chart, **names)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def build_example(root: Path) -> Path:
    """The example workload chart, ready to render: deploy/helm copied under `root` (so the checkout gets no
    charts/ or Chart.lock) and its dependency on the chart fetched by `helm dependency build`, as
    docs/kubernetes.md says. Returns the copy's path."""
    shutil.copytree(DEPLOY / "helm", root / "helm")
    chart = root / "helm" / EXAMPLE.relative_to(DEPLOY / "helm")
    done = subprocess.run(
        [helm_binary(), "dependency", "build", str(chart)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    version = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["version"]
    assert (chart / "charts" / f"authz-sidecar-{version}.tgz").is_file(), sorted((chart / "charts").iterdir())
    return chart


def only(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    """The one object of `kind` whose name ends with `suffix`."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment's pod spec."""
    spec: dict[str, Any] = only(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def plain_files() -> Iterator[Path]:
    """Every Kubernetes object file in deploy/kubernetes/ (not kustomization.yaml, which kustomize reads)."""
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            yield path


def _strict(schema: Any) -> Any:
    """A CRD's structural schema refusing unknown fields, as the API server's strict field validation does: every
    object that lists its properties and leaves the rest unsaid gets `additionalProperties: false`."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _crd_schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> the strict schema, from the CRDs vendored in tests/data/crds/."""
    schemas = {}
    for path in sorted(CRDS.rglob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


CRD_SCHEMAS = _crd_schemas()


def validate_object(doc: dict[str, Any], version: str) -> None:
    """Kubernetes' OpenAPI schema of `version` (kubernetes-validate, strict), or the vendored CRD's for its kinds."""
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is not None:
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        jsonschema.validate(body, crd)
        return
    kubernetes_validate.validate(doc, version, strict=True)
