"""The soak's allocation diff: each worker traces its allocations (`sidecar.serve.heap`, enabled by
`AUTHZ_SIDECAR_TRACEMALLOC_DIR`), writes a snapshot on SIGUSR2 at the warm-up's end and again before the rolling
restart (the last moment the long-lived workers are alive), and the soak compares the two: where memory grew,
by file and line, beside the RSS check it explains."""

from __future__ import annotations

import os
import signal
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sidecar.serve.heap import TRACEMALLOC_DIR

TOP = 8
"""Lines kept per worker in the results."""


class HeapTrace:
    """Snapshots of the workers' traced allocations in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.first: dict[int, Path] = {}
        self.last: dict[int, Path] = {}

    @property
    def env(self) -> dict[str, str]:
        """What a sidecar process needs in its environment to trace and dump."""
        return {TRACEMALLOC_DIR: str(self.directory)}

    def snapshot(self, pids: Iterable[int], timeout: float = 30.0) -> dict[int, Path]:
        """SIGUSR2 to each live pid, then each one's new snapshot file (a pid that died or did not write in time
        is left out)."""
        before = {pid: len(self._files(pid)) for pid in pids if os.path.exists(f"/proc/{pid}")}
        for pid in before:
            try:
                os.kill(pid, signal.SIGUSR2)
            except ProcessLookupError:
                continue
        written: dict[int, Path] = {}
        deadline = time.monotonic() + timeout
        while len(written) < len(before) and time.monotonic() < deadline:
            for pid, count in before.items():
                files = self._files(pid)
                if pid not in written and len(files) > count:
                    written[pid] = files[-1]
            time.sleep(0.1)
        return written

    def _files(self, pid: int) -> list[Path]:
        return sorted(self.directory.glob(f"{pid}-*.tracemalloc"), key=lambda p: int(p.stem.split("-")[1]))

    def growth(self) -> dict[str, list[dict[str, Any]]]:
        """Per worker with both snapshots: the lines whose traced memory grew most between them."""
        out: dict[str, list[dict[str, Any]]] = {}
        for pid in sorted(set(self.first) & set(self.last)):
            first = tracemalloc.Snapshot.load(str(self.first[pid]))
            last = tracemalloc.Snapshot.load(str(self.last[pid]))
            stats = [s for s in last.compare_to(first, "lineno") if s.size_diff > 0][:TOP]
            out[str(pid)] = [
                {"where": str(s.traceback), "size_diff_kb": round(s.size_diff / 1024, 1), "count_diff": s.count_diff}
                for s in stats
            ]
        return out
