"""One client must not hurt the others (issue 14): per-source handshake caps over real TLS and DTLS from
different loopback source addresses (the whole 127/8 is local on Linux), bounded waits and the request-body
budget of the HTTP gateway, and the file-descriptor check at start."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from conftest import LIGHT1_ID, LIGHT1_KEY, make_table
from m2msec.errors import HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import DEFAULT_DTLS_MTU, ClientConfig, ServerConfig, SessionInfo, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK, ONEM2M_PSK
from m2msec.transport.dtls import DTLSServerProtocol, _ClientProtocol, start_dtls_server
from m2msec.transport.limits import IPV6_SOURCE_PREFIX, SourceLimiter, source_of
from m2msec.transport.tls import ConnectionLimiter, TLSAdapter, start_server

SERVER = "127.0.0.1"
ATTACKER, VICTIM, OTHER, FOURTH = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def test_source_of_aggregates_ipv6_per_64_and_unmaps_ipv4() -> None:
    assert IPV6_SOURCE_PREFIX == 64
    assert source_of(("2001:db8::1", 5000, 0, 0)) == source_of(("2001:db8::ffff:1", 6000, 0, 0)) == "2001:db8::/64"
    assert source_of(("2001:db8:0:1::1", 5000, 0, 0)) != source_of(("2001:db8::1", 5000, 0, 0))
    assert source_of(("fe80::1%eth0", 1, 0, 2)) == "fe80::/64"
    assert source_of(("::ffff:127.0.0.2", 5000, 0, 0)) == source_of(("127.0.0.2", 1)) == "127.0.0.2"
    assert source_of(("127.0.0.2", 1)) != source_of(("127.0.0.3", 1))
    limiter = SourceLimiter(2)
    assert limiter.acquire("a") and limiter.acquire("a") and not limiter.acquire("a") and limiter.acquire("b")
    limiter.release("a")
    assert limiter.acquire("a") and limiter.refused == 1
    limiter.release("a"), limiter.release("a"), limiter.release("b")
    assert limiter.held == {}


# ------------------------------------------------------------------------------------------------ TLS


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def tls_client() -> TLSContext:
    return TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_PSK,)))


async def tls_handshake_from(source: str, port: int) -> tuple[TLSAdapter, SessionInfo]:
    loop = asyncio.get_running_loop()
    _, adapter = await loop.create_connection(lambda: TLSAdapter(tls_client(), asyncio.Protocol), SERVER, port,
                                              local_addr=(source, 0))
    return adapter, await asyncio.wait_for(adapter.handshake, 5)


def stalled_tcp(source: str, port: int, count: int) -> list[socket.socket]:
    """``count`` TCP connections from ``source`` that never send a ClientHello."""
    return [socket.create_connection((SERVER, port), source_address=(source, 0)) for _ in range(count)]


async def test_tls_one_source_cannot_take_every_handshake_slot() -> None:
    limiter = ConnectionLimiter(6, per_source_handshakes=3)
    context = TLSContext.server(ServerConfig(make_table().lookup, profiles=(ONEM2M_PSK,)))
    server = await start_server(Echo, SERVER, 0, context, limiter=limiter, handshake_timeout=30)
    port = server.sockets[0].getsockname()[1]
    held: list[socket.socket] = []
    try:
        held += stalled_tcp(ATTACKER, port, 10)  # many source ports, one source address
        await until(lambda: limiter.sources is not None and limiter.sources.refused == 7 and limiter.open == 3)
        assert limiter.sources is not None and limiter.sources.held == {ATTACKER: 3}
        adapter, session = await tls_handshake_from(VICTIM, port)  # another source still gets through
        assert session.psk_identity == LIGHT1_ID and session.version.endswith("v1.2")
        assert limiter.sources.held == {ATTACKER: 3}  # an established connection holds no handshake slot
        # the global cap still holds: 3 stalled + 1 established + 2 more = 6, the 7th is reset
        held += stalled_tcp(OTHER, port, 2)
        held += stalled_tcp(FOURTH, port, 1)
        await until(lambda: limiter.refused == 1 and limiter.open == 6)
        assert limiter.sources.held == {ATTACKER: 3, OTHER: 2}
        with pytest.raises(HandshakeFailed, match="connection lost during the handshake"):
            await tls_handshake_from(FOURTH, port)
        assert adapter.raw_transport is not None
        adapter.raw_transport.close()
    finally:
        for s in held:
            s.close()
        server.close()
        await server.wait_closed()
    await until(lambda: limiter.open == 0)
    assert limiter.sources.held == {}


# ----------------------------------------------------------------------------------------------- DTLS


def dtls_client() -> TLSContext:
    return TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_DTLS_PSK,)))


class Silent(asyncio.DatagramProtocol):
    pass


async def stalled_dtls(source: str, port: int, count: int) -> list[socket.socket]:
    """``count`` DTLS clients from ``source`` that return the cookie, then never finish their handshake."""
    loop = asyncio.get_running_loop()
    sockets = []
    for _ in range(count):
        conn = dtls_client().dtls_connection((SERVER, port))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(s)
        s.setblocking(False)
        s.bind((source, 0))
        s.connect((SERVER, port))
        s.send(conn.datagrams_to_send()[0])
        conn.receive_datagram(await asyncio.wait_for(loop.sock_recv(s, 2048), 2))  # HelloVerifyRequest
        s.send(conn.datagrams_to_send()[0])  # ClientHello with the cookie: the server keeps state now
    return sockets


async def dtls_handshake_from(source: str, port: int) -> tuple[asyncio.DatagramTransport, SessionInfo]:
    loop = asyncio.get_running_loop()
    udp, proto = await loop.create_datagram_endpoint(
        lambda: _ClientProtocol(dtls_client(), Silent, mtu=DEFAULT_DTLS_MTU, remote=(SERVER, port)),
        local_addr=(source, 0), remote_addr=(SERVER, port))
    try:
        return udp, await asyncio.wait_for(proto.handshake, 3)
    except BaseException:
        udp.close()
        raise


async def test_dtls_one_source_cannot_take_every_handshake_slot() -> None:
    context = TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(ONEM2M_DTLS_PSK,)))
    udp, proto = await start_dtls_server(Silent, SERVER, 0, context, max_handshaking=6,
                                         max_handshaking_per_source=3, handshake_timeout=30)
    assert isinstance(proto, DTLSServerProtocol)
    port = udp.get_extra_info("sockname")[1]
    held: list[socket.socket] = []
    try:
        held += await stalled_dtls(ATTACKER, port, 10)
        await until(lambda: proto.sources.refused == 7)
        assert proto.handshaking == 3 and proto.sources.held == {ATTACKER: 3}
        client, session = await dtls_handshake_from(VICTIM, port)
        assert session.psk_identity == LIGHT1_ID and session.version.endswith("v1.2")
        assert proto.handshaking == 3 and proto.sources.held == {ATTACKER: 3}
        # the global cap still holds: 3 + 3 from a third source fill it, a fourth source is dropped
        held += await stalled_dtls(OTHER, port, 3)
        await until(lambda: proto.handshaking == 6)
        dropped = proto.dropped
        held += await stalled_dtls(FOURTH, port, 1)
        await until(lambda: proto.dropped == dropped + 1)
        assert proto.handshaking == 6 and FOURTH not in proto.sources.held
        client.close()
    finally:
        for s in held:
            s.close()
        udp.close()
    await until(lambda: proto.handshaking == 0)
    assert proto.sources.held == {}
