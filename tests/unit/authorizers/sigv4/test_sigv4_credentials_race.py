"""Two credential reloads at once (the store's poller and a SIGHUP) install the newest file, never the older read:
a key removed from the file stops verifying, and the store keeps noticing later edits."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from sidecar.authorizers.sigv4 import credentials as module
from sidecar.authorizers.sigv4.credentials import FileCredentialStore

ENTRY = """  - access_key_id: {key}
    secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
    principal_arn: arn:aws:iam::123456789012:user/{user}
"""


def write(path: Path, *keys: str) -> None:
    """The credentials file holding `keys`, its mtime moved on so every write is a change by stat."""
    later = path.stat().st_mtime_ns + 1_000_000_000 if path.exists() else None
    path.write_text("credentials:\n" + "".join(ENTRY.format(key=k, user=k.lower()) for k in keys))
    if later is not None:
        os.utime(path, ns=(later, later))


def test_a_reload_racing_a_newer_one_never_installs_the_older_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "credentials.yaml"
    write(path, "AKIAKEEP00000000EXAM", "AKIAREVOKED000000EXA")
    store = FileCredentialStore(path, reload_interval=0)
    real = module.load_credentials_file
    read_old, release = threading.Event(), threading.Event()

    def slow_first_load(*args: Any, **kwargs: Any) -> Any:
        loaded = real(*args, **kwargs)
        if not read_old.is_set():
            read_old.set()  # the poller has read the file as it was...
            assert release.wait(10)  # ...and is held before it installs what it read
        return loaded

    monkeypatch.setattr(module, "load_credentials_file", slow_first_load)
    write(path, "AKIAKEEP00000000EXAM", "AKIAREVOKED000000EXA", "AKIANEW000000000EXAM")
    poller = threading.Thread(target=store.reload_if_changed)
    poller.start()
    assert read_old.wait(10)
    write(path, "AKIAKEEP00000000EXAM")  # the operator revokes two keys
    sighup = threading.Thread(target=store.reload_if_changed, args=("SIGHUP",))
    sighup.start()
    release.set()
    poller.join(10)
    sighup.join(10)
    assert not poller.is_alive() and not sighup.is_alive()
    assert store.current.get("AKIAREVOKED000000EXA") is None
    assert store.current.get("AKIANEW000000000EXAM") is None
    assert store.current.get("AKIAKEEP00000000EXAM") is not None
    write(path, "AKIAKEEP00000000EXAM", "AKIALATER00000000EXA")  # and later edits are still seen
    assert store.reload_if_changed() is True
    assert store.current.get("AKIALATER00000000EXA") is not None
