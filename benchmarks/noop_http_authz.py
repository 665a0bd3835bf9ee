"""The HTTP floor: an `asyncio.Protocol` + httptools server on uvloop that answers 200 to every request.

Same shape as `sidecar.transports.http.protocol.HttpAuthzProtocol` (one httptools parser per connection,
keep-alive, responses written from `on_message_complete`), minus everything that decides: no Request, no
pipeline, no limits, one pre-encoded response. What a Python HTTP ext_authz server costs before it does any
work, so every microsecond the real listener spends above this floor is ours.

Run: `python -m benchmarks.noop_http_authz --port 9192 [--reuse-port]`; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import httptools
import uvloop

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
OK_CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class NoopHttpAuthz(asyncio.Protocol):
    """Parse each request (the proxy's bytes must be consumed correctly) and answer 200."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the message is complete; we never upgrade
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._parser.should_keep_alive():
            transport.write(OK)
        else:
            transport.write(OK_CLOSE)
            transport.close()


async def serve(host: str, port: int, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(NoopHttpAuthz, host, port, reuse_port=reuse_port or None, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"noop http authz listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9192)
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.reuse_port))


if __name__ == "__main__":
    main()
