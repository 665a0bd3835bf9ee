"""`serve --workers N` refuses limits counted in process: each worker would count alone, multiplying every limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.issues import ConfigError
from sidecar.serve.supervisor import check_workers

CONFIG = """\
authorizers:
  open: {type: none}
api_keys: {file: keys.yaml}
usage_plans:
  gold: {quota: {limit: 5, period: DAY}}
rate_limits:
  - {name: per-ip, key: [ip], limit: 10}
routes:
  - {match: "ANY /{proxy+}", authorizer: open, api_key_required: true}
"""


def test_in_process_limits_are_refused_with_several_workers(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    config = load_config(path)
    check_workers(config, 1)
    with pytest.raises(ConfigError) as refused:
        check_workers(config, 3)
    issues = refused.value.issues
    assert [issue.field for issue in issues] == ["usage_plans", "rate_limits"]
    assert [issue.line for issue in issues] == [5, 7]  # where each section's value starts
    assert all("3 times what it says; define redis.default" in issue.message for issue in issues)


def test_limits_counted_in_redis_are_fine_with_several_workers(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + "redis: {default: {url: 'redis://127.0.0.1:6379/0'}}\n")
    check_workers(load_config(path), 3)
