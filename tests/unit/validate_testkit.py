"""Running `authz-sidecar validate` on a config written to a temporary directory, as a user would."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.cli import main


def run_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, *extra: str) -> tuple[int, list[str]]:
    """Write `text` (dedented) to `cfg.yaml`, run `validate` on it, return the exit code and stderr's lines with
    the temporary directory shown as `DIR`. Nothing may go to stdout."""
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    capsys.readouterr()
    code = main(["validate", *extra, str(path)])
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err.replace(str(tmp_path), "DIR").splitlines()
