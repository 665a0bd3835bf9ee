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


__all__ = ["NOTHING", "HopNeeds", "union"]
