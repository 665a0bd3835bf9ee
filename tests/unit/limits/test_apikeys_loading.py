"""How the key file is read: the quick read (libyaml's events, one validation of the whole list) takes a valid file
without ever building the located one's node tree, agrees with the located read on every file, and leaves every
problem to it (so each stays at its file:line:field); a config load whose key file did not change reuses the
snapshot this process read instead of parsing it again; a key file naming a plan the config lacks is refused at
config load and on a hot reload alike, through the real config loader and pipeline."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from sidecar.config import parse_config
from sidecar.issues import ConfigError
from sidecar.limits import apikeys
from sidecar.limits.apikeys import ApiKeySet, FileApiKeyStore, digest_of, load_api_keys, parse_key_text, parse_keys
from sidecar.pipeline import Pipeline
from sidecar.request import Request
from sidecar.runtime import RuntimeHolder, compile_runtime

from .usage_testkit import GOLD, config_text, key_file

PLANS = ("gold", "silver")


def write(path: Path, text: str) -> Path:
    """Replace the file as editors do (a new inode, the mtime a second on): a reload sees it whatever the clock."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    later = (path.stat().st_mtime_ns if path.exists() else 0) + 1_000_000_000
    os.utime(temp, ns=(later, later))
    os.replace(temp, path)
    return path


def many(count: int, plan: str = "gold") -> str:
    """A key file of `count` keys as `api-keys add` writes them."""
    return "".join(
        f"- id: key-{i:06d}\n  name: customer {i}\n  sha256: {hashlib.sha256(str(i).encode()).hexdigest()}\n"
        f"  plan: {plan}\n  enabled: true\n"
        for i in range(count)
    )


def described(keys: ApiKeySet) -> list[tuple[object, ...]]:
    return [(k.id, k.name, k.plan, k.enabled, k.expires, k.sha256) for k in keys]


