"""Entity A's IdB (m2msec.idb, docs/decisions.md D23, D39) over real TLS/DTLS handshakes on loopback: an
SP-relative IdB is pinned to the SP of Entity A's own certificate, a malformed IdB or a contradiction is refused
before any packet is sent, and both client transports check the IdB they report."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_ID, LIGHT1_KEY
from forged import forged_leaf, unconstrained_ca
from m2msec.errors import ConfigurationError, HandshakeFailed
from m2msec.idb import ANY_ENTITY
from m2msec.keys.secret import SecretKey
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import Issued, create_ca, issue
from m2msec.saef import CertificateCredentials, PSKCredentials, establish_sa
from m2msec.tls.engine import CertificateConfig, ClientConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, ONEM2M_DTLS_PSK
from m2msec.transport.dtls import create_dtls_endpoint
from m2msec.transport.tls import open_connection, start_stream_server

SP, FOREIGN_SP, CSE = "m2m.provider.com", "foreign-sp.example", "in-cse"


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    ca, foreign = create_ca("provider root", permitted_dns=[SP]), create_ca("foreign root", permitted_dns=[FOREIGN_SP])
    return {
        "ca": ca, "foreign": foreign,
        "in-cse": issue(ca, F.CSE_ID, CSE, sp_domain=SP),
        "foreign-in-cse": issue(foreign, F.CSE_ID, CSE, sp_domain=FOREIGN_SP),
        "ae": issue(ca, F.AE_ID, f"//{SP}/{CSE}/Clight"),  # Entity A: an AE of our SP
        "node": issue(ca, F.NODE_ID, "1.3.6.1.4.1.99999.7.42"),  # Entity A's certificate names no SP
    }


def anchors(pki: dict[str, Issued]) -> bytes:
    return pki["ca"].certificate_pem() + pki["foreign"].certificate_pem()


@contextlib.asynccontextmanager
async def cert_server(pki: dict[str, Issued], who: str) -> AsyncIterator[tuple[int, list[object]]]:
    """A certificate TLS server presenting ``who``'s certificate; yields its port and the connections it got."""
    leaf = pki[who]
    ctx = TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), certificate=CertificateConfig(
        leaf.certificate_pem(), leaf.private_key_pem(), anchors(pki))))
    seen: list[object] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("m2msec_session"))
        writer.close()

    server = await start_stream_server(serve, "127.0.0.1", 0, ctx)
    try:
        yield int(server.sockets[0].getsockname()[1]), seen
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def tcp_listener() -> AsyncIterator[tuple[int, list[object]]]:
    """A plain TCP listener that records accepted connections (to show that nothing was sent)."""
    accepted: list[object] = []

    async def on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(on, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), accepted
    finally:
        server.close()
        await server.wait_closed()


def creds(pki: dict[str, Issued], who: str, idb: object) -> CertificateCredentials:
    return CertificateCredentials(pki[who].certificate_pem(), pki[who].private_key_pem(), anchors(pki),
                                  peer_entity=idb)  # type: ignore[arg-type]


@pytest.mark.parametrize("idb", [CSE, f"/{CSE}"])
async def test_sp_relative_idb_takes_the_sp_of_entity_as_ae_id_certificate(pki: dict[str, Issued], idb: str) -> None:
    async with cert_server(pki, "in-cse") as (port, _):
        sa = await establish_sa("127.0.0.1", port, creds(pki, "ae", idb))
        assert sa.session.entity == idb and sa.session.authentication == "certificate"
        await sa.close()
    async with cert_server(pki, "foreign-in-cse") as (port, _):
        with pytest.raises(HandshakeFailed, match=f"is for 'in-cse' of SP '{FOREIGN_SP}', not IdB"):
            await establish_sa("127.0.0.1", port, creds(pki, "ae", idb))


async def test_sp_relative_idb_needs_an_sp_in_entity_as_certificate(pki: dict[str, Issued]) -> None:
    async with tcp_listener() as (port, accepted):
        with pytest.raises(ConfigurationError, match=f"names no SP: give it as //<SP domain>/{CSE}"):
            await establish_sa("127.0.0.1", port, creds(pki, "node", CSE))
    assert accepted == []
    async with cert_server(pki, "in-cse") as (port, _):  # the absolute form needs no SP of A's own
        sa = await establish_sa("127.0.0.1", port, creds(pki, "node", f"//{SP}/{CSE}"))
        await sa.close()


