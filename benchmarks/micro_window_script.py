"""Micro-benchmark: Redis's own CPU per rate-rule hit, for the window layouts the HIT script has had.

Run: `python -m benchmarks.micro_window_script`. Starts its own `redis-server` on 127.0.0.1 (stopped at the end),
sends each script the same pipelined hits over 50 keys, the layouts in a new order each round, and prints Redis's
`usec_per_call` for EVALSHA (`INFO commandstats`, reset before each layout): the server's time inside the script,
which is what caps the hits a shared Redis can take for every replica. No assertions: figures go in notes and
docs/performance.md. The earlier layouts are kept here as data only, to be measured against:

- `two buckets`: the estimate rate rules used before ten slots (one key per window-long bucket);
- `key per slot`: ten slots plus the current one, a key each, read with one MGET and a `latest` marker key;
- `hash (shipped)`: `sidecar.limits.redis_counters.HIT`, one hash of the slots read whole.
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path
from tempfile import TemporaryDirectory

import redis

from benchmarks.harness import redis_server
from sidecar.harness.envoy import free_port
from sidecar.limits.counters import WINDOW_SLOTS
from sidecar.limits.redis_counters import _PRELUDE, HIT

TWO_BUCKETS = """
local now_ms = math.floor(now_us() / 1000)
local span = tonumber(ARGV[2])
local bucket = math.floor(now_ms / span)
local current_key = KEYS[1] .. int(bucket)
local current = redis.call('INCR', current_key)
if current == 1 then redis.call('PEXPIRE', current_key, (bucket + 2) * span - now_ms) end
local previous = tonumber(redis.call('GET', KEYS[1] .. int(bucket - 1)) or '0')
return {previous, current, now_ms - bucket * span}
"""

KEY_PER_SLOT = """
local now_ms = math.floor(now_us() / 1000)
local slot = tonumber(ARGV[2])
local slots = tonumber(ARGV[3])
local bucket = math.floor(now_ms / slot)
local latest_key = KEYS[1] .. 'latest'
local latest = tonumber(redis.call('GET', latest_key) or '0')
if latest > bucket then
  bucket = latest
else
  redis.call('SET', latest_key, int(bucket), 'PX', (bucket + slots + 1) * slot - now_ms)
end
local current_key = KEYS[1] .. int(bucket)
local current = redis.call('INCR', current_key)
if current == 1 then redis.call('PEXPIRE', current_key, math.max(1, (bucket + slots + 1) * slot - now_ms)) end
local names = {}
for back = slots, 1, -1 do names[#names + 1] = KEYS[1] .. int(bucket - back) end
local found = redis.call('MGET', unpack(names))
local reply = {}
for i = 1, slots do reply[i] = tonumber(found[i] or '0') end
reply[slots + 1] = current
reply[slots + 2] = math.max(0, now_ms - bucket * slot)
return reply
"""

HITS = 20_000
ROUNDS = 5
KEYS = 50
WINDOW_MS = 60_000


def layouts() -> list[tuple[str, str, tuple[int, ...], str]]:
    """(name, script, its ARGV after `now`, the key or key prefix it is given) for each layout."""
    slot = WINDOW_MS // WINDOW_SLOTS
    return [
        ("two buckets", _PRELUDE + TWO_BUCKETS, (WINDOW_MS,), "b:"),
        ("key per slot", _PRELUDE + KEY_PER_SLOT, (slot, WINDOW_SLOTS), "s:"),
        ("hash (shipped)", HIT.text, (slot, WINDOW_SLOTS), "h"),
    ]


def _round(client: redis.Redis, script: str, args: tuple[int, ...], suffix: str) -> float:
    sha = client.script_load(script)
    client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    for i in range(HITS):
        pipe.evalsha(sha, 1, f"authz:l:{{bench:{i % KEYS}}}:w60{suffix}", "", *args)
        if i % 500 == 499:
            pipe.execute()
            pipe = client.pipeline(transaction=False)
    pipe.execute()
    return float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])


def main() -> None:
    port = free_port()
    found: dict[str, list[float]] = {name: [] for name, *_ in layouts()}
    with TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(redis_server(port, Path(tmp)))
        client = redis.Redis(host="127.0.0.1", port=port)
        order = layouts()
        for _ in range(ROUNDS):
            for name, script, args, suffix in order:
                found[name].append(_round(client, script, args, suffix))
            order = order[1:] + order[:1]
        client.close()
    base = statistics.median(found["two buckets"])
    width = max(len(name) for name in found)
    print(f"{'layout':<{width}}  Redis us/call (median of {ROUNDS})  vs two buckets")
    for name, values in found.items():
        median = statistics.median(values)
        print(f"{name:<{width}}  {median:8.2f}  {median / base:5.2f}x   rounds {values}")


if __name__ == "__main__":
    main()
