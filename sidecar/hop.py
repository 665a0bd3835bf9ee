"""What of a request must cross the hop from Envoy to the sidecar for a route to be judged exactly.

Each part that reads a request declares what it reads (`Authorizer.hop_needs`, the policies' context keys, the
gates' key parts), and `sidecar.harness.envoy_config` turns the union into Envoy's ext_authz settings: which
headers the CheckRequest carries, whether the body and the peer certificate go along. A token or a body the
sidecar never reads should not leave Envoy: privacy first, a little CPU second.

A declaration errs towards more: `HopNeeds.everything` is the default of a part that says nothing (a plugin), and
what is left out must be something no decision can turn on. A header a Deny condition or a rate rule's key reads
is a need like any other: leaving it out would turn a deny into an allow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HopNeeds:
    """Headers (lower case; None: every header), body and peer certificate a part reads, with why."""

    headers: frozenset[str] | None = frozenset()
    body: bool = False
    peer_cert: bool = False
    why: tuple[str, ...] = ()
    """One line per need, naming the part that has it (for `envoy-config --explain`)."""

    @classmethod
    def everything(cls, why: str) -> HopNeeds:
        """Every header (a part that reads headers it cannot name in advance, or declares nothing)."""
        return cls(headers=None, why=(why,))

    @classmethod
    def of(cls, headers: Iterable[str], why: str, body: bool = False, peer_cert: bool = False) -> HopNeeds:
        """These headers (any case), and body or certificate if asked."""
        names = frozenset(h.lower() for h in headers)
        return cls(headers=names, body=body, peer_cert=peer_cert, why=(why,) if names or body or peer_cert else ())

    @property
    def all_headers(self) -> bool:
        """Whether every header must cross."""
        return self.headers is None

    def __or__(self, other: HopNeeds) -> HopNeeds:
        headers = None if self.headers is None or other.headers is None else self.headers | other.headers
        why = self.why + tuple(w for w in other.why if w not in self.why)
        return HopNeeds(headers, self.body or other.body, self.peer_cert or other.peer_cert, why)


NOTHING = HopNeeds()


def union(needs: Iterable[HopNeeds]) -> HopNeeds:
    """Every need of `needs` at once."""
    out = NOTHING
    for need in needs:
        out = out | need
    return out


@dataclass(frozen=True, slots=True)
class TokenRules:
    """What Envoy's own filters must check to decide a bearer-token route exactly as the sidecar does
    (`Authorizer.offload_rules`; `envoy-config --offload` renders it as jwt_authn and an RBAC condition)."""

    issuer: str
    audiences: frozenset[str]
    """Any `aud` value, or else `client_id`, must be one of these."""
    leeway: float
    algorithms: frozenset[str]
    header: str
    """The one header the token is read from (`Bearer ` stripped, or a bare token)."""
    claim_to_headers: tuple[tuple[str, str], ...]
    max_token_bytes: int
    jwks_uri: str | None
    jwks_file: str | None
    token_cache_size: int


@dataclass(frozen=True, slots=True)
class OpenRoute:
    """Everyone passes as `principal` (`type: none` with nothing else judging the route)."""

    principal: str


@dataclass(frozen=True, slots=True)
class ClosedRoute:
    """Everyone is refused with this status, reason and message (`type: deny`)."""

    status: int
    reason: str
    message: str


OffloadRules = TokenRules | OpenRoute | ClosedRoute
"""What Envoy's own filters check in place of the sidecar (`Authorizer.offload_rules`)."""


@dataclass(frozen=True, slots=True)
class NotOffloadable:
    """Why a route stays on ext_authz (`envoy-config --explain`)."""

    reason: str


__all__ = [
    "NOTHING",
    "ClosedRoute",
    "HopNeeds",
    "NotOffloadable",
    "OffloadRules",
    "OpenRoute",
    "TokenRules",
    "union",
]
