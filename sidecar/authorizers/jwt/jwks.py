"""Where an authorizer's keys come from, kept fresh off the hot path: a JWKS file, or a `jwks_uri` fetched and cached.

* `StaticKeySource` serves a JWKS file loaded once at config load.
* `JwksCache` fetches a `jwks_uri` (found through OIDC discovery when not configured) at start and refreshes it in
  the background: `Cache-Control: max-age` clamped to configured bounds, a refetch on an unknown `kid` that is
  rate-limited and single-flight, the last good keys served on errors up to a maximum staleness, and every fetch
  bounded in time (1.5 s) and size (150 KB) as API Gateway bounds its own. The hot path only reads `keyset`.

Turning a document into keys is `keys.py`. Time comes from an injectable clock so tests drive rotation and
staleness without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from ...metrics import JWKS_FETCHES, JWKS_KEYS_SKIPPED
from .keys import SKIP_SHORT_EC, JwksError, KeySet, parse_jwks, parse_jwks_file

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def report_skipped(keyset: KeySet, authorizer: str, where: str) -> None:
    """Count every skipped JWK in `authz_jwks_keys_skipped_total` and log it: once per fetched or loaded document,
    never per request. Short EC coordinates are logged at WARNING (the issuer's tokens signed with that key will
    fail as `UnknownKey`, and the issuer can fix it); other skips, usually deliberate (encryption keys, symmetric
    keys), at INFO."""
    for skip in keyset.skipped:
        JWKS_KEYS_SKIPPED.labels(authorizer, skip.reason).inc(skip.count)
        level = logging.WARNING if skip.reason == SKIP_SHORT_EC else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "JWKS %s: skipped %s", where, skip)


class KeySource(Protocol):
    """Where an authorizer gets keys. `keyset` is read on the hot path; everything else happens around it."""

    keyset: KeySet | None
    max_staleness: float

    def usable(self, now: float) -> KeySet | None:
        """The current keys, or None when none are loaded or the last good ones are too old to trust."""

    async def refetch_for_unknown_kid(self) -> KeySet | None:
        """Fetch again because a token named a key we do not have (rate-limited); return the keys after."""

    async def start(self) -> None:
        """Load keys and begin background refresh."""

    async def stop(self) -> None:
        """End background work."""

    def is_ready(self) -> bool:
        """Whether usable keys are loaded."""


class StaticKeySource:
    """Keys from a JWKS file read once at config load. They never go stale and are never refetched."""

    max_staleness = float("inf")

    def __init__(self, keyset: KeySet) -> None:
        self.keyset: KeySet | None = keyset

    @classmethod
    def from_file(cls, path: str, name: str = "jwks") -> StaticKeySource:
        """Load a JWKS file; raise `ValueError` when it cannot be read, `ConfigError` (file:line:col) when it is not
        a key set or holds no usable key. `name` labels `authz_jwks_keys_skipped_total` (the authorizer)."""
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"cannot read JWKS file {path}: {exc.strerror or exc}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS file {path} is larger than {MAX_JWKS_BYTES} bytes")
        keyset, skipped = parse_jwks_file(data, path)  # ConfigError, located, if it holds no usable key
        for skip, where in zip(keyset.skipped, skipped, strict=True):
            JWKS_KEYS_SKIPPED.labels(name, skip.reason).inc(skip.count)
            log.warning("%s", where)
        return cls(keyset)

    def usable(self, now: float) -> KeySet | None:
        return self.keyset

    async def refetch_for_unknown_kid(self) -> KeySet | None:
        return self.keyset

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def is_ready(self) -> bool:
        return True


FETCH_TIMEOUT = 1.5
MAX_JWKS_BYTES = 150 * 1024


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Bounds of a `JwksCache`, all in seconds except `max_bytes`."""

    refresh_min: float = 60.0
    """Shortest interval between scheduled refreshes, whatever `max-age` says."""
    refresh_max: float = 3600.0
    """Longest interval between scheduled refreshes; also used when the response has no `max-age`."""
    max_staleness: float = 21600.0
    """How long the last good keys keep serving while every fetch fails."""
    unknown_kid_interval: float = 30.0
    """Minimum time between refetches triggered by tokens naming an unknown `kid`."""
    retry_min: float = 1.0
    """First retry delay after a failed fetch; doubles up to `refresh_min`."""
    fetch_timeout: float = FETCH_TIMEOUT
    max_bytes: int = MAX_JWKS_BYTES


_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])(no-cache|no-store)(?:$|[,\s=])", re.IGNORECASE)


