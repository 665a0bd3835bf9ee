"""The config of `type: mtls` (nothing but its type: the `mtls:` section says everything), and how the engine and
the authorizer are built from that section.

`build_engine` is also what a route with `require_client_cert: true` is served by, so both judge certificates
with the same settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from ...settings import MtlsSettings
from ..base import Authorizer, AuthorizerSettings, BuildContext
from .authorizer import MtlsAuthorizer
from .engine import ClientCertVerifier
from .sources import CertSources
from .truststore import TrustStore
from .verify import Rules

NEEDS_SECTION = "type: mtls needs the mtls: section (the truststore client certificates must chain to)"


class MtlsAuthorizerSettings(AuthorizerSettings):
    """`type: mtls`: the caller is the verified client certificate's `mtls.principal` field."""

    type: Literal["mtls"]

    def build(self, ctx: BuildContext) -> Authorizer:
        if ctx.mtls is None:
            raise ValueError(NEEDS_SECTION)  # located at the authorizer's line by the runtime
        engine = build_engine(ctx.mtls, ctx.base_dir, ctx.source, ctx.http_trusted_peers, ctx.clock)
        return MtlsAuthorizer(ctx.name, engine, ctx.mtls.principal, ctx.mtls.verify_cache_size)


def build_engine(
    mtls: MtlsSettings,
    base_dir: Path,
    source: str,
    http_trusted_peers: tuple[str, ...],
    clock: Callable[[], float] = time.time,
) -> ClientCertVerifier:
    """The engine for the `mtls:` section of the config file `source` (whose directory is `base_dir`): the
    truststore and CRLs loaded now (`ConfigError` at `mtls.truststore` / `mtls.crls[i]` if one does not load).
    Certificate headers are believed only from `mtls.trusted_peers` (none when unset; `http_trusted_peers` is kept
    for the signature's callers and ignored)."""
    store = TrustStore(_resolved(base_dir, mtls.truststore), [_resolved(base_dir, crl) for crl in mtls.crls], source)
    # Header sources are believed only from the proxies `mtls.trusted_peers` names: `http.trusted_peers` says who
    # may ask the sidecar, often a whole network, and a client inside it must not write its own certificate.
    peers = mtls.trusted_peers or ()
    sources = CertSources(mtls.sources, peers, memo_size=max(1, mtls.verify_cache_size))
    rules = Rules(max_chain_depth=mtls.max_chain_depth, stale_crl=mtls.stale_crl)
    return ClientCertVerifier(sources, store, rules, mtls.verify_cache_size, clock)


def _resolved(base_dir: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else base_dir / path
