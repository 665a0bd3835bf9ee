"""The API key file: loading (every mistake at its line and field, never a value), lookups, and hot reload."""

from __future__ import annotations

import logging
import os
import string
from pathlib import Path

import pytest

from sidecar.issues import ConfigError
from sidecar.limits.apikeys import (
    MAX_VALUE_LENGTH,
    ApiKey,
    ApiKeySet,
    FileApiKeyStore,
    StaticApiKeyStore,
    check_key,
    digest_of,
    load_api_keys,
    new_key_value,
)

VALUE = "k3y-Value_ThatMustNeverLeak-0123456789"
OTHER = "another-key-value-of-forty-characters-xx"
DIGEST = digest_of(VALUE)
EXPIRES = 1798761600.0  # 2027-01-01T00:00:00Z
PLANS = ("gold", "silver")
"""The usage plans of the config the stores here serve."""


def write(path: Path, text: str) -> Path:
    """Replace the file as editors and `api-keys` do (a new inode), so the reload sees it whatever the clock."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
    return path


def entry(id: str = "mobile", value: str = VALUE, extra: str = "") -> str:
    return f"- id: {id}\n  name: Mobile app\n  sha256: {digest_of(value)}\n{extra}"


def test_a_good_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "keys.yaml",
        "# comment\n"
        + entry("mobile", extra="  plan: gold\n  expires: 2027-01-01T00:00:00Z\n")
        + entry("batch", OTHER, extra="  enabled: false\n  plan: silver\n  expires: '2027-01-01T02:00:00+02:00'\n")
        + "- {id: plain, name: x, sha256: '"
        + digest_of("third-value-of-twenty+")
        + "', expires: 2027-01-01}\n",
    )
    keys = load_api_keys(path)
    mobile, batch, plain = (keys.by_id(i) for i in ("mobile", "batch", "plain"))
    assert mobile == ApiKey("mobile", "Mobile app", "gold", True, EXPIRES, DIGEST)
    assert batch is not None and not batch.enabled and batch.expires == EXPIRES and batch.plan == "silver"
    assert plain is not None and plain.plan is None and plain.enabled and plain.expires == EXPIRES
    assert keys.plans == frozenset({"gold", "silver"})
    assert len(keys) == 3 and [k.id for k in keys] == ["mobile", "batch", "plain"]
    assert keys.find(VALUE) is mobile and keys.find(OTHER) is batch and keys.by_id("nope") is None
    assert DIGEST not in repr(mobile) and "mobile" in repr(mobile)
    assert keys.source == str(path)


def test_an_empty_list_is_no_keys_and_json_is_yaml(tmp_path: Path) -> None:
    assert len(load_api_keys(write(tmp_path / "keys.yaml", "[]\n"))) == 0
    json_text = f'[{{"id": "j", "name": "json", "sha256": "{DIGEST}"}}]'
    assert load_api_keys(write(tmp_path / "keys.json", json_text)).find(VALUE) is not None


@pytest.mark.parametrize(
    ("text", "field", "line", "words"),
    [
        ("- name: Mobile app\n  sha256: " + DIGEST + "\n", "[0].id", 1, "missing required key"),
        (entry("a") + "- name: B\n  sha256: " + digest_of(OTHER) + "\n", "[1].id", 4, "missing required key"),
        ("- id: a\n  name: A\n  sha256: 5e88\n", "[0].sha256", 3, "64 lowercase hex digits"),
        ("- id: a\n  name: A\n  sha256: " + DIGEST.upper() + "\n", "[0].sha256", 3, "(lowercase)"),
        ("- id: a\n  name: A\n  sha256: " + "g" * 64 + "\n", "[0].sha256", 3, "hex"),
        ("- id: a\n  name: A\n  sha256: " + VALUE + "\n", "[0].sha256", 3, "hex"),  # the value pasted in
        (entry("a") + entry("a", OTHER), "[1].id", 4, "duplicate id (also [0])"),
        (entry("a") + entry("b"), "[1].sha256", 6, "duplicate sha256 (also [0])"),
        (entry("a", extra="  expires: soon\n"), "[0].expires", 4, "expected a date and time"),
        (entry("a", extra="  expires: 2027\n"), "[0].expires", 4, "ISO 8601"),
        (entry("a", extra="  enabled: maybe\n"), "[0].enabled", 4, "expected true or false"),
        (entry("a", extra="  plan: gold plan\n"), "[0].plan", 4, "1-64 letters, digits, '-' or '_'"),
        (entry("a", extra='  plan: "gold\\n"\n'), "[0].plan", 4, "1-64 letters, digits, '-' or '_'"),
        (entry("a", extra="  enabeld: false\n"), "[0].enabeld", 4, "did you mean `enabled`"),
        (entry("a", extra=f"  value: {VALUE}\n"), "[0].value", 4, "unknown key"),
        ("- id: bad/id\n  name: A\n  sha256: " + DIGEST + "\n", "[0].id", 1, "1-64 letters, digits, '-' or '_'"),
        ("- id: a\n  name: ''\n  sha256: " + DIGEST + "\n", "[0].name", 2, "must not be empty"),
        ("- just a string\n", "[0]", 1, "expected a mapping"),
        ("keys:\n" + entry("a"), "", 1, "expected a list"),
        ("", "", 0, "expected a list"),
        ("- id: [\n", "", 2, "invalid YAML/JSON"),
    ],
    ids=[
        "missing-id",
        "missing-id-second",
        "short-hex",
        "upper-hex",
        "not-hex",
        "value-as-digest",
        "duplicate-id",
        "duplicate-digest",
        "bad-expires",
        "number-expires",
        "bad-enabled",
        "bad-plan",
        "plan-with-newline",
        "typo",
        "value-key",
        "bad-id",
        "empty-name",
        "entry-not-mapping",
        "not-a-list",
        "empty-file",
        "syntax",
    ],
)
def test_each_error_is_located_and_never_shows_a_value(
    tmp_path: Path, text: str, field: str, line: int, words: str
) -> None:
    path = write(tmp_path / "keys.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_api_keys(path)
    first = info.value.issues[0]
    assert (first.file, first.field, first.line) == (str(path), field, line), str(info.value)
    assert words in first.message
    assert VALUE not in str(info.value)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    text = "- id: a\n  name: A\n  sha256: nope\n- name: B\n  sha256: " + DIGEST + "\n" + entry("c")
    with pytest.raises(ConfigError) as info:
        load_api_keys(write(tmp_path / "keys.yaml", text))
    assert [(i.field, i.line) for i in info.value.issues] == [("[0].sha256", 3), ("[1].id", 4), ("[2].sha256", 8)]


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read api key file"):
        load_api_keys(tmp_path / "absent.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"- id: \xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_api_keys(tmp_path / "latin1.yaml")


def test_the_set_refuses_what_the_file_refuses() -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        ApiKeySet([ApiKey("a", sha256=DIGEST.upper())])
    with pytest.raises(ValueError, match="duplicate"):
        ApiKeySet([ApiKey("a", sha256=DIGEST), ApiKey("b", sha256=DIGEST)])
    with pytest.raises(ValueError, match="duplicate"):
        ApiKeySet([ApiKey("a", sha256=DIGEST), ApiKey("a", sha256=digest_of(OTHER))])


def _keys() -> ApiKeySet:
    return ApiKeySet(
        [
            ApiKey("ok", "Ok", "gold", True, None, digest_of("ok-value-00000000000000")),
            ApiKey("off", "Off", "gold", False, None, digest_of("off-value-0000000000000")),
            ApiKey("old", "Old", None, True, EXPIRES, digest_of("old-value-0000000000000")),
        ]
    )


@pytest.mark.parametrize(
    ("value", "now", "found", "why"),
    [
        ("ok-value-00000000000000", EXPIRES, "ok", "ok"),
        ("off-value-0000000000000", 0.0, "off", "disabled"),
        ("old-value-0000000000000", EXPIRES - 0.001, "old", "ok"),
        ("old-value-0000000000000", EXPIRES, "old", "expired"),
        ("old-value-0000000000000", EXPIRES + 86400, "old", "expired"),
        ("ok-value-00000000000001", 0.0, None, "unknown"),
        ("OK-VALUE-00000000000000", 0.0, None, "unknown"),
        ("ok-value-00000000000000 ", 0.0, None, "unknown"),
        ("\ud800 not encodable as UTF-8", 0.0, None, "unknown"),
        ("x" * (MAX_VALUE_LENGTH + 1), 0.0, None, "unknown"),
        ("", 0.0, None, "missing"),
        (None, 0.0, None, "missing"),
    ],
    ids=[
        "ok",
        "disabled",
        "before-expiry",
        "at-expiry",
        "after-expiry",
        "unknown",
        "case",
        "trailing-space",
        "lone-surrogate",
        "too-long",
        "empty",
        "absent",
    ],
)
def test_check_key(value: str | None, now: float, found: str | None, why: str) -> None:
    key, reason = check_key(_keys(), value, now)
    assert reason == why
    assert (key.id if key else None) == found


def test_values_of_every_length_api_gateway_allows_are_found() -> None:
    alphabet = string.ascii_letters + string.digits + "-_"
    values = {n: "".join(alphabet[(n * 7 + i) % len(alphabet)] for i in range(n)) for n in range(20, 129)}
    keys = ApiKeySet(ApiKey(f"k{n}", sha256=digest_of(v)) for n, v in values.items())
    for n, value in values.items():
        assert keys.find(value) is keys.by_id(f"k{n}")
        assert keys.find(value[:-1]) is None  # one character short is another value


def test_new_key_values() -> None:
    values = {new_key_value() for _ in range(200)}
    assert len(values) == 200
    allowed = set(string.ascii_letters + string.digits + "-_")
    assert all(len(v) == 40 and set(v) <= allowed for v in values)


def test_a_static_store_serves_its_set() -> None:
    keys = _keys()
    store = StaticApiKeyStore(keys)
    assert store.current() is keys and store.reload_statuses() == ()


# ---------------------------------------------------------------------------------------------------------------
# Reload (driven directly: no watcher timing)
# ---------------------------------------------------------------------------------------------------------------


def test_an_edit_is_a_new_snapshot_a_bad_edit_keeps_the_old(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.limits.apikeys")
    path = write(tmp_path / "keys.yaml", entry("mobile"))
    store = FileApiKeyStore(path, PLANS, clock=lambda: 1234.0, reload_interval=0)
    first = store.current()
    (status,) = store.reload_statuses()
    assert status.source == "api_keys" and status.last is None
    assert store.reload_if_changed() is False  # nothing changed on disk

    write(path, entry("mobile", extra="  enabled: false\n") + entry("batch", OTHER))
    assert store.reload_if_changed() is True
    second = store.current()
    assert second is not first and second.version != first.version
    assert check_key(second, VALUE, 0.0)[1] == "disabled" and check_key(second, OTHER, 0.0)[1] == "ok"
    assert status.last is not None and (status.last.outcome, status.last.at) == ("ok", 1234.0)

    write(path, entry("mobile") + f"- id: batch\n  name: B\n  sha256: {VALUE}\n")  # the value pasted as digest
    assert store.reload_if_changed("SIGHUP") is False
    assert store.current() is second and store.reload_errors == 1
    assert status.last is not None and status.last.outcome == "rejected" and status.last.why == "SIGHUP"
    assert f"{path}:6:11: [1].sha256:" in status.last.error
    rejected = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(rejected) == 1 and f"{path}:6:11: [1].sha256" in rejected[0]
    assert all(VALUE not in r.getMessage() for r in caplog.records)

    write(path, "# only a comment more\n" + entry("mobile", extra="  enabled: false\n") + entry("batch", OTHER))
    assert store.reload_if_changed() is False  # the same keys as served: a new snapshot would buy nothing
    assert store.current() is second and status.last is not None and status.last.outcome == "unchanged"
    assert status.problem == ""


async def test_recheck_files_reloads_an_edit(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.yaml", entry("mobile"))
    store = FileApiKeyStore(path, PLANS, reload_interval=0)
    await store.recheck_files("config reload")
    assert store.reload_statuses()[0].last is None  # unchanged on disk: not even looked at
    write(path, "[]\n")
    await store.recheck_files("config reload")
    assert len(store.current()) == 0 and check_key(store.current(), VALUE, 0.0)[1] == "unknown"


def test_a_bad_file_fails_the_first_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        FileApiKeyStore(write(tmp_path / "keys.yaml", "{}\n"), PLANS)


async def test_the_store_poller_starts_and_stops(tmp_path: Path) -> None:
    store = FileApiKeyStore(write(tmp_path / "keys.yaml", "[]\n"), PLANS, reload_interval=30)
    await store.start()
    assert store._poller.running
    await store.stop()
    assert not store._poller.running
    never = FileApiKeyStore(tmp_path / "keys.yaml", PLANS, reload_interval=0)
    await never.start()
    assert not never._poller.running


# ---------------------------------------------------------------------------------------------------------------
# Plans: a key must name a plan the config defines, at load and on every reload
# ---------------------------------------------------------------------------------------------------------------


def test_a_key_naming_an_undefined_plan_fails_the_first_load_at_its_plan(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.yaml", entry("mobile", extra="  plan: gold\n") + entry("b", OTHER, "  plan: glod\n"))
    with pytest.raises(ConfigError) as info:
        FileApiKeyStore(path, PLANS, reload_interval=0)
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.column, issue.field) == (str(path), 8, 9, "[1].plan")
    assert "'glod'" in issue.message and "(gold, silver)" in issue.message and "did you mean `gold`" in issue.message
    with pytest.raises(ConfigError, match="none defined"):
        FileApiKeyStore(path, (), reload_interval=0)
    assert len(FileApiKeyStore(path, ("gold", "glod"), reload_interval=0).current()) == 2
    assert len(load_api_keys(path)) == 2  # without plans (the api-keys tool) a plan is only a name


def test_a_reload_naming_an_undefined_plan_is_rejected_and_the_old_keys_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "keys.yaml", entry("mobile", extra="  plan: gold\n"))
    store = FileApiKeyStore(path, PLANS, reload_interval=0)
    serving = store.current()
    write(path, entry("mobile", extra="  plan: glod\n"))  # a typo
    assert store.reload_if_changed("SIGHUP") is False
    assert store.current() is serving and store.reload_errors == 1
    assert check_key(store.current(), VALUE, 0.0) == (serving.by_id("mobile"), "ok")
    last = store.status.last
    assert last is not None and (last.outcome, last.why) == ("rejected", "SIGHUP")
    assert f"{path}:4:9: [0].plan: names usage plan 'glod'" in last.error
    (logged,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"{path}:4:9: [0].plan" in logged and VALUE not in logged

    write(path, entry("mobile", extra="  plan: silver\n"))
    assert store.reload_if_changed() is True
    assert store.current().plans == frozenset({"silver"}) and store.status.problem == ""