def refresh_interval(cache_control: str | None, policy: CachePolicy) -> float:
    """Seconds until the next scheduled refresh: the response's `max-age` clamped to the policy's bounds."""
    if cache_control:
        if _NO_CACHE.search(cache_control):
            return policy.refresh_min
        match = _MAX_AGE.search(cache_control)
        if match:
            return min(max(float(match.group(1)), policy.refresh_min), policy.refresh_max)
    return policy.refresh_max


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback_host(host: str) -> bool:
    """Whether `host` names this machine (plain HTTP to it cannot be intercepted on the network)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_key_url(url: str, allow_http: bool) -> str:
    """Validate a JWKS or discovery URL: https, or http to loopback (or anywhere with `allow_http`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.scheme == "http" and not allow_http and not is_loopback_host(parts.hostname):
        raise ValueError(f"{url!r} uses plain http: keys could be replaced in transit (set allow_http to accept)")
    if parts.username or parts.password:
        raise ValueError(f"{url!r} must not carry credentials")
    return url


class JwksCache:
    """Keys from a `jwks_uri` (or OIDC discovery), fetched at start and refreshed in the background.

    The hot path reads `keyset` (or `usable(now)`, which also applies the staleness limit). All fetching happens
    in `refresh()`, which is single-flight: concurrent callers share one request. `tick()` performs the scheduled
    refresh when it is due; the background task calls it, and tests call it directly after moving their clock.
    """

    def __init__(
        self,
        *,
        jwks_uri: str | None = None,
        issuer: str | None = None,
        policy: CachePolicy | None = None,
        clock: Clock = time.time,
        allow_http: bool = False,
        background: bool = True,
        poll_interval: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str = "jwks",
    ) -> None:
        """`name` labels this cache's `authz_jwks_fetches_total` (the first authorizer that asked for it)."""
        if jwks_uri is None and issuer is None:
            raise ValueError("a JWKS cache needs a jwks_uri or an issuer to discover it from")
        self.policy = policy or CachePolicy()
        self.max_staleness = self.policy.max_staleness
        self.issuer = issuer
        self.allow_http = allow_http
        self.configured_uri = check_key_url(jwks_uri, allow_http) if jwks_uri else None
        self.discovery_url = (
            check_key_url(issuer.rstrip("/") + "/.well-known/openid-configuration", allow_http)
            if jwks_uri is None and issuer is not None
            else None
        )
        self.jwks_uri = self.configured_uri
        self.keyset: KeySet | None = None
        self.next_refresh_at = 0.0
        self.last_attempt_at = float("-inf")
        self.last_unknown_kid_fetch_at = float("-inf")
        self.last_error = ""
        self.fetch_count = 0
        self._clock = clock
        self._background = background
        self._poll_interval = poll_interval
        self._fetched = asyncio.Condition()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._users = 0
        self._retry_delay = self.policy.retry_min
        self.name = name
        self._fetched_ok = JWKS_FETCHES.labels(name, "ok")
        self._fetch_failed = JWKS_FETCHES.labels(name, "error")

    # -- reading (hot path) -------------------------------------------------------------------------------

    def usable(self, now: float) -> KeySet | None:
        """The current keys unless none loaded or the last good fetch is older than `max_staleness`."""
        keyset = self.keyset
        if keyset is None or now - keyset.fetched_at > self.max_staleness:
            return None
        return keyset

    def is_ready(self) -> bool:
        """True once usable keys are loaded."""
        return self.usable(self._clock()) is not None

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the keys (bounded by the fetch timeout) and begin background refresh. Never raises: a failed
        first fetch leaves the cache not ready and retrying."""
        self._users += 1
        if self._users > 1:
            return
        self._client = httpx.AsyncClient(
            timeout=self.policy.fetch_timeout, follow_redirects=False, transport=self._transport
        )
        if self.keyset is None:
            try:
                await self.refresh()
            except Exception:  # a bug while fetching must not fail the config that uses these keys
                log.exception("first JWKS fetch for %s failed unexpectedly", self.describe())
        if self._background:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jwks-refresh")

    async def stop(self) -> None:
        """Drop one user; the last one cancels background work and closes the HTTP client."""
        self._users = max(0, self._users - 1)
        if self._users:
            return
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._inflight = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        # Sleep until the refresh is due, but never longer than `poll_interval`: the clock is re-read on each
        # wake-up, so a wall-clock step (or a test's clock) cannot postpone a refresh by more than that.
        while True:
            delay = max(0.01, self.next_refresh_at - self._clock())
            await asyncio.sleep(min(delay, self._poll_interval))
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the refresher die: the hot path depends on it
                log.exception("JWKS refresh for %s failed unexpectedly", self.describe())

    # -- fetching -----------------------------------------------------------------------------------------

    async def tick(self) -> bool:
        """Refresh if the schedule says so. Returns whether a refresh ran and succeeded."""
        if self._clock() < self.next_refresh_at:
            return False
        return await self.refresh()

    async def refetch_for_unknown_kid(self) -> KeySet | None:
        """Refetch because a token named an unknown `kid`, at most once per `unknown_kid_interval`.

        Every request that arrives while the fetch runs waits for that same fetch; requests inside the interval
        get the current keys at once, so a stream of tokens with random `kid`s costs one fetch per interval.
        """
        now = self._clock()
        if not self.fetching:
            if now - self.last_unknown_kid_fetch_at < self.policy.unknown_kid_interval:
                return self.usable(now)
            self.last_unknown_kid_fetch_at = now
        await self.refresh()
        return self.usable(self._clock())

    async def refresh(self) -> bool:
        """Fetch now, sharing one in-flight fetch among all callers. Returns whether keys were updated."""
        task = self._inflight
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._fetch_and_swap(), name="jwks-fetch")
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        # shield: a caller giving up (its request cancelled) must not cancel the fetch the others wait for
        return await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled() and task.exception() is not None:
            log.error("JWKS fetch for %s raised", self.describe(), exc_info=task.exception())

    @property
    def fetching(self) -> bool:
        """Whether a fetch is in flight right now."""
        return self._inflight is not None and not self._inflight.done()

    async def wait_for_fetches(self, count: int) -> None:
        """Wait until `fetch_count` reaches `count` (for tests and tools observing the background refresher)."""
        async with self._fetched:
            await self._fetched.wait_for(lambda: self.fetch_count >= count)

    async def _fetch_and_swap(self) -> bool:
        try:
            return await self._fetch_and_swap_once()
        finally:
            async with self._fetched:
                self._fetched.notify_all()

    async def _fetch_and_swap_once(self) -> bool:
        now = self._clock()
        self.last_attempt_at = now
        self.fetch_count += 1
        try:
            body, cache_control = await self._fetch_keys()
            keyset = parse_jwks(body, fetched_at=now, previous=self.keyset)
            report_skipped(keyset, self.name, self.describe())
            if not keyset.keys:
                raise JwksError(f"no usable key ({'; '.join(map(str, keyset.skipped)) or 'empty key set'})")
        except JwksError as exc:
            self._fetch_failed.inc()
            self.last_error = str(exc)
            self.next_refresh_at = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, self.policy.refresh_min)
            log.warning("JWKS fetch for %s failed: %s (keeping %s)", self.describe(), exc, self._held())
            return False
        self._fetched_ok.inc()
        self.keyset = keyset
        self.last_error = ""
        self._retry_delay = self.policy.retry_min
        self.next_refresh_at = now + refresh_interval(cache_control, self.policy)
        return True

    def _held(self) -> str:
        return f"{len(self.keyset.keys)} keys" if self.keyset else "no keys"

    def describe(self) -> str:
        """The URL this cache reads, for logs."""
        return self.jwks_uri or self.discovery_url or "?"

    async def _fetch_keys(self) -> tuple[bytes, str | None]:
        if self.jwks_uri is None:
            self.jwks_uri = await self._discover()
        try:
            return await self._get(self.jwks_uri)
        except JwksError:
            if self.configured_uri is None:
                self.jwks_uri = None  # the provider may have moved its keys: discover again next time
            raise

    async def _discover(self) -> str:
        assert self.discovery_url is not None
        body, _ = await self._get(self.discovery_url)
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise JwksError("discovery document is not JSON") from None
        if not isinstance(document, dict):
            raise JwksError("discovery document is not a JSON object")
        if document.get("issuer") != self.issuer:
            raise JwksError(f"discovery document names issuer {document.get('issuer')!r}, expected {self.issuer!r}")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str):
            raise JwksError("discovery document has no jwks_uri")
        try:
            return check_key_url(uri, self.allow_http)
        except ValueError as exc:
            raise JwksError(str(exc)) from None

    async def _get(self, url: str) -> tuple[bytes, str | None]:
        """GET `url` within the fetch timeout, streaming and abandoning bodies over `max_bytes`."""
        if self._client is None:
            raise JwksError("the key cache is not started")
        limit = self.policy.max_bytes
        try:
            async with asyncio.timeout(self.policy.fetch_timeout):
                async with self._client.stream("GET", url, headers={"accept": "application/json"}) as response:
                    if response.status_code != 200:
                        raise JwksError(f"GET {url}: HTTP {response.status_code}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise JwksError(f"GET {url}: response of {declared} bytes exceeds {limit}")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_raw():
                        size += len(chunk)
                        if size > limit:
                            raise JwksError(f"GET {url}: response exceeds {limit} bytes; abandoned")
                        chunks.append(chunk)
                    return b"".join(chunks), response.headers.get("cache-control")
        except TimeoutError:
            raise JwksError(f"GET {url}: no complete response within {self.policy.fetch_timeout}s") from None
        except httpx.HTTPError as exc:
            raise JwksError(f"GET {url}: {type(exc).__name__}: {exc}") from None


_SHARED: weakref.WeakValueDictionary[tuple[Any, ...], JwksCache] = weakref.WeakValueDictionary()


def shared_cache(
    *,
    jwks_uri: str | None,
    issuer: str | None,
    policy: CachePolicy,
    allow_http: bool,
    clock: Clock = time.time,
    name: str = "jwks",
) -> JwksCache:
    """The process-wide cache for this key location and policy, created on first use.

    Authorizers that trust the same issuer share one cache, so the unknown-`kid` rate limit holds per issuer, and
    a config reload (which builds new authorizers while the old ones still serve) finds the keys already loaded.
    """
    key = (jwks_uri, issuer if jwks_uri is None else None, policy, allow_http, clock)
    cache = _SHARED.get(key)
    if cache is None:
        cache = JwksCache(
            jwks_uri=jwks_uri, issuer=issuer, policy=policy, clock=clock, allow_http=allow_http, name=name
        )
        _SHARED[key] = cache
    return cache
