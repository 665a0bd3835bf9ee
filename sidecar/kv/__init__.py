"""One shared Redis layer for every user: clients (redis-py, the lean RESP reader), the circuit breaker.

The decision cache (`cache/remote.py`), the SigV4 replay guard, and usage plans and rate-based rules
(`limits/redis_counters.py`: their Lua scripts through the lean client) use it. Nothing here knows what is
stored: keys, encodings and signatures belong to each user.
"""

from __future__ import annotations

from .breaker import Breaker
from .client import RedisLike, SplitClient, redis_client
from .resp import LeanReader

__all__ = ["Breaker", "LeanReader", "RedisLike", "SplitClient", "redis_client"]
