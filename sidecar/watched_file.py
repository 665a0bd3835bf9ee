"""Files the sidecar re-reads while it serves (the SigV4 credential file, the API key file): how a change is seen,
the poller that looks for one, how a file that cannot be read is reported, and the hooks every such store offers.

Each store keeps its own reload rules (what a bad file keeps, what counts as unchanged, what it logs); what they
share is the noticing and the lifecycle, so it lives here once instead of in every store. Imports only the leaf
`issues.py`, so every wing can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .issues import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from .metrics import ReloadStatus

log = logging.getLogger(__name__)

FileStat = tuple[str, int, int, int]
"""(path, mtime in ns, size, inode); -1s for a file that cannot be stat'ed."""


def fingerprint(paths: Iterable[Path]) -> tuple[FileStat, ...]:
    """What the files look like on disk, without reading them: an edit (mtime, size), a replacement by rename
    (a new inode: editors and `os.replace` write that way) and a deletion each change it. Stat'ed before a
    store reads the files, so an edit landing during the read differs from what was recorded and is seen next
    time."""
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(path), -1, -1, -1))
    return tuple(out)


def why_unreadable(exc: Exception) -> str:
    """Why a file could not be read, without its contents (a decoding error quotes the bytes it choked on)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.__class__.__name__


def read_watched_text(path: Path, what: str) -> str:
    """A watched file's text, or a `ConfigError` at the file saying why it cannot be read (`what`: "credentials
    file"), never what it holds."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(path), 0, 0, "", f"cannot read {what}: {why_unreadable(exc)}")]) from None


class WatchedStore:
    """The lifecycle a store of file-backed state (credentials, API keys) offers its owner besides its snapshot.
    The defaults are a fixed store's: nothing to start, no reloads of its own, no files to look at."""

    async def start(self) -> None:
        """Begin background refresh."""

    async def stop(self) -> None:
        """Stop background refresh."""

    def reload_statuses(self) -> tuple[ReloadStatus, ...]:
        """The store's own reloads (for /readyz and `authz_config_reloads_total`): none for a fixed store."""
        return ()

    async def recheck_files(self, why: str) -> None:
        """Reload now if the store's files changed (a SIGHUP, a config reload: `Authorizer.recheck_files`)."""


class FilePoller:
    """Calls `look` in a worker thread (file reads stay off the event loop) every `interval` seconds, from
    `start` until `stop`. An exception from `look` is logged and the next look still happens: a poller that
    died would silently freeze what it reloads (revoked credentials or keys would stay valid)."""

    def __init__(self, look: Callable[[], object], interval: float, name: str) -> None:
        self.look = look
        self.interval = interval
        self.name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the poller's task is alive (started, not stopped, not crashed)."""
        return self._task is not None and not self._task.done()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.look)
            except Exception:
                log.exception("%s failed; will retry", self.name)

    async def start(self) -> None:
        """Begin polling (an interval of 0 or less means never: the owner reloads only when asked)."""
        if self._task is None and self.interval > 0:
            self._task = asyncio.create_task(self._poll(), name=self.name)

    async def stop(self) -> None:
        """Stop polling and wait for the task to end (a look already running in its thread finishes alone)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
