"""openssl s_client and gnutls-cli (TLS 1.2, TLS 1.3, DTLS 1.2) against our servers' asynchronous PSK path."""

from __future__ import annotations

import asyncio

import pytest

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, make_table
from m2msec.keys.table import PSKEntry
from m2msec.tls.engine import ServerConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK
from m2msec.transport.dtls import start_dtls_server
from m2msec.transport.tls import start_stream_server

from .conftest import (
    FAMILIES,
    GNUTLS_CLI,
    ONEM2M,
    OPENSSL,
    TLS13,
    EchoServer,
    Family,
    gnutls_cli,
    needs_gnutls,
    needs_openssl,
    run_peer,
    s_client,
)

pytestmark = [pytest.mark.interop]

TABLE = make_table()


class Resolver:
    """A resolver that waits before answering (as a remote key store would) and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, identity: str) -> PSKEntry | None:
        self.asked.append(identity)
        await asyncio.sleep(0.05)
        return TABLE.lookup(identity)


async def _serve(family: Family, resolver: Resolver) -> tuple[asyncio.Server, EchoServer]:
    context = TLSContext.server(ServerConfig(None, profiles=(family.profile,), async_psk=True))
    echo = EchoServer()
    server = await start_stream_server(echo.handle, "127.0.0.1", 0, context, handshake_timeout=5,
                                       psk_resolver=resolver)
    echo.port = int(server.sockets[0].getsockname()[1])
    return server, echo


@needs_openssl
@pytest.mark.parametrize("family", [ONEM2M, TLS13], ids=lambda f: f.name)
async def test_s_client_through_the_async_path(family: Family) -> None:
    resolver = Resolver()
    server, echo = await _serve(family, resolver)
    try:
        async with s_client(echo.port, *family.openssl_args) as peer:
            accepted = await echo.next_accepted()
            await peer.send(b"ping from openssl\n")
            await peer.expect(rb"\nping from openssl\n")
        assert (accepted.session.psk_identity, accepted.session.entity) == (LIGHT1_ID, LIGHT1_AE)
        assert accepted.session.cipher == family.cipher and resolver.asked == [LIGHT1_ID]
    finally:
        server.close()
        await server.wait_closed()


@needs_gnutls
@pytest.mark.parametrize("family", [ONEM2M, TLS13], ids=lambda f: f.name)
async def test_gnutls_cli_through_the_async_path(family: Family) -> None:
    assert family in FAMILIES and GNUTLS_CLI is not None
    resolver = Resolver()
    server, echo = await _serve(family, resolver)
    try:
        async with gnutls_cli(echo.port, family) as peer:
            accepted = await echo.next_accepted()
            await peer.send(b"ping from gnutls\n")
            await peer.expect(rb"ping from gnutls\n")
        assert (accepted.session.psk_identity, accepted.session.entity) == (LIGHT1_ID, LIGHT1_AE)
        assert resolver.asked == [LIGHT1_ID]
    finally:
        server.close()
        await server.wait_closed()


@needs_openssl
async def test_s_client_dtls_through_the_async_path() -> None:
    resolver = Resolver()
    context = TLSContext.dtls_server(ServerConfig(None, profiles=(ONEM2M_DTLS_PSK,), async_psk=True))
    transport, protocol = await start_dtls_server(asyncio.DatagramProtocol, "127.0.0.1", 0, context,
                                                  psk_resolver=resolver)
    port = transport.get_extra_info("sockname")[1]
    try:
        assert OPENSSL is not None
        async with run_peer(OPENSSL, "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}", "-psk", LIGHT1_KEY,
                            "-psk_identity", LIGHT1_ID, "-cipher", "PSK-AES128-CCM8:@SECLEVEL=0") as peer:
            await peer.expect(rb"Cipher is PSK-AES128-CCM8")
            for _ in range(100):
                if any(p.conn.session is not None for p in protocol.peers.values()):
                    break
                await asyncio.sleep(0.02)
        sessions = [p.conn.session for p in protocol.peers.values() if p.conn.session is not None]
        assert resolver.asked == [LIGHT1_ID]
        assert sessions and sessions[0].entity == LIGHT1_AE
    finally:
        transport.close()


@needs_gnutls
async def test_gnutls_cli_dtls_through_the_async_path() -> None:
    resolver = Resolver()
    context = TLSContext.dtls_server(ServerConfig(None, profiles=(ONEM2M_DTLS_PSK,), async_psk=True))
    transport, protocol = await start_dtls_server(asyncio.DatagramProtocol, "127.0.0.1", 0, context,
                                                  psk_resolver=resolver)
    port = transport.get_extra_info("sockname")[1]
    try:
        assert GNUTLS_CLI is not None
        async with run_peer(GNUTLS_CLI, "-u", "--insecure", "-p", str(port), "--pskusername", LIGHT1_ID,
                            "--pskkey", LIGHT1_KEY, "--priority",
                            "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:+AES-128-CCM-8",
                            "127.0.0.1") as peer:
            await peer.expect(rb"Handshake was completed")
            sessions = [p.conn.session for p in protocol.peers.values() if p.conn.session is not None]
        assert resolver.asked == [LIGHT1_ID]
        assert sessions and sessions[0].entity == LIGHT1_AE and sessions[0].cipher == "PSK-AES128-CCM8"
    finally:
        transport.close()


@needs_openssl
async def test_s_client_tls13_hello_retry_through_the_async_path() -> None:
    """The client's first key share is for a group our server does not take: a HelloRetryRequest, a second
    ClientHello with the same identity, served from the connection's cache (the resolver is asked once)."""
    resolver = Resolver()
    server, echo = await _serve(TLS13, resolver)
    try:
        async with s_client(echo.port, *TLS13.openssl_args, "-groups", "X448:X25519", "-msg") as peer:
            accepted = await echo.next_accepted()
            await peer.send(b"ping from openssl\n")
            await peer.expect(rb"\nping from openssl\n")
        assert peer.output.count(b"ClientHello") == 2  # the HelloRetryRequest happened
        assert accepted.session.version == "TLSv1.3" and accepted.session.entity == LIGHT1_AE
        assert resolver.asked == [LIGHT1_ID]
    finally:
        server.close()
        await server.wait_closed()
