"""What every coverage-guided fuzzer shares: the `Target` shape, the documented reason codes, a loop to drive
async code from a synchronous one-input function, and a transport that records what a protocol writes.

A target is a module under `tests/fuzz/targets/` with a `TARGET`. `prepare()` builds the world once per process
(keys, signed requests, a compiled runtime) and returns the one-input function: it feeds the bytes to the parser
and checks the oracle, raising `AssertionError` (or anything else) on a violation, which the engine reports as a
crash. `seeds()` are made at start (signed requests and tokens go stale); `tests/fuzz/corpus/<name>/` holds the
checked-in ones and `tests/fuzz/regressions/<name>/` the minimized crashes, both replayed by `test_fuzzers.py`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REGRESSIONS = HERE / "regressions"

OneInput = Callable[[bytes], None]


@dataclass(frozen=True)
class Target:
    """One fuzzer: a parser family, how to build its oracle-checking one-input function, and its seeds."""

    name: str
    summary: str
    """What is fuzzed and what the oracle asserts (printed by `make fuzz`, copied into docs/reliability.md)."""
    prepare: Callable[[], OneInput]
    seeds: Callable[[], Iterable[bytes]]
    max_len: int = 4096
    """The longest input the engine makes (libFuzzer's -max_len)."""

    def corpus(self) -> list[bytes]:
        """The built seeds, then the checked-in corpus and regressions (each an input the oracle must pass)."""
        return [*self.seeds(), *(path.read_bytes() for path in checked_in(self.name))]


def checked_in(name: str) -> list[Path]:
    """The files of `tests/fuzz/corpus/<name>/` and `tests/fuzz/regressions/<name>/`."""
    found: list[Path] = []
    for folder in (CORPUS / name, REGRESSIONS / name):
        if folder.is_dir():
            found += [path for path in sorted(folder.iterdir()) if path.is_file()]
    return found


def known_reasons() -> frozenset[str]:
    """Every documented reason code: `sidecar/reasons.py` and the JWT and SigV4 families' `errors.py` (the
    custom authorizers' `errors.py` reuses `reasons.py`'s)."""
    from sidecar import reasons
    from sidecar.authorizers.jwt import errors as jwterrors
    from sidecar.authorizers.sigv4 import errors as sigv4errors

    codes = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str) and not k.startswith("STATUS")}
    return frozenset(codes | set(jwterrors.REASONS) | set(sigv4errors.REASONS))


class Loop:
    """One event loop for the whole run: each input runs to completion on it, so nothing crosses inputs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._unhandled)
        self.unhandled: list[str] = []

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """A callback or task that raised with nobody to see it (asyncio would log and go on): an oracle failure."""
        self.unhandled.append(str(context.get("exception") or context.get("message")))

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        result = self.loop.run_until_complete(coro)
        assert not self.unhandled, self.unhandled
        return result

    def settle(self, rounds: int = 4) -> None:
        """Let callbacks and tasks that an input started run (a few loop turns, no clock)."""

        async def turns() -> None:
            for _ in range(rounds):
                await asyncio.sleep(0)

        self.run(turns())


class FakeTransport:
    """Records what a protocol writes; closing is remembered, writing after it is an oracle failure."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.written = bytearray()
        self.closed = False
        self.peer = peer

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def writelines(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def chunks(data: bytes, pieces: int = 3) -> list[bytes]:
    """`data` cut at up to `pieces - 1` points chosen from its own checksum: reads split anywhere, deterministic
    per input (so a crash replays), without spending input bytes on the cuts."""
    if len(data) < 2:
        return [data] if data else []
    seed = zlib.crc32(data)
    cuts = sorted({(seed >> (8 * i)) % len(data) for i in range(pieces - 1)} - {0})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def text(data: bytes) -> str:
    """Bytes as the transports turn them into text (`surrogateescape`: every byte survives)."""
    return data.decode("utf-8", "surrogateescape")
