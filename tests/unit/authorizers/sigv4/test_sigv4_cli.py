"""`authz-sidecar check --at`: a vector request file, decided offline at the case's fixed time, as the CLI does it."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sigv4_testkit import CRT

from tests.conftest import run_processes

CASES = [
    ("v4", "post-x-www-form-urlencoded", "header"),
    ("v4", "get-vanilla-query-order-key-case", "query"),
    ("v4a", "get-vanilla", "header"),
    ("v4a", "post-sts-header-before", "query"),
]


def run_checks(config: Path, request: Path, *times: str) -> list[dict[str, Any]]:
    """`check --at` for each time, the processes run at once; each one's JSON answer."""
    base = [sys.executable, "-m", "sidecar", "check", "--config", str(config), "--http", str(request)]
    results = run_processes([[*base, "--at", at, "--output", "json"] for at in times])
    for result in results:
        assert result.returncode in (0, 1), result.stderr
    return [json.loads(result.stdout) for result in results]


@pytest.mark.parametrize(("variant", "name", "form"), CASES)
def test_check_at_the_vector_time(tmp_path: Path, variant: str, name: str, form: str) -> None:
    token = json.loads((CRT / variant / name / "context.json").read_text())["credentials"].get("token")
    (tmp_path / "credentials.yaml").write_text(
        textwrap.dedent(
            """\
            credentials:
              - access_key_id: AKIDEXAMPLE
                secret_access_key: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
                principal_arn: arn:aws:iam::123456789012:user/alice
                policies: [{Version: "2012-10-17", Statement: [{Effect: Allow, Action: "execute-api:Invoke",
                             Resource: "*"}]}]
            """
        )
        + (f'    session_token: "{token}"\n' if token else "")
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            api: {account: "123456789012", region: us-east-1}
            authorizers:
              iam: {type: sigv4, service: service, credentials: {file: credentials.yaml}}
            routes:
              - {match: "ANY /", authorizer: iam}
              - {match: "ANY /{proxy+}", authorizer: iam}
            """
        )
    )
    request = CRT / variant / name / f"{form}-signed-request.txt"
    allowed, late = run_checks(config, request, "2015-08-30T12:36:00Z", "2015-08-30T13:36:01Z")
    assert (allowed["decision"], allowed["reason"]) == ("allow", "Allowed"), allowed
    assert (late["decision"], late["reason"]) == ("deny", "SignatureExpired"), late
