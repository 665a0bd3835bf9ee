"""`authz-sidecar check ... | head`: a reader that leaves early ends the command quietly (exit 141, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    request = tmp_path / "r.req"
    request.write_bytes(b"GET /public/x HTTP/1.1\r\nHost: api.test\r\n\r\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "check", "--http", str(request), "--explain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before anything is written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
