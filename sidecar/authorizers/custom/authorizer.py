"""`LambdaAuthorizer`: API Gateway's Lambda authorizer contract, with its result cache.

A request's identity sources are read first: one missing or empty, or a token that fails `token_validation`,
is a 401 without a call. Otherwise the result cache is asked by the sources' values (and the route, with
`cache_key: identity+route`); on a miss the handler is called once per key however many requests wait for it
(single-flight), its response validated (`responses.py`) and the whole result cached: the principal with its
compiled policy, context and usage key, a deny included. The pipeline then evaluates that policy, with the
resource policy, against *each* request's ARN, which is how a cached policy is applied to later requests, API
Gateway's way (the `cache_key: identity` pitfall, docs/custom-authorizers.md). `Unauthorized` and failures are
never cached. Behind the in-process LRU, a `ResultStore` shares results between replicas: with `cache.redis`
the runtime's signed blob store (`BuildContext.blob_store`, HMAC-sealed like the decision cache's entries), each
result as the handler's own response JSON with its expiry, validated again when read and never kept past that
expiry, here or in Redis. Single-flight stays per process: replicas that miss at once may each call once.

The decision cache is not used for these routes (`fingerprint` is None): a decision depends on the handler's
answer, which only this cache may reuse, under its own TTL.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from ...cache.local import LocalCache
from ...hop import HopNeeds
from ...log_throttle import ThrottledWarning
from ...memo import BoundedMemo
from ...policy.combine import EXPLICIT_DENY
from ...reasons import STATUS_FORBIDDEN, Denied
from ...request import Principal, Request, header_safe
from ..base import Authorizer, IdentitySide
from .context import ContextTemplate, new_request_id
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
ANSWER_MEMO = 1024
"""Distinct responses (by their JSON text) whose meaning each authorizer remembers (`LambdaAuthorizer._answer`)."""

__all__ = [
    "LambdaAuthorizer",
    "LambdaPrincipal",
    "Refusal",
    "Result",
    "ResultCache",
    "ResultStore",
    "cache_key",
    "identity_id",
]


@dataclass(frozen=True, eq=False, slots=True)
class LambdaPrincipal(Principal):
    """A principal a handler named. `usage_identifier_key` is the API key the handler named for usage plans
    (`api_keys.source: authorizer`); it is kept out of `repr`, so it reaches no log, and it stays on what decisions
    keep (`without_claims`), because the usage-plan gate reads it from the allow, cached or not. These decisions
    never leave the process: routes of this authorizer are not in the decision cache (`fingerprint` is None)."""

    usage_identifier_key: str | None = field(default=None, repr=False)

    def without_claims(self) -> Principal:
        if self.usage_identifier_key is None:
            return Principal.without_claims(self)
        return LambdaPrincipal(
            self.kind,
            self.id,
            self.authorizer,
            self.arn,
            self.account,
            self.scopes,
            expires_at=self.expires_at,
            usage_identifier_key=self.usage_identifier_key,
        )


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
Call = Callable[[], Awaitable[tuple[Result | Refusal, float]]]
"""One fill of the cache: the outcome, and how long a result may stay in process (its TTL, or what a shared
result has left)."""


class ResultStore(Protocol):
    """Where results are shared between replicas: `sidecar.cache.SignedBlobStore` in Redis, or a dict in tests.
    Values are opaque to it (`shared_result`); `put` must not make the request wait for the write, and trouble
    is a missing value or an exception, both of which mean calling the handler."""

    async def get(self, key: bytes) -> bytes | None: ...

    async def put(self, key: bytes, value: bytes, ttl: float) -> None: ...


def shared_result(reader: ResponseReader, verdict: Verdict, expires_at: float) -> bytes:
    """A result as stored for other replicas: the wall time after which none may use it, and the handler's
    response as `reader.encode` writes it (principalId, the policy document as returned, context,
    usageIdentifierKey)."""
    return b'{"expires":' + json.dumps(expires_at).encode() + b',"response":' + reader.encode(verdict) + b"}"


def read_shared(reader: ResponseReader, data: bytes) -> tuple[Verdict, float]:
    """`shared_result`'s verdict, validated again as a handler's response, and its expiry; `MalformedResponse`
    for anything else."""
    try:
        stored = json.loads(data)
        expires_at = float(stored["expires"])
        raw = stored["response"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise MalformedResponse("a stored result is not one") from None
    if not math.isfinite(expires_at):
        raise MalformedResponse("a stored result has no expiry")
    return reader.read(raw), expires_at


LocalKey = tuple[str | None, tuple[str, ...]]
"""A result's key in process: the route (None: `cache_key: identity`) and the identity source values. The cache
is built anew with each config load, so the config version need not be part of it; a tuple is compared whole, so
no two callers share an entry, and it costs no digest on the warm path."""


def cache_key(version: str, values: tuple[str, ...], route: str | None) -> bytes:
    """A result's key in the store shared with other replicas: SHA-256 over the authorizer's config version, the
    route (None: `cache_key: identity`) and the identity source values, each length-prefixed so that no two lists
    of values share a key."""
    digest = hashlib.sha256(version.encode())
    digest.update(b"\x00identity" if route is None else b"\x00route\x00" + route.encode())
    return _values_digest(digest, values).digest()


def identity_id(values: tuple[str, ...]) -> str:
    """The principal id of a caller a simple response allowed (it names none): 16 hex digits of SHA-256 over its
    identity source values, so each caller has an id of its own, the same on every replica and config, and the
    values themselves (a token) reach neither the upstream nor a log."""
    return _values_digest(hashlib.sha256(b"principal"), values).hexdigest()[:16]


def _values_digest(digest: hashlib._Hash, values: tuple[str, ...]) -> hashlib._Hash:
    for value in values:
        data = value.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest


class ResultCache:
    """A bounded TTL LRU of results, and the calls in flight per key (single-flight). One per authorizer, shared
    by the instances that serve its routes."""

    def __init__(
        self,
        ttl: float,
        max_entries: int,
        clock: Callable[[], float],
        store: ResultStore | None = None,
        namespace: str = "",
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self.store = store
        """Results shared with other replicas, behind the in-process LRU (`cache.redis`: signed, in Redis)."""
        self.namespace = namespace.encode() + b"\x00"
        """Prefixes this authorizer's keys in the store, which every authorizer of the config shares."""
        self.local: LocalCache[Result] = LocalCache(max_entries)
        self.inflight: dict[LocalKey, asyncio.Task[Result | Refusal]] = {}

    async def get_or_call(self, key: LocalKey, call: Call) -> Result | Refusal:
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

    async def _fill(self, key: LocalKey, call: Call) -> Result | Refusal:
        outcome, ttl = await call()
        if isinstance(outcome, Result):
            self.local.set(key, outcome, ttl, self.clock())
        return outcome

    async def shared(self, key: bytes, reader: ResponseReader) -> tuple[Verdict, float] | None:
        """The verdict another replica stored for `key` and the seconds it has left (never more than this
        cache's TTL), or None: nothing stored, expired, or not readable."""
        store = self.store
        if store is None:
            return None
        data = await store.get(self.namespace + key)
        if data is None:
            return None
        verdict, expires_at = read_shared(reader, data)
        left = min(expires_at - self.clock(), self.ttl)
        return (verdict, left) if left > 0 else None

    async def share(self, key: bytes, reader: ResponseReader, verdict: Verdict) -> None:
        """Store a verdict the handler just gave, for the other replicas, until this cache's TTL runs out."""
        if self.store is not None:
            data = shared_result(reader, verdict, self.clock() + self.ttl)
            await self.store.put(self.namespace + key, data, self.ttl)

    def _landed(self, key: LocalKey, task: asyncio.Task[Result | Refusal]) -> None:
        if self.inflight.get(key) is task:
            del self.inflight[key]

    def clear(self) -> None:
        self.local.clear()


