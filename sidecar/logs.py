"""Structured decision logs: one JSON line per decision, denials always, allows sampled.

What a line may carry is a closed list of fields (below); it never carries headers, tokens, signatures, cookies,
API keys or the query string (presigned URLs put credentials there), so no secret can reach a log through it.
Lines are buffered and written by a background task every `flush_interval` (or when the buffer fills), so the
hot path pays for building a dict and appending it, not for a write system call per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from typing import IO, Any

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
)
_MAX_BUFFER = 4096


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
        self._buffer: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, request: Request, decision: Decision, seconds: float, cache: str = "") -> None:
        """Queue one decision (allows only when sampled)."""
        if decision.allowed and (self.allow_sample_rate <= 0 or self._random() >= self.allow_sample_rate):
            return
        if len(self._buffer) >= _MAX_BUFFER:
            self.dropped += 1
            return
        principal = decision.principal
        self._buffer.append(
            {
                "time": request.time,
                "request_id": request.request_id,
                "route": decision.route,
                "method": request.method,
                "path": request.path,
                "source_ip": request.source_address,
                "principal": principal.id if principal is not None else None,
                "authorizer": decision.authorizer,
                "decision": "allow" if decision.allowed else "deny",
                "status": decision.status,
                "reason": decision.reason,
                "statement": decision.statement,
                "latency_us": round(seconds * 1e6, 1),
                "cache": cache,
            }
        )

    def flush(self) -> None:
        """Write everything buffered now."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        for entry in batch:
            entry["time"] = iso_time(entry["time"])
        lines = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in batch)
        try:
            self.stream.write(lines)
            self.stream.flush()
        except (OSError, ValueError):
            self.dropped += len(batch)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            self.flush()

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


def iso_time(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, for humans reading logs."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"
