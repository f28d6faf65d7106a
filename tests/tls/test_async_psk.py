"""ServerConfig(async_psk=True): the identity reported as an event, the key supplied later (issue 16 part 1).

Real OpenSSL handshakes over memory BIOs; the server's OpenSSL callback may only serve what was supplied.
"""

from __future__ import annotations

import pytest

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, handshake_pair
from m2msec.errors import ConfigurationError, HandshakeFailed, TLSProtocolError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.tls.engine import (
    CertificateConfig,
    ClientConfig,
    ConnectionState,
    DTLSConnection,
    Event,
    PSKIdentityReceived,
    ServerConfig,
    TLSConnection,
    TLSContext,
)
from m2msec.tls.profiles import DHE_PSK, ECDHE_PSK, ONEM2M_DTLS_PSK, ONEM2M_PSK, PSK, RSA_PSK, TLS13_PSK, CipherProfile

PROFILES = [ONEM2M_PSK, PSK, DHE_PSK, RSA_PSK, ECDHE_PSK, TLS13_PSK]


def never(identity: str) -> PSKEntry | None:
    raise AssertionError(f"synchronous lookup called for {identity!r}")


def server_for(profile: CipherProfile, rsa_cert: tuple[bytes, bytes], **kw: object) -> TLSContext:
    cert = {"certificate": CertificateConfig(*rsa_cert)} if profile is RSA_PSK else {}
    return TLSContext.server(ServerConfig(never, profiles=(profile,), async_psk=True, **cert, **kw))  # type: ignore[arg-type]


def client_for(profile: CipherProfile, key: str = LIGHT1_KEY) -> TLSContext:
    return TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(key), profiles=(profile,),
                                          peer_entity="in-cse"))


def run(s: TLSConnection, c: TLSConnection, answer: PSKEntry | None) -> list[str]:
    """Drive the handshake, answering every identity event with ``answer``; return the identities asked."""
    asked: list[str] = []
    for _ in range(10):
        out = c.data_to_send()
        events: list[Event] = s.receive_data(out) if out else []
        while any(isinstance(e, PSKIdentityReceived) for e in events):
            event = next(e for e in events if isinstance(e, PSKIdentityReceived))
            asked.append(event.identity)
            assert s.data_to_send() == b""  # nothing goes out while the key is resolved
            assert s.pending_psk_identity == event.identity
            events = s.supply_psk(answer)
        back = s.data_to_send()
        if back:
            c.receive_data(back)
        if s.session is not None and c.session is not None:
            break
    return asked


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_async_handshake_for_every_psk_profile(
    table: MemoryPSKTable, profile: CipherProfile, rsa_cert: tuple[bytes, bytes]
) -> None:
    s, c = server_for(profile, rsa_cert).connection(), client_for(profile).connection()
    assert run(s, c, table.lookup(LIGHT1_ID)) == [LIGHT1_ID]
    assert s.session is not None and s.session.psk_identity == LIGHT1_ID and s.session.entity == LIGHT1_AE
    assert c.state is ConnectionState.ESTABLISHED and s.pending_psk_identity is None


def failure(s: TLSConnection, c: TLSConnection, answer: PSKEntry | None) -> tuple[str, str | None, str]:
    with pytest.raises(HandshakeFailed) as server_err:
        run(s, c, answer)
    alert = s.data_to_send()
    client_view = "silent"
    if alert:
        with pytest.raises(HandshakeFailed) as client_err:
            c.receive_data(alert)
        client_view = str(client_err.value)
    return server_err.value.reason, server_err.value.alert, client_view


@pytest.mark.parametrize("reveal", [False, True], ids=["hidden", "revealed"])
@pytest.mark.parametrize("profile", [ONEM2M_PSK, TLS13_PSK], ids=lambda p: p.name)
def test_refusal_is_todays_unknown_identity(
    table: MemoryPSKTable, profile: CipherProfile, reveal: bool, rsa_cert: tuple[bytes, bytes]
) -> None:
    """supply_psk(None) ends exactly as a synchronous lookup that does not know the identity."""
    sync = TLSContext.server(ServerConfig(lambda _: None, profiles=(profile,), reveal_unknown_psk_identity=reveal))
    expected = failure(sync.connection(), client_for(profile).connection(), None)
    s = server_for(profile, rsa_cert, reveal_unknown_psk_identity=reveal).connection()
    assert failure(s, client_for(profile).connection(), None) == expected
    assert s.psk_failure == "unknown psk identity" and s.offered_identity == LIGHT1_ID


