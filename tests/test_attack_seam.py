"""Hostile review of the asynchronous PSK seam (issue 16 part 1): psk_peek, async_psk, psk_resolver.

Each test is an attack, or a careless resolver, against a real server over loopback: an OpenSSL client, or a
raw TCP client writing the records by hand where no TLS library would send them.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, make_table
from m2msec.errors import HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry
from m2msec.tls.async_psk import MAX_SUPPLIED_IDENTITIES
from m2msec.tls.engine import (
    ClientConfig,
    HandshakeCompleted,
    PSKIdentityReceived,
    ServerConfig,
    SessionInfo,
    TLSContext,
)
from m2msec.tls.profiles import ONEM2M_DTLS_PSK, ONEM2M_PSK, TLS13_PSK
from m2msec.tls.psk_peek import DEFAULT_MAX_HELD, DTLSPeeker, TLSPeeker
from m2msec.transport.dtls import create_dtls_endpoint, start_dtls_server
from m2msec.transport.psk_resolver import PendingLookups, PSKResolver
from m2msec.transport.tls import open_connection, start_stream_server

TABLE = make_table()


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _psk_extensions(identities: list[bytes], binders: int | None = None) -> bytes:
    """psk_key_exchange_modes (psk_dhe_ke) and pre_shared_key with ``identities`` (``binders`` binders of zeros,
    one per identity by default), last."""
    ids = b"".join(_u16(len(i)) + i + bytes(4) for i in identities)
    binder_list = b"".join(b"\x20" + bytes(32) for _ in range(len(identities) if binders is None else binders))
    psk = _u16(len(ids)) + ids + _u16(len(binder_list)) + binder_list
    return _u16(45) + _u16(2) + b"\x01\x01" + _u16(41) + _u16(len(psk)) + psk


def _handshake_record(msg_type: int, body: bytes, version: bytes = b"\x03\x03") -> bytes:
    message = bytes([msg_type]) + len(body).to_bytes(3, "big") + body
    return b"\x16" + version + _u16(len(message)) + message


def tls12_client_hello(identities: list[bytes]) -> bytes:
    """A TLS 1.2 ClientHello (PSK suites 0x00AE, 0x00A8) that also carries TLS 1.3's pre_shared_key."""
    ext = _psk_extensions(identities)
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + _u16(4) + b"\x00\xae\x00\xa8" + b"\x01\x00" + _u16(len(ext)) + ext
    return _handshake_record(1, body, b"\x03\x01")


def tls13_client_hello(identities: list[bytes], binders: int | None = None) -> bytes:
    """A real TLS 1.3 ClientHello from the engine's client, its pre_shared_key rewritten to ``identities``,
    in records of at most 16 KiB."""
    client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(TLS13_PSK,),
                                            peer_entity=HOME_GATEWAY_CSE_ID))
    body = client.connection().data_to_send()[9:]
    p = 34
    p += 1 + body[p]
    p += 2 + int.from_bytes(body[p : p + 2], "big")
    p += 1 + body[p]
    head, exts, q, kept = body[:p], body[p + 2 :], 0, b""
    while q < len(exts):
        etype, n = int.from_bytes(exts[q : q + 2], "big"), int.from_bytes(exts[q + 2 : q + 4], "big")
        if etype not in (41, 45):
            kept += exts[q : q + 4 + n]
        q += 4 + n
    kept += _psk_extensions(identities, binders)
    body = head + _u16(len(kept)) + kept
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"".join(b"\x16\x03\x01" + _u16(len(message[i : i + 16384])) + message[i : i + 16384]
                    for i in range(0, len(message), 16384))


def client_key_exchange(identity: bytes) -> bytes:
    return _handshake_record(16, _u16(len(identity)) + identity)


async def _serve(resolver: PSKResolver, *, reveal: bool, pending: PendingLookups | None = None,
                 timeout: float = 30) -> tuple[asyncio.Server, int]:
    context = TLSContext.server(ServerConfig(None, profiles=(ONEM2M_PSK, TLS13_PSK), async_psk=True,
                                             reveal_unknown_psk_identity=reveal))

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: SessionInfo = writer.get_extra_info("m2msec_session")
        writer.write((session.entity or "-").encode())
        await writer.drain()
        writer.close()

    server = await start_stream_server(app, "127.0.0.1", 0, context, psk_resolver=resolver, handshake_timeout=timeout,
                                       pending_lookups=pending)
    return server, server.sockets[0].getsockname()[1]


