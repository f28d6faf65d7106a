"""psk_peek: the client's PSK identity found in real handshakes of the engine's own clients (issue 16 part 1)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import LIGHT1_ID, LIGHT1_KEY, contexts
from m2msec.errors import TLSProtocolError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.tls.engine import CertificateConfig, ClientConfig, DTLSConnection, ServerConfig, TLSContext
from m2msec.tls.profiles import DHE_PSK, ECDHE_PSK, ONEM2M_DTLS_PSK, ONEM2M_PSK, PSK, RSA_PSK, TLS13_PSK, CipherProfile
from m2msec.tls.psk_peek import (
    MAX_IDENTITY,
    DTLSPeeker,
    PeekedIdentities,
    TLSPeeker,
    client_hello_psk_identities,
    client_key_exchange_identity,
)

ID = LIGHT1_ID.encode()
TLS12 = [ONEM2M_PSK, PSK, DHE_PSK, RSA_PSK, ECDHE_PSK]


def capture(table: MemoryPSKTable, profile: object, rsa_cert: tuple[bytes, bytes]) -> list[bytes]:
    """The client's flights of a real handshake (client → server bytes, one entry per flight)."""
    kw = {"certificate": CertificateConfig(*rsa_cert)} if profile is RSA_PSK else {}
    server, client = contexts(table, (profile,), **kw)  # type: ignore[arg-type]
    s, c = server.connection(), client.connection()
    flights = []
    for _ in range(10):
        out = c.data_to_send()
        if out:
            flights.append(out)
            s.receive_data(out)
        back = s.data_to_send()
        if back:
            c.receive_data(back)
        if s.session is not None and c.session is not None and not out:
            return flights
    raise AssertionError("handshake did not finish")


def record_offset(stream: bytes, handshake_type: int) -> int:
    """Offset of the first handshake record whose body starts with ``handshake_type``."""
    p = 0
    while p + 5 <= len(stream):
        n = int.from_bytes(stream[p + 3 : p + 5], "big")
        if stream[p] == 22 and stream[p + 5] == handshake_type:
            return p
        p += 5 + n
    raise AssertionError("no such record")


def split_feed(peeker: TLSPeeker, stream: bytes, cut: int) -> tuple[bytes, PeekedIdentities | None, bytes]:
    before = peeker.feed(stream[:cut]) + peeker.feed(stream[cut:])
    found = peeker.found
    return before, found, peeker.resume()


@pytest.mark.parametrize("profile", TLS12, ids=lambda p: p.name)
def test_tls12_client_key_exchange_found_at_every_split(
    table: MemoryPSKTable, profile: object, rsa_cert: tuple[bytes, bytes]
) -> None:
    stream = b"".join(capture(table, profile, rsa_cert))
    cke = record_offset(stream, 16)
    for cut in range(len(stream) + 1):
        before, found, after = split_feed(TLSPeeker(client_hello=True, client_key_exchange=True), stream, cut)
        assert found == PeekedIdentities("client_key_exchange", (ID,)), cut
        assert before == stream[:cke] and before + after == stream, cut  # held from the CKE's record on


def test_tls13_client_hello_found_at_every_split(table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]) -> None:
    stream = b"".join(capture(table, TLS13_PSK, rsa_cert))
    for cut in range(len(stream) + 1):
        before, found, after = split_feed(TLSPeeker(client_hello=True, client_key_exchange=False), stream, cut)
        assert found == PeekedIdentities("client_hello", (ID,)), cut
        assert before == b"" and after == stream, cut


def one_byte_records(record: bytes) -> bytes:
    return b"".join(record[:3] + struct.pack(">H", 1) + bytes([b]) for b in record[5:])


def test_tls12_key_exchange_spanning_one_byte_records(table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]) -> None:
    flights = capture(table, ONEM2M_PSK, rsa_cert)
    last = flights[-1]
    n = int.from_bytes(last[3:5], "big")
    stream = flights[0] + one_byte_records(last[: 5 + n]) + last[5 + n :]
    p = TLSPeeker(client_hello=False, client_key_exchange=True)
    out = b"".join(p.feed(stream[i : i + 7]) for i in range(0, len(stream), 7))
    assert p.found == PeekedIdentities("client_key_exchange", (ID,))
    assert out == flights[0] and out + p.resume() == stream


def test_tls12_only_client_hello_is_not_reported(table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]) -> None:
    hello = capture(table, ONEM2M_PSK, rsa_cert)[0]
    p = TLSPeeker(client_hello=True, client_key_exchange=False)
    assert p.feed(hello) == hello and p.found is None


