"""The soak's controllable dependencies and hostile peers, all on 127.0.0.1: a JWKS issuer that can go down, slow,
oversized or garbage; Redis killed, paused and replaced by a server answering garbage; slowloris connections.

Each runs in a thread of its own (or, for slowloris, as tasks of the driver's loop) and is bounded: servers stop
when asked, a slow answer waits a fixed time, slowloris connections end with their phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .harness import redis_server

JWKS_MODES = ("ok", "slow", "oversized", "garbage")
SLOW_SECONDS = 2.5
"""How long a slow JWKS answer takes: past the sidecar's 1.5 s fetch bound."""
OVERSIZED_BYTES = 300_000
"""An oversized JWKS: twice the sidecar's 150 KB bound."""


class _JwksHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _JwksHttp

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.fetches += 1
        mode = owner.mode
        if mode == "slow":
            time.sleep(SLOW_SECONDS)  # the fault itself: an issuer slower than the fetch bound
        body = owner.document
        if mode == "oversized":
            body = b'{"keys": [], "padding": "' + b"x" * OVERSIZED_BYTES + b'"}'
        elif mode == "garbage":
            body = b"\x00<html>not a key set{{{" * 8
        with contextlib.suppress(OSError):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("cache-control", "max-age=1")
            self.send_header("content-length", str(len(body)))
            self.send_header("connection", "close")  # a fetch per connection: `down()` then refuses every one
            self.end_headers()
            self.close_connection = True
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _JwksHttp(ThreadingHTTPServer):
    daemon_threads = True
    owner: JwksIssuer


class JwksIssuer:
    """The JWKS endpoint on a fixed loopback port: `mode` changes how it answers, `down()` / `up()` close and
    reopen the port (connections refused meanwhile)."""

    def __init__(self, document: bytes, port: int) -> None:
        self.document = document
        self.mode = "ok"
        self.fetches = 0
        self.port = port
        self._server: _JwksHttp | None = None
        self._thread: threading.Thread | None = None

    def up(self) -> None:
        server = _JwksHttp(("127.0.0.1", self.port), _JwksHandler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="soak-jwks", daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"


GARBAGE = (b"$-7\r\n", b"*\x00\xff\r\n", b"+OK\r\n:12x\r\n", b"-ERR \x7f\r\n$99999999999\r\n", b"%3\r\n\r\n")


class _Hostile(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        replies = itertools.cycle(GARBAGE)
        self.request.settimeout(1.0)
        while not self.server.stopping:  # type: ignore[attr-defined]
            try:
                data = self.request.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            with contextlib.suppress(OSError):
                self.request.sendall(next(replies))


class HostileRedis(socketserver.ThreadingTCPServer):
    """Something on Redis's port that accepts and answers every command with malformed RESP."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Hostile)
        self.stopping = False
        threading.Thread(target=self.serve_forever, name="soak-hostile-redis", daemon=True).start()

    def stop(self) -> None:
        self.stopping = True
        self.shutdown()
        self.server_close()


class RedisControl:
    """`redis-server` on a fixed loopback port (`benchmarks.harness.redis_server`) that the soak can kill, pause,
    restart, or replace by `HostileRedis`."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory = port, directory
        self._running: contextlib.AbstractContextManager[subprocess.Popen[bytes]] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.hostile: HostileRedis | None = None

    def start(self) -> None:
        self._running = redis_server(self.port, self.directory)
        self.proc = self._running.__enter__()

    def kill(self) -> None:
        """SIGKILL: no shutdown, every connection reset, everything counted in it gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self.stop()

    def stop(self) -> None:
        if self._running is not None:
            self._running.__exit__(None, None, None)
        self._running, self.proc = None, None

    def close(self) -> None:
        """Stop whatever the soak left on the port (Redis, paused or not, or the hostile server)."""
        if self.hostile is not None:
            self.hostile.stop()
            self.hostile = None
        if self.proc is not None:
            self.resume()
        self.stop()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def garbage(self) -> None:
        """Kill Redis and answer on its port with garbage instead."""
        self.kill()
        self.hostile = HostileRedis(self.port)

    def restore(self) -> None:
        """Whatever is on the port goes; a fresh Redis starts (empty: counts and cached decisions are gone)."""
        if self.hostile is not None:
            self.hostile.stop()
            self.hostile = None
        if self.proc is None:
            self.start()


class Slowloris:
    """Connections that send a request a byte at a time and never finish it: to Envoy's TLS listener (an HTTP
    head) and to each sidecar gRPC port (the HTTP/2 preface). Counts how many the far end closed."""

    def __init__(self, envoy_port: int, grpc_ports: list[int], per_target: int, interval: float = 0.5) -> None:
        self.targets = [("envoy", envoy_port)] + [("grpc", p) for p in grpc_ports]
        self.per_target, self.interval = per_target, interval
        self.opened = 0
        self.closed_by_peer = 0
        self.refused = 0

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(
            *(self._one(kind, port, stop) for kind, port in self.targets for _ in range(self.per_target))
        )

    async def _one(self, kind: str, port: int, stop: asyncio.Event) -> None:
        payload = b"GET /public/slow HTTP/1.1\r\nHost: x\r\nx-slow: " + b"a" * 4000 if kind == "envoy" else _PREFACE
        while not stop.is_set():
            try:
                tls = _client_tls() if kind == "envoy" else None
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=tls), 5)
            except (OSError, TimeoutError):
                self.refused += 1
                await _wait(stop, 1.0)
                continue
            self.opened += 1
            try:
                for byte in payload:
                    if stop.is_set():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    if await _wait(stop, self.interval) or reader.at_eof():
                        break
                if reader.at_eof():
                    self.closed_by_peer += 1
            except (OSError, ConnectionError):
                self.closed_by_peer += 1
            finally:
                writer.close()
                with contextlib.suppress(OSError, ConnectionError, ssl.SSLError):
                    await writer.wait_closed()


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # loopback, our own Envoy: the soak judges the sidecar, not the server cert
    return context


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `stop`; whether it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def port_accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False
