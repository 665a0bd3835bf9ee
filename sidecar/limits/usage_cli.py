"""`authz-sidecar usage --config F --key ID [--json] [--admin [HOST:PORT]]`: API Gateway's GetUsage for one key.

An API key's quota in the current UTC period: used, remaining, the period's limit (less the plan's `offset` in
the key's first metered period) and bounds. The same report (`Usage`) answers the admin endpoint
`GET /usage?key=ID` (`serve/admin.py`), read there from the serving config's own counters.

Where the counts are read:

- the config counts in Redis (`limits.connection` names a `redis:` connection): the command asks Redis itself,
  with the counters' own script (`RedisCounters.usage`), and sees what every replica counted;
- the config counts in process: every sidecar process has its own counts, which no other process can read. The
  command says so and exits 2, unless `--admin` asks a running sidecar's admin endpoint for its counts (one
  process's: under `serve --workers N` no worker serves the admin port, so this is not available there).

Keys are named by their id; the report never holds a key's value or digest. Exit codes: 0 reported; 2 for a
config or key file error, an unknown id, a key in no usage plan, a plan without a quota, in-process counters
without `--admin`, or counters that cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..issues import ConfigError
from ..settings import Config, RedisSettings
from .apikeys import ApiKey, ApiKeySet, load_api_keys, valid_name
from .counters import Counters, LocalCounters, Period, Quota, period_bounds
from .gates import CompiledPlan, GateSet
from .redis_counters import CountersUnavailable

EXIT_OK, EXIT_ERROR = 0, 2
CLI_TIMEOUT_MS = 1000.0
"""The command's Redis timeout: a fresh connection's first command can take longer than a hot path's few ms."""


class UsageError(Exception):
    """Why no usage is reported for a key; `status` is the admin endpoint's answer: 404 for a key, plan or quota
    that is not there, 503 for counters that do not answer. `key` is the id of a key the file holds (None for an
    unknown one: what was asked for is never repeated, since it may be a key's value given by mistake)."""

    def __init__(self, message: str, status: int = 404, key: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.key = key


@dataclass(frozen=True, slots=True)
class Usage:
    """One key's quota in the current period (API Gateway's GetUsage item: used and remaining)."""

    key: str
    plan: str
    period: Period
    start: int
    """The period's first second (epoch seconds, UTC)."""
    end: int
    """The first second after the period."""
    used: int
    remaining: int
    limit: int
    """The period's limit: the plan's quota, less its `offset` in the key's first metered period."""
    shared: bool
    """Read from counters every replica shares (Redis), or from one process's own."""

    def as_json(self) -> dict[str, object]:
        """The admin endpoint's body and `usage --json`'s output."""
        return {
            "key": self.key,
            "plan": self.plan,
            "period": self.period,
            "period_start": iso(self.start),
            "period_end": iso(self.end),
            "used": self.used,
            "remaining": self.remaining,
            "limit": self.limit,
            "shared": self.shared,
        }


def iso(epoch: int) -> str:
    """An epoch second as ISO 8601 UTC with a `Z`."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_text(report: Mapping[str, Any]) -> str:
    """`usage`'s text output, from a report in `Usage.as_json`'s shape (its own, or an admin endpoint's)."""
    counters = "shared (Redis: every replica)" if report["shared"] else "one process's (in-process counters)"
    return "\n".join(
        [
            f"key:        {report['key']}",
            f"plan:       {report['plan']}",
            f"period:     {report['period']} {report['period_start']} to {report['period_end']}",
            f"used:       {report['used']} of {report['limit']}",
            f"remaining:  {report['remaining']}",
            f"counters:   {counters}",
        ]
    )


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------


def metered_quota(keys: ApiKeySet, plans: Mapping[str, CompiledPlan], key_id: str) -> tuple[ApiKey, str, Quota]:
    """The key with this id, its plan's name and its plan's quota; `UsageError` when there is none of them. A
    disabled or expired key still has its usage (GetUsage reports any key of the plan)."""
    key = keys.by_id(key_id) if valid_name(key_id) else None
    if key is None:
        raise UsageError("no api key has this id" if valid_name(key_id) else "not an api key id")
    if key.plan is None:
        message = f"api key {key.id} is in no usage plan (a request with it is refused: 403 InvalidApiKey)"
        raise UsageError(message, key=key.id)
    plan = plans.get(key.plan)
    if plan is None:
        raise UsageError(f"api key {key.id} names usage plan {key.plan}, which the config does not define", key=key.id)
    quota = plan.default.quota
    if quota is None:
        message = f"usage plan {plan.name} of api key {key.id} has no quota (nothing is counted per period)"
        raise UsageError(message, key=key.id)
    return key, plan.name, quota


def is_shared(counters: Counters) -> bool:
    """Whether `counters` are every replica's (Redis, with its fallback) rather than one process's."""
    return not isinstance(counters, LocalCounters)


async def read_usage(
    keys: ApiKeySet, plans: Mapping[str, CompiledPlan], counters: Counters, key_id: str, now: float | None = None
) -> Usage:
    """The usage of `key_id` in the period holding `now` (default: the counters' clock, or the wall clock)."""
    key, plan, quota = metered_quota(keys, plans, key_id)
    try:
        used, remaining = await counters.usage(f"{plan}:{key.id}", quota)  # the key UsagePlanGate counts under
    except CountersUnavailable as exc:
        raise UsageError(f"cannot read the counts of api key {key.id}: {exc}", 503, key.id) from None
    if now is None:
        now = counters.clock() if isinstance(counters, LocalCounters) else time.time()
    start, end = period_bounds(quota.period, int(now))
    return Usage(
        key.id,
        plan,
        quota.period,
        start,
        end,
        used,
        remaining,
        period_limit(quota, used, remaining),
        is_shared(counters),
    )


def period_limit(quota: Quota, used: int, remaining: int) -> int:
    """The current period's limit from what the counters report (`remaining` is the limit less `used`): the
    plan's limit, or less its offset in the key's first period. With nothing remaining the two are told apart
    by `used` alone: under the plain limit, only the reduced one can be used up."""
    if remaining > 0:
        return used + remaining
    return quota.applies(initial=used < quota.limit)


async def gate_usage(gates: GateSet | None, key_id: str) -> Usage:
    """A serving config's report (the admin endpoint's): its key store's current keys, its plans, its counters."""
    if gates is None or gates.keys is None or gates.counters is None:
        raise UsageError("this config has no api keys (no api_keys: section)")
    return await read_usage(gates.keys.current(), gates.plans, gates.counters, key_id)


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register `usage` on the command line's subparsers (`cli.py` calls this)."""
    parser = sub.add_parser(
        "usage", help="an API key's quota used and remaining in the current period (API Gateway's GetUsage)"
    )
    parser.add_argument("--config", type=Path, required=True, help="the config file the sidecar serves")
    parser.add_argument("--key", required=True, help="the API key's id (never its value)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (the admin endpoint's body)")
    parser.add_argument(
        "--admin",
        nargs="?",
        const="",
        metavar="HOST:PORT",
        help="ask a running sidecar's admin endpoint (GET /usage) instead of Redis; without a value, the config's "
        "listen.admin. Needed for in-process counters, which only the process that counts can read",
    )


def run(args: argparse.Namespace, load: Callable[[Path], Config]) -> int:
    """Run `usage`; `load` reads and validates a config (`sidecar.config.load_config`: the command line passes
    it, as this wing does not import the spine). Errors go to stderr with exit code 2."""
    try:
        config = load(args.config)
        report = _from_admin(config, args) if args.admin is not None else _from_counters(config, args.key)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report) if args.json else as_text(report))
    return EXIT_OK