def test_tls13_second_client_hello_after_hrr_is_reported(table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]) -> None:
    hello = capture(table, TLS13_PSK, rsa_cert)[0]
    ccs = bytes([20, 3, 3, 0, 1, 1])
    p = TLSPeeker(client_hello=True, client_key_exchange=False)
    assert p.feed(hello + ccs + hello) == b""
    assert p.found is not None and p.resume() == hello + ccs  # scanning goes on after resume
    assert p.found == PeekedIdentities("client_hello", (ID,))
    assert p.resume() == hello
    encrypted = bytes([23, 3, 3, 0, 2, 1, 2])
    assert p.feed(encrypted + hello) == encrypted + hello and p.found is None  # encrypted: nothing more to peek


def test_tls12_what_follows_the_key_exchange_passes(table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]) -> None:
    flights = capture(table, PSK, rsa_cert)
    p = TLSPeeker(client_hello=False, client_key_exchange=True)
    p.feed(b"".join(flights))
    p.resume()
    assert p.feed(flights[-1]) == flights[-1] and p.found is None


def test_cke_key_exchange_ignored_unless_asked(table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]) -> None:
    stream = b"".join(capture(table, PSK, rsa_cert))
    p = TLSPeeker(client_hello=False, client_key_exchange=False)
    assert p.feed(stream) == stream and p.found is None


def test_held_input_is_capped(table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]) -> None:
    hello = capture(table, TLS13_PSK, rsa_cert)[0]
    p = TLSPeeker(client_hello=True, client_key_exchange=False, max_held=len(hello) + 100)
    p.feed(hello)
    with pytest.raises(TLSProtocolError):
        p.feed(bytes(200))


def test_oversize_client_hello_gives_up(table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]) -> None:
    hello = capture(table, TLS13_PSK, rsa_cert)[0]
    p = TLSPeeker(client_hello=True, client_key_exchange=False, max_client_hello=64)
    assert p.feed(hello) == hello and p.found is None and p.gave_up


def cke(identity: bytes) -> bytes:
    return struct.pack(">H", len(identity)) + identity


def test_identity_rules() -> None:
    assert client_key_exchange_identity(cke(b"a" * MAX_IDENTITY)) == b"a" * MAX_IDENTITY
    assert client_key_exchange_identity(cke(b"a" * (MAX_IDENTITY + 1))) is None
    assert client_key_exchange_identity(cke(b"ab\x00c")) is None
    assert client_key_exchange_identity(cke(b"")) is None
    assert client_key_exchange_identity(b"\x00\x05ab") is None
    assert client_hello_psk_identities(b"\x03\x03") is None


def test_bad_identity_in_key_exchange_gives_up() -> None:
    msg = bytes([16]) + (len(cke(b"a\x00")).to_bytes(3, "big")) + cke(b"a\x00")
    stream = bytes([22, 3, 3]) + len(msg).to_bytes(2, "big") + msg
    p = TLSPeeker(client_hello=False, client_key_exchange=True)
    assert p.feed(stream) == stream and p.found is None and p.gave_up


@pytest.mark.parametrize("profile", [*TLS12, TLS13_PSK], ids=lambda p: p.name)
def test_the_peeker_holds_until_openssl_needs_the_key(
    table: MemoryPSKTable, profile: CipherProfile, rsa_cert: tuple[bytes, bytes]
) -> None:
    """A real server behind the peeker: OpenSSL's callback never runs before the identity was reported."""
    reported: list[str] = []
    if True:

        def lookup(identity: str) -> PSKEntry | None:
            assert identity in reported, "OpenSSL asked before the peeker reported"
            return table.lookup(identity)

        kw = {"certificate": CertificateConfig(*rsa_cert)} if profile is RSA_PSK else {}
        server = TLSContext.server(ServerConfig(lookup, profiles=(profile,), **kw))  # type: ignore[arg-type]
        client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(profile,),
                                                peer_entity="mn-cse-1"))
        s, c = server.connection(), client.connection()
        p = TLSPeeker(client_hello=True, client_key_exchange=True)
        for _ in range(10):
            for b in c.data_to_send():  # one byte at a time
                passed = p.feed(bytes([b]))
                if passed:
                    s.receive_data(passed)
                if p.found is not None:
                    reported.extend(x.decode() for x in p.found.identities)
                    held = p.resume()
                    if held:
                        s.receive_data(held)
            c.receive_data(s.data_to_send())
            if s.session is not None and c.session is not None:
                break
        assert s.session is not None and s.session.psk_identity == LIGHT1_ID and reported, profile.name


def dtls_records(dg: bytes) -> list[bytes]:
    out, p = [], 0
    while p + 13 <= len(dg):
        n = int.from_bytes(dg[p + 11 : p + 13], "big")
        out.append(dg[p : p + 13 + n])
        p += 13 + n
    return out


