"""A key written twice in one YAML mapping is an error at the repeat, in the config and in every file read like it
(YAML itself keeps the last silently: `enabled: false` above an older `enabled: true` would leave a key on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import parse_config
from sidecar.issues import ConfigError, parse_yaml


def test_a_repeated_key_is_refused_at_its_line() -> None:
    text = "- id: k1\n  enabled: false\n  name: one\n  enabled: true\n"
    with pytest.raises(ConfigError) as caught:
        parse_yaml(text, "keys.yaml")
    (issue,) = caught.value.issues
    assert (issue.line, issue.field) == (4, "[0].enabled") and "first at line 2" in issue.message


def test_a_repeated_key_in_a_flow_mapping_and_in_the_config() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("routes:\n  - {match: 'ANY /a', authorizer: x, authorizer: y}\n", "cfg.yaml")
    assert any("duplicate key 'authorizer'" in str(issue) and issue.line == 2 for issue in caught.value.issues)


def test_the_same_key_in_sibling_mappings_and_aliases_are_fine() -> None:
    data, _ = parse_yaml("a: &x {k: 1}\nb: *x\nc: [{k: 1}, {k: 2}]\nd: &r [1]\n", "f.yaml")
    assert data["b"] == {"k": 1} and data["c"] == [{"k": 1}, {"k": 2}]


def test_a_repeated_key_in_the_api_key_file_is_refused(tmp_path: Path) -> None:
    from sidecar.limits.apikeys import digest_of, load_api_keys

    path = tmp_path / "keys.yaml"
    path.write_text(f"- id: k1\n  name: one\n  enabled: false\n  sha256: {digest_of('v' * 30)}\n  enabled: true\n")
    with pytest.raises(ConfigError) as caught:
        load_api_keys(path)
    assert any(issue.line == 5 and "duplicate key 'enabled'" in issue.message for issue in caught.value.issues)


def test_an_impossible_date_is_a_config_error_not_a_crash() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("api: {stage: 2027-02-30}\n", "cfg.yaml")
    (issue,) = caught.value.issues
    assert (issue.line, issue.field) == (1, "api.stage") and "not a real date" in issue.message