async def _until_closed(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes or resets (TimeoutError when it does not within ``seconds``)."""
    out = b""
    async with asyncio.timeout(seconds):
        try:
            while chunk := await reader.read(65536):
                out += chunk
        except ConnectionResetError:  # closed with our records unread
            pass
    return out


# -- a careless resolver: an entry for another identity than the one asked about


@pytest.mark.parametrize("answer", ["loose", "not an entry"])
async def test_resolver_answering_with_another_entry_refuses_at_once(answer: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A case-insensitive resolver hands ``LIGHT1``'s entry to ``light1``: supply_psk refused it with
    ConfigurationError inside the task, an unretrieved exception, and the client hung until the timeout."""
    pending = PendingLookups()

    async def resolver(identity: str) -> PSKEntry | None:
        entry = TABLE.lookup(LIGHT1_ID) if identity.lower() == LIGHT1_ID.lower() else None
        return entry if answer == "loose" else entry.key if entry is not None else None  # type: ignore[return-value]

    server, port = await _serve(resolver, reveal=True, pending=pending, timeout=30)
    shouting = TLSContext.client(ClientConfig(LIGHT1_ID.upper(), SecretKey.from_hex(LIGHT1_KEY),
                                              profiles=(ONEM2M_PSK,), peer_entity=HOME_GATEWAY_CSE_ID))
    try:
        with pytest.raises(HandshakeFailed) as info:
            await asyncio.wait_for(open_connection("127.0.0.1", port, shouting, handshake_timeout=30), 10)
        assert info.value.alert == "unknown_psk_identity"
        assert "handshake refused" in caplog.text and "never retrieved" not in caplog.text
        assert LIGHT1_KEY not in caplog.text
        assert pending.total == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_dtls_resolver_answering_with_another_entry_refuses_at_once() -> None:
    async def resolver(identity: str) -> PSKEntry | None:
        return TABLE.lookup(LIGHT1_ID)  # whatever it was asked

    context = TLSContext.dtls_server(ServerConfig(None, profiles=(ONEM2M_DTLS_PSK,), async_psk=True,
                                                  reveal_unknown_psk_identity=True))
    transport, protocol = await start_dtls_server(asyncio.DatagramProtocol, "127.0.0.1", 0, context,
                                                  psk_resolver=resolver, handshake_timeout=30)
    port = transport.get_extra_info("sockname")[1]
    other = TLSContext.dtls_client(ClientConfig(LIGHT1_ID.upper(), SecretKey.from_hex(LIGHT1_KEY),
                                                profiles=(ONEM2M_DTLS_PSK,), peer_entity=HOME_GATEWAY_CSE_ID))
    try:
        with pytest.raises(HandshakeFailed) as info:  # the alert, not a DTLS timeout after a hung handshake
            await create_dtls_endpoint(asyncio.DatagramProtocol, "127.0.0.1", port, other, handshake_timeout=10)
        assert info.value.alert == "unknown_psk_identity"
        assert protocol.pending_lookups.total == 0
    finally:
        transport.close()


# -- D78: at most MAX_SUPPLIED_IDENTITIES lookups per connection, not per message


@pytest.mark.parametrize("flight", ["hello then key exchange", "two pipelined hellos"])
async def test_lookups_per_connection_are_capped_across_messages(flight: str) -> None:
    """The cap was applied per message: a TLS 1.2 ClientHello carrying pre_shared_key (4 lookups) then a
    ClientKeyExchange (a 5th), or two pipelined ClientHellos (8), all of them before OpenSSL refused anything."""
    asked: list[str] = []

    async def resolver(identity: str) -> PSKEntry | None:
        asked.append(identity)
        return None

    server, port = await _serve(resolver, reveal=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        first = [f"probe-a{i}".encode() for i in range(MAX_SUPPLIED_IDENTITIES)]
        if flight == "two pipelined hellos":
            writer.write(tls12_client_hello(first)
                         + tls12_client_hello([f"probe-b{i}".encode() for i in range(MAX_SUPPLIED_IDENTITIES)]))
        else:
            writer.write(tls12_client_hello(first))
            assert (await asyncio.wait_for(reader.read(5), 10))[:1] == b"\x16"  # our ServerHello: TLS 1.2 PSK
            writer.write(client_key_exchange(b"probe-cke"))
        await _until_closed(reader, 10)  # the server refuses the handshake
        assert asked == [i.decode() for i in first]
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_no_lookup_after_an_identity_got_its_key() -> None:
    """Revealed, each refused identity lets OpenSSL try the next; one that got its key ends the asking (the
    others were asked about anyway: lookups an attacker adds to every handshake with a known identity)."""
    asked: list[str] = []

    async def resolver(identity: str) -> PSKEntry | None:
        asked.append(identity)
        return TABLE.lookup(identity)

    server, port = await _serve(resolver, reveal=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(tls13_client_hello([LIGHT1_ID.encode(), b"probe-1", b"probe-2"]))
        await _until_closed(reader, 10)  # the binder (zeros) does not verify
        assert asked == [LIGHT1_ID]
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


# -- D75: what is held for a connection stays bounded


async def test_empty_handshake_records_are_not_held() -> None:
    """Zero-length handshake records (RFC 8446 §5.1 forbids them) behind an incomplete ClientHello piled up in
    the peeker without bound until the handshake timeout; OpenSSL alone refuses them after a few."""
    async def resolver(identity: str) -> PSKEntry | None:
        return None

    server, port = await _serve(resolver, reveal=False, timeout=30)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x16\x03\x01\x00\x04\x01\x00\xf0\x00")  # a ClientHello announcing 61440 bytes
        writer.write(b"\x16\x03\x01\x00\x00" * 50_000)
        await _until_closed(reader, 10)  # refused at once, not held until the 30 s timeout
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


def test_a_hello_in_tiny_records_holds_at_most_the_cap() -> None:
    hello = tls13_client_hello([LIGHT1_ID.encode()])
    message = hello[5:]
    peeker = TLSPeeker(client_hello=True, client_key_exchange=False)
    passed = 0
    for i in range(len(message)):
        passed += len(peeker.feed(b"\x16\x03\x01\x00\x01" + message[i : i + 1]))
        assert peeker.held <= DEFAULT_MAX_HELD
    assert peeker.found is not None or peeker.gave_up  # small enough: reported; else given up to OpenSSL
    empty = TLSPeeker(client_hello=True, client_key_exchange=False)
    empty.feed(b"\x16\x03\x01\x00\x04\x01\x00\xf0\x00")
    for _ in range(1000):
        passed += len(empty.feed(b"\x16\x03\x01\x00\x00"))
    assert empty.gave_up and empty.held == 0 and empty.found is None


# -- what held up: every lookup is released after abuse


async def test_every_lookup_is_released_after_abuse() -> None:
    """Raising, slow (cancelled at the timeout), abandoned and held-overflowing clients, then a genuine one."""
    pending = PendingLookups()
    started: list[str] = []

    async def resolver(identity: str) -> PSKEntry | None:
        started.append(identity)
        if identity == "raise":
            raise RuntimeError("backend down")
        if identity.startswith("slow"):
            await asyncio.sleep(3600)
        return TABLE.lookup(identity)

    server, port = await _serve(resolver, reveal=False, pending=pending, timeout=1.5)
    writers = []
    try:
        for identity in (b"raise", b"slow-timeout", b"slow-abandoned", b"slow-overflow"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            writer.write(tls13_client_hello([identity]))
            await writer.drain()
        while len(started) < 4:
            await asyncio.sleep(0.01)
        writers[2].transport.abort()  # gone while its lookup runs
        writers[3].write(bytes([23, 3, 3, 0x40, 0]) + bytes(0x4000))  # more than D75 holds
        writers[3].write((bytes([23, 3, 3, 0x40, 0]) + bytes(0x4000)) * 8)
        deadline = time.monotonic() + 10
        while pending.total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pending.total == 0 and not pending._per_source
        client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(TLS13_PSK,),
                                                peer_entity=HOME_GATEWAY_CSE_ID))
        reader, writer, session = await open_connection("127.0.0.1", port, client, handshake_timeout=10)
        assert session.psk_identity == LIGHT1_ID and await asyncio.wait_for(reader.read(100), 10) == LIGHT1_AE.encode()
        writer.close()
    finally:
        for writer in writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


def _dtls_cke_fragment(message: bytes, off: int, end: int, record_seq: int) -> bytes:
    header = bytes([16]) + len(message).to_bytes(3, "big") + (2).to_bytes(2, "big") + off.to_bytes(3, "big")
    fragment = header + (end - off).to_bytes(3, "big") + message[off:end]
    return bytes([22, 254, 253, 0, 0]) + record_seq.to_bytes(6, "big") + len(fragment).to_bytes(2, "big") + fragment


def test_dtls_overlapping_fragments_complete_only_when_covered() -> None:
    """The reassembly counts each byte once however the fragments overlap or repeat (it now counts with
    bytearray operations instead of a Python loop per byte: bench/peek_cost.py)."""
    message = _u16(len(LIGHT1_ID)) + LIGHT1_ID.encode()
    peeker = DTLSPeeker()
    pieces = [(0, 4), (2, 9), (0, 3), (2, 9), (20, len(message)), (9, 20)]
    for n, (off, end) in enumerate(pieces):
        assert peeker.feed(_dtls_cke_fragment(message, off, end, n))
        assert (peeker.found is not None) == (n == len(pieces) - 1)
    assert peeker.found is not None and peeker.found.identities == (LIGHT1_ID.encode(),)


def test_dtls_malformed_fragment_while_resolving_keeps_everything_held() -> None:
    """A malformed ClientKeyExchange fragment (a spoofed datagram, or the client's own) arriving while the
    identity is resolved made the peeker give up with the key exchange still held: the datagrams after it went
    to OpenSSL at once, ahead of the held key exchange, so OpenSSL read the identity before its key was supplied
    (the unknown path, a decoy key) and the genuine client's handshake failed."""
    server = TLSContext.dtls_server(ServerConfig(None, profiles=(ONEM2M_DTLS_PSK,), async_psk=True))
    client = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                                 profiles=(ONEM2M_DTLS_PSK,), peer_entity=HOME_GATEWAY_CSE_ID))
    c = client.dtls_connection("srv")
    s = server.dtls_connection("cli")
    for d in c.datagrams_to_send():
        s.receive_datagram(d)
    hello_verify = s.datagrams_to_send()
    s = server.dtls_connection("cli")  # stateless cookie exchange: a fresh object
    for d in hello_verify:
        c.receive_datagram(d)
    for d in c.datagrams_to_send():
        s.receive_datagram(d)
    for d in s.datagrams_to_send():
        c.receive_datagram(d)
    flight = c.datagrams_to_send()
    events = [e for d in flight for e in s.receive_datagram(d)]
    assert events == [PSKIdentityReceived(LIGHT1_ID)]
    bogus = _dtls_cke_fragment(b"\x00\x05hello", 0, 7, 99)
    bogus = bogus[:25] + bytes([0, 0, 200]) + bogus[28:]  # fragment length 200: past the message's end
    assert s.receive_datagram(bogus) == []
    for d in flight:  # the client's retransmission, while the resolver still runs
        assert s.receive_datagram(d) == []
    assert s.data_to_send() == b""
    done = s.supply_psk(TABLE.lookup(LIGHT1_ID))
    assert any(isinstance(e, HandshakeCompleted) for e in done)
    for d in s.datagrams_to_send():
        c.receive_datagram(d)
    assert s.session is not None and s.session.psk_identity == LIGHT1_ID and c.session is not None


