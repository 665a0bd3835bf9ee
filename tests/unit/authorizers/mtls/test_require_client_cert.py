"""`require_client_cert: true`: a verified client certificate first, then the route's own authorizer decides
(API Gateway's mutual TLS in front of any authorizer), through the real loader, runtime and pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import parse_config
from sidecar.pipeline import Pipeline
from sidecar.runtime import RuntimeHolder, compile_runtime
from tests.unit.authorizers.custom.lambda_testkit import request
from tests.unit.authorizers.mtls.certs_testkit import API, T0, Pki, envoy_value, write_truststore

CONFIG = (
    API
    + "mtls: {truststore: ca.pem}\n"
    + "authorizers:\n  open: {type: none}\n  closed: {type: deny}\n"
    + "routes:\n"
    + "  - {match: 'ANY /orders/{proxy+}', authorizer: open, require_client_cert: true}\n"
    + "  - {match: 'ANY /admin/{proxy+}', authorizer: closed, require_client_cert: true}\n"
    + "  - {match: 'ANY /public/{proxy+}', authorizer: open}\n"
)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def _pipeline(tmp_path: Path, pki: Pki) -> Pipeline:
    write_truststore(tmp_path / "ca.pem", pki.root, pki.intermediate)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return Pipeline(RuntimeHolder(compile_runtime(parse_config(CONFIG, str(path)), clock=lambda: T0)))


async def test_the_certificate_is_required_before_the_routes_authorizer(tmp_path: Path, pki: Pki) -> None:
    pipe = _pipeline(tmp_path, pki)
    good = envoy_value(pki.leaf())
    missing = await pipe.check(request("/orders/1"))
    assert (missing.status, missing.reason) == (401, "ClientCertMissing")
    assert not any(name == "www-authenticate" for name, _ in missing.headers)
    stranger = envoy_value(Pki("Other").leaf())
    assert (await pipe.check(request("/orders/1", peer_certificate=stranger))).reason == "ClientCertUntrusted"
    expired = envoy_value(pki.leaf(not_after=T0 - 60))
    assert (await pipe.check(request("/orders/1", peer_certificate=expired))).reason == "ClientCertExpired"
    allowed = await pipe.check(request("/orders/1", peer_certificate=good))
    assert allowed.allowed and allowed.principal is not None and allowed.principal.kind == "anonymous"
    # the certificate passes, then the route's own authorizer has its say
    assert (await pipe.check(request("/admin/1", peer_certificate=good))).reason == "RouteDeny"
    assert (await pipe.check(request("/admin/1"))).reason == "ClientCertMissing"
    assert (await pipe.check(request("/public/1"))).allowed  # no certificate asked for there


def test_the_gates_truststore_reloads_like_an_authorizers_files(tmp_path: Path, pki: Pki) -> None:
    from sidecar.serve.server import self_reloading

    runtime = _pipeline(tmp_path, pki).holder.current
    names = [name for name, _ in self_reloading(runtime)]
    assert "the require_client_cert truststore" in names  # /readyz lists its reloads, SIGHUP rechecks its files
    part = dict(self_reloading(runtime))["the require_client_cert truststore"]
    assert [status.source for status in part.reload_statuses()] == ["mtls"]
