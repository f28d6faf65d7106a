"""Attacks on the engine's hot path and the transport's shared caps and deadlines (issue 15, second pass): real
in-memory and loopback handshakes, no mocks. Each test names what it breaks."""

from __future__ import annotations

import asyncio
import socket

import pytest

from conftest import contexts, handshake_pair, make_table
from m2msec.tls.engine import (
    ConnectionClosed,
    DataReceived,
    Event,
    HandshakeCompleted,
    ServerConfig,
    TLSConnection,
    TLSContext,
)
from m2msec.tls.profiles import ECDHE_PSK, ONEM2M_DTLS_PSK, ONEM2M_PSK, TLS13_PSK, CipherProfile
from m2msec.transport.dtls import create_dtls_endpoint, start_dtls_server
from m2msec.transport.tls import ConnectionLimiter, TLSAdapter, start_server
from test_dtls import client_ctx, pump, server_ctx
from test_limits import (
    ATTACKER,
    FOURTH,
    OTHER,
    SERVER,
    VICTIM,
    Echo,
    Silent,
    dtls_handshake_from,
    stalled_dtls,
    stalled_tcp,
    tls_handshake_from,
    until,
)


def _data(events: list[Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, DataReceived)]


def test_dtls_data_coalesced_with_the_finished_is_delivered_at_once() -> None:
    # a server that answers at once packs its CCS + Finished and its first application record into one datagram:
    # OpenSSL reads the whole datagram, so the record waits in its record buffer (not in the BIO, not counted by
    # SSL_pending); it must come out with HandshakeCompleted, not when (if ever) the next datagram arrives
    peer = ("192.0.2.1", 5000)
    sctx = server_ctx()
    c = client_ctx().dtls_connection(("127.0.0.1", 5684))
    s = sctx.dtls_connection(peer)
    for d in c.datagrams_to_send():
        s.receive_datagram(d)
    for d in s.datagrams_to_send():
        c.receive_datagram(d)
    s = sctx.dtls_connection(peer)
    out = c.datagrams_to_send()
    events: list[Event] = []
    for _ in range(10):
        for d in out:
            s.receive_datagram(d)
        if s.session is not None and not events:
            s.send(b"first answer")
        flight = s.datagrams_to_send()
        for d in flight:
            events += c.receive_datagram(d)
        out = c.datagrams_to_send()
        if c.session is not None:
            break
    assert len(flight) == 1  # Finished and the data in one datagram: the case under test
    assert isinstance(events[0], HandshakeCompleted)
    assert _data(events) == [b"first answer"]
    s.send(b"second")
    assert _data([e for d in s.datagrams_to_send() for e in c.receive_datagram(d)]) == [b"second"]  # once each


def _coalesced_run(profile: CipherProfile, split: bool) -> tuple[list[Event], list[Event]]:
    sctx, cctx = contexts(make_table(), (profile,))
    s, c = sctx.connection(), cctx.connection()
    got: dict[str, list[Event]] = {"s": [], "c": []}

    def deliver(dst: TLSConnection, data: bytes, key: str) -> None:
        chunks = [data[i : i + 1] for i in range(len(data))] if split else [data]
        for chunk in chunks:
            got[key] += dst.receive_data(chunk)

    sent = {"s": False, "c": False}

    def answer(conn: TLSConnection, key: str) -> None:
        # as soon as its handshake is done, each side writes two records and a close_notify: they leave
        # coalesced with its last handshake flight
        if conn.session is not None and not sent[key]:
            sent[key] = True
            if conn.state.value == "established":
                conn.send(key.encode() + b"1")
                conn.send(key.encode() + b"2")
                conn.close()

    to_s = c.data_to_send()
    for _ in range(20):
        if to_s:
            deliver(s, to_s, "s")
        answer(s, "s")
        to_c = s.data_to_send()
        if to_c:
            deliver(c, to_c, "c")
        answer(c, "c")
        to_s = c.data_to_send()
        if not to_s and not to_c:
            break
    return got["s"], got["c"]


