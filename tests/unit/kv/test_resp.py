"""The lean Redis reader (`sidecar/cache/resp.py`): the RESP2 parser, and reads against a real redis-server
(users, databases, misses) and against servers that misbehave (silent, closing, speaking garbage)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from sidecar.cache.remote import RemoteCache, Signer
from sidecar.config import RedisCacheSettings
from sidecar.kv import Breaker, SplitClient, redis_client
from sidecar.kv.resp import LeanReader, ProtocolError, RespError, _Connection, encode_command, parse_reply
from sidecar.request import Decision, Principal
from tests.conftest import RedisServer, StartServer

INCOMPLETE = parse_reply(b"")[0]


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b"$5\r\nhello\r\n", b"hello"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*2\r\n$1\r\na\r\n$-1\r\n", [b"a", None]),
        (b"*0\r\n", []),
        (b"*-1\r\n", None),
        (b"+OK\r\n", b"OK"),
        (b":42\r\n", 42),
        (b"$4\r\na\r\nb\r\n", b"a\r\nb"),  # a bulk string may hold CRLF
    ],
)
def test_parse_reply(wire: bytes, value: object) -> None:
    assert parse_reply(wire) == (value, len(wire))
    for cut in range(len(wire)):  # every prefix is incomplete, never misread
        assert parse_reply(wire[:cut])[0] is INCOMPLETE


def test_error_replies_and_garbage() -> None:
    error, _ = parse_reply(b"-ERR wrong\r\n")
    assert isinstance(error, RespError) and str(error) == "ERR wrong"
    for garbage in (b"!x\r\n", b"$x\r\n", b"$3\r\nabcXY", b"*x\r\n", b"$-5\r\n"):
        with pytest.raises(ProtocolError):
            parse_reply(garbage)


@given(st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=8), st.integers(1, 7))
def test_replies_split_anywhere_reach_their_waiters_in_order(values: list[bytes | None], step: int) -> None:
    wire = b"*%d\r\n" % len(values) + b"".join(
        b"$-1\r\n" if v is None else b"$%d\r\n%b\r\n" % (len(v), v) for v in values
    )
    wire += b"$2\r\nok\r\n"

    async def run() -> list[object]:
        connection = _Connection(timeout=5)
        connection.connection_made(_NullTransport())  # type: ignore[arg-type]
        first, second = connection.send(b"MGET"), connection.send(b"GET")
        for start in range(0, len(wire), step):
            connection.data_received(wire[start : start + step])
        return [await first, await second]

    assert asyncio.run(run()) == [values, b"ok"]


def test_encode_command() -> None:
    assert encode_command((b"GET", b"k")) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


@pytest.mark.parametrize(
    "url",
    ["rediss://h:6379/0", "unix:///tmp/redis.sock", "redis://h:6379/0?ssl_cert_reqs=none", "redis://h/x", "redis://"],
)
def test_urls_it_leaves_to_redis_py(url: str) -> None:
    assert LeanReader.from_url(url, 0.05) is None


def test_url_parts() -> None:
    reader = LeanReader.from_url("redis://al%40ice:p%3Aw@10.0.0.1:6380/3", 0.05)
    assert reader is not None
    assert (reader.host, reader.port, reader.db, reader._login) == ("10.0.0.1", 6380, 3, (b"AUTH", b"al@ice", b"p:w"))
    assert LeanReader.from_url("redis://:secret@h", 0.05)._login == (b"AUTH", b"secret")  # type: ignore[union-attr]


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_reads_from_a_real_redis_with_a_user_and_a_database(redis_server: RedisServer) -> None:
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.execute_command("ACL", "SETUSER", "reader", "on", ">s3cret", "~*", "+@all")
    db3 = aioredis.Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/3")
    await db3.set("k1", b"\x00v1")
    await db3.set("k2", b"v2")
    reader = LeanReader.from_url(f"redis://reader:s3cret@127.0.0.1:{redis_server.port}/3", 0.5)
    assert reader is not None
    assert await reader.get("k1") == b"\x00v1"
    assert await reader.get("missing") is None
    assert await asyncio.gather(reader.mget(["k1", "missing", "k2"]), reader.get("k2")) == [
        [b"\x00v1", None, b"v2"],
        b"v2",
    ]
    wrong = LeanReader.from_url(f"redis://reader:nope@127.0.0.1:{redis_server.port}/3", 0.5)
    assert wrong is not None
    with pytest.raises(RespError):
        await wrong.get("k1")
    await reader.aclose()
    await admin.aclose()
    await db3.aclose()


async def test_redis_client_reads_lean_and_writes_through_redis_py(redis_server: RedisServer) -> None:
    settings = RedisCacheSettings(url=redis_server.url)  # type: ignore[arg-type]
    client = redis_client(settings)
    assert isinstance(client, SplitClient)
    cache = RemoteCache(client, Signer(b"k" * 32), timeout=0.5, batch=False)
    allow = Decision(True, 200, "Allowed", principal=Principal(kind="jwt", id="alice"), route="r")
    cache.put(b"key", allow, ttl=30)
    await asyncio.wait(cache._pending)
    found = await cache.get(b"key")
    assert found is not None and found[0].principal is not None and found[0].principal.id == "alice"
    await cache.close()
    off = redis_client(RedisCacheSettings(url=redis_server.url, lean_reads=False))  # type: ignore[arg-type]
    assert not isinstance(off, SplitClient)
    await off.aclose()  # type: ignore[attr-defined]


async def test_a_silent_server_times_out_and_the_next_read_reconnects(fake_server: StartServer) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent_then_helpful(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.readline()
        if len(connections) > 1:
            writer.write(b"$2\r\nok\r\n")

    port = await fake_server(silent_then_helpful)
    lean = LeanReader("127.0.0.1", port, None, None, 0, timeout=0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await lean.get("k")
    assert time.monotonic() - started < 1.0
    assert await lean.get("k") == b"ok"  # a fresh connection
    assert len(connections) == 2
    await lean.aclose()


async def test_garbage_or_a_closed_connection_fails_the_waiters(fake_server: StartServer) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"?what\r\n")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    for handler in (garbage, hang_up):
        port = await fake_server(handler)
        lean = LeanReader("127.0.0.1", port, None, None, 0, timeout=1.0)
        results = await asyncio.gather(lean.get("a"), lean.get("b"), return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results), results
        await lean.aclose()


async def test_an_unreachable_redis_is_a_miss_and_opens_the_breaker() -> None:
    from sidecar.harness.envoy import free_port

    lean = LeanReader("127.0.0.1", free_port(), None, None, 0, timeout=0.05)
    breaker = Breaker(threshold=2, cooldown=30)
    cache = RemoteCache(lean, Signer(b"k" * 32), timeout=0.05, breaker=breaker, batch=False)  # type: ignore[arg-type]
    for _ in range(3):
        assert await cache.get(b"key") is None
    assert cache.breaker.is_open
    await cache.close()


async def test_a_command_past_its_deadline_fails_alone_and_stalls_its_connection() -> None:
    """Each command keeps its own deadline: the late one fails with TimeoutError, the one behind it is still
    answered (the late reply is read and dropped), no new command is sent on the stalled connection, and it closes
    once nothing on it is waited for. Deadlines are moved by hand: no waiting on the clock."""
    connection = _Connection(timeout=5)
    connection.connection_made(_NullTransport())  # type: ignore[arg-type]
    late, behind = connection.send(b"GET a"), connection.send(b"GET b")
    connection.deadlines[0] -= 10  # `late` has waited its whole timeout
    connection._on_timer()
    assert isinstance(late.exception(), TimeoutError) and not behind.done()
    assert connection.stalled and not connection.lost
    connection.data_received(b"$1\r\na\r\n$1\r\nb\r\n")
    assert await behind == b"b"
    connection._on_timer()  # the timer armed for `behind` fires: nobody waits any more
    assert connection.lost


async def test_a_stalled_connection_takes_no_new_commands(redis_server: RedisServer) -> None:
    reader = LeanReader.from_url(redis_server.url, 1.0)
    assert reader is not None
    try:
        assert await reader.get("missing") is None
        first = reader._connection
        assert first is not None
        first.stalled = True
        assert await reader.get("missing") is None
        assert reader._connection is not first and not reader._connection.stalled  # type: ignore[union-attr]
    finally:
        await reader.aclose()
