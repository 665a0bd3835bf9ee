"""`authz-sidecar check --explain` on a `lambda` route: the handler's returned policy is explained like any other,
its deciding statement named; refusals before the call say why the handler was not called."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main

from . import handlers
from .lambda_testkit import ARN, HANDLERS, config_text

HOST = "api.example.test"


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: str, settings: str, extra: str = "") -> Any:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(settings, extra=extra))
    (tmp_path / "request.req").write_text(raw)
    args = ["check", "--config", str(config), "--http", str(tmp_path / "request.req")]
    handlers.reset()
    main([*args, "--explain"])
    text = capsys.readouterr().out
    main([*args, "--output", "json", "--explain"])
    return text, json.loads(capsys.readouterr().out)


def http(method: str, path: str, authorization: str | None = "t") -> str:
    auth = f"Authorization: {authorization}\r\n" if authorization is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{auth}\r\n"


def policy_step(result: dict[str, Any]) -> dict[str, Any]:
    return next(step for step in result["explanation"] if step["stage"] == "policy")


SID = f"handler: {HANDLERS}:sid_handler\nevent_format: token\n"


def test_the_returned_policys_allowing_statement_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, result = run(tmp_path, capsys, http("GET", "/pets/7"), SID)
    assert result["decision"] == "allow"
    step = policy_step(result)
    assert "'ReadPets'" in step["summary"] and "returned by authorizer auth" in step["summary"]
    assert "ReadPets" in text
    authenticate = next(s for s in result["explanation"] if s["stage"] == "authenticate")
    assert "explained-user" in authenticate["summary"]


def test_the_returned_policys_deny_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, result = run(tmp_path, capsys, http("DELETE", "/pets/7"), SID)
    assert result["decision"] == "deny" and result["status"] == 403
    assert result["message"] == "User is not authorized to access this resource with an explicit deny"
    assert "'NoDeletes'" in policy_step(result)["summary"]
    assert "NoDeletes" in text


def test_a_missing_identity_source_says_the_handler_was_not_called(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, result = run(tmp_path, capsys, http("GET", "/pets/7", authorization=None), SID)
    assert result["status"] == 401 and result["reason"] == "Unauthorized"
    assert "method.request.header.Authorization is missing or empty" in text
    assert handlers.CALLS == []


def test_a_resource_policy_deny_before_the_call_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "NoPets",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "execute-api:Invoke",
                "Resource": f"{ARN}/*",
            }
        ],
    }
    (tmp_path / "resource.json").write_text(json.dumps(policy))
    text, result = run(tmp_path, capsys, http("GET", "/pets/7"), SID, extra="resource_policy: resource.json\n")
    assert result["status"] == 403 and "'NoPets'" in policy_step(result)["summary"]
    assert "NoPets" in text
    assert not any(step["stage"] == "authenticate" for step in result["explanation"])
    assert handlers.CALLS == []
