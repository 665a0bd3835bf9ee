"""Micro-benchmark: reading an API key file of 10,000 keys, the way a config load (on the event loop) and a hot
reload (in a thread holding the GIL) do.

Run: `python -m benchmarks.micro_apikeys [KEYS]`. Prints the median milliseconds of each way to read the file:
the quick read `load_api_keys` takes (libyaml's events, one validation of the whole list), a new store over an
unchanged file (the process's last snapshot reused), and for comparison a plain `yaml.load` with the C loader and
the located read (`parse_yaml`'s node tree, each entry validated at its line) that only a bad file now pays for.
No assertions: figures go in notes and docs/performance.md.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from sidecar.limits.apikeys import FileApiKeyStore, load_api_keys, parse_key_text, parse_keys

KEYS = 10_000
ROUNDS = 5
PLANS = ("gold",)


def key_file(directory: Path, count: int) -> Path:
    """`count` keys as `api-keys add` writes them (every field but `expires`)."""
    path = directory / "api-keys.yaml"
    path.write_text(
        "".join(
            f"- id: key-{i:06d}\n  name: customer {i}\n  sha256: {hashlib.sha256(str(i).encode()).hexdigest()}\n"
            f"  plan: gold\n  enabled: true\n"
            for i in range(count)
        ),
        encoding="utf-8",
    )
    return path


def median_ms(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(samples)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else KEYS
    with tempfile.TemporaryDirectory() as directory:
        path = key_file(Path(directory), count)
        text = path.read_text(encoding="utf-8")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        FileApiKeyStore(path, PLANS, reload_interval=0)  # the process's last snapshot: this file as it is
        rows = [
            ("load_api_keys (quick read)", median_ms(lambda: load_api_keys(path, PLANS))),
            ("FileApiKeyStore, file unchanged", median_ms(lambda: FileApiKeyStore(path, PLANS, reload_interval=0))),
            (f"yaml.load, {loader.__name__} only", median_ms(lambda: yaml.load(text, Loader=loader))),
            ("located read (a bad file's)", median_ms(lambda: parse_keys(*parse_key_text(text, str(path))), 1)),
        ]
    width = max(len(name) for name, _ in rows)
    print(f"{count} keys")
    print(f"{'read':<{width}}  median ms")
    for name, value in rows:
        print(f"{name:<{width}}  {value:9.1f}")


if __name__ == "__main__":
    main()
