"""Regressions found by tlsfuzzer (scripts/tlsfuzz.py, docs/security.md section 1), over real TLS on loopback.

- D214: a response (HTTP head and body) leaves in one TLS record, not one per buffer; tlsfuzzer's conversation
  scripts expect one ApplicationData record and failed every TLS 1.3 PSK probe before.
- D215: a session that authenticated the server only (a certificate suite whose client sent no certificate, which
  ``optional_client_certificate`` allows) is associated with nothing and each request refused with 403 / 4106;
  before, ``associate`` failed an assertion inside ``connection_made`` and the connection was dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from test_gateway import RecordingBackend, backend, connect, onem2m  # noqa: F401  (fixture re-used)

from conftest import LIGHT1_AE, make_table
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.rules import NO_CLIENT_CREDENTIAL
from m2msec.idb import NOT_ONEM2M
from m2msec.pki import CertificateFlavour, Issued, create_ca, issue
from m2msec.tls.config import ServerConfig
from m2msec.tls.engine import CertificateConfig, ClientConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, ONEM2M_PSK, CipherProfile
from m2msec.transport.tls import open_connection

#: TLS record content types (RFC 5246 §6.2.1)
APPLICATION_DATA = 23


def _record_types(stream: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each whole TLS record in ``stream``."""
    out, pos = [], 0
    while pos + 5 <= len(stream):
        length = int.from_bytes(stream[pos + 3:pos + 5], "big")
        out.append((stream[pos], length))
        pos += 5 + length
    return out


@pytest.fixture
async def gateway(backend: RecordingBackend) -> AsyncIterator[Gateway]:  # noqa: F811
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", backend.port), port=0, profiles=(ONEM2M_PSK,)),
                 make_table())
    await gw.start()
    yield gw
    await gw.close()


async def test_a_response_is_one_tls_record(gateway: Gateway, backend: RecordingBackend) -> None:  # noqa: F811
    seen = bytearray()  # what the gateway sent, as it crossed the wire

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool) -> None:
        try:
            while data := await reader.read(65536):
                if record:
                    seen.extend(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", gateway.port)
        await asyncio.gather(pipe(client_r, server_w, False), pipe(server_r, client_w, True),
                             return_exceptions=True)

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        port = int(proxy.sockets[0].getsockname()[1])
        sa = await connect(_At(gateway, port))  # type: ignore[arg-type]
        resp = await sa.request(onem2m(LIGHT1_AE))
        await sa.close()
    finally:
        proxy.close()
        await proxy.wait_closed()
    assert resp.status == 200 and resp.body  # a head and a body
    app = [length for kind, length in _record_types(bytes(seen)) if kind == APPLICATION_DATA]
    assert len(app) == 1, app  # TLS 1.2: every record after the handshake's is application data


@dataclasses.dataclass
class _At:
    """The gateway as reached through the recording proxy (``connect`` reads ``.port``)."""

    gateway: Gateway
    port: int


class _OptionalClientCertificate(GatewayConfig):
    def server_config(self, table: object, profiles: tuple[CipherProfile, ...], *,
                      async_psk: bool = False) -> ServerConfig:
        base = super().server_config(table, profiles, async_psk=async_psk)  # type: ignore[arg-type]
        return dataclasses.replace(base, optional_client_certificate=True)


async def test_a_server_only_session_is_refused_per_request(backend: RecordingBackend) -> None:  # noqa: F811
    ca: Issued = create_ca("fuzz root", permitted_dns=["localhost"])
    leaf = issue(ca, CertificateFlavour.FQDN, "gw.localhost")
    cert = CertificateConfig(leaf.certificate_pem(), leaf.private_key_pem(), trust_anchors_pem=ca.certificate_pem())
    gw = Gateway(_OptionalClientCertificate(backend=Backend("127.0.0.1", backend.port), port=0,
                                            profiles=(ECDHE_ECDSA,), certificate=cert), make_table())
    await gw.start()
    client = TLSContext.client(ClientConfig(None, profiles=(ECDHE_ECDSA,), server_name="gw.localhost",
                                            server_authentication_only=True,
                                            certificate=CertificateConfig(b"", b"", ca.certificate_pem())))
    try:
        for _ in range(2):  # the gateway keeps serving after the first
            reader, writer, session = await open_connection("127.0.0.1", gw.port, client,
                                                            peer_entity=NOT_ONEM2M)
            assert session.peer_certificate is not None  # the gateway's; ours was never sent
            writer.write(b"GET /in-cse HTTP/1.1\r\nHost: gw\r\nX-M2M-Origin: CAdmin\r\nX-M2M-RI: 1\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.close()
            assert head.startswith(b"HTTP/1.1 403 ") and b"x-m2m-rsc: 4106" in head.lower(), head
    finally:
        await gw.close()
    assert backend.requests == []
    assert "server-authenticated" in NO_CLIENT_CREDENTIAL
