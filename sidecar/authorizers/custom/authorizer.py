"""`LambdaAuthorizer`: API Gateway's Lambda authorizer contract, with its result cache.

A request's identity sources are read first: one missing or empty, or a token that fails `token_validation`,
is a 401 without a call. Otherwise the result cache is asked by the sources' values (and the route, with
`cache_key: identity+route`); on a miss the handler is called once per key however many requests wait for it
(single-flight), its response validated (`responses.py`) and the whole result cached: the principal with its
compiled policy, context and usage key, a deny included. The pipeline then evaluates that policy, with the
resource policy, against *each* request's ARN, which is how a cached policy is applied to later requests, API
Gateway's way (the `cache_key: identity` pitfall, docs/custom-authorizers.md). `Unauthorized` and failures are
never cached. Behind the in-process LRU, a `ResultStore` (when one is set) shares results between replicas as
the handler's own response JSON, validated again when read; none is wired yet (Redis, signed, is a later step).

The decision cache is not used for these routes (`fingerprint` is None): a decision depends on the handler's
answer, which only this cache may reuse, under its own TTL.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from ...cache.local import LocalCache
from ...policy.combine import EXPLICIT_DENY
from ...reasons import STATUS_FORBIDDEN, Denied
from ...request import Principal, Request, header_safe
from ..base import Authorizer, IdentitySide
from .context import ContextTemplate
from .errors import (
    ACCESS_DENIED,
    EXPLICIT_DENY_MESSAGE,
    IMPLICIT_DENY_MESSAGE,
    configuration_error,
    forbidden,
    unauthorized,
)
from .events import EventSpec, RouteInfo
from .identity import IdentitySources
from .invoke import HandlerFailed, HandlerUnauthorized, Invoker
from .responses import MalformedResponse, ResponseReader, Verdict

if TYPE_CHECKING:
    from ...policy import Outcome
    from ...settings import RouteSettings

log = logging.getLogger(__name__)

CONTEXT_PREFIX = "lambda:"
"""Policy condition keys for the handler's `context` (`lambda:tenant`), as `jwt:CLAIM` names a token's claims."""

__all__ = ["LambdaAuthorizer", "LambdaPrincipal", "Refusal", "Result", "ResultCache", "ResultStore", "cache_key"]


@dataclass(frozen=True, eq=False, slots=True)
class LambdaPrincipal(Principal):
    """A principal a handler named. `usage_identifier_key` is the API key of a usage plan (#21); it is kept out of
    `repr` and out of what decisions keep (`without_claims`), so it reaches no log."""

    usage_identifier_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Result:
    """What a handler's answer means, cached whole. `principal` is None for `isAuthorized: false` (403)."""

    principal: Principal | None
    verdict: Verdict = field(repr=False)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer that is not cached: `Unauthorized` (401), or a failure (500) of `kind`."""

    kind: str

    def denied(self) -> Denied:
        if self.kind == "unauthorized":
            return unauthorized("the handler said Unauthorized")
        return configuration_error(self.kind)


UNAUTHORIZED_REFUSAL = Refusal("unauthorized")
Call = Callable[[], Awaitable[Result | Refusal]]


class ResultStore(Protocol):
    """Where results are shared between replicas (a later step: Redis, signed like the decision cache's entries).
    Values are `ResponseReader.encode` bytes, which `decode` validates again."""

    async def get(self, key: bytes) -> bytes | None: ...

    async def put(self, key: bytes, value: bytes, ttl: float) -> None: ...


def cache_key(version: str, values: tuple[str, ...], route: str | None) -> bytes:
    """SHA-256 over the authorizer's config version, the route (None: `cache_key: identity`) and the identity
    source values, each length-prefixed so that no two lists of values share a key."""
    digest = hashlib.sha256(version.encode())
    digest.update(b"\x00identity" if route is None else b"\x00route\x00" + route.encode())
    for value in values:
        data = value.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest.digest()


class ResultCache:
    """A bounded TTL LRU of results, and the calls in flight per key (single-flight). One per authorizer, shared
    by the instances that serve its routes."""

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float], store: ResultStore | None = None
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self.store = store
        """Results shared with other replicas, behind the in-process LRU (none is wired yet: a later step)."""
        self.local: LocalCache[Result] = LocalCache(max_entries)
        self.inflight: dict[bytes, asyncio.Task[Result | Refusal]] = {}

    async def get_or_call(self, key: bytes, call: Call) -> Result | Refusal:
        """The cached result for `key`, or the result of one `call` shared by every request waiting for it."""
        found = self.local.get(key, self.clock())
        if found is not None:
            return found
        task = self.inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fill(key, call))
            self.inflight[key] = task
            task.add_done_callback(lambda done: self._landed(key, done))
        # A waiter that is cancelled (Envoy gave up) leaves the call running for the others, and for the cache.
        return await asyncio.shield(task)

    async def _fill(self, key: bytes, call: Call) -> Result | Refusal:
        outcome = await call()
        if isinstance(outcome, Result):
            self.local.set(key, outcome, self.ttl, self.clock())
        return outcome

    def _landed(self, key: bytes, task: asyncio.Task[Result | Refusal]) -> None:
        if self.inflight.get(key) is task:
            del self.inflight[key]

    def clear(self) -> None:
        self.local.clear()


class LambdaAuthorizer(Authorizer):
    """A Lambda-style handler, in process or remote (type `lambda`)."""

    kind: ClassVar[str] = "lambda"
    identity_side: ClassVar[IdentitySide] = "policies"
    resource_policy_first: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        *,
        invoker: Invoker,
        sources: IdentitySources,
        events: EventSpec,
        reader: ResponseReader,
        contexts: ContextTemplate,
        timeout: float,
        clock: Callable[[], float],
        version: str,
        cache: ResultCache | None = None,
        cache_by_route: bool = True,
        token_pattern: re.Pattern[str] | None = None,
        context_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name)
        self.invoker = invoker
        self.sources = sources
        self.events = events
        self.reader = reader
        self.contexts = contexts
        self.timeout = timeout
        self.clock = clock
        self.version = version
        self.cache = cache
        self.cache_by_route = cache_by_route
        self.token_pattern = token_pattern
        self.context_headers = tuple((context_headers or {}).items())
        self.route = RouteInfo()
        """The route this instance serves (`for_route`): its key and parameters name it in events."""

    def for_route(self, route: RouteSettings) -> LambdaAuthorizer:
        """A sibling that knows `route` (events name it; `identity+route` keys on it); the invoker and the result
        cache stay shared."""
        sibling = copy.copy(self)
        sibling.route = RouteInfo.of(route.match)
        return sibling

    async def start(self) -> None:
        await self.invoker.start()

    async def stop(self) -> None:
        await self.invoker.stop()
        if self.cache is not None:
            self.cache.clear()

    def upstream_header_names(self) -> frozenset[str]:
        return frozenset(header for _, header in self.context_headers)

    async def authenticate(self, request: Request) -> Principal:
        route_key = self.route.key
        values = self.sources.values(request, route_key)
        if values is None:
            missing = self.sources.missing(request, route_key)
            raise unauthorized(f"the identity source {missing} is missing or empty, so the handler is not called")
        if self.token_pattern is not None and self.token_pattern.fullmatch(values[0]) is None:
            raise unauthorized("the token does not match token_validation, so the handler is not called")
        if self.cache is None:
            outcome = await self._call(request, values)
        else:
            key = cache_key(self.version, values, route_key if self.cache_by_route else None)
            cache = self.cache
            outcome = await cache.get_or_call(key, lambda: self._shared_or_call(cache, key, request, values))
        if isinstance(outcome, Refusal):
            raise outcome.denied()
        if outcome.principal is None:
            raise forbidden("the handler answered isAuthorized: false")
        return outcome.principal

    def policy_refusal(self, outcome: Outcome) -> Denied:
        """API Gateway's words when the handler's policy refuses (`User is not authorized to access this resource`,
        `... with an explicit deny`); a resource policy's explicit Deny keeps IAM's, as API Gateway's does."""
        if outcome.decided_by not in ("identity", "resource") or (
            outcome.decided_by == "resource" and outcome.effect == EXPLICIT_DENY
        ):
            return outcome.to_denied()
        message = EXPLICIT_DENY_MESSAGE if outcome.effect == EXPLICIT_DENY else IMPLICIT_DENY_MESSAGE
        return Denied(ACCESS_DENIED, message, STATUS_FORBIDDEN, explain=outcome.step)

    async def _shared_or_call(
        self, cache: ResultCache, key: bytes, request: Request, values: tuple[str, ...]
    ) -> Result | Refusal:
        """A result another replica stored, else the handler's (stored for the others). The store's trouble or a
        stored value that does not validate means calling the handler: never an allow of its own."""
        store = cache.store
        if store is not None:
            try:
                data = await store.get(key)
                if data is not None:
                    return self._result(self.reader.decode(data))
            except Exception as exc:
                log.warning("authorizer %s: the result store failed (%s): calling", self.name, type(exc).__name__)
        outcome = await self._call(request, values)
        if store is not None and isinstance(outcome, Result):
            try:
                await store.put(key, self.reader.encode(outcome.verdict), cache.ttl)
            except Exception as exc:
                log.warning("authorizer %s: storing a result failed (%s)", self.name, type(exc).__name__)
        return outcome

    async def _call(self, request: Request, values: tuple[str, ...]) -> Result | Refusal:
        """One call of the handler and what its answer means. Logs say what failed, never the event."""
        event = self.events.build(request, self.route, values, self.clock())
        try:
            raw = await self.invoker.invoke(event, self.contexts.new(self.timeout), self.timeout)
            return self._result(self.reader.read(raw))
        except HandlerUnauthorized:
            return UNAUTHORIZED_REFUSAL
        except HandlerFailed as exc:
            log.warning("authorizer %s: the handler failed (%s): denying with a 500", self.name, exc.kind)
            return Refusal(exc.kind)
        except MalformedResponse as exc:
            log.warning("authorizer %s: malformed response (%s): denying with a 500", self.name, exc)
            return Refusal("malformed")
        except Exception as exc:  # an invoker that broke its contract: still a 500, never a crash or an allow
            log.error("authorizer %s: the invoker raised %s: denying with a 500", self.name, type(exc).__name__)
            return Refusal(f"exception:{type(exc).__name__}")

    def _result(self, verdict: Verdict) -> Result:
        if verdict.policy is None:
            return Result(None, verdict)
        context = verdict.context
        principal = LambdaPrincipal(
            kind=self.kind,
            id=verdict.principal_id,
            authorizer=self.name,
            context={CONTEXT_PREFIX + key: value for key, value in context.items()},
            upstream_headers=tuple((header, _header_value(context.get(key))) for key, header in self.context_headers),
            policies=(verdict.policy,),
            usage_identifier_key=verdict.usage_identifier_key,
        )
        for header, value in principal.upstream_headers:
            if not header_safe(value):
                raise MalformedResponse(f"the context value sent as {header} cannot be sent as a header")
        return Result(principal, verdict)


def _header_value(value: str | int | float | bool | None) -> str:
    """A context value as API Gateway renders `$context.authorizer.KEY`: booleans `true`/`false`; absent: empty
    (the header is then removed, so a client cannot supply it)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
