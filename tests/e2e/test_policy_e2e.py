"""Resource policies through a real Envoy: a CIDR deny blocks loopback, an allow list lets it in, and
`check --explain` names the deciding statement."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import StackFactory

pytestmark = pytest.mark.e2e

ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"


def config(policy_file: Path) -> str:
    return f"""\
api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
resource_policy: {policy_file}
authorizers:
  open: {{type: none}}
routes:
  - {{match: "ANY /{{proxy+}}", authorizer: open}}
"""


def policy(*statements: dict[str, object]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)}, indent=2)


ALLOW_ALL = {
    "Sid": "AllowAll",
    "Effect": "Allow",
    "Principal": "*",
    "Action": "execute-api:Invoke",
    "Resource": f"{ARN}/*",
}


def test_cidr_deny_blocks_loopback(authz_stack: StackFactory, tmp_path: Path) -> None:
    path = tmp_path / "resource.json"
    path.write_text(
        policy(
            ALLOW_ALL,
            {
                "Sid": "DenyLoopback",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "execute-api:Invoke",
                "Resource": f"{ARN}/*",
                "Condition": {"IpAddress": {"aws:SourceIp": ["127.0.0.0/8", "::1/128"]}},
            },
        )
    )
    stack = authz_stack(config(path))
    response = stack.client.get("/orders/1")
    assert response.status_code == 403
    body = response.json()
    assert body["reason"] == "AccessDenied"
    assert "explicit deny" in body["message"]
    assert "DenyLoopback" not in response.text  # statements are for logs, not for clients


def test_allow_list_admits_loopback_only(authz_stack: StackFactory, tmp_path: Path) -> None:
    path = tmp_path / "resource.json"
    path.write_text(
        policy(
            {
                "Sid": "AllowFromLoopback",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "execute-api:Invoke",
                "Resource": f"{ARN}/GET/orders/*",
                "Condition": {"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}},
            }
        )
    )
    stack = authz_stack(config(path))
    assert stack.client.get("/orders/1").status_code == 200
    denied = stack.client.post("/orders/1")  # no statement allows POST: implicit deny on an open route
    assert denied.status_code == 403
    assert denied.json()["reason"] == "AccessDenied"


def test_policy_file_change_reloads(authz_stack: StackFactory, tmp_path: Path) -> None:
    path = tmp_path / "resource.json"
    path.write_text(policy(ALLOW_ALL))
    stack = authz_stack(config(path) + "server: {watch_interval: 0.1}\n")
    assert stack.client.get("/x").status_code == 200
    path.write_text(policy({**ALLOW_ALL, "Effect": "Deny", "Sid": "DenyAll"}))
    deadline = time.monotonic() + 10
    while stack.client.get("/x").status_code != 403:
        assert time.monotonic() < deadline, "policy change was not picked up"
        time.sleep(0.05)


def test_check_explain_names_the_statement(tmp_path: Path) -> None:
    path = tmp_path / "resource.json"
    path.write_text(
        policy(
            ALLOW_ALL,
            {
                "Sid": "DenyAdmins",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "execute-api:Invoke",
                "Resource": f"{ARN}/*/admin/*",
            },
        )
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config(path))
    req = tmp_path / "r.req"
    req.write_text("GET /admin/users HTTP/1.1\nHost: api.example.com\n\n")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--config", str(cfg), "--http", str(req), "--explain"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "decision:  deny (403)" in result.stdout
    assert "DenyAdmins" in result.stdout
    assert "explain:" in result.stdout
