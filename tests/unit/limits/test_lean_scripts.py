"""The gates' scripts through the lean RESP client (`kv/resp.py`'s `evalsha`): against a real redis-server, a
script error decides only its own call and NOSCRIPT after SCRIPT FLUSH is survived; against servers that
misbehave, a hostile or missing reply is a fallback decision, never an exception."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from sidecar.kv import Breaker, LeanReader
from sidecar.kv.resp import is_script_error
from sidecar.limits.counters import LocalCounters, Quota, Throttle, Window
from sidecar.limits.redis_counters import (
    HIT,
    METER,
    CountersUnavailable,
    FallbackCounters,
    RedisCounters,
    ScriptFailed,
)
from tests.conftest import RedisServer, StartServer


def fresh(name: str) -> str:
    return f"{name}:{uuid.uuid4().hex[:12]}"


def lean_counters(port: int, timeout: float = 1.0) -> RedisCounters:
    return RedisCounters(LeanReader("127.0.0.1", port, None, None, 0, timeout), timeout=timeout)


@pytest.mark.parametrize(
    ("message", "script"),
    [
        ("ERR user_script:1: attempt to compare nil with number script: e6..., on @user_script:1.", True),
        ("ERR value is not an integer or out of range script: 61..., on @user_script:1.", True),
        ("ERR Error running script (call to f_1234): @user_script:1: boom", True),
        ("ERR boom", True),
        ("BUSY Redis is busy running a script.", False),
        ("NOSCRIPT No matching script. Please use EVAL.", False),
        ("READONLY You can't write against a read only replica.", False),
        ("OOM command not allowed when used memory > 'maxmemory'.", False),
        ("LOADING Redis is loading the dataset in memory", False),
        ("WRONGTYPE Operation against a key holding the wrong kind of value script: d3...", False),
        ("MOVED 3999 127.0.0.1:6381", False),
    ],
)
def test_script_errors_are_told_from_redis_unable_to_serve(message: str, script: bool) -> None:
    assert is_script_error(message) is script


async def test_lean_scripts_load_and_survive_script_flush_on_a_real_redis(redis_server: RedisServer) -> None:
    admin = aioredis.Redis.from_url(redis_server.url)
    counters, throttle, key = lean_counters(redis_server.port), Throttle(rate=1, burst=3), fresh("plan:p:key:flush")
    try:
        await counters.load()
        assert await admin.script_exists(METER.sha, HIT.sha) == [True, True]
        assert (await counters.meter(key, throttle, None)).remaining == 2
        await admin.script_flush()
        assert (await counters.meter(key, throttle, None)).remaining == 1  # NOSCRIPT, then EVAL: the same bucket
        assert await admin.script_exists(METER.sha) == [True]  # and EVAL cached it again
        await admin.script_flush()
        assert (await counters.hit(fresh("rule:r"), Window(60, 10))).remaining == 9
    finally:
        await counters.close()
        await admin.aclose()


async def test_a_script_error_decides_its_own_call_and_redis_trouble_opens_the_breaker(
    redis_server: RedisServer,
) -> None:
    """A bucket whose TAT is not a number (the script fails comparing it) is a script error: `on_redis_error`
    decides that call and the breaker hears an answer. A key of the wrong type is Redis's WRONGTYPE, counted as
    Redis failing, as redis-py's path counts it."""
    admin = aioredis.Redis.from_url(redis_server.url)
    breaker = Breaker(threshold=1, cooldown=30)
    lean = lean_counters(redis_server.port)
    counters = FallbackCounters(lean, LocalCounters(), "local", breaker)
    corrupt, wrong_type = fresh("plan:p:key:corrupt"), fresh("plan:p:key:list")
    try:
        await admin.set(f"{lean.base(corrupt)}:tat", "not-a-number")
        with pytest.raises(ScriptFailed):
            await lean.meter(corrupt, Throttle(1, 2), None)
        verdict = await counters.meter(corrupt, Throttle(1, 2), None)
        assert verdict.allowed and not counters.degraded and not breaker.is_open  # decided locally, that call only
        assert (await counters.meter(fresh("plan:p:key:fine"), Throttle(1, 2), None)).remaining == 1  # in Redis
        await admin.rpush(f"{lean.base(wrong_type)}:tat", "x")
        with pytest.raises(CountersUnavailable) as raised:
            await lean.meter(wrong_type, Throttle(1, 2), None)
        assert not isinstance(raised.value, ScriptFailed)
        assert (await counters.meter(wrong_type, Throttle(1, 2), None)).allowed
        assert counters.degraded and breaker.is_open
    finally:
        await counters.close()
        await admin.aclose()


