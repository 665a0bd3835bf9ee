"""deploy/helm, deploy/kubernetes, deploy/istio and the Dockerfile, checked by the real tools (issue #24).

helm lints and renders every ci/ values file; every object is validated against Kubernetes' OpenAPI schemas
(two releases, strict) or its vendored CRD; checkov finds nothing unjustified; hadolint passes the Dockerfile;
the Envoy bootstrap the chart renders is `render_envoy_config` for the pod's ports (and Envoy accepts it); the
sidecar config it renders passes `authz-sidecar validate --strict` with the Secret's files in place.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import main as sidecar_main
from sidecar.harness.envoy import render_envoy_config, validate_envoy_config
from sidecar.harness.kubernetes import CHART, DEPLOY, TEMPLATES, helm_binary, main, pod_envoy_ports
from tests.conftest import REPO
from tests.e2e.kube_testkit import (
    CI_VALUES,
    EXAMPLE,
    KUBERNETES_VERSIONS,
    SECRETS_DIR,
    build_example,
    only,
    plain_files,
    pod_spec,
    render,
    tool,
    validate_object,
)
from tests.unit.test_docs import split_page

pytestmark = pytest.mark.e2e


def _values(name: str) -> dict[str, Any]:
    """The chart's defaults overlaid with ci/`name` (a shallow-enough merge for the keys tests read)."""
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    for key, value in (yaml.safe_load((CHART / "ci" / name).read_text(encoding="utf-8")) or {}).items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and key != "config" else value
    return merged


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every ci/ values file's objects, the helm test pod included."""
    return {name: render([f"ci/{name}"], tests=True) for name in CI_VALUES}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example workload chart (deploy/helm/examples/my-app) with its dependency built, in a copy."""
    return build_example(tmp_path_factory.mktemp("example"))


@pytest.mark.parametrize("values", CI_VALUES)
def test_helm_lint_strict(values: str) -> None:
    done = subprocess.run(
        [helm_binary(), "lint", "--strict", str(CHART), "--values", str(CHART / "ci" / values)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("bogus=1", "additional properties 'bogus' not allowed"),
        ("envoy.bogus=1", "additional properties 'bogus' not allowed"),
        ("config.listen.grpc=0.0.0.0:1", "/config"),
        ("redis.url=redis://:hunter2@redis:6379", "/redis/url"),
        ("mode=sidecars", "/mode"),
    ],
)
def test_values_schema_refuses(setting: str, complaint: str) -> None:
    """values.schema.json: unknown keys anywhere, a config that sets the chart's `listen`, a Redis URL with a
    password (it would land in a ConfigMap) and unknown modes are errors, not silently ignored."""
    with pytest.raises(RuntimeError, match="helm template failed") as caught:
        render([], "--set", setting)
    assert complaint in str(caught.value)


def test_every_level_of_the_schema_refuses_unknown_keys() -> None:
    def objects(node: Any, where: str) -> list[str]:
        if not isinstance(node, dict):
            return []
        found = []
        if node.get("type") == "object" and "properties" in node:
            found += [] if node.get("additionalProperties") is False else [where]
        for key, child in (node.get("properties") or {}).items():
            if f"{where}/{key}" != "/config":  # the sidecar's own schema: `authz-sidecar validate` checks it
                found += objects(child, f"{where}/{key}")
        return found

    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert objects(schema, "") == []


def test_rendered_objects_match_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = set()
    for name, docs in rendered.items():
        for doc in docs:
            kinds.add(doc["kind"])
            for version in KUBERNETES_VERSIONS:
                try:
                    validate_object(doc, version)
                except Exception as exc:
                    pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {exc}")
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert {"ServiceMonitor", "ConfigMap", "Secret", "ServiceAccount", "Pod"} <= kinds


def test_plain_manifests_match_kubernetes_schemas() -> None:
    files = list(plain_files())
    assert len(files) >= 3
    for path in files:
        for doc in (d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d):
            for version in KUBERNETES_VERSIONS:
                validate_object(doc, version)
    for kustomization in (DEPLOY / "kubernetes").rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text(encoding="utf-8"))["resources"]
        assert listed and all((kustomization.parent / r).exists() for r in listed), kustomization


def test_generated_files_are_current() -> None:
    """The chart's Envoy files and deploy/kubernetes/ are what `python -m sidecar.harness.kubernetes` writes
    today: after a template or chart change, run it (this test names the stale files)."""
    assert main(["--check"]) == 0


@pytest.mark.parametrize("values", ["sidecar-values.yaml", "sidecar-http-values.yaml"])
def test_envoy_bootstrap_is_the_shipped_template(values: str, tmp_path: Path) -> None:
    """The chart's Envoy bootstrap is `render_envoy_config` for the pod's ports, for the chart's ports and for
    others, and Envoy accepts it."""
    chosen = {"envoy": 18000, "envoyAdmin": 18001, "app": 18002, "grpc": 18003, "http": 18004, "admin": 18005}
    settings = [f"ports.{k}={v}" for k, v in chosen.items()]
    authz = _values(values)["authz"]
    for ports, args in ((_values(values)["ports"], []), (chosen, ["--set", ",".join(settings)])):
        docs = render([f"ci/{values}"], *args)
        bootstrap = only(docs, "ConfigMap", "-config")["data"]["envoy.yaml"]
        assert bootstrap == render_envoy_config(pod_envoy_ports(ports, authz), TEMPLATES[authz])
    path = tmp_path / "envoy.yaml"
    path.write_text(bootstrap, encoding="utf-8")
    checked = validate_envoy_config(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _write_pod_files(docs: list[dict[str, Any]], root: Path) -> Path:
    """The sidecar config and the Secret's files under `root` (paths in the config mapped there); the config."""
    secret = only(docs, "Secret")
    secrets = root / SECRETS_DIR.lstrip("/")
    secrets.mkdir(parents=True)
    for name, content in (secret.get("stringData") or {}).items():
        (secrets / name).write_text(content, encoding="utf-8")
    config = only(docs, "ConfigMap", "-config")["data"]["config.yaml"].replace(SECRETS_DIR, str(secrets))
    path = root / "config.yaml"
    path.write_text(config, encoding="utf-8")
    return path