@pytest.mark.parametrize("split", [False, True], ids=["coalesced", "byte-by-byte"])
@pytest.mark.parametrize("profile", [ONEM2M_PSK, ECDHE_PSK, TLS13_PSK], ids=lambda p: p.name)
def test_tls_data_and_close_notify_after_the_finished_delivered_once_in_order(profile: CipherProfile,
                                                                              split: bool) -> None:
    s_events, c_events = _coalesced_run(profile, split)
    # whoever finishes its handshake first writes first; its peer gets the data with (or right after) its
    # HandshakeCompleted, every byte once and in order, then the clean close
    first, second = (c_events, s_events) if profile is not TLS13_PSK else (s_events, c_events)
    assert sum(isinstance(e, HandshakeCompleted) for e in first) == 1
    tail = [e for e in first if not isinstance(e, HandshakeCompleted)]
    assert _data(tail) in ([b"s1", b"s2"], [b"c1", b"c2"])
    assert isinstance(tail[-1], ConnectionClosed) and tail[-1].clean
    assert isinstance(second[0], HandshakeCompleted)



# ------------------------------------------------------------------------------ shared deadlines and slots


async def test_tls_stalls_between_finished_handshakes_all_time_out_and_free_their_slots() -> None:
    # one timer for the whole server (a FIFO): established connections cancel their entries, stalled ones
    # around them must still be cut, each slot released once, and the cap admits new clients afterwards
    limiter = ConnectionLimiter(8, per_source_handshakes=2, per_source_connections=2, per_sa=4)
    context = TLSContext.server(ServerConfig(make_table().lookup, profiles=(ONEM2M_PSK,)))
    server = await start_server(Echo, SERVER, 0, context, limiter=limiter, handshake_timeout=0.4)
    port = server.sockets[0].getsockname()[1]
    held: list[socket.socket] = []
    adapters: list[TLSAdapter] = []
    try:
        adapters.append((await tls_handshake_from(VICTIM, port))[0])
        held += stalled_tcp(ATTACKER, port, 1)
        await asyncio.sleep(0.1)
        adapters.append((await tls_handshake_from(VICTIM, port))[0])
        held += stalled_tcp(ATTACKER, port, 1)
        await until(lambda: limiter.open == 4)
        loop = asyncio.get_running_loop()
        for s in held:  # the server resets or closes each stalled one within its timeout
            s.setblocking(False)
            try:
                assert await asyncio.wait_for(loop.sock_recv(s, 1), 3) == b""
            except ConnectionResetError:
                pass
        await until(lambda: limiter.open == 2)
        assert limiter.handshaking == 0 and limiter.sources is not None and limiter.sources.held == {}
        assert limiter.open_per_source is not None and limiter.open_per_source.held == {VICTIM: 2}
        adapters.append((await tls_handshake_from(ATTACKER, port))[0])  # the freed slots admit again
        adapters.append((await tls_handshake_from(ATTACKER, port))[0])
        assert limiter.open == 4
    finally:
        for s in held:
            s.close()
        for adapter in adapters:
            if adapter.raw_transport is not None:
                adapter.raw_transport.close()
        server.close()
        await server.wait_closed()
    await until(lambda: limiter.open == 0)
    assert limiter.per_sa is not None and limiter.per_sa.held == {}