def test_wrong_key_still_fails(table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]) -> None:
    s = server_for(ONEM2M_PSK, rsa_cert).connection()
    with pytest.raises(HandshakeFailed):
        run(s, client_for(ONEM2M_PSK, key="00" * 8).connection(), table.lookup(LIGHT1_ID))


def test_supply_misuse(table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]) -> None:
    s = server_for(ONEM2M_PSK, rsa_cert).connection()
    with pytest.raises(TLSProtocolError):
        s.supply_psk(None)  # nothing asked yet
    c = client_for(ONEM2M_PSK).connection()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    events = s.receive_data(c.data_to_send())
    assert events == [PSKIdentityReceived(LIGHT1_ID)]
    other = PSKEntry("someone-else", SecretKey.from_hex(LIGHT1_KEY))
    with pytest.raises(ConfigurationError):
        s.supply_psk(other)
    assert s.supply_psk(table.lookup(LIGHT1_ID))[0].session.entity == LIGHT1_AE  # type: ignore[union-attr]


def test_sync_lookup_path_is_unchanged(table: MemoryPSKTable) -> None:
    server = TLSContext.server(ServerConfig(table.lookup, profiles=(ONEM2M_PSK,)))
    s, _ = handshake_pair(server, client_for(ONEM2M_PSK))
    assert s.session is not None and s.session.entity == LIGHT1_AE


def test_held_input_cap_fails_only_the_handshake(rsa_cert: tuple[bytes, bytes]) -> None:
    s = server_for(TLS13_PSK, rsa_cert).connection()
    c = client_for(TLS13_PSK).connection()
    assert s.receive_data(c.data_to_send()) == [PSKIdentityReceived(LIGHT1_ID)]
    with pytest.raises(HandshakeFailed):
        for _ in range(40):
            s.receive_data(bytes([23, 3, 3, 0x40, 0]) + bytes(0x4000))
    assert s.state is ConnectionState.FAILED


def dtls_pair(table: MemoryPSKTable, answer: PSKEntry | None) -> tuple[DTLSConnection, DTLSConnection, list[str]]:
    srv = TLSContext.dtls_server(ServerConfig(never, profiles=(ONEM2M_DTLS_PSK,), async_psk=True))
    cli = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_DTLS_PSK,),
                                              peer_entity="in-cse"))
    c = cli.dtls_connection("srv")
    s = srv.dtls_connection("cli")
    asked: list[str] = []
    for _ in range(8):
        for d in c.datagrams_to_send():
            for e in s.receive_datagram(d):
                if isinstance(e, PSKIdentityReceived):
                    asked.append(e.identity)
                    assert s.datagrams_to_send() == []
                    s.supply_psk(answer)
        if s.awaiting_cookie:
            hvr = s.datagrams_to_send()
            s = srv.dtls_connection("cli")  # stateless cookie exchange: a fresh object
            for d in hvr:
                c.receive_datagram(d)
            continue
        for d in s.datagrams_to_send():
            c.receive_datagram(d)
        if s.session is not None and c.session is not None:
            break
    return s, c, asked


def test_dtls_async_handshake(table: MemoryPSKTable) -> None:
    s, c, asked = dtls_pair(table, table.lookup(LIGHT1_ID))
    assert asked == [LIGHT1_ID]
    assert s.session is not None and s.session.entity == LIGHT1_AE and c.session is not None


def test_dtls_refusal_is_silent(table: MemoryPSKTable) -> None:
    s, c, asked = dtls_pair(table, None)
    assert asked == [LIGHT1_ID] and s.session is None and c.session is None
    assert s.psk_failure == "unknown psk identity"


@pytest.mark.parametrize("bad", [0, -1, 100, True, 1 << 25])
def test_max_client_hello_out_of_range_is_refused_at_configuration(bad: int) -> None:
    """A cap below a TLS 1.2 handshake message would refuse every asynchronous TLS 1.3 client without a word."""
    with pytest.raises(ConfigurationError, match="max_client_hello"):
        ServerConfig(None, async_psk=True, max_client_hello=bad)
