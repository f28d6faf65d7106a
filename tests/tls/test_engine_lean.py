"""The engine's lean handshake path and idle footprint (bench/engine_cost.py measures them; these check that
nothing was lost on the way): released record buffers, the one-shot session facts, the pre-keyed decoy keys
and the direct BIO feed. Real in-memory handshakes, no mocks."""

from __future__ import annotations

import gc
import os
import weakref

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, contexts, handshake_pair
from m2msec.errors import HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable
from m2msec.tls import _shim
from m2msec.tls.engine import (
    ClientConfig,
    ConnectionClosed,
    ConnectionState,
    DataReceived,
    DTLSConnection,
    ServerConfig,
    TLSConnection,
    TLSContext,
)
from m2msec.tls.profiles import ECDHE_PSK, ONEM2M_DTLS_PSK, ONEM2M_PSK, PSK, TLS13_PSK, CipherProfile
from m2msec.tls.psk_hiding import DECOY_PSK_LENGTH, DecoyKeys, decoy_psk


def _dtls_contexts(table: MemoryPSKTable) -> tuple[TLSContext, TLSContext]:
    server = TLSContext.dtls_server(ServerConfig(table.lookup, profiles=(ONEM2M_DTLS_PSK,)))
    client = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                                 profiles=(ONEM2M_DTLS_PSK,), peer_entity=HOME_GATEWAY_CSE_ID))
    return server, client


def test_every_context_releases_idle_record_buffers(table: MemoryPSKTable) -> None:
    # D53: SSL_MODE_RELEASE_BUFFERS on every context, server and client, TLS and DTLS
    built = [*contexts(table, (ONEM2M_PSK,)), *contexts(table, (TLS13_PSK,)), *_dtls_contexts(table)]
    for ctx in built:
        assert _shim.releases_buffers(ctx._ctx), ctx


def _exchange(s: TLSConnection, c: TLSConnection, size: int) -> None:
    payload = os.urandom(size)
    c.send(payload)
    got = b"".join(e.data for e in s.receive_data(c.data_to_send()) if isinstance(e, DataReceived))
    assert got == payload
    s.send(payload[::-1])
    got = b"".join(e.data for e in c.receive_data(s.data_to_send()) if isinstance(e, DataReceived))
    assert got == payload[::-1]


@pytest.mark.parametrize("profile", [ONEM2M_PSK, TLS13_PSK], ids=lambda p: p.name)
def test_connections_work_after_idle_with_released_buffers(table: MemoryPSKTable, profile: CipherProfile) -> None:
    # many established connections left idle (their record buffers freed), then all used again: full-size
    # records (a buffer allocated anew), both ways, interleaved, then a clean close
    server, client = contexts(table, (profile,))
    pairs = [handshake_pair(server, client) for _ in range(20)]
    for s, c in pairs:
        _exchange(s, c, 10)
    gc.collect()
    for s, c in reversed(pairs):
        _exchange(s, c, 40_000)  # three records, one of them 16 KiB
        _exchange(s, c, 1)
    for s, c in pairs:
        c.close()
        assert ConnectionClosed(clean=True) in s.receive_data(c.data_to_send())
        assert s.state is ConnectionState.CLOSED


def test_dtls_association_works_after_idle_with_released_buffers(table: MemoryPSKTable) -> None:
    server, client = _dtls_contexts(table)
    peer = ("192.0.2.7", 5684)
    c = client.dtls_connection(peer)
    s = server.dtls_connection(peer)
    for d in c.datagrams_to_send():
        s.receive_datagram(d)
    for d in s.datagrams_to_send():  # HelloVerifyRequest
        c.receive_datagram(d)
    s = server.dtls_connection(peer)
    for _ in range(10):
        for d in c.datagrams_to_send():
            s.receive_datagram(d)
        for d in s.datagrams_to_send():
            c.receive_datagram(d)
        if s.session is not None and c.session is not None:
            break
    assert isinstance(s, DTLSConnection) and s.session is not None and s.session.version == "DTLSv1.2"
    for size in (1, 1000, 1):
        c.send(b"a" * size)
        got = [e.data for d in c.datagrams_to_send() for e in s.receive_datagram(d) if isinstance(e, DataReceived)]
        assert got == [b"a" * size]
        s.send(b"b" * size)
        got = [e.data for d in s.datagrams_to_send() for e in c.receive_datagram(d) if isinstance(e, DataReceived)]
        assert got == [b"b" * size]


def test_session_facts_stay_right_across_suites_in_one_process(table: MemoryPSKTable) -> None:
    # the version and cipher names are read once per OpenSSL constant and remembered: mixing suites and
    # versions in one process must still report each connection's own
    expected = {"onem2m": ("TLSv1.2", "PSK-AES128-CBC-SHA256"), "psk": ("TLSv1.2", "PSK-AES128-GCM-SHA256"),
                "ecdhe-psk": ("TLSv1.2", "ECDHE-PSK-AES128-CBC-SHA256"), "tls13": ("TLSv1.3", "TLS_AES_128_GCM_SHA256")}
    pairs = {p.name: contexts(table, (p,)) for p in (ONEM2M_PSK, PSK, ECDHE_PSK, TLS13_PSK)}
    for _ in range(2):
        for name, (server, client) in pairs.items():
            s, c = handshake_pair(server, client)
            for session in (s.session, c.session):
                assert session is not None and (session.version, session.cipher) == expected[name]
                assert session.server_name is None
            assert s.session is not None and s.session.entity == LIGHT1_AE and s.session.psk_identity == LIGHT1_ID
            assert type(s.session.session_id) is bytes
            assert (len(s.session.session_id), s.session.session_id == (c.session and c.session.session_id)) == (
                (0, True) if name == "tls13" else (32, True))


