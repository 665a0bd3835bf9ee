"""A secret the config gives one of three ways: inline, in a file, or named by an environment variable.

A leaf (it imports nothing of ours): the decision cache's signing key and the rate rules' key secret are both
read here, the same way, so the two can never disagree about what a setting means.
"""

from __future__ import annotations

import os
from pathlib import Path


def read_secret(value: str | None, file: str | None, env: str | None, base_dir: Path) -> bytes | None:
    """The secret's bytes (the first of `value`, `file`, `env` given), or None when none is. A file is read
    relative to `base_dir` and stripped of surrounding whitespace. Raises OSError for a file it cannot read and
    ValueError for an environment variable that is not set (or empty)."""
    if value:
        return value.encode()
    if file:
        path = Path(file) if Path(file).is_absolute() else base_dir / file
        return path.read_bytes().strip()
    if env:
        from_env = os.environ.get(env)
        if not from_env:
            raise ValueError(f"environment variable {env} is not set")
        return from_env.encode()
    return None