async def test_dtls_stalled_peers_time_out_around_established_ones_and_free_their_slots() -> None:
    context = TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(ONEM2M_DTLS_PSK,)))
    udp, proto = await start_dtls_server(Silent, SERVER, 0, context, max_peers=8, max_handshaking=4,
                                         handshake_timeout=0.4)
    port = udp.get_extra_info("sockname")[1]
    held: list[socket.socket] = []
    clients: list[asyncio.DatagramTransport] = []
    try:
        clients.append((await dtls_handshake_from(VICTIM, port))[0])
        held += await stalled_dtls(ATTACKER, port, 1)
        await asyncio.sleep(0.1)
        clients.append((await dtls_handshake_from(OTHER, port))[0])
        held += await stalled_dtls(ATTACKER, port, 1)
        await until(lambda: proto.limiter.open == 4)
        await until(lambda: proto.limiter.open == 2, timeout=3)  # both stalled peers cut by their deadline
        assert proto.handshaking == 0 and proto.sources.held == {}
        assert sorted(addr[0] for addr in proto.peers) == [VICTIM, OTHER]
        clients.append((await dtls_handshake_from(ATTACKER, port))[0])
        clients.append((await dtls_handshake_from(FOURTH, port))[0])
        assert proto.limiter.open == 4
    finally:
        for s in held:
            s.close()
        for client in clients:
            client.close()
        udp.close()
    await until(lambda: proto.limiter.open == 0)


def test_session_facts_cached_per_process_never_cross_connections() -> None:
    # OpenSSL's version and cipher names are cached per process (decoded once): interleaved TLS 1.2, TLS 1.3 and
    # DTLS 1.2 connections of different suites must each report their own, as OpenSSL reports them
    table = make_table()
    built: list[tuple[TLSConnection, TLSConnection]] = []
    for _ in range(2):
        for profile in (ONEM2M_PSK, TLS13_PSK, ECDHE_PSK):
            built.append(handshake_pair(*contexts(table, (profile,))))
        for suite in ("PSK-AES128-CCM8", "PSK-AES128-GCM-SHA256"):
            c = client_ctx(suite).dtls_connection(("127.0.0.1", 5684))
            built.append((pump(server_ctx(suite), c), c))
    seen_ids: set[bytes] = set()
    for s, c in built:
        assert s.session is not None and c.session is not None
        for conn, session in ((s, s.session), (c, c.session)):
            assert session.version == conn._ssl.get_protocol_version_name()
            assert session.cipher == conn._ssl.get_cipher_name()
        assert s.session.version == c.session.version and s.session.cipher == c.session.cipher
        if s.session.session_id:  # TLS 1.3 has none
            assert s.session.session_id == c.session.session_id and s.session.session_id not in seen_ids
            seen_ids.add(s.session.session_id)
    assert {s.session.version for s, _ in built if s.session} == {"TLSv1.2", "TLSv1.3", "DTLSv1.2"}
    assert len({s.session.cipher for s, _ in built if s.session}) == 5


class _Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got.put_nowait(data)


async def test_dtls_client_over_udp_gets_the_answer_packed_with_the_servers_finished() -> None:
    # a server that answers at once (ours flushes its Finished first; others need not) over real UDP: the
    # client's application gets that answer now, not when another datagram happens to arrive
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((SERVER, 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    sctx = server_ctx()

    async def eager_server() -> None:
        data, addr = await loop.sock_recvfrom(sock, 4096)
        hello = sctx.dtls_connection(addr)
        hello.receive_datagram(data)
        for d in hello.datagrams_to_send():  # HelloVerifyRequest
            await loop.sock_sendto(sock, d, addr)
        conn = sctx.dtls_connection(addr)
        while conn.session is None:
            data, addr = await loop.sock_recvfrom(sock, 4096)
            conn.receive_datagram(data)
            if conn.session is not None:
                conn.send(b"answer packed with the Finished")
            for d in conn.datagrams_to_send():
                await loop.sock_sendto(sock, d, addr)

    task = asyncio.create_task(eager_server())
    try:
        transport, app, session = await create_dtls_endpoint(_Recorder, SERVER, port, client_ctx(),
                                                             handshake_timeout=5)
        assert isinstance(app, _Recorder) and session.version == "DTLSv1.2"
        await asyncio.wait_for(task, 5)
        assert await asyncio.wait_for(app.got.get(), 2) == b"answer packed with the Finished"
        transport.close()
    finally:
        task.cancel()
        sock.close()
