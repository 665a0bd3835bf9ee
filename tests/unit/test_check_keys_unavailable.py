"""`check` with an issuer whose keys cannot be fetched: `--wait` bounds the wait, and the explanation says why the
keys are missing (the fetch error), not only that they are."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.harness.envoy import free_port
from tests.unit.authorizers.jwt.jwt_testkit import AUDIENCE, ISSUER, Issuer


def test_keys_unavailable_names_the_fetch_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/jwks.json"  # nothing listens there
    (tmp_path / "config.yaml").write_text(
        f"authorizers:\n  corp: {{type: jwt, issuer: '{ISSUER}', audiences: [{AUDIENCE}], jwks_uri: '{nowhere}',"
        " allow_http: true}\nroutes:\n  - {match: 'GET /orders', authorizer: corp}\n"
    )
    issuer = Issuer.default()
    token = issuer.token(issuer.claims(now=time.time()))
    (tmp_path / "r.req").write_text(f"GET /orders HTTP/1.1\nHost: api.test\nAuthorization: Bearer {token}\n\n")
    started = time.monotonic()
    args = ["check", "--config", str(tmp_path / "config.yaml"), "--http", str(tmp_path / "r.req")]
    code = main([*args, "--wait", "0.5", "--output", "json", "--explain"])
    assert time.monotonic() - started < 8  # bounded by --wait, not the default 10 s
    result = json.loads(capsys.readouterr().out)
    assert (code, result["status"], result["reason"]) == (1, 503, "KeysUnavailable")
    step = result["explanation"][-1]
    assert step["facts"]["keys_from"] == nowhere
    assert "ConnectError" in step["facts"]["last_fetch_error"], step
    assert token not in json.dumps(result)
