"""What runs inside one fuzzer's process: atheris (libFuzzer) on a target, the crash minimizer, and the two halves of
the engine comparison (a time-boxed hypothesis run, and line coverage of a set of inputs replayed).

libFuzzer owns the process while it fuzzes (it exits at the end or at the first crash), so `__main__.py` starts one
process per target and reads what libFuzzer prints; nothing here prints the inputs themselves (they may hold
credentials that were minted for the run).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from . import harness
from .targets import instrumented, load

REPO = Path(__file__).resolve().parents[2]


def write_inputs(folder: Path, inputs: Iterable[bytes]) -> int:
    """Each input as a file named by its SHA-1 (libFuzzer's own naming), so repeated inputs collapse."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for data in inputs:
        (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
        count += 1
    return count


def corpus_folders(name: str, work: Path) -> list[Path]:
    """libFuzzer's corpus folders: new inputs go to the first (the run's own, outside git); the built seeds and the
    checked-in corpus and regressions are read only."""
    folders = [work / "corpus", work / "seeds", harness.CORPUS / name, harness.REGRESSIONS / name]
    for folder in folders[:2]:
        folder.mkdir(parents=True, exist_ok=True)
    return [folder for folder in folders if folder.is_dir()]


def fuzz(name: str, seconds: int, work: Path, runs: int = -1) -> None:
    """Fuzz `name` with atheris for `seconds` (or `runs` inputs); never returns (libFuzzer exits)."""
    import atheris

    logging.getLogger().addHandler(logging.NullHandler())  # warnings about hostile input are expected, not news
    with atheris.instrument_imports(include=list(instrumented(name))):
        target = load(name)
        one_input = target.prepare()
    write_inputs(work / "seeds", target.seeds())
    args = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-max_len={target.max_len}",
        f"-runs={runs}",
        "-timeout=30",
        "-rss_limit_mb=3072",
        "-print_final_stats=1",
        f"-artifact_prefix={work}/",
        *map(str, corpus_folders(name, work)),
    ]
    atheris.Setup(args, one_input)
    atheris.Fuzz()


def _fingerprint(one_input: Callable[[bytes], None], data: bytes) -> tuple[str, str, int] | None:
    """Where `data` fails (exception type, and the innermost frame's file and line), or None if it passes."""
    try:
        one_input(data)
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        last = frames[-1] if frames else None
        return type(exc).__name__, last.filename if last else "", last.lineno or 0 if last else 0
    return None


def minimize(name: str, crash: Path, out: Path, budget: float = 120.0) -> bool:
    """Shrink `crash` while it still fails at the same place (greedy chunk removal, then byte simplification);
    write the smallest to `out`. False if the input does not fail here at all (e.g. it was a timeout)."""
    target = load(name)
    one_input = target.prepare()
    data = crash.read_bytes()
    wanted = _fingerprint(one_input, data)
    if wanted is None:
        return False
    deadline = time.monotonic() + budget

    def same(candidate: bytes) -> bool:
        return time.monotonic() < deadline and _fingerprint(one_input, candidate) == wanted

    size = max(len(data) // 2, 1)
    while size >= 1 and time.monotonic() < deadline:
        start, shrunk = 0, False
        while start < len(data):
            candidate = data[:start] + data[start + size :]
            if candidate != data and same(candidate):
                data, shrunk = candidate, True
            else:
                start += size
        if not shrunk:
            size //= 2
    for index in range(len(data)):
        if data[index] != 0x30 and same(data[:index] + b"0" + data[index + 1 :]):
            data = data[:index] + b"0" + data[index + 1 :]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return True


def hypothesis_run(name: str, seconds: float, out: Path) -> tuple[int, bool]:
    """The comparison's other engine: hypothesis drawing `st.binary` for the same one-input function for `seconds`
    (batches of 2000 examples, generation only, no database), after the same seeds atheris starts from. Every
    input it ran is written to `out`; (executions, whether one failed: it stops at the first, as libFuzzer does)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    target = load(name)
    one_input = target.prepare()
    seen: list[bytes] = []
    deadline = time.monotonic() + seconds

    def run(data: bytes) -> None:
        seen.append(data)
        one_input(data)

    @settings(
        max_examples=2000,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.binary(max_size=target.max_len))
    def batch(data: bytes) -> None:
        if time.monotonic() < deadline:
            run(data)

    failed = False
    try:
        for seed in target.corpus():
            run(seed)
        while time.monotonic() < deadline:
            batch()
    except Exception:
        failed = True
    write_inputs(out, seen)
    return len(seen), failed


def line_coverage(name: str, inputs: Iterable[Path]) -> tuple[int, int]:
    """(distinct sidecar lines, inputs) executed by replaying `inputs` through the target, traced with
    `sys.settrace`: the same yardstick for both engines, measured after they ran."""
    target = load(name)
    one_input = target.prepare()
    root = str(REPO / "sidecar")
    lines: set[tuple[str, int]] = set()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith(root):
            return None
        if event == "line":
            lines.add((frame.f_code.co_filename, frame.f_lineno))
        return tracer

    count = 0
    for path in inputs:
        sys.settrace(tracer)
        try:
            one_input(path.read_bytes())
        except Exception:
            pass
        finally:
            sys.settrace(None)
        count += 1
    return len(lines), count