def dtls_flights() -> tuple[list[bytes], DTLSConnection, DTLSConnection]:
    table = MemoryPSKTable([PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), entity="Clight-AE1")])
    srv = TLSContext.dtls_server(ServerConfig(table.lookup, profiles=(ONEM2M_DTLS_PSK,)))
    cli = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_DTLS_PSK,),
                                              peer_entity="mn-cse-1"))
    c = cli.dtls_connection("srv")
    s = srv.dtls_connection("cli")
    for d in c.datagrams_to_send():
        s.receive_datagram(d)
    for d in s.datagrams_to_send():
        c.receive_datagram(d)
    s = srv.dtls_connection("cli")
    hello = c.datagrams_to_send()
    for d in hello:
        s.receive_datagram(d)
    for d in s.datagrams_to_send():
        c.receive_datagram(d)
    return hello + c.datagrams_to_send(), s, c


def test_dtls_fragmented_reordered_key_exchange() -> None:
    datagrams, s, c = dtls_flights()
    peeker = DTLSPeeker()
    assert not peeker.feed(datagrams[0])  # the ClientHello passes
    flight = b"".join(datagrams[1:])
    key_exchange, ccs, fin = dtls_records(flight)
    seq = int.from_bytes(key_exchange[5:11], "big")
    hdr, msg = key_exchange[13:25], key_exchange[25:]
    pieces = []
    for n, off in enumerate(range(0, len(msg), 5)):
        data = msg[off : off + 5]
        h = hdr[:6] + off.to_bytes(3, "big") + len(data).to_bytes(3, "big")
        pieces.append(key_exchange[:5] + (seq + n).to_bytes(6, "big") + (12 + len(data)).to_bytes(2, "big") + h + data)
    pieces.reverse()
    ccs = ccs[:5] + (seq + len(pieces)).to_bytes(6, "big") + ccs[11:]  # record numbers stay unique (epoch 0)
    for piece in pieces:
        assert peeker.feed(piece)
    assert peeker.found == PeekedIdentities("client_key_exchange", (ID,))
    assert peeker.feed(ccs + fin)  # held too
    held = peeker.resume()
    assert held == [*pieces, ccs + fin] and peeker.found is None
    assert not peeker.feed(fin)  # resumed: nothing held any more
    for d in held:  # the real server completes from the held, reordered fragments
        s.receive_datagram(d)
    for d in s.datagrams_to_send():
        c.receive_datagram(d)
    assert s.session is not None and s.session.psk_identity == LIGHT1_ID and c.session is not None


def test_dtls_whole_flight_and_caps() -> None:
    datagrams, _, _ = dtls_flights()
    peeker = DTLSPeeker()
    assert [peeker.feed(d) for d in datagrams] == [False] + [True] * (len(datagrams) - 1)
    assert peeker.found == PeekedIdentities("client_key_exchange", (ID,))
    capped = DTLSPeeker(max_held_datagrams=2)
    capped.feed(datagrams[-1])
    capped.feed(datagrams[-1])
    with pytest.raises(TLSProtocolError):
        capped.feed(datagrams[-1])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12), st.booleans(), st.booleans())
def test_tls_hostile_input_conserves_bytes(chunks: list[bytes], hello: bool, key_exchange: bool) -> None:
    p = TLSPeeker(client_hello=hello, client_key_exchange=key_exchange, max_held=1 << 20)
    out = b""
    for chunk in chunks:
        out += p.feed(chunk)
        if p.found is not None:
            assert all(0 < len(i) <= MAX_IDENTITY and b"\x00" not in i for i in p.found.identities)
            out += p.resume()
    stream = b"".join(chunks)
    assert stream.startswith(out) and len(stream) - len(out) == p.held


def tls_record(body: bytes) -> bytes:
    return bytes([22, 3, 3]) + len(body).to_bytes(2, "big") + body


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=3))
def test_tls_hostile_handshake_messages(body: bytes, mtype_index: int) -> None:
    mtype = (1, 16, 2, 11)[mtype_index]
    stream = tls_record(bytes([mtype]) + len(body).to_bytes(3, "big") + body)
    p = TLSPeeker(client_hello=True, client_key_exchange=True)
    out = p.feed(stream)
    if p.found is not None:
        out += p.resume()
    assert out == stream


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=10))
def test_dtls_hostile_datagrams(datagrams: list[bytes]) -> None:
    p = DTLSPeeker(max_held_datagrams=100)
    passed = [d for d in datagrams if not p.feed(d)]
    assert len(passed) + p.held == len(datagrams)
    if p.found is not None:
        assert all(0 < len(i) <= MAX_IDENTITY for i in p.found.identities)