class LambdaAuthorizer(Authorizer):
    """A Lambda-style handler, in process or remote (type `lambda`)."""

    kind: ClassVar[str] = "lambda"
    challenge: ClassVar[str | None] = None  # API Gateway's 401 for a Lambda authorizer has no WWW-Authenticate
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
        self._answers: BoundedMemo[str, Result] = BoundedMemo(ANSWER_MEMO)
        """What each response text meant, shared by the route siblings (`_answer`)."""
        self._failures = ThrottledWarning(log, noun="handler failures")
        """Handler failures, at most one line per 10 s for this authorizer (its route siblings share it): a stuck
        or overloaded handler fails every Check at once (each still counted in the decision metrics), and a line
        per Check would flood the log."""

    def hop_needs(self) -> HopNeeds:
        """Every header: a REQUEST event carries them all, and a returned policy may read any of them."""
        return HopNeeds.everything(
            f"authorizer {self.name} (lambda): its events carry every header, and a policy it returns may read any"
        )

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
        outcome: Result | Refusal
        if self.cache is None:
            outcome = await self._call(request, values)
        else:
            key = (route_key if self.cache_by_route else None, values)
            cache = self.cache
            found = cache.local.get(key, self.clock())  # a hit (the warm path) costs no coroutine and no closure
            if found is not None:
                outcome = found
            else:
                outcome = await cache.get_or_call(key, lambda: self._shared_or_call(cache, key, request))
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
        self, cache: ResultCache, local: LocalKey, request: Request
    ) -> tuple[Result | Refusal, float]:
        """A result another replica stored (kept here for what it has left), else the handler's (stored for the
        others). The store's trouble or a stored value that does not validate means calling the handler: never
        an allow of its own."""
        route, values = local
        key = cache_key(self.version, values, route) if cache.store is not None else b""
        if cache.store is not None:
            try:
                found = await cache.shared(key, self.reader)
                if found is not None:
                    return self._result(found[0], values), found[1]
            except Exception as exc:
                log.warning("authorizer %s: a shared result failed (%s): calling", self.name, type(exc).__name__)
        outcome = await self._call(request, values)
        if cache.store is not None and isinstance(outcome, Result):
            try:
                await cache.share(key, self.reader, outcome.verdict)
            except Exception as exc:
                log.warning("authorizer %s: sharing a result failed (%s)", self.name, type(exc).__name__)
        return outcome, cache.ttl

    async def _call(self, request: Request, values: tuple[str, ...]) -> Result | Refusal:
        """One call of the handler and what its answer means. Logs say what failed, never the event."""
        request_id = request.request_id or new_request_id()  # the event's requestId is the context's too
        event = self.events.build(request, self.route, values, self.clock(), request_id)
        try:
            raw = await self.invoker.invoke(event, self.contexts.new(self.timeout, request_id), self.timeout)
            return self._answer(raw, values)
        except HandlerUnauthorized:
            return UNAUTHORIZED_REFUSAL
        except HandlerFailed as exc:
            self._failures.warning("authorizer %s: the handler failed (%s): denying with a 500", self.name, exc.kind)
            return Refusal(exc.kind)
        except MalformedResponse as exc:
            self._failures.warning("authorizer %s: malformed response (%s): denying with a 500", self.name, exc)
            return Refusal("malformed")
        except Exception as exc:  # an invoker that broke its contract: still a 500, never a crash or an allow
            log.error("authorizer %s: the invoker raised %s: denying with a 500", self.name, type(exc).__name__)
            return Refusal(f"exception:{type(exc).__name__}")

    def _answer(self, raw: object, values: tuple[str, ...]) -> Result:
        """What a handler's response means. Remembered by its JSON text: a handler that answers the same again
        (a result not cached, `result_ttl: 0`, or the same caller on another route) gets the same Result, so it is
        validated once and its principal is the same object, which the pipeline's allow memo keys on. A simple
        response names no caller: there the identity is part of what is remembered (`identity_id`)."""
        text = self.reader.encoded(raw)
        key = text + "\x00" + identity_id(values) if self.reader.simple else text
        found = self._answers.get(key)
        if found is None:
            found = self._answers.put(key, self._result(self.reader.read(raw, text), values))
        return found

    def _result(self, verdict: Verdict, values: tuple[str, ...]) -> Result:
        if verdict.policy is None:
            return Result(None, verdict)
        context = verdict.context
        principal = LambdaPrincipal(
            kind=self.kind,
            id=identity_id(values) if verdict.simple else verdict.principal_id,
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
