"""Structured decision logs: one JSON line per decision, denials always, allows sampled.

What a line may carry is a closed list of fields (below); it never carries headers, tokens, signatures, cookies,
API keys or the query string (presigned URLs put credentials there), so no secret can reach a log through it.
Lines are buffered and written by a background task every `flush_interval` (or when the buffer fills), so the
hot path pays for building a tuple and appending it, not for serialization or a write system call per request;
the writer formats and writes in slices of a few hundred lines per event-loop turn, so a full buffer never
stalls the Checks behind it (a single large flush was a visible stall under load).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from .memo import BoundedMemo
from .request import Decision, Request

log = logging.getLogger(__name__)

FIELDS = (
    "time",
    "request_id",
    "route",
    "method",
    "path",
    "source_ip",
    "principal",
    "authorizer",
    "decision",
    "status",
    "reason",
    "statement",
    "latency_us",
    "cache",
    "gate",
)
_MAX_BUFFER = 4096
_SLICE = 256
"""Entries formatted and written per event-loop turn (~1 ms of work)."""
_MAX_RUNS = 4096
"""Memoized runs of repeating fields kept by the formatter (routes x verdicts is a small set in practice)."""
_Entry = tuple[float, str, str, str, str, str, str | None, str, bool, int, str, str, float, str, str]
_quote = json.encoder.encode_basestring_ascii  # C: a JSON string literal, ASCII-safe


class DecisionLogger:
    """Collects decision records and writes them as JSON lines off the hot path."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        allow_sample_rate: float = 1.0,
        flush_interval: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.stream = stream or sys.stdout
        self.allow_sample_rate = allow_sample_rate
        self.flush_interval = flush_interval
        self._random = (rng or random.Random()).random  # noqa: S311 - sampling, not security
        self._buffer: list[_Entry] = []
        self._formatter = _LineFormatter()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, request: Request, decision: Decision, seconds: float, cache: str = "") -> None:
        """Queue one decision (allows only when sampled).

        The entry is a tuple of strings and numbers: cheap to build, and the cyclic GC stops tracking such a
        tuple at its first look, so a full buffer adds nothing to what the collector walks.
        """
        if decision.allowed:
            rate = self.allow_sample_rate
            if rate < 1.0 and (rate <= 0 or self._random() >= rate):  # at 1.0 (the default) no draw is needed
                return
        if len(self._buffer) >= _MAX_BUFFER:
            self.dropped += 1
            return
        principal = decision.principal
        self._buffer.append(
            (
                request.time,
                request.request_id,
                decision.route,
                request.method,
                request.path,
                request.source_address,
                principal.id if principal is not None else None,
                decision.authorizer,
                decision.allowed,
                decision.status,
                decision.reason,
                decision.statement,
                seconds,
                cache,
                decision.gate,
            )
        )

    def flush(self, limit: int | None = None) -> None:
        """Write what is buffered now (at most `limit` entries, oldest first)."""
        if not self._buffer:
            return
        if limit is None or len(self._buffer) <= limit:
            batch, self._buffer = self._buffer, []
        else:
            batch, self._buffer = self._buffer[:limit], self._buffer[limit:]
        lines = self._formatter.lines(batch)
        try:
            self.stream.write(lines)
            self.stream.flush()
        except (OSError, ValueError):
            self.dropped += len(batch)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            while self._buffer:  # in slices, yielding between them: a long write is a stall on the hot path
                self.flush(_SLICE)
                await asyncio.sleep(0)

    def start(self) -> None:
        """Start the background writer."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the writer and flush what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()


class _LineFormatter:
    """JSON lines for buffered entries, the field order of `FIELDS`.

    Every string goes through the json module's C string encoder, so a client-chosen path or request id cannot
    break out of its field; the rest is a fixed template. Most fields repeat from line to line (route, method,
    authorizer, verdict, reason, statement, cache layer): their encoded runs are memoized, so a line costs the
    encoding of what is new in it (time, request id, path, source, principal, latency) and little else. The time
    prefix is computed once per second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._ms = -1
        self._stamp = ""
        self._runs: BoundedMemo[tuple[Any, ...], str] = BoundedMemo(_MAX_RUNS)

    def _time(self, seconds: float) -> str:
        """RFC 3339 UTC with milliseconds; a busy second has many lines per millisecond, so the last is kept."""
        ms = int(seconds * 1000)
        if ms != self._ms:
            whole, frac = divmod(ms, 1000)
            if whole != self._second:
                self._second, self._prefix = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            self._ms, self._stamp = ms, f"{self._prefix}.{frac:03d}Z"
        return self._stamp

    def _run(self, key: tuple[Any, ...], build: Callable[[], str]) -> str:
        """The encoded run of fields for `key`, built once (the memo is emptied if it ever reaches _MAX_RUNS)."""
        run = self._runs.get(key)
        return run if run is not None else self._runs.put(key, build())

    def lines(self, batch: list[_Entry]) -> str:
        return "".join([self.line(*entry) for entry in batch])

    def line(
        self,
        at: float,
        rid: str,
        route: str,
        method: str,
        path: str,
        ip: str,
        who: str | None,
        authorizer: str,
        allowed: bool,
        status: int,
        reason: str,
        statement: str,
        seconds: float,
        cache: str,
        gate: str,
    ) -> str:
        q = _quote
        runs = self._runs
        where = runs.get((route, method)) or (
            self._run((route, method), lambda: f'"route":{q(route)},"method":{q(method)},')
            if len(method) <= 16  # a client picks the method: only short ones are remembered
            else f'"route":{q(route)},"method":{q(method)},'
        )
        verdict_key = (authorizer, allowed, status, reason, statement)
        verdict = runs.get(verdict_key) or self._run(
            verdict_key,
            lambda: (
                f'"authorizer":{q(authorizer)},"decision":"{"allow" if allowed else "deny"}","status":{status:d},'
                f'"reason":{q(reason)},"statement":{q(statement)},"latency_us":'
            ),
        )
        end = runs.get((cache, gate)) or self._run((cache, gate), lambda: f',"cache":{q(cache)},"gate":{q(gate)}}}\n')
        return (
            f'{{"time":"{self._time(at)}","request_id":{q(rid)},{where}"path":{q(path)},"source_ip":{q(ip)},'
            f'"principal":{"null" if who is None else q(who)},{verdict}{seconds * 1e6:.1f}{end}'
        )


def iso_time(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, for humans reading logs."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"