def test_dtls_malformed_fragment_after_the_whole_message_in_one_datagram() -> None:
    message = _u16(len(LIGHT1_ID)) + LIGHT1_ID.encode()
    bogus = _dtls_cke_fragment(b"\x00\x05hello", 0, 7, 1)
    bogus = bogus[:25] + bytes([0, 0, 200]) + bogus[28:]
    peeker = DTLSPeeker()
    assert peeker.feed(_dtls_cke_fragment(message, 0, len(message), 0) + bogus)
    assert peeker.found is not None and not peeker.gave_up
    assert peeker.feed(b"\x14\xfe\xfd" + bytes(10))  # still held: nothing reaches OpenSSL ahead of the message


def test_a_crowded_client_hello_is_read_only_as_far_as_anyone_asks() -> None:
    """A ~56 KiB ClientHello listing 5000 identities: the peeker read (and the connection decoded) every one of
    them, ~50 times the server CPU a synchronous server spends refusing it (bench/peek_cost.py); only the first
    MAX_SUPPLIED_IDENTITIES can ever be asked about."""
    identities = [b"%05d" % i for i in range(5000)]
    records = tls13_client_hello(identities, binders=1)  # one binder: OpenSSL reads the identities first
    server = TLSContext.server(ServerConfig(None, profiles=(TLS13_PSK,), async_psk=True))
    conn = server.connection()
    assert conn.receive_data(records) == [PSKIdentityReceived("00000")]
    assert conn._async is not None and conn._async.tls is not None and conn._async.tls.found is not None
    assert conn._async.tls.found.identities == tuple(identities[:MAX_SUPPLIED_IDENTITIES])
    with pytest.raises(HandshakeFailed):
        conn.supply_psk(None)
