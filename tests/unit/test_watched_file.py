"""What the file stores share: the stat fingerprint and the poller (a failing look does not stop it)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from sidecar.watched_file import FilePoller, fingerprint


def test_fingerprint_sees_edits_replacements_and_deletions(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("a")
    first = fingerprint([path])
    assert fingerprint([path]) == first
    path.write_text("ab")  # an edit in place: another size
    edited = fingerprint([path])
    assert edited != first
    (tmp_path / "new").write_text("ab")
    os.replace(tmp_path / "new", path)  # the same size, maybe the same mtime: another inode
    assert fingerprint([path]) != edited
    path.unlink()
    assert fingerprint([path]) == ((str(path), -1, -1, -1),)


async def test_the_poller_keeps_looking_after_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    threads: set[int] = set()
    calls = 0

    def look() -> None:
        nonlocal calls
        calls += 1
        threads.add(threading.get_ident())
        if calls == 1:
            raise RuntimeError("the first look fails")
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(calls))

    poller = FilePoller(look, 0.001, "test-watch")
    await poller.start()
    await poller.start()  # a second start does not start a second task
    try:
        assert await asyncio.wait_for(done, 10) == 2
    finally:
        await poller.stop()
    assert not poller.running and threading.get_ident() not in threads  # looks run off the event loop
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failures and failures[0].getMessage() == "test-watch failed; will retry"


async def test_a_poller_without_an_interval_never_runs() -> None:
    poller = FilePoller(lambda: None, 0, "never")
    await poller.start()
    assert not poller.running
    await poller.stop()
