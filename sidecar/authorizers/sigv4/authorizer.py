"""`type: sigv4`: callers sign requests with AWS Signature Version 4 (or SigV4a) and an access key we know.

This is API Gateway's `AWS_IAM` authorization, done by the sidecar: the verifier checks the signature, the
replay guard (when on) refuses a signature seen before, and the caller becomes a Principal carrying its identity
policies for the policy stage. Each credential's Principal is built once per credential snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from ...hop import HopNeeds
from ...reasons import Denied
from ...request import Principal, Request
from ..base import Authorizer
from .canonical import HMAC_ALGORITHM
from .credentials import Credential, CredentialStore
from .errors import REPLAYED_REQUEST
from .replay import LocalReplayGuard, ReplayGuard
from .verifier import SigV4Verifier

if TYPE_CHECKING:
    from ...metrics import ReloadStatus
    from ...settings import RouteSettings


class UpstreamHeaderNames(Protocol):
    """The identity headers a SigV4 principal sends upstream (`SigV4UpstreamHeaders`; None: not sent)."""

    @property
    def access_key_id(self) -> str | None: ...

    @property
    def principal_arn(self) -> str | None: ...


def build_principal(credential: Credential, authorizer: str, upstream: UpstreamHeaderNames | None) -> Principal:
    """The Principal a verified credential becomes (built once per credential snapshot)."""
    context: dict[str, Any] = {
        "aws:PrincipalArn": credential.principal_arn,
        "aws:PrincipalAccount": credential.account,
        "aws:PrincipalType": credential.principal_type,
        "aws:userid": credential.user_id,
    }
    if credential.username:
        context["aws:username"] = credential.username
    headers: list[tuple[str, str]] = []
    if upstream is not None and upstream.access_key_id:
        headers.append((upstream.access_key_id, credential.access_key_id))
    if upstream is not None and upstream.principal_arn:
        headers.append((upstream.principal_arn, credential.principal_arn))
    return Principal(
        kind="sigv4",
        id=credential.principal_arn,
        authorizer=authorizer,
        arn=credential.principal_arn,
        account=credential.account,
        claims=MappingProxyType({"access_key_id": credential.access_key_id}),
        context=MappingProxyType(context),
        upstream_headers=tuple(headers),
        policies=credential.policies,
        expires_at=credential.expires_at,
    )


def identity_header_names(upstream: UpstreamHeaderNames | None) -> frozenset[str]:
    """The header names `build_principal` may set for `upstream` (the settings and the authorizer both answer
    with this, so they cannot disagree)."""
    if upstream is None:
        return frozenset()
    return frozenset(name for name in (upstream.access_key_id, upstream.principal_arn) if name)


class SigV4Authorizer(Authorizer):
    """Identifies callers by their AWS SigV4/SigV4a signature."""

    kind = "sigv4"
    challenge = HMAC_ALGORITHM
    identity_side = "policies"

    def __init__(
        self,
        name: str,
        verifier: SigV4Verifier,
        upstream_headers: UpstreamHeaderNames | None = None,
        replay_guard: ReplayGuard | None = None,
        make_guard: Callable[[], ReplayGuard] | None = None,
    ) -> None:
        super().__init__(name)
        self.verifier = verifier
        self.upstream_headers = upstream_headers
        self.replay_guard = replay_guard
        self._make_guard = make_guard or LocalReplayGuard
        self._variants: dict[bool, SigV4Authorizer] = {}

    def upstream_header_names(self) -> frozenset[str]:
        return identity_header_names(self.upstream_headers)

    def hop_needs(self) -> HopNeeds:
        """Every header (a signature covers whichever headers the client chose to sign) and the body (its hash)."""
        why = f"authorizer {self.name} (sigv4) verifies signatures over any headers the client signed and the body"
        return HopNeeds(headers=None, body=True, why=(why,))

    def for_route(self, route: RouteSettings) -> Authorizer:
        """A route's `replay_guard` overrides the authorizer's: such routes get a sibling instance that shares
        the verifier (credential store, signing-key cache) and differs only in the guard. Every route that turns
        the guard on shares one guard; the signature covers the path, so routes cannot collide in it."""
        wanted = route.replay_guard
        if wanted is None or wanted == (self.replay_guard is not None):
            return self
        variant = self._variants.get(wanted)
        if variant is None:
            guard = self._make_guard() if wanted else None
            variant = SigV4Authorizer(self.name, self.verifier, self.upstream_headers, guard)
            self._variants[wanted] = variant
        return variant

    @property
    def store(self) -> CredentialStore:
        """The credential store this authorizer verifies against."""
        return self.verifier.store

    async def authenticate(self, request: Request) -> Principal:
        verified = self.verifier.verify(request)
        if self.replay_guard is not None and not await self.replay_guard.first_use(
            verified.replay_key, verified.replay_ttl, verified.now
        ):
            raise Denied(REPLAYED_REQUEST, "This signed request was already used.", self.verifier.options.deny_status)
        memo_key = (self.name, verified.credential.access_key_id)
        principal: Principal | None = verified.snapshot.memo.get(memo_key)
        if principal is None:
            principal = build_principal(verified.credential, self.name, self.upstream_headers)
            verified.snapshot.memo[memo_key] = principal
        return principal

    def reload_statuses(self) -> tuple[ReloadStatus, ...]:
        return self.store.reload_statuses()

    async def recheck_files(self, why: str) -> None:
        await self.store.recheck_files(why)

    async def start(self) -> None:
        await self.store.start()

    async def stop(self) -> None:
        await self.store.stop()
        for instance in (self, *self._variants.values()):
            if instance.replay_guard is not None:
                await instance.replay_guard.close()