def _from_counters(config: Config, key_id: str) -> dict[str, object]:
    """The report read from the counters the config counts with (Redis), or `UsageError` saying why not."""
    settings = config.api_keys
    if settings is None:
        raise UsageError(f"{config.source}: no api_keys: section, so no key has usage")
    path = Path(settings.file)
    keys = load_api_keys(path if path.is_absolute() else config.base_dir / path)
    plans = {name: CompiledPlan.of(name, plan) for name, plan in config.usage_plans.items()}
    metered_quota(keys, plans, key_id)  # an unknown id or a key without a quota is reported before anything else
    connection = config.redis.get(config.limits.connection)
    if connection is None:
        raise UsageError(
            f"{config.source} counts in process (no redis: connection {config.limits.connection!r}): each sidecar"
            f" process has its own counts, which this command cannot read. Ask the running sidecar instead:"
            f" authz-sidecar usage --admin (GET /usage?key={key_id} on its listen.admin)"
        )
    return asyncio.run(_read_redis(connection, keys, plans, key_id)).as_json()


async def _read_redis(
    connection: RedisSettings, keys: ApiKeySet, plans: Mapping[str, CompiledPlan], key_id: str
) -> Usage:
    from ..kv import redis_client
    from .redis_counters import RedisCounters

    timeout_ms = max(connection.timeout_ms, CLI_TIMEOUT_MS)
    client = redis_client(connection.model_copy(update={"lean_reads": False, "timeout_ms": timeout_ms}))
    counters = RedisCounters(client, timeout=timeout_ms / 1000)
    try:
        return await read_usage(keys, plans, counters, key_id)
    finally:
        await counters.close()


def _from_admin(config: Config, args: argparse.Namespace) -> dict[str, object]:
    """The report of a running sidecar's admin endpoint (its `GET /usage`)."""
    import httpx

    address = args.admin or config.listen.admin
    if not address:
        raise UsageError(f"{config.source}: listen.admin is off; give the admin address: --admin HOST:PORT")
    url = f"http://{address}/usage"
    try:
        response = httpx.get(url, params={"key": args.key}, timeout=10.0)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise UsageError(f"cannot ask {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code == 200 and isinstance(body, dict):
        return body
    said = body.get("error") if isinstance(body, dict) else None
    if response.status_code == 404 and said == "not found":
        raise UsageError(f"{url}: not served there (a serve --workers supervisor does not serve /usage)")
    raise UsageError(f"{url}: {response.status_code}: {said or 'unexpected answer'}")
