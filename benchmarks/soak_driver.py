"""The soak's open-loop driver: requests leave at a fixed rate whatever the server does, over keep-alive HTTP/1.1
connections to Envoy's TLS listener, and each one's status, reason and latency are recorded with the phase it
was sent in.

Request i is due at start + i / rate and takes the i-th kind of the mix's cycle (`soak_mix.schedule`); it goes
out on an idle connection presenting the kind's client certificate, or a new one (so a slow answer never delays
the schedule: no coordinated omission). Latency runs from the request's due time to its complete response.
Every request has a deadline (`REQUEST_TIMEOUT`); one that misses it, or whose connection fails, is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .soak_mix import HOST, Kind, State

REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 128
"""Per client certificate: past that a request waits for a connection (the wait counts in its latency)."""


@dataclass(slots=True)
class Record:
    """One request as the client saw it."""

    sent: float
    """Seconds since the run started (its due time)."""
    phase: str
    kind: str
    status: int
    """0: no HTTP answer (the connection failed or the deadline passed)."""
    reason: str
    latency_ms: float
    error: str = ""


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pool:
    """Keep-alive connections to one address, each presenting one client certificate (or none)."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port, self.context = port, context
        self.idle: list[Conn] = []
        self.opened = 0
        self.freed = asyncio.Condition()

    async def acquire(self) -> Conn:
        while True:
            if self.idle:
                return self.idle.pop()
            if self.opened < MAX_CONNECTIONS:
                self.opened += 1
                try:
                    return await asyncio.open_connection("127.0.0.1", self.port, ssl=self.context)
                except BaseException:
                    self.opened -= 1
                    raise
            async with self.freed:
                await self.freed.wait()

    async def release(self, conn: Conn, reusable: bool) -> None:
        if reusable:
            self.idle.append(conn)
        else:
            self.opened -= 1
            conn[1].close()
        async with self.freed:
            self.freed.notify()

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def tls_context(directory: Path, cert: str) -> ssl.SSLContext:
    """A TLS client context presenting `cert` (directory/cert.crt and .key; "" none), not checking the server:
    loopback, our own Envoy."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(directory / f"{cert}.crt", directory / f"{cert}.key")
    return context


class Driver:
    """Sends the kinds of `cycle` in turn at `rate` per second until `stop` is set; `phase()` names the phase of
    each request's send time."""

    def __init__(
        self, port: int, directory: Path, cycle: list[Kind], rate: float, state: State, phase: Callable[[], str]
    ) -> None:
        self.cycle, self.rate, self.state, self.phase = cycle, rate, state, phase
        self.pools = {cert: Pool(port, tls_context(directory, cert)) for cert in {k.cert for k in cycle}}
        self.records: list[Record] = []
        self.started = 0.0

    async def run(self, stop: asyncio.Event, origin: float) -> None:
        """Send until `stop`; then wait (bounded) for what is in flight. `origin`: perf_counter of the run's start."""
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        i = 0
        while not stop.is_set():
            due = start + i / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            task = asyncio.create_task(self.one(self.cycle[i % len(self.cycle)], due, origin))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 1)
        for pool in self.pools.values():
            pool.close()

    async def one(self, kind: Kind, due: float, origin: float) -> None:
        phase = self.phase()
        path, headers = kind.build(self.state)
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        request = f"GET {path} HTTP/1.1\r\nhost: {HOST}\r\n{lines}\r\n".encode()
        pool = self.pools[kind.cert]
        status, reason, error = 0, "", ""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                conn = await pool.acquire()
                try:
                    status, reason, reusable = await exchange(conn, request)
                except BaseException:
                    await pool.release(conn, False)
                    raise
                await pool.release(conn, reusable)
        except TimeoutError:
            error = "timeout"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ssl.SSLError) as exc:
            error = type(exc).__name__
        latency = (time.perf_counter() - due) * 1000
        self.records.append(Record(round(due - origin, 4), phase, kind.name, status, reason, round(latency, 3), error))


async def exchange(conn: Conn, request: bytes) -> tuple[int, str, bool]:
    """Send one request and read its response: (status, reason code of a JSON deny body, connection reusable)."""
    reader, writer = conn
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if fields.get(b"transfer-encoding") == b"chunked":
        body = await read_chunked(reader)
    else:
        body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
    reason = ""
    if status != 200 and body.startswith(b"{"):
        with contextlib.suppress(ValueError, AttributeError):
            reason = str(json.loads(body).get("reason", ""))
    return status, reason, fields.get(b"connection") != b"close"


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return body
        body += chunk[:-2]
