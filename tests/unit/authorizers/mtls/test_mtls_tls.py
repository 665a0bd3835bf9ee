"""The testkit's certificates in a real TLS handshake on 127.0.0.1 (what the e2e tests put behind Envoy): the
certificate the server received, passed on as Envoy passes `source.certificate`, verifies and names the client."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sidecar.authorizers.mtls import build_engine
from sidecar.settings import MtlsSettings
from tests.unit.authorizers.custom.lambda_testkit import request
from tests.unit.authorizers.mtls.certs_testkit import SPIFFE_ID, Pki, write_truststore


async def test_a_client_certificate_received_over_tls_verifies(tmp_path: Path) -> None:
    now = time.time()  # the handshake checks validity on the real clock
    pki = Pki(now=now)
    server_cert, server_key = pki.server().write(tmp_path, "server", pki.intermediate)
    client = pki.leaf()
    client_cert, client_key = client.write(tmp_path, "client", pki.intermediate)
    write_truststore(tmp_path / "ca.pem", pki.root)

    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(server_cert, server_key)
    server_side.load_verify_locations(tmp_path / "ca.pem")
    server_side.verify_mode = ssl.CERT_REQUIRED
    client_side = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    client_side.load_cert_chain(client_cert, client_key)

    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        received.set_result(peer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_side, server_hostname="localhost"), 5
        )
        der = await asyncio.wait_for(received, 5)
        writer.close()
    pem = x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode()
    # Envoy's `source.certificate` is the leaf alone: the intermediate must be in the truststore to chain it.
    write_truststore(tmp_path / "anchors.pem", pki.root, pki.intermediate)
    settings = MtlsSettings(truststore="anchors.pem")
    engine = build_engine(settings, tmp_path, str(tmp_path / "config.yaml"), (), clock=lambda: now)
    cert = engine.verify_request(request("/b2b/x", peer_certificate=quote(pem, safe=""), time=now))
    assert cert.san_uri == (SPIFFE_ID,) and cert.fingerprint_hex == client.sha256