@pytest.fixture
def answering(fake_server: StartServer) -> Callable[[bytes | None], Awaitable[int]]:
    """A server on 127.0.0.1 that answers every command with the same bytes (None: never answers)."""

    async def start(reply: bytes | None) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(65536):
                if reply is not None:
                    writer.write(reply)

        return await fake_server(handle)

    return start


EIGHT = b"*8\r\n" + b":0\r\n" * 8
"""A well-formed meter reply (allowed, nothing else): the shape every hostile one below breaks."""


@pytest.mark.parametrize(
    "reply",
    [
        b"$8\r\n\x00\x00\x00\x00\x00\x00\x00\x00\r\n",  # a bulk string of 8 bytes (iterating it would give ints)
        b"*8\r\n" + b"$1\r\n1\r\n" * 8,  # 8 bulk strings holding digits
        b"*8\r\n" + b":0\r\n" * 7 + b"*1\r\n:0\r\n",  # a nested array
        b"*8\r\n" + b":0\r\n" * 7 + b":-5\r\n",  # a negative number
        b"*8\r\n:9\r\n" + b":0\r\n" * 7,  # a reply code no script answers
        b"*7\r\n" + b":0\r\n" * 7,  # the wrong length
        b"*8\r\n" + b":0\r\n" * 7 + b"$-1\r\n",  # a null in it
        b"*8\r\n" + b":0\r\n" * 7 + b"-ERR inside\r\n",  # an error inside the array
        b":1\r\n",  # an integer
        b"*-1\r\n",  # a null array
        b"*99999999999\r\n",  # an impossible size
        b"?what\r\n",  # not RESP at all
        b"-NOSCRIPT No matching script\r\n",  # NOSCRIPT to EVAL as well
    ],
)
async def test_a_hostile_reply_is_a_fallback_not_a_crash(
    answering: Callable[[bytes | None], Awaitable[int]], reply: bytes
) -> None:
    port = await answering(reply)
    counters = FallbackCounters(lean_counters(port), LocalCounters(), "local", Breaker(threshold=1, cooldown=30))
    try:
        with pytest.raises(CountersUnavailable):
            await counters.redis.meter("plan:p:key:k", Throttle(1, 2), Quota(10, "DAY"))
        verdict = await counters.meter("plan:p:key:k", Throttle(1, 2), Quota(10, "DAY"))
        assert verdict.allowed and verdict.remaining == 1  # the in-process counters decided
        assert counters.degraded
    finally:
        await counters.close()


async def test_a_well_formed_reply_from_the_same_server_is_taken(
    answering: Callable[[bytes | None], Awaitable[int]],
) -> None:
    """The fake server above is believed when it speaks the scripts' shape (so the hostile cases fail on their
    bytes, not on the server)."""
    counters = lean_counters(await answering(EIGHT))
    try:
        assert (await counters.meter("plan:p:key:k", Throttle(1, 2), None)).allowed
    finally:
        await counters.close()


async def test_a_silent_redis_fails_the_call_after_one_timeout(
    answering: Callable[[bytes | None], Awaitable[int]],
) -> None:
    """No answer: the lean connection's one timer fails the call (no redis-py socket, pool and asyncio timeouts
    stacked), and `on_redis_error: deny` refuses it."""
    port = await answering(None)
    counters = FallbackCounters(lean_counters(port, timeout=0.1), LocalCounters(), "deny", Breaker(threshold=1))
    started = time.monotonic()
    try:
        verdict = await counters.meter("plan:p:key:k", Throttle(1, 2), None)
        assert not verdict.allowed and verdict.reason == "throttled"
        assert time.monotonic() - started < 2.0  # bounded by the one timeout (0.1 s), with room for a loaded CI
    finally:
        await counters.close()
