"""The lean RESP reader as a hostile Redis sees it: arbitrary bytes answer the decision cache's reads.

Two halves per input. `parse_reply` walks the bytes reply by reply: each is a RESP2 value of the documented types,
"incomplete", or a `ProtocolError` (never another exception). Then a fresh `RemoteCache` over a `LeanReader`
(its connection on a recording transport) looks up two keys, batched into one MGET or one GET each (first byte),
and the bytes arrive as the server's reply, cut at arbitrary points. Oracle: `get` never raises; it finds nothing,
or exactly the entry this run sealed for that key (a sealed entry replayed under the other key, or any forged or
damaged one, must fail verification); the connection ends either dropped or in step, which a fresh GET after the
input proves (its own reply comes back, nothing left over). Every input builds its own reader, cache and breaker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.cache.remote import RemoteCache, Signer, encode_decision
from sidecar.kv.resp import _INCOMPLETE, LeanReader, ProtocolError, RespError, _Connection, parse_reply
from sidecar.request import Decision, Principal

from ..harness import FakeTransport, Loop, OneInput, Target, chunks

KEY = b"fuzz-signing-key-0123456789abcdef"
EXPIRES = 4_102_444_800.0  # 2100-01-01: the sealed entry never expires during a run
ALLOW = Decision(
    allowed=True,
    status=200,
    reason="Allowed",
    headers=(("x-user", "alice"),),
    principal=Principal(kind="jwt", id="alice", authorizer="jwt"),
    route="GET /orders",
    authorizer="jwt",
)
KEYS = ("key-a", "key-b")


def _check_value(value: Any, depth: int = 0) -> None:
    """A parsed reply holds only what `parse_reply` documents."""
    assert depth < 2000
    if isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
    else:
        assert value is None or isinstance(value, bytes | int | RespError), type(value)


def _walk(data: bytes) -> None:
    pos = 0
    while pos < len(data):
        try:
            value, end = parse_reply(data, pos)
        except ProtocolError:
            return
        if value is _INCOMPLETE:
            assert end == pos
            return
        assert end > pos
        _check_value(value)
        pos = end


class World:
    """The sealed entry for the first key, and the loop every input runs on."""

    def __init__(self) -> None:
        self.loop = Loop()
        self.signer = Signer(KEY)
        probe = RemoteCache(LeanReader("127.0.0.1", 1, None, None, 0, 1.0), self.signer, 1.0)
        self.names = [probe.redis_key(key) for key in KEYS]
        self.payload = encode_decision(ALLOW, EXPIRES)
        self.sealed = self.signer.seal(self.names[0], self.payload)

    def one_input(self, data: bytes) -> None:
        _walk(data)
        self.loop.run(self._exchange(data))

    async def _exchange(self, data: bytes) -> None:
        reader = LeanReader("127.0.0.1", 1, None, None, 0, 30.0)
        connection = _Connection(30.0)
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        reader._connection = connection
        batch = not data or data[0] & 1 == 0
        cache = RemoteCache(reader, self.signer, 30.0, batch=batch)
        lookups = [asyncio.ensure_future(cache.get(key)) for key in KEYS]
        for _ in range(8):
            if len(connection.waiters) == (1 if batch else 2):
                break
            await asyncio.sleep(0)
        assert transport.written.startswith(b"*3\r\n$4\r\nMGET\r\n" if batch else b"*2\r\n$3\r\nGET\r\n")
        for chunk in chunks(data[1:], 4):
            if connection.lost:
                break
            connection.data_received(chunk)
            await asyncio.sleep(0)
        if not connection.lost and connection.waiters:
            connection.connection_lost(None)  # the server hangs up on an unfinished reply
        results = await asyncio.gather(*lookups)  # raises if a lookup let an exception escape
        for key, found in zip(KEYS, results, strict=True):
            if found is not None:
                decision, expires = found
                assert key == KEYS[0], "an entry sealed for another key was served"
                assert encode_decision(decision, expires) == self.payload
        assert not cache._waiting and not cache._reads
        await self._in_step(reader, connection, transport)
        await cache.close()

    async def _in_step(self, reader: LeanReader, connection: _Connection, transport: FakeTransport) -> None:
        """A connection that survived the input answers a fresh GET with that GET's reply."""
        if connection.lost:
            assert not connection.waiters
            return
        assert not connection.buffer and not connection.waiters
        before = len(transport.written)
        fresh = asyncio.ensure_future(reader.get("fresh"))
        await asyncio.sleep(0)
        assert transport.written[before:] == b"*2\r\n$3\r\nGET\r\n$5\r\nfresh\r\n"
        connection.data_received(b"$2\r\nok\r\n")
        assert await fresh == b"ok"


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def seeds() -> list[bytes]:
    world = World()
    sealed, forged = world.sealed, world.signer.seal(world.names[1], world.payload)
    return [
        b"\x00*2\r\n" + _bulk(sealed) + b"$-1\r\n",  # the real entry where it belongs
        b"\x00*2\r\n" + _bulk(forged[:-1] + b"x") + _bulk(sealed),  # damaged, and moved under the other key
        b"\x01" + _bulk(sealed) + b"$-1\r\n",  # GET each
        b"\x00*2\r\n:1\r\n+OK\r\n",
        b"\x00-ERR nope\r\n",
        b"\x00*1\r\n$3\r\nabc\r\n",
        b"\x00*2\r\n*1\r\n$1\r\na\r\n$-1\r\n",
        b"\x01$5\r\nabc\r\n",
        b"\x00" + b"*1\r\n" * 64 + b"$-1\r\n",  # nesting (the scripts' replies are two levels deep at most)
    ]


def prepare() -> OneInput:
    return World().one_input


TARGET = Target(
    name="resp",
    summary=(
        "the lean RESP reader (parse_reply, _Connection) answering RemoteCache's MGET/GET as a hostile Redis; "
        "oracle: only documented value types or ProtocolError, get() never raises and serves only the entry "
        "sealed for that key, the connection is dropped or in step (a fresh GET gets its own reply)"
    ),
    prepare=prepare,
    seeds=seeds,
    max_len=8192,
)