def test_decoy_keys_are_the_documented_hmac(table: MemoryPSKTable) -> None:
    secret = os.urandom(32)
    keys = DecoyKeys(secret)
    for identity in (b"", b"x", b"AE123456789012-Light@in.provider.com", os.urandom(300)):
        key = keys(identity)
        assert key == decoy_psk(secret, identity) and len(key) == DECOY_PSK_LENGTH
        assert keys(identity) == key  # stable: the keyed state is copied, never consumed
    assert DecoyKeys(os.urandom(32))(b"x") != keys(b"x")
    assert secret.hex() not in repr(keys)


def test_unknown_identity_still_gets_a_decoy_and_fails_like_a_wrong_key(table: MemoryPSKTable) -> None:
    server, _ = contexts(table, (ONEM2M_PSK,))
    client = TLSContext.client(ClientConfig("nobody@example.com", SecretKey.from_hex(LIGHT1_KEY)))
    with pytest.raises(HandshakeFailed) as failure:
        handshake_pair(server, client)
    assert failure.value.alert == "bad_record_mac"


@pytest.mark.parametrize("wrap", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_receive_data_takes_any_bytes_like_object(table: MemoryPSKTable, wrap: type) -> None:
    server, client = contexts(table, (ONEM2M_PSK,))
    s, c = server.connection(), client.connection()
    to_server = c.data_to_send()
    while s.session is None or c.session is None:
        s.receive_data(wrap(to_server))
        c.receive_data(wrap(s.data_to_send()))
        to_server = c.data_to_send()
    c.send(b"ping")
    assert [e.data for e in s.receive_data(wrap(c.data_to_send())) if isinstance(e, DataReceived)] == [b"ping"]


def test_dtls_profile_names_stay_right(table: MemoryPSKTable) -> None:
    # a DTLS version constant goes through the same remembered names as TLS
    server = TLSContext.dtls_server(ServerConfig(table.lookup, profiles=(CipherProfile("t", "PSK-AES128-CCM"),)))
    client = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                                 profiles=(CipherProfile("t", "PSK-AES128-CCM"),)))
    s, c = server.dtls_connection("p"), client.dtls_connection("p")
    for d in c.datagrams_to_send():
        s.receive_datagram(d)
    for d in s.datagrams_to_send():
        c.receive_datagram(d)
    s = server.dtls_connection("p")
    for _ in range(10):
        for d in c.datagrams_to_send():
            s.receive_datagram(d)
        for d in s.datagrams_to_send():
            c.receive_datagram(d)
    assert s.session is not None and (s.session.version, s.session.cipher) == ("DTLSv1.2", "PSK-AES128-CCM")
    assert c.session is not None and (c.session.version, c.session.cipher) == ("DTLSv1.2", "PSK-AES128-CCM")


def test_data_in_the_same_flight_as_the_last_handshake_message_is_delivered(table: MemoryPSKTable) -> None:
    # after HandshakeCompleted the engine reads application data only when input is left over: a Finished
    # followed by data (and a close_notify) in one feed must still yield both
    server, client = contexts(table, (TLS13_PSK,))
    s, c = server.connection(), client.connection()
    s.receive_data(c.data_to_send())
    assert c.receive_data(s.data_to_send())  # client done: its Finished is queued
    c.send(b"right after Finished")
    c.close()
    events = s.receive_data(c.data_to_send())  # Finished + data + close_notify
    assert [type(e).__name__ for e in events] == ["HandshakeCompleted", "DataReceived", "ConnectionClosed"]
    # TLS 1.2, the other way round: the server's Finished and its first data reach the client together
    server, client = contexts(table, (ONEM2M_PSK,))
    s, c = server.connection(), client.connection()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    assert s.receive_data(c.data_to_send())  # server done: CCS + Finished queued
    s.send(b"hello")
    events = c.receive_data(s.data_to_send())
    assert [type(e).__name__ for e in events] == ["HandshakeCompleted", "DataReceived"]
    assert isinstance(events[1], DataReceived) and events[1].data == b"hello"


@pytest.mark.parametrize("profile", [ONEM2M_PSK, TLS13_PSK], ids=lambda p: p.name)
def test_a_dropped_connection_is_freed_at_once_without_the_cyclic_gc(
    table: MemoryPSKTable, profile: CipherProfile
) -> None:
    # no reference cycle through OpenSSL's app data: the last reference gone, the connection and its SSL object
    # (OpenSSL's memory) go at once, not at the next cyclic collection
    server, client = contexts(table, (profile,))
    gc.collect()
    gc.disable()
    try:
        s, c = handshake_pair(server, client)
        _exchange(s, c, 100)
        c.close()
        s.receive_data(c.data_to_send())
        refs = [weakref.ref(x) for x in (s, s._ssl, c, c._ssl)]
        del s, c
        assert [r() for r in refs] == [None] * 4
    finally:
        gc.enable()


def test_a_dropped_dtls_connection_is_freed_at_once_without_the_cyclic_gc(table: MemoryPSKTable) -> None:
    server, _client = _dtls_contexts(table)
    gc.collect()
    gc.disable()
    try:
        conn = server.dtls_connection(("192.0.2.9", 5684))
        refs = [weakref.ref(conn), weakref.ref(conn._ssl)]
        del conn
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()
