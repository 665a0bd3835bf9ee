"""A fixed-rate (open-loop) HTTP/1.1 client: requests leave on a fixed schedule whatever the server does.

Why our own: wrk2 is not packaged in Debian, and h2load's `--rps` sends each second's requests in bursts (in a
test, 2,000 requests at "1,000 rps" started within 233 distinct milliseconds), which measures queueing behind
the burst rather than the latency a steady 1,000 rps sees. Here request i is due at start + i/rate; it goes out
on an idle keep-alive connection, and a new one is opened if all are busy (up to 256; beyond that a request
waits for a free connection, and the wait counts in its latency), so a slow server does not slow the schedule
(open loop: no coordinated omission). Latency runs from the moment the request's turn came (including any wait
for a connection) to its complete response, by `time.perf_counter`; the event loop's timers have millisecond
resolution, so how late turns came against the schedule is reported separately (`send_lateness_p99_us`).
The client costs a few percent of one core.

Run: `python -m benchmarks.paced URL --rate 1000 --seconds 10 [-H 'name: value'] [--rotate-file F --rotate-header
H --rotate-prefix P]`; prints one JSON object (requests, seconds, errors, p50_us, p90_us, p99_us, max_us).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import uvloop

from .load import percentile


class Client:
    """Keep-alive connections to one host and a fixed request schedule."""

    def __init__(self, host: str, port: int, requests: list[bytes], max_connections: int = 256) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.returned: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.waiting = 0
        self.requests = requests
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.latencies: list[int] = []
        self.lateness: list[int] = []
        self.failed = 0
        self.bad_status = 0
        self.opened = 0
        self.total_opened = 0

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened += 1
        self.total_opened += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.opened -= 1
            raise

    async def acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An idle connection, a new one (below the cap), or the next one released."""
        if self.idle:
            return self.idle.pop()
        if self.opened < self.max_connections:
            return await self.connect()
        self.waiting += 1
        return await self.returned.get()

    async def one(self, index: int, due: float) -> None:
        """Send request `index` (due at perf_counter time `due`) and record its latency and lateness."""
        sent = time.perf_counter()
        self.lateness.append(int((sent - due) * 1e6))
        try:
            conn = await self.acquire()
        except OSError:
            self.failed += 1
            return
        reader, writer = conn
        try:
            writer.write(self.requests[index % len(self.requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.failed += 1
            writer.close()
            self.opened -= 1
            return
        self.latencies.append(int((time.perf_counter() - sent) * 1e6))
        if status != 200:
            self.bad_status += 1
        self.release(conn)

    def release(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        """Hand a free connection to a waiting request, or park it."""
        if self.waiting:
            self.waiting -= 1
            self.returned.put_nowait(conn)
        else:
            self.idle.append(conn)

    async def run(self, rate: float, seconds: float, connections: int) -> dict[str, float]:
        self.idle = [await self.connect() for _ in range(connections)]
        total = int(rate * seconds)
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.01
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        elapsed = time.perf_counter() - start
        for _, writer in self.idle:
            writer.close()
        values = sorted(self.latencies)
        return {
            "requests": len(values),
            "seconds": round(elapsed, 3),
            "errors": self.failed + self.bad_status + max(0, total - len(values) - self.failed),
            "p50_us": percentile(values, 50),
            "p90_us": percentile(values, 90),
            "p99_us": percentile(values, 99),
            "max_us": float(values[-1]) if values else 0.0,
            "connections_opened": self.total_opened,
            "send_lateness_p99_us": percentile(sorted(self.lateness), 99),
        }


def build_requests(host: str, path: str, headers: Sequence[str], rotate: list[str], rotate_header: str) -> list[bytes]:
    """The wire bytes of each distinct request (one, or one per rotated header value)."""
    base = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"{h}\r\n" for h in headers)
    if not rotate:
        return [(base + "\r\n").encode()]
    return [(base + f"{rotate_header}: {value}\r\n\r\n").encode() for value in rotate]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fixed-rate HTTP/1.1 load, latency from the schedule")
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("-H", "--header", action="append", default=[])
    parser.add_argument("--rotate-file")
    parser.add_argument("--rotate-header", default="authorization")
    parser.add_argument("--rotate-prefix", default="")
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    rotate: list[str] = []
    if args.rotate_file:
        with open(args.rotate_file) as values:
            rotate = [args.rotate_prefix + line.strip() for line in values if line.strip()]
    host, port = url.hostname or "127.0.0.1", url.port or 80
    requests = build_requests(f"{host}:{port}", url.path or "/", args.header, rotate, args.rotate_header)
    began = time.perf_counter()
    result = uvloop.run(Client(host, port, requests).run(args.rate, args.seconds, args.connections))
    result["wall_seconds"] = round(time.perf_counter() - began, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
