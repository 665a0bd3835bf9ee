"""The API key file's own reloads, reported like an authorizer's files: through the real admin listener (/readyz,
/metrics on 127.0.0.1) and decided on by requests through the real HTTP listener. A SIGHUP with the config
unchanged looks at the key file at once (a new key works, a disabled one is refused); a broken key file is
counted and shown with its file:line while the old keys serve on, and fixing it clears it and retries the config
reload it had made fail.

The key store's own poll is stopped in each test (`store.stop()`), so every reload here is the one the test
asks for: no watcher timing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.limits import build
from sidecar.limits.apikeys import FileApiKeyStore, digest_of
from sidecar.serve.server import Sidecar
from tests.unit.limits.usage_testkit import GOLD
from tests.unit.serve.test_admin_usage import running, send
from tests.unit.serve.test_reload_states import config_retried, counted, ready_state, reload_counts, rewrite

NEW = "new-key-value-added-while-serving-0123"


@pytest.fixture(autouse=True)
def fresh_process_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "_PROCESS_COUNTERS", None)


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with running(tmp_path) as started:
        await key_store(started).stop()  # no poll: the test's reloads only
        yield started


def key_store(sidecar: Sidecar) -> FileApiKeyStore:
    gates = sidecar.runtime.gates
    assert gates is not None and isinstance(gates.keys, FileApiKeyStore)
    return gates.keys


def admin_port(sidecar: Sidecar) -> int:
    assert sidecar.admin is not None
    return sidecar.admin.port


async def test_sighup_reloads_the_key_file_and_readyz_reports_it(sidecar: Sidecar) -> None:
    store, port = key_store(sidecar), admin_port(sidecar)
    body = await ready_state(port)
    assert body["authorizer_reloads"] == {} and body["reload_errors"] == {}
    before = await reload_counts(port)
    text = store.path.read_text()
    added = f"- id: k-new\n  name: new\n  sha256: {digest_of(NEW)}\n  plan: gold\n"
    assert text.startswith("- id: k-gold\n")
    rewrite(store.path, text.replace("enabled: true", "enabled: false", 1) + added)  # disables k-gold
    assert await send(sidecar, NEW, 1) == [403]  # not reloaded yet: the poll is stopped

    assert await sidecar.reload("SIGHUP") is True  # the config is unchanged: the key store looks at its file
    assert await send(sidecar, NEW, 1) == [200]
    assert await send(sidecar, GOLD, 1) == [403]  # disabled in the same edit
    body = await ready_state(port)
    assert body["last_reload"]["outcome"] == "unchanged"
    keys = body["authorizer_reloads"]["api_keys"]
    assert (keys["outcome"], keys["why"], keys["version"]) == ("ok", "SIGHUP", store.current().version)
    assert counted(before, await reload_counts(port)) == {("config", "unchanged"): 1, ("api_keys", "ok"): 1}
    assert NEW not in str(body) and digest_of(NEW) not in str(body)


async def test_a_broken_key_file_is_shown_at_its_line_and_recovery_retries_the_config(sidecar: Sidecar) -> None:
    store, port = key_store(sidecar), admin_port(sidecar)
    before = await reload_counts(port)
    good = store.path.read_text()
    rewrite(store.path, good + "- id: k-broken\n  name: broken\n  sha256: not-hex\n")
    assert store.reload_if_changed("file change") is False  # as the poll would
    body = await ready_state(port)
    assert body["ready"] is True  # the old keys serve on
    assert body["authorizer_reloads"]["api_keys"]["outcome"] == "rejected"
    problem = body["reload_errors"]["api_keys"]
    line = len(good.splitlines()) + 3
    assert f"{store.path}:{line}:" in problem and "sha256" in problem and "not-hex" not in problem
    assert await send(sidecar, GOLD, 1) == [200]

    assert await sidecar.reload("SIGHUP") is False  # a new runtime needs the key file: rejected, with its error
    body = await ready_state(port)
    assert body["last_reload"]["outcome"] == "rejected" and f"{store.path}:{line}:" in body["reload_errors"]["config"]

    rewrite(store.path, good)
    assert store.reload_if_changed("file change") is False  # what it serves again: unchanged, no longer rejected
    await config_retried(sidecar)
    body = await ready_state(port)
    assert body["reload_errors"] == {} and body["last_reload"]["why"] == "authorizer files recovered"
    assert counted(before, await reload_counts(port)) == {
        ("api_keys", "rejected"): 1,
        ("api_keys", "unchanged"): 1,
        ("config", "rejected"): 1,
        ("config", "unchanged"): 1,
    }
