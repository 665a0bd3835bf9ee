"""The verify cache: what a certificate and chain were judged against one truststore snapshot, reused while the
judgement holds, so a warm Check does no cryptography at all.

Keyed by (leaf SHA-256, each presented chain certificate's SHA-256, snapshot version): another chain, or a reloaded
truststore or CRL, is another key. An entry is used only for a request time inside its verdict's window
(`Verdict.holds_at`): a verified chain until its earliest notAfter and the nextUpdate of the CRLs it read, a
refusal for a minute at most. Bounded (`mtls.verify_cache_size`, 0: off), least recently used first out; a new
snapshot empties it, as every key it held names the old version.
"""

from __future__ import annotations

from collections import OrderedDict

from .cert import ClientCert
from .verify import Verdict

CacheKey = tuple[bytes, tuple[bytes, ...], str]


class VerifyCache:
    """A bounded LRU of verdicts (see the module's docstring). Used from the event loop only."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[CacheKey, Verdict] = OrderedDict()
        self._version = ""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, cert: ClientCert, version: str, at: float) -> Verdict | None:
        """The verdict on `cert` against snapshot `version` that holds at `at`, or None."""
        if version != self._version:
            self._entries.clear()  # the keys name the old snapshot: nothing in them can be found again
            self._version = version
            return None
        key = (cert.fingerprint, cert.chain_fingerprints, version)
        verdict = self._entries.get(key)
        if verdict is None or not verdict.holds_at(at):
            return None
        self._entries.move_to_end(key)
        return verdict

    def put(self, cert: ClientCert, version: str, verdict: Verdict) -> None:
        if self.size <= 0:
            return
        if version != self._version:
            self._entries.clear()
            self._version = version
        key = (cert.fingerprint, cert.chain_fingerprints, version)
        self._entries[key] = verdict
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