@pytest.mark.parametrize("idb", [f"///{CSE}", f"//{SP}/", f"//{SP}", f"//{SP}/{CSE}/Cx", f"/{CSE}/Cx", "in cse"])
async def test_malformed_idb_is_refused_before_connecting(pki: dict[str, Issued], idb: str) -> None:
    """``///in-cse`` once lost the SP pin silently (its empty SP matched any); the others are no CSE-ID."""
    psk = PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), idb)
    async with tcp_listener() as (port, accepted):
        for credentials in (creds(pki, "ae", idb), psk):
            with pytest.raises(ConfigurationError, match="malformed IdB"):
                await establish_sa("127.0.0.1", port, credentials)
    assert accepted == []


async def test_tls_transport_checks_the_idb_it_reports(pki: dict[str, Issued]) -> None:
    own = CertificateConfig(pki["ae"].certificate_pem(), pki["ae"].private_key_pem(), anchors(pki))
    ctx = TLSContext.client(ClientConfig(None, None, profiles=(ECDHE_ECDSA,), certificate=own, peer_entity=CSE))
    async with cert_server(pki, "foreign-in-cse") as (port, _):
        with pytest.raises(HandshakeFailed, match="not IdB"):
            await open_connection("127.0.0.1", port, ctx)
    no_idb = TLSContext.client(ClientConfig(None, None, profiles=(ECDHE_ECDSA,), certificate=own))
    async with tcp_listener() as (port, accepted):
        with pytest.raises(ConfigurationError, match="no IdB"):
            await open_connection("127.0.0.1", port, no_idb)
        with pytest.raises(ConfigurationError, match="differs from the IdB"):
            await open_connection("127.0.0.1", port, ctx, peer_entity=ANY_ENTITY)
    assert accepted == []


async def test_dtls_any_entity_does_not_override_the_contexts_idb() -> None:
    """create_dtls_endpoint(peer_entity=ANY_ENTITY) once silently dropped the ClientConfig's IdB."""
    loop = asyncio.get_running_loop()
    got: list[bytes] = []

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            got.append(data)

    udp, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    try:
        ctx = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                                  profiles=(ONEM2M_DTLS_PSK,), peer_entity=HOME_GATEWAY_CSE_ID))
        with pytest.raises(ConfigurationError, match="differs from the IdB"):
            await create_dtls_endpoint(asyncio.DatagramProtocol, "127.0.0.1", udp.get_extra_info("sockname")[1],
                                       ctx, peer_entity=ANY_ENTITY, handshake_timeout=1)
        await asyncio.sleep(0.1)
    finally:
        udp.close()
    assert got == []


async def test_entity_a_refuses_a_cse_certificate_its_chain_does_not_vouch_for() -> None:
    """D40 on Entity A's side: a trusted CA without nameConstraints issues a (marked) CSE-ID certificate for our
    SP's in-cse; the gateway would not accept such an identity from it, and neither does Entity A."""
    from cryptography import x509

    ours, free = create_ca("provider root", permitted_dns=[SP]), unconstrained_ca("unconstrained root")
    impostor = forged_leaf(free, x509.DNSName(f"{CSE}.{SP}"), cse_id_marker=True)
    client = issue(ours, F.AE_ID, f"//{SP}/{CSE}/Clight")
    trusted = ours.certificate_pem() + free.certificate_pem()
    ctx = TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), certificate=CertificateConfig(
        impostor.certificate_pem(), impostor.private_key_pem(), trusted)))
    server = await start_stream_server(lambda r, w: w.close(), "127.0.0.1", 0, ctx)
    port = int(server.sockets[0].getsockname()[1])
    try:
        for idb in (CSE, f"//{SP}/{CSE}"):
            creds = CertificateCredentials(client.certificate_pem(), client.private_key_pem(), trusted,
                                           peer_entity=idb)
            with pytest.raises(HandshakeFailed, match="not vouched for: no CA of the chain binds SP"):
                await establish_sa("127.0.0.1", port, creds)
    finally:
        server.close()
        await server.wait_closed()