@pytest.mark.parametrize("values", CI_VALUES)
def test_sidecar_config_validates(
    values: str, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`authz-sidecar validate --strict` (in this process: the command's own code, without a Python start-up)."""
    config = _write_pod_files(rendered[values], tmp_path)
    code = sidecar_main(["validate", "--strict", str(config)])
    out = capsys.readouterr()
    assert code == 0 and f"{config}: valid" in out.out + out.err, out.out + out.err
    listen = yaml.safe_load(config.read_text(encoding="utf-8"))["listen"]
    standalone = _values(values)["mode"] == "standalone"
    assert listen["admin"].startswith("0.0.0.0:")
    assert (listen.get("grpc") or listen["http"]).startswith("0.0.0.0:" if standalone else "127.0.0.1:")


def test_a_config_change_rolls_the_pods() -> None:
    def annotations(*args: str) -> dict[str, str]:
        found: dict[str, str] = only(render([], *args), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return found

    before = annotations()
    assert before == annotations()
    config_changed = annotations("--set", "config.server.grace_period=12")
    assert config_changed["checksum/config"] != before["checksum/config"]
    secret_changed = annotations("--set-string", "secret.files.extra=1")
    assert secret_changed["checksum/secret"] != before["checksum/secret"]
    assert secret_changed["checksum/config"] == before["checksum/config"]


@pytest.mark.parametrize("values", CI_VALUES)
def test_pod_shape(values: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Native sidecars in start order (authz-sidecar, then Envoy) or plain containers; the hardened security
    context everywhere; a grace period that covers the stop sequence."""
    v, spec = _values(values), pod_spec(rendered[values])
    containers = spec.get("initContainers", []) + spec["containers"]
    names = [c["name"] for c in containers]
    if v["mode"] == "standalone":
        assert names == ["authz-sidecar"]
        assert spec["containers"][0]["readinessProbe"]["grpc"] == {"port": v["ports"]["grpc"]}
    elif v["nativeSidecars"]:
        assert [c["name"] for c in spec["initContainers"]] == ["authz-sidecar", "envoy"]
        assert all(c["restartPolicy"] == "Always" for c in spec["initContainers"])
    else:
        assert "initContainers" not in spec and set(names) == {"app", "authz-sidecar", "envoy"}
    for container in containers:
        security = container["securityContext"]
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"} and security["runAsUser"] >= 10000
        assert {"readinessProbe", "livenessProbe"} <= container.keys() and container["resources"]["limits"]
    grace = int(v["config"].get("server", {}).get("grace_period", 10))
    stops = v["preStopSleepSeconds"] + grace + 2
    if v["mode"] != "standalone":
        stops += v["app"]["shutdownSeconds"] + v["envoy"]["shutdownSeconds"]
    assert spec["terminationGracePeriodSeconds"] == stops
    assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("values", CI_VALUES)
def test_network_policy_admits_the_door_and_prometheus(values: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    v = _values(values)
    policy = only(rendered[values], "NetworkPolicy")["spec"]
    door = v["ports"]["grpc"] if v["mode"] == "standalone" else v["ports"]["envoy"]
    assert [[p["port"] for p in rule["ports"]] for rule in policy["ingress"]] == [[door], [v["ports"]["admin"]]]
    assert policy["ingress"][0].get("from", []) == v["networkPolicy"]["clients"]
    prometheus = policy["ingress"][1]["from"]
    assert prometheus == [dict(v["networkPolicy"]["prometheus"])]


def test_checkov_finds_nothing_unjustified(
    rendered: dict[str, list[dict[str, Any]]], example: Path, tmp_path: Path
) -> None:
    for name, docs in rendered.items():
        (tmp_path / name).write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    (tmp_path / "example.yaml").write_text(yaml.safe_dump_all(render(chart=example, tests=True)), encoding="utf-8")
    for path in plain_files():
        (tmp_path / f"plain-{path.parent.name}-{path.name}").write_text(path.read_text(encoding="utf-8"))
    (tmp_path / "Dockerfile").write_text((REPO / "Dockerfile").read_text(encoding="utf-8"), encoding="utf-8")
    checkov = tool("checkov", Path(sys.executable).parent.parent / "opt" / "checkov" / "bin" / "checkov")
    done = subprocess.run(
        [checkov, "-d", str(tmp_path), "--framework", "kubernetes", "dockerfile", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LOG_LEVEL": "ERROR"},
    )
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    summary = {r["check_type"]: r["summary"] for r in reports}
    failed = [(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
    assert failed == [], failed
    assert {"kubernetes", "dockerfile"} <= summary.keys() and all(s["passed"] > 0 for s in summary.values())
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert all(c["check_result"].get("suppress_comment") for c in skipped), skipped


def test_hadolint_passes_the_dockerfile() -> None:
    done = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_istio_objects() -> None:
    """The AuthorizationPolicies match Istio's CRD (vendored); the extension provider is envoyExtAuthzGrpc with
    an explicit timeout, fail-closed, the body as bytes, and names the standalone release's Service."""
    policies = [doc for path in (DEPLOY / "istio").glob("*policy.yaml") for doc in yaml.safe_load_all(path.read_text())]
    assert len(policies) == 2
    for policy in policies:
        validate_object(policy, KUBERNETES_VERSIONS[-1])
        assert policy["spec"]["action"] == "CUSTOM" and policy["spec"]["provider"] == {"name": "authz-sidecar"}
    mesh = yaml.safe_load((DEPLOY / "istio" / "mesh-config.yaml").read_text(encoding="utf-8"))["meshConfig"]
    (provider,) = mesh["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert provider["name"] == "authz-sidecar" and grpc["timeout"] == "1.5s" and grpc["failOpen"] is False
    assert grpc["includeRequestBodyInCheck"]["packAsBytes"] is True
    service = only(render(["ci/standalone-values.yaml"], release="authz", namespace="authz"), "Service")
    assert grpc["service"] == f"{service['metadata']['name']}.authz.svc.cluster.local"
    assert grpc["port"] == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")


def test_a_workload_of_its_own_gets_the_sidecars_from_the_library(example: Path) -> None:
    """Sidecar mode in your own chart: deploy/helm/examples/my-app depends on the chart and builds its pod with
    the library templates (`.Subcharts`). helm lints it; every object is valid; its pod holds the very sidecars,
    volumes and security the chart's own example Deployment holds, the labels the chart's Service and
    NetworkPolicy select, the checksums and the grace period for the stop sequence."""
    done = subprocess.run(
        [helm_binary(), "lint", "--strict", str(example)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    docs = render(chart=example, tests=True)
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            validate_object(doc, version)
    assert sorted(d["kind"] for d in docs) == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "NetworkPolicy", "Pod", "Secret", "Service", "ServiceAccount"]
    )
    template = only(docs, "Deployment")["spec"]["template"]
    spec, own = template["spec"], pod_spec(render(["ci/sidecar-values.yaml"]))
    assert spec["initContainers"] == own["initContainers"]
    assert [c["name"] for c in spec["containers"]] == ["my-app"]
    assert spec["volumes"][:3] == own["volumes"][:3] and spec["securityContext"] == own["securityContext"]
    assert spec["serviceAccountName"] == only(docs, "ServiceAccount")["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False
    labels = template["metadata"]["labels"]
    for selector in (only(docs, "Service")["spec"]["selector"], only(docs, "NetworkPolicy")["spec"]["podSelector"]):
        selected = selector.get("matchLabels", selector)
        assert selected and selected.items() <= labels.items(), (selected, labels)
    assert spec["terminationGracePeriodSeconds"] == 5 + 5 + 2 + 10 + 2  # preStop, my-app, Envoy, grace, spare
    before = template["metadata"]["annotations"]
    changed = only(render([], "--set", "authz-sidecar.config.server.grace_period=12", chart=example), "Deployment")
    after = changed["spec"]["template"]
    assert after["metadata"]["annotations"]["checksum/config"] != before["checksum/config"]
    assert after["metadata"]["annotations"]["checksum/secret"] == before["checksum/secret"]
    assert after["spec"]["terminationGracePeriodSeconds"] == spec["terminationGracePeriodSeconds"] + 2


def test_the_image_is_multi_stage_non_root_and_health_checked() -> None:
    """The Dockerfile builds wheels in one stage and runs from a clean one, as the user the chart's
    securityContext names (10001, whose group reads the Secret's files), with a HEALTHCHECK on /readyz; every
    base names its release (no floating `latest`)."""
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines()]
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert len(bases) >= 2 and all(":" in b and not b.endswith(":latest") for b in bases), bases
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    (container,) = pod_spec(render(["ci/standalone-values.yaml"]))["containers"]
    assert users == [str(container["securityContext"]["runAsUser"])] == ["10001"]
    assert any(line.startswith("HEALTHCHECK ") for line in final)
    assert "/readyz" in "\n".join(final)


def _documented_commands() -> list[list[str]]:
    """Every command of docs/kubernetes.md's ```sh blocks, in order (comments dropped)."""
    _, blocks = split_page((REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8"))
    lines = [line for block in blocks if block.language == "sh" for line in block.text.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def _helm_template_of(install: list[str], example: Path) -> list[dict[str, Any]]:
    """What a documented `helm install RELEASE CHART ...` installs: `helm template` with the same arguments, run
    from the checkout (the example chart from its built copy)."""
    assert install[:2] == ["helm", "install"], install
    args = [str(example) if a == str(EXAMPLE.relative_to(REPO)) else a for a in install[2:]]
    done = subprocess.run([helm_binary(), "template", *args], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_the_documented_install_is_real(example: Path) -> None:
    """docs/kubernetes.md's five commands build the image the chart runs, install the chart with a values file
    (rendered here by `helm template` with the same arguments), wait for the Deployment it makes and test that
    release; every other documented `helm install` renders too; the page's config is the one the chart renders."""
    commands = _documented_commands()
    build, load, install, rollout, test = commands[:5]
    image = _values("sidecar-values.yaml")["image"]
    assert build == ["docker", "build", "-t", f"{image['repository']}:{image['tag']}", "."]
    assert load == ["kind", "load", "docker-image", build[3]]
    docs = _helm_template_of(install, example)
    release, chart, namespace = install[2], install[3], install[install.index("--namespace") + 1]
    assert (REPO / chart).resolve() == CHART and (REPO / install[install.index("--values") + 1]).is_file()
    deployment = only(docs, "Deployment")["metadata"]["name"]
    assert rollout == ["kubectl", "--namespace", namespace, "rollout", "status", f"deployment/{deployment}"]
    assert test == ["helm", "test", release, "--namespace", namespace]
    others = [c for c in commands[5:] if c[:2] == ["helm", "install"]]
    assert len(others) == 2 and all(_helm_template_of(c, example) for c in others)
    assert ["helm", "dependency", "build", str(EXAMPLE.relative_to(REPO))] in commands
    _, blocks = split_page((REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8"))
    (config,) = [b.text for b in blocks if b.file == "config.yaml"]
    rendered = only(docs, "ConfigMap", "-config")["data"]["config.yaml"]
    assert yaml.safe_load(config) == yaml.safe_load(rendered)


@pytest.mark.parametrize("values", CI_VALUES)
def test_install_notes_name_what_was_installed(values: str) -> None:
    """NOTES.txt renders for every mode (`helm install --dry-run=client`, no cluster) and names this release's
    Service, ports and `helm test` command."""
    install = [helm_binary(), "install", "authz-demo", str(CHART), "--namespace", "authz", "--dry-run=client"]
    done = subprocess.run(
        [*install, "--values", str(CHART / "ci" / values)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.partition("\nNOTES:\n")[2]
    v, service = _values(values), only(render([f"ci/{values}"]), "Service")
    name = service["metadata"]["name"]
    assert "helm test authz-demo -n authz" in notes and f"/readyz on port {v['ports']['admin']}" in notes
    if v["mode"] == "standalone":
        assert f"{name}.authz.svc.cluster.local:{v['ports']['grpc']} (gRPC ext_authz)" in notes, notes
    else:
        assert f"port-forward svc/{name} 8000:{service['spec']['ports'][0]['port']}" in notes, notes
        assert f"runs Envoy (port {v['ports']['envoy']}" in notes
        assert ("both native sidecars" if v["nativeSidecars"] else "plain containers") in notes
