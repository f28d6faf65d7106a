"""DTLS 1.2 PSK (TS-0003 §10.2.1/§10.2.2, RFC 6347): the sans-I/O engine and the asyncio adapter over real
UDP on loopback, with stateless cookies, retransmission through a lossy relay, caps, and a spoofed flood."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, make_table
from m2msec.errors import ConfigurationError, HandshakeFailed, HandshakeTimeout, TLSProtocolError
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import ClientConfig, DTLSConnection, ServerConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK, TLS13_PSK, CipherProfile
from m2msec.transport.dtls import DTLSServerProtocol, create_dtls_endpoint, start_dtls_server

SUITES = {"PSK-AES128-CCM8": "ccm8", "PSK-AES128-CCM": "ccm", "PSK-AES128-GCM-SHA256": "gcm"}


def server_ctx(suite: str | None = None) -> TLSContext:
    profile = CipherProfile("t", suite) if suite else ONEM2M_DTLS_PSK
    return TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(profile,)))


def client_ctx(suite: str | None = None, identity: str = LIGHT1_ID, key: str = LIGHT1_KEY) -> TLSContext:
    profile = CipherProfile("t", suite) if suite else ONEM2M_DTLS_PSK
    return TLSContext.dtls_client(ClientConfig(identity, SecretKey.from_hex(key), profiles=(profile,),
                                               peer_entity=HOME_GATEWAY_CSE_ID))


def pump(server: TLSContext, client: DTLSConnection, peer: object = ("192.0.2.1", 5000)) -> DTLSConnection:
    """Cookie exchange, then the handshake; returns the server-side connection."""
    s = server.dtls_connection(peer)
    for d in client.datagrams_to_send():
        s.receive_datagram(d)
    assert s.awaiting_cookie  # first ClientHello: HelloVerifyRequest only, no state
    for d in s.datagrams_to_send():
        client.receive_datagram(d)
    s = server.dtls_connection(peer)
    out = client.datagrams_to_send()
    for _ in range(10):
        for d in out:
            s.receive_datagram(d)
        for d in s.datagrams_to_send():
            client.receive_datagram(d)
        out = client.datagrams_to_send()
        if s.session and client.session and not out:
            return s
    raise AssertionError("no handshake")


@pytest.mark.parametrize("suite", list(SUITES), ids=list(SUITES.values()))
def test_engine_dtls_handshake_every_suite(suite: str) -> None:
    c = client_ctx(suite).dtls_connection(("127.0.0.1", 5684))
    s = pump(server_ctx(suite), c)
    assert s.session is not None and c.session is not None
    assert s.session.version == "DTLSv1.2" and s.session.cipher == c.session.cipher == suite
    assert (s.session.psk_identity, s.session.entity) == (LIGHT1_ID, LIGHT1_AE)
    assert s.export_keying_material("EXPORTER-oneM2M-Connection", 48) == \
        c.export_keying_material("EXPORTER-oneM2M-Connection", 48)
    assert s.master_secret() == c.master_secret()
    with pytest.raises(TLSProtocolError, match="exceeds the DTLS MTU"):
        c.send(b"x" * 3000)  # one application datagram = one record = one UDP datagram
    for n in (1, 500, 1000):
        c.send(bytes([n % 256]) * n)
    datagrams = c.datagrams_to_send()
    assert all(len(d) <= c.mtu for d in datagrams)
    got = [e.data for d in datagrams for e in s.receive_datagram(d)]  # type: ignore[union-attr]
    assert [len(g) for g in got] == [1, 500, 1000]


def test_default_dtls_profile_prefers_the_mandatory_ccm8() -> None:
    c = client_ctx().dtls_connection(("127.0.0.1", 5684))
    s = pump(server_ctx(), c)
    assert s.session is not None and s.session.cipher == "PSK-AES128-CCM8"  # TS-0003 §10.2.2 mandatory suite


def test_cookie_is_bound_to_the_address() -> None:
    server, c = server_ctx(), client_ctx().dtls_connection(("127.0.0.1", 5684))
    s = server.dtls_connection(("192.0.2.1", 5000))
    for d in c.datagrams_to_send():
        s.receive_datagram(d)
    for d in s.datagrams_to_send():
        c.receive_datagram(d)
    replay = server.dtls_connection(("192.0.2.99", 5000))  # the cookie arrives from another address
    for d in c.datagrams_to_send():
        replay.receive_datagram(d)
    assert replay.awaiting_cookie and replay.session is None


def test_dtls_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="DTLS"):
        TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(TLS13_PSK,)))
    with pytest.raises(ConfigurationError, match="dtls_connection"):
        server_ctx().connection()


# ------------------------------------------------------------------------------------------ asyncio / UDP


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        entity = self.t.get_extra_info("sa_entity")
        self.t.sendto(entity.encode() + b":" + data)  # type: ignore[attr-defined]


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.q.put_nowait(data)


async def echo_server(**limits: object) -> tuple[asyncio.DatagramTransport, DTLSServerProtocol, int]:
    udp, proto = await start_dtls_server(Echo, "127.0.0.1", 0, server_ctx(), **limits)  # type: ignore[arg-type]
    return udp, proto, udp.get_extra_info("sockname")[1]


async def roundtrip(port: int, payload: bytes = b"hello") -> bytes:
    t, app, session = await create_dtls_endpoint(Inbox, "127.0.0.1", port, client_ctx(), handshake_timeout=10)
    assert session.cipher == "PSK-AES128-CCM8"
    t.sendto(payload)
    data = await asyncio.wait_for(app.q.get(), 5)  # type: ignore[attr-defined]
    t.close()
    return data


async def test_udp_echo_and_peer_cleanup() -> None:
    udp, proto, port = await echo_server()
    try:
        assert await roundtrip(port) == f"{LIGHT1_AE}:hello".encode()
        await asyncio.sleep(0.05)
        assert proto.peers == {} and proto.handshaking == 0  # the client's close_notify removed the peer
    finally:
        udp.close()


async def test_unknown_identity_then_server_still_serves() -> None:
    udp, proto, port = await echo_server()
    try:
        with pytest.raises(HandshakeFailed):
            await create_dtls_endpoint(Inbox, "127.0.0.1", port, client_ctx(identity="nobody@x.com"))
        assert await roundtrip(port) == f"{LIGHT1_AE}:hello".encode()
        assert proto.handshaking == 0
    finally:
        udp.close()


async def test_client_times_out_against_a_silent_port() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(HandshakeTimeout):
            await create_dtls_endpoint(Inbox, "127.0.0.1", sink.getsockname()[1], client_ctx(), handshake_timeout=0.5)
    finally:
        sink.close()


async def test_spoofed_client_hello_flood_keeps_no_state() -> None:
    udp, proto, port = await echo_server(max_handshaking=50)
    hello = client_ctx().dtls_connection(("127.0.0.1", port)).datagrams_to_send()[0]
    senders = []
    try:
        for _ in range(300):  # 300 source ports, ClientHellos that never return the cookie
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            senders.append(s)
            s.setblocking(False)
            s.sendto(hello, ("127.0.0.1", port))
        await asyncio.sleep(0.3)
        assert proto.peers == {} and proto.handshaking == 0  # cookies cost nothing to keep
        assert await roundtrip(port) == f"{LIGHT1_AE}:hello".encode()
    finally:
        for s in senders:
            s.close()
        udp.close()


async def test_half_open_peers_are_capped_and_expire() -> None:
    udp, proto, port = await echo_server(max_handshaking=3, handshake_timeout=0.4)
    sockets = []
    try:
        loop = asyncio.get_running_loop()
        for _ in range(6):  # complete the cookie exchange, then go silent before finishing
            conn = client_ctx().dtls_connection(("127.0.0.1", port))
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(s)
            s.setblocking(False)
            s.connect(("127.0.0.1", port))
            s.send(conn.datagrams_to_send()[0])
            conn.receive_datagram(await asyncio.wait_for(loop.sock_recv(s, 2048), 2))  # HelloVerifyRequest
            s.send(conn.datagrams_to_send()[0])  # ClientHello with cookie
        await asyncio.sleep(0.1)
        assert proto.handshaking == 3 and proto.dropped >= 3
        await asyncio.sleep(0.6)
        assert proto.handshaking == 0 and proto.peers == {}
    finally:
        for s in sockets:
            s.close()
        udp.close()


class LossyRelay(asyncio.DatagramProtocol):
    """Between client and server: drops every third datagram and delays others at random (reordering)."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.client: object = None
        self.count = 0
        self.rng = random.Random(7)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.count += 1
        if self.count % 3 == 0:
            return  # lost
        to = self.server if addr != self.server else self.client
        if addr != self.server:
            self.client = addr
        delay = self.rng.choice([0, 0, 0.05, 0.15])
        asyncio.get_running_loop().call_later(delay, self.t.sendto, data, to)  # type: ignore[attr-defined]


