"""`authz-sidecar api-keys add | list | disable`, run as a real process: the value printed once works, nothing
else shows it, edits keep the file's comments, every refusal is exit 2 with file:line:field."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from sidecar.limits.apikeys import ApiKeySet, check_key, digest_of, load_api_keys
from tests.conftest import run_processes


def _command(args: tuple[str | Path, ...]) -> list[str]:
    return [sys.executable, "-m", "sidecar", "--log-level", "DEBUG", "api-keys", *map(str, args)]


def api_keys(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """One `api-keys` command; logs at DEBUG, so whatever it logs is on stderr to look at."""
    return subprocess.run(_command(args), capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def api_keys_at_once(
    cases: Sequence[tuple[str | Path, ...]], cwd: Path
) -> list[tuple[tuple[str | Path, ...], subprocess.CompletedProcess[str]]]:
    """`api_keys` for each case, run at the same time (refusals: none of them writes)."""
    return list(zip(cases, run_processes([_command(args) for args in cases], cwd=cwd), strict=True))


def add(path: Path, *args: str) -> str:
    result = api_keys("add", "--file", path, *args, cwd=path.parent)
    assert result.returncode == 0, result.stderr
    value = result.stdout.removesuffix("\n")
    assert "\n" not in value and len(value) == 40  # the value, alone on stdout
    assert value not in result.stderr
    return value


def value_id(keys: ApiKeySet, value: str) -> str:
    key = keys.find(value)
    assert key is not None
    return key.id


def test_add_list_disable(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    gold = add(path, "--name", "Mobile app", "--plan", "gold", "--expires", "2027-01-01T02:00:00+02:00")
    batch = add(path, "--name", "Nightly batch", "--id", "batch")
    keys = load_api_keys(path)
    found = keys.find(gold)
    assert found is not None and found.plan == "gold" and found.name == "Mobile app" and found.enabled
    assert found.id.startswith("key-") and found.expires == 1798761600.0  # 2027-01-01T00:00:00Z
    assert keys.find(batch) is keys.by_id("batch") and keys.plans == frozenset({"gold"})
    text = path.read_text()
    assert gold not in text and batch not in text and digest_of(gold) in text
    assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044  # readable by the sidecar's user, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.yaml"]  # no temporary file left behind

    listed = api_keys("list", "--file", path, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    header, first, second = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "PLAN", "ENABLED", "EXPIRES", "SHA256"]
    assert first.split() == [found.id, "Mobile", "app", "gold", "true", "2027-01-01T00:00:00Z", digest_of(gold)[:8]]
    assert second.split() == ["batch", "Nightly", "batch", "-", "true", "-", digest_of(batch)[:8]]
    assert gold not in listed.stdout + listed.stderr and digest_of(gold) not in listed.stdout

    disabled = api_keys("disable", "--file", path, "--id", "batch", cwd=tmp_path)
    assert disabled.returncode == 0, disabled.stderr
    keys = load_api_keys(path)
    assert check_key(keys, batch, 0.0)[1] == "disabled" and check_key(keys, gold, 0.0)[1] == "ok"
    assert api_keys("list", "--file", path, cwd=tmp_path).stdout.splitlines()[2].split()[4] == "false"
    again = api_keys("disable", "--file", path, "--id", "batch", cwd=tmp_path)
    assert again.returncode == 0 and "already disabled" in again.stderr


def test_edits_keep_comments_and_order(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    old = "old-key-value-imported-from-api-gateway"
    path.write_text(
        f"# production keys\n  - id: imported   # from API Gateway\n    name: Imported\n    sha256: {digest_of(old)}\n"
        "\n# end of the imported keys\n"
    )
    value = add(path, "--name", "New")
    assert api_keys("disable", "--file", path, "--id", "imported", cwd=tmp_path).returncode == 0
    text = path.read_text()
    assert text.startswith("# production keys\n  - id: imported   # from API Gateway\n    enabled: false\n")
    assert "# end of the imported keys\n  - id: key-" in text
    keys = load_api_keys(path)
    assert [k.id for k in keys] == ["imported", value_id(keys, value)] and check_key(keys, old, 0.0)[1] == "disabled"
    assert check_key(keys, value, 0.0)[1] == "ok"


def test_a_flow_list_is_rewritten_with_the_same_meaning(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f'[{{id: a, name: A, sha256: "{digest_of("a" * 20)}", enabled: true}}]\n')
    assert api_keys("disable", "--file", path, "--id", "a", cwd=tmp_path).returncode == 0
    assert path.read_text().startswith("[{id: a, name: A, sha256: ")  # edited in place
    value = add(path, "--name", "B")
    keys = load_api_keys(path)
    assert check_key(keys, "a" * 20, 0.0)[1] == "disabled" and check_key(keys, value, 0.0)[1] == "ok"


def test_refusals_are_exit_2_and_say_where(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    value = add(path, "--name", "A", "--id", "a")
    before = path.read_text()
    cases = [
        (("add", "--file", path, "--name", "B", "--id", "a"), f"{path}:2:7: [0].id: an api key with this id exists"),
        (("add", "--file", path, "--name", "B", "--plan", "gold plan"), "--plan: use 1-64 letters"),
        (("add", "--file", path, "--name", "B", "--id", "a/b"), "--id: use 1-64 letters"),
        (("add", "--file", path, "--name", " "), "--name: must not be empty"),
        (("add", "--file", path, "--name", "B", "--expires", "tomorrow"), "--expires: expected an ISO 8601"),
        (("disable", "--file", path, "--id", "nope"), f"{path}: --id: no api key with id nope"),
        (("list", "--file", tmp_path / "absent.yaml"), "cannot read api key file"),
        (("add", "--file", path), "the following arguments are required: --name"),
    ]
    for (args, result), (_, words) in zip(api_keys_at_once([a for a, _ in cases], tmp_path), cases, strict=True):
        assert result.returncode == 2 and words in result.stderr, (args, result.stderr)
        assert result.stdout == "" and value not in result.stderr
    assert path.read_text() == before

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"- id: a\n  name: A\n  sha256: {value}\n")  # the value pasted where its digest belongs
    every_verb = (
        ("list", "--file", bad),
        ("add", "--file", bad, "--name", "B"),
        ("disable", "--file", bad, "--id", "a"),
    )
    for args, result in api_keys_at_once(every_verb, tmp_path):
        assert result.returncode == 2 and f"{bad}:3:11: [0].sha256: expected" in result.stderr, args
        assert value not in result.stdout + result.stderr
    assert bad.read_text() == f"- id: a\n  name: A\n  sha256: {value}\n"