@pytest.fixture
def located_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the located read (`parse_yaml`, the node tree) was asked to parse."""
    files: list[str] = []

    def counted(text: str, file: str) -> object:
        files.append(file)
        return parse_key_text(text, file)

    monkeypatch.setattr(apikeys, "parse_key_text", counted)
    return files


def test_a_valid_file_never_builds_the_located_read(tmp_path: Path, located_reads: list[str]) -> None:
    path = write(tmp_path / "keys.yaml", many(2000))
    keys = load_api_keys(path, PLANS)
    assert len(keys) == 2000 and keys.plans == frozenset({"gold"}) and located_reads == []
    assert keys.find("1999") is keys.by_id("key-001999") is not None
    broken = write(tmp_path / "broken.yaml", many(2000).replace("sha256: ", "sha256: x", 1))
    with pytest.raises(ConfigError) as info:
        load_api_keys(broken, PLANS)
    assert [(i.line, i.field) for i in info.value.issues] == [(3, "[0].sha256")] and located_reads == [str(broken)]


def _digest(n: int) -> str:
    return hashlib.sha256(f"value-{n}".encode()).hexdigest()


VALID = {
    "block": f"# keys\n- id: a\n  name: A b, c\n  sha256: {_digest(1)}\n  plan: gold\n",
    "flow": f"- {{id: a, name: 'x: y # z', sha256: '{_digest(1)}', enabled: no, expires: 2027-01-01}}\n",
    "json": f'[{{"id": "j", "name": "caf\\u00e9 \\U0001F600", "sha256": "{_digest(2)}", "plan": "silver"}}]',
    "timestamps": f"- id: t\n  name: T\n  sha256: {_digest(3)}\n  expires: 2027-01-01 02:00:00+02:00\n"
    f"- id: u\n  name: U\n  sha256: {_digest(4)}\n  expires: '2027-06-01T00:00:00Z'\n",
    "anchors": f"- {{id: a, name: &n shared, sha256: {_digest(6)}}}\n- {{id: b, name: *n, sha256: {_digest(7)}}}\n",
    "merge": f"- &base {{id: a, name: A, sha256: {_digest(8)}, plan: gold}}\n"
    f"- {{<<: *base, id: b, sha256: {_digest(9)}}}\n",
    "tagged": f"- !!map {{id: !!str a1, name: A, sha256: {_digest(10)}}}\n",
    "document-markers": f"%YAML 1.1\n---\n- {{id: a, name: A, sha256: {_digest(11)}}}\n...\n",
    "empty": "[]\n",
    "unicode-name": f"- id: a\n  name: Ünïcødé ✓\n  sha256: {_digest(12)}\n",
}


LEFT_TO_THE_LOCATED_READ = {"anchors", "merge", "tagged"}
"""Valid files the quick read declines (YAML it does not build itself): slower, and still accepted."""


@pytest.mark.parametrize(("name", "text"), VALID.items(), ids=VALID.keys())
def test_both_reads_agree_on_a_valid_file(tmp_path: Path, located_reads: list[str], name: str, text: str) -> None:
    path = write(tmp_path / "keys.yaml", text)
    quick = load_api_keys(path, PLANS)
    assert located_reads == ([str(path)] if name in LEFT_TO_THE_LOCATED_READ else [])
    located = parse_keys(*parse_key_text(text, str(path)), PLANS)
    assert described(quick) == described(located) and quick.version == located.version and quick.source == str(path)


def test_without_libyaml_the_quick_read_is_the_same(
    tmp_path: Path, located_reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apikeys, "_Loader", yaml.SafeLoader)  # PyYAML built without the C extension
    for name, text in VALID.items():
        path = write(tmp_path / f"{name}.yaml", text)
        quick = load_api_keys(path, PLANS)
        located = parse_keys(*parse_key_text(text, str(path)), PLANS)
        assert described(quick) == described(located), name
    assert sorted(located_reads) == sorted(str(tmp_path / f"{name}.yaml") for name in LEFT_TO_THE_LOCATED_READ)


INVALID = {
    "lone-surrogate-name": (f'[{{"id": "a", "name": "\\ud800", "sha256": "{_digest(1)}"}}]', 1, "[0].name"),
    "lone-surrogate-unknown-key": (f'[{{"id": "a", "name": "A", "\\udfff": 1, "sha256": "{_digest(1)}"}}]', 1, "[0]"),
    "nested-value": (f"- {{id: a, name: [A], sha256: {_digest(1)}}}\n", 1, "[0].name"),
    "two-documents": f"- {{id: a, name: A, sha256: {_digest(1)}}}\n---\n[]\n",
    "int-id": (f"- {{id: 12, name: A, sha256: {_digest(1)}}}\n", 1, "[0].id"),
    "mapping-key": (f"- {{? [x]: 1, id: a, name: A, sha256: {_digest(1)}}}\n", 0, ""),
    "duplicate-across-merge": (
        f"- &a {{id: a, name: A, sha256: {_digest(1)}}}\n- {{<<: *a, id: b}}\n",
        1,  # where the merged value is written
        "[1].sha256",
    ),
    "repeated-key": (f"- id: a\n  name: first\n  name: second\n  sha256: {_digest(5)}\n", 3, "[0].name"),
    "impossible-date": (f"- {{id: a, name: A, sha256: {_digest(1)}, expires: 2027-02-30}}\n", 1, "[0].expires"),
    "impossible-offset": (
        f"- id: a\n  name: A\n  sha256: {_digest(1)}\n  expires: 2027-01-01T00:00:00+25:00\n",
        4,
        "[0].expires",
    ),
    "undefined-plan": (f"- id: a\n  name: A\n  sha256: {_digest(1)}\n  plan: bronze\n", 4, "[0].plan"),
    "scalar-root": ("just text\n", 1, ""),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_every_problem_is_left_to_the_located_read(tmp_path: Path, case: tuple[str, int, str] | str) -> None:
    text, line, field = case if isinstance(case, tuple) else (case, 0, "")
    path = write(tmp_path / "keys.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_api_keys(path, PLANS)
    first = info.value.issues[0]
    assert first.file == str(path) and (first.line or 0) >= (1 if line else 0), str(info.value)
    if line:
        assert (first.line, first.field) == (line, field), str(info.value)


def test_an_impossible_date_is_located_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.yaml", f"- id: a\n  name: A\n  sha256: {_digest(1)}\n  expires: 2027-02-30\n")
    with pytest.raises(ConfigError) as info:
        load_api_keys(path)  # PyYAML raises a bare ValueError for it, which used to escape every caller
    words = "not a real date and time (a day, month or offset out of range)"
    assert str(info.value) == f"{path}:4:12: [0].expires: {words}"
    with pytest.raises(ConfigError, match=r":4:12: \[0\]\.expires"):
        FileApiKeyStore(path, PLANS, reload_interval=0)


# ---------------------------------------------------------------------------------------------------------------
# The process's last snapshot
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every key file read (the text, whichever way it is then parsed)."""
    paths: list[Path] = []
    real = apikeys.read_key_text

    def counted(path: Path) -> str:
        paths.append(path)
        return real(path)

    monkeypatch.setattr(apikeys, "read_key_text", counted)
    return paths


