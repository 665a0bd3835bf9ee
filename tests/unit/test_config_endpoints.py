"""`policy.vpc_endpoint_policies` at load: ids checked, files compiled once with file:line errors like the resource
policy's, and watched so that an edit reloads the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.config import parse_config
from sidecar.runtime import compile_runtime
from tests.unit.validate_testkit import run_validate

ALLOW = {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": "*"}
ROUTES = "authorizers:\n  open: {type: none}\nroutes:\n  - {match: 'GET /pets', authorizer: open}\n"


def _policy(path: Path, *statements: object) -> None:
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}))


def test_a_good_config_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _policy(tmp_path / "a.json", ALLOW)
    code, lines = run_validate(tmp_path, capsys, ROUTES + "policy:\n  vpc_endpoint_policies: {vpce-0a1b2c: a.json}\n")
    assert (code, lines) == (0, ["DIR/cfg.yaml: valid"])


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "{VPCE-1: a.json}",
            "DIR/cfg.yaml:6:26: policy.vpc_endpoint_policies: 'VPCE-1' is not a VPC endpoint id (vpce- and letters "
            "or digits, e.g. vpce-0a1b2c3d)",
        ),
        ("{vpc-1: a.json}", "DIR/cfg.yaml:6:26: policy.vpc_endpoint_policies: 'vpc-1' is not a VPC endpoint id"),
        ("{vpce-1: ' '}", "DIR/cfg.yaml:6:26: policy.vpc_endpoint_policies: vpce-1: name its policy file"),
        (
            "{vpce-1: missing.json}",
            "DIR/cfg.yaml:6:35: policy.vpc_endpoint_policies.vpce-1: cannot read the policy file "
            "DIR/missing.json: no such file",
        ),
    ],
)
def test_entries_that_name_no_endpoint_or_no_file_are_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str, expected: str
) -> None:
    _policy(tmp_path / "a.json", ALLOW)
    code, lines = run_validate(tmp_path, capsys, ROUTES + f"policy:\n  vpc_endpoint_policies: {entry}\n")
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_a_policy_that_does_not_parse_is_located_in_its_own_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.json").write_text('{\n  "Version": "2012-10-17",\n  "Statement": [{"Effect": "Maybe"}]\n}\n')
    code, lines = run_validate(tmp_path, capsys, ROUTES + "policy:\n  vpc_endpoint_policies: {vpce-1: bad.json}\n")
    assert code == 1 and lines
    assert all(line.startswith("DIR/bad.json:3:") for line in lines), lines


def test_the_files_are_watched_and_fingerprinted(tmp_path: Path) -> None:
    _policy(tmp_path / "a.json", ALLOW)
    text = ROUTES + "policy:\n  vpc_endpoint_policies: {vpce-1: a.json}\n"
    config = parse_config(text, str(tmp_path / "c.yaml"))
    runtime = compile_runtime(config)
    assert tmp_path / "a.json" in runtime.watched
    assert runtime.endpoint_policies is not None and set(runtime.endpoint_policies.policies) == {"vpce-1"}
    _policy(tmp_path / "a.json", {**ALLOW, "Effect": "Deny"})
    assert compile_runtime(config).version != runtime.version  # an edit is a new config to serve and to cache


def test_without_entries_nothing_is_compiled(tmp_path: Path) -> None:
    runtime = compile_runtime(parse_config(ROUTES, str(tmp_path / "c.yaml")))
    assert runtime.endpoint_policies is None