async def test_handshake_survives_loss_and_reordering() -> None:
    udp, _proto, port = await echo_server()
    loop = asyncio.get_running_loop()
    relay_t, relay = await loop.create_datagram_endpoint(lambda: LossyRelay(port), local_addr=("127.0.0.1", 0))
    try:
        rport = relay_t.get_extra_info("sockname")[1]
        t, app, _session = await create_dtls_endpoint(Inbox, "127.0.0.1", rport, client_ctx(), handshake_timeout=20)
        got = None
        for attempt in range(10):  # application data is not retransmitted by DTLS: retry like CoAP CON would
            t.sendto(f"try{attempt}".encode())
            try:
                got = await asyncio.wait_for(app.q.get(), 1.0)  # type: ignore[attr-defined]
                break
            except TimeoutError:
                continue
        assert got is not None and got.startswith(f"{LIGHT1_AE}:try".encode())
        assert relay.count > 6
        t.close()
    finally:
        relay_t.close()
        udp.close()


class DropOnce(asyncio.DatagramProtocol):
    """Drops exactly the n-th datagram in one direction ("up": client to server, "down": the other way)."""

    def __init__(self, server_port: int, direction: str, nth: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.client: object = None
        self.counts = {"up": 0, "down": 0}
        self.direction, self.nth = direction, nth

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        way = "down" if addr == self.server else "up"
        if way == "up":
            self.client = addr
        self.counts[way] += 1
        if way == self.direction and self.counts[way] == self.nth:
            return
        self.t.sendto(data, self.server if way == "up" else self.client)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("direction", "nth"), [("up", 1), ("down", 1), ("up", 2), ("down", 2), ("up", 3)])
async def test_any_single_lost_handshake_datagram_is_recovered(direction: str, nth: int) -> None:
    """Regression: a retransmitted ClientHello (with cookie) once restarted a peer mid-handshake, racing the
    server's own retransmitted ServerHello and stranding the client (found by bench/dtls_bench.py --loss)."""
    udp, proto, port = await echo_server()
    loop = asyncio.get_running_loop()
    relay_t, _ = await loop.create_datagram_endpoint(lambda: DropOnce(port, direction, nth),
                                                     local_addr=("127.0.0.1", 0))
    try:
        rport = relay_t.get_extra_info("sockname")[1]
        t, _app, session = await create_dtls_endpoint(Inbox, "127.0.0.1", rport, client_ctx(), handshake_timeout=8)
        assert session.cipher == "PSK-AES128-CCM8"
        t.close()
        await asyncio.sleep(0.05)
        assert proto.handshaking == 0
    finally:
        relay_t.close()
        udp.close()