def test_an_unchanged_file_is_not_parsed_again_by_a_new_store(tmp_path: Path, reads: list[Path]) -> None:
    path = write(tmp_path / "keys.yaml", many(3))
    first = FileApiKeyStore(path, PLANS, reload_interval=0)
    second = FileApiKeyStore(path, ["silver", "gold"], reload_interval=0)  # a config reload (SIGHUP, other edits)
    assert second.current() is first.current() and reads == [path]

    write(path, many(4))
    third = FileApiKeyStore(path, PLANS, reload_interval=0)  # a changed file is always read anew
    assert len(third.current()) == 4 and reads == [path, path]
    assert first.reload_if_changed() is True  # the old store's own watch: the new store's snapshot, not re-read
    assert first.current() is third.current() and reads == [path, path]


def test_a_store_reload_is_what_the_next_config_load_reuses(tmp_path: Path, reads: list[Path]) -> None:
    path = write(tmp_path / "keys.yaml", many(3))
    store = FileApiKeyStore(path, PLANS, reload_interval=0)
    write(path, many(5))
    assert store.reload_if_changed() is True and len(reads) == 2
    assert FileApiKeyStore(path, PLANS, reload_interval=0).current() is store.current() and len(reads) == 2


def test_a_reused_snapshot_is_still_checked_against_the_plans(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.yaml", many(2, plan="silver"))
    FileApiKeyStore(path, PLANS, reload_interval=0)
    with pytest.raises(ConfigError) as info:
        FileApiKeyStore(path, ["gold"], reload_interval=0)  # the config dropped silver; the file did not change
    assert [(i.line, i.field) for i in info.value.issues] == [(4, "[0].plan"), (9, "[1].plan")]


def test_a_bad_file_is_never_remembered(tmp_path: Path, reads: list[Path]) -> None:
    path = write(tmp_path / "keys.yaml", "- id: [\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match="invalid YAML/JSON"):
            FileApiKeyStore(path, PLANS, reload_interval=0)
    assert reads == [path, path]


# ---------------------------------------------------------------------------------------------------------------
# Through the config loader and the pipeline
# ---------------------------------------------------------------------------------------------------------------


def _request() -> Request:
    return Request(
        method="GET",
        raw_path="/orders/1",
        path="/orders/1",
        headers={"host": "api.example.test", "x-api-key": GOLD},
        host="api.example.test",
        source_address="203.0.113.9",
        time=1_800_000_000.0,
        protocol="HTTP/1.1",
    )


async def test_a_hot_reload_naming_an_undefined_plan_keeps_the_served_keys(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    text = config_text(keys)
    (tmp_path / "config.yaml").write_text(text)
    runtime = compile_runtime(parse_config(text, str(tmp_path / "config.yaml")))
    pipe = Pipeline(RuntimeHolder(runtime))
    assert (await pipe.check(_request())).allowed
    store = runtime.gates.keys if runtime.gates is not None else None
    assert isinstance(store, FileApiKeyStore)

    good = keys.read_text()
    write(keys, good.replace("plan: gold", "plan: glod", 1))  # a typo in k-gold's plan
    assert store.reload_if_changed("file change") is False
    last = store.status.last
    assert last is not None and last.outcome == "rejected"
    assert f"{keys}:5:9: [0].plan: names usage plan 'glod'" in last.error and "did you mean `gold`" in last.error
    assert (await pipe.check(_request())).allowed  # the previous snapshot serves on

    with pytest.raises(ConfigError) as info:  # the same file at config load: the same issue
        compile_runtime(parse_config(text, str(tmp_path / "config.yaml")))
    assert str(info.value) in last.error
    assert digest_of(GOLD) not in last.error and GOLD not in last.error
