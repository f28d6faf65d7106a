"""The sans-I/O engine, client and server in one process over memory BIOs (real OpenSSL handshakes)."""

from __future__ import annotations

import contextlib
import logging

import pytest

from conftest import (
    HOME_GATEWAY_CSE_ID,
    LIGHT1_AE,
    LIGHT1_ID,
    LIGHT1_KEY,
    LIGHT2_ID,
    contexts,
    handshake_pair,
)
from m2msec.errors import ConfigurationError, HandshakeFailed, TLSProtocolError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.tls.engine import (
    PSK_NOT_ACCEPTED,
    CertificateConfig,
    ClientConfig,
    ConnectionClosed,
    ConnectionState,
    DataReceived,
    ServerConfig,
    TLSContext,
)
from m2msec.tls.profiles import DHE_PSK, ECDHE_PSK, ONEM2M_PSK, PSK, RSA_PSK, TLS13_PSK, parse_profiles

EXPECTED_CIPHER = {
    "onem2m": "PSK-AES128-CBC-SHA256",  # TS-0003 §10.2.2 mandatory suite is preferred
    "psk": "PSK-AES128-GCM-SHA256",
    "dhe-psk": "DHE-PSK-AES128-GCM-SHA256",
    "rsa-psk": "RSA-PSK-AES128-GCM-SHA256",
    "ecdhe-psk": "ECDHE-PSK-AES128-CBC-SHA256",
    "tls13": "TLS_AES_128_GCM_SHA256",
}


@pytest.mark.parametrize("profile", [ONEM2M_PSK, PSK, DHE_PSK, RSA_PSK, ECDHE_PSK, TLS13_PSK], ids=lambda p: p.name)
def test_every_family_handshakes_and_agrees(
    table: MemoryPSKTable, profile: object, rsa_cert: tuple[bytes, bytes]
) -> None:
    kw = {"certificate": CertificateConfig(*rsa_cert)} if profile is RSA_PSK else {}
    server, client = contexts(table, (profile,), **kw)  # type: ignore[arg-type]
    s, c = handshake_pair(server, client)
    assert s.session is not None and c.session is not None
    assert s.session.cipher == c.session.cipher == EXPECTED_CIPHER[profile.name]  # type: ignore[attr-defined]
    assert s.session.version == c.session.version == ("TLSv1.3" if profile is TLS13_PSK else "TLSv1.2")
    # TS-0003 §8.2.2.1: B associates the context with the entity bound to the KpsaID, A with IdB
    assert s.session.psk_identity == LIGHT1_ID and s.session.entity == LIGHT1_AE
    assert c.session.entity == HOME_GATEWAY_CSE_ID
    # D175: the server's session names the key it was authenticated with (the AEF compares it), never in its repr
    assert s.session.psk_key is not None and s.session.psk_key.reveal() == bytes.fromhex(LIGHT1_KEY)
    assert c.session.psk_key is None and LIGHT1_KEY not in repr(s.session).lower()
    # TS-0003 §10.3.1: both ends export the same 48 bytes
    e1 = s.export_keying_material("EXPORTER-oneM2M-Connection", 48)
    e2 = c.export_keying_material("EXPORTER-oneM2M-Connection", 48)
    assert len(e1) == 48 and e1 == e2
    assert s.export_keying_material("EXPORTER-oneM2M-Connection", 48, b"ctx") != e1
    if profile is not TLS13_PSK:
        assert s.master_secret() == c.master_secret() and len(s.master_secret()) == 48
        assert len(s.session.session_id) == 32 and s.session.session_id == c.session.session_id
    else:
        assert s.session.session_id == b""
        with pytest.raises(TLSProtocolError):
            s.master_secret()
    # application data both ways
    c.send(b"ping")
    assert [e.data for e in s.receive_data(c.data_to_send()) if isinstance(e, DataReceived)] == [b"ping"]
    s.send(b"pong" * 10000)
    got = b"".join(e.data for e in c.receive_data(s.data_to_send()) if isinstance(e, DataReceived))
    assert got == b"pong" * 10000
    # clean close
    c.close()
    assert ConnectionClosed(clean=True) in s.receive_data(c.data_to_send())


def test_default_server_accepts_a_plain_onem2m_client(table: MemoryPSKTable) -> None:
    server = TLSContext.server(ServerConfig(table.lookup))
    client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)))
    s, _ = handshake_pair(server, client)
    assert s.session is not None and s.session.cipher == "PSK-AES128-CBC-SHA256"


def test_session_ids_differ_between_connections(table: MemoryPSKTable) -> None:
    server, client = contexts(table, (ONEM2M_PSK,))
    a, _ = handshake_pair(server, client)
    b, _ = handshake_pair(server, client)
    assert a.session is not None and b.session is not None and a.session.session_id != b.session.session_id


def failed_handshake(server: TLSContext, client: TLSContext) -> tuple[HandshakeFailed, HandshakeFailed, bytes]:
    """Run a handshake that fails; returns the server's error, the client's error and the server's last flight
    before its alert (its length and record types are what a scanner sees)."""
    s, c = server.connection(), client.connection()
    srv: HandshakeFailed | None = None
    flight = b""
    to_server = c.data_to_send()
    for _ in range(10):
        try:
            s.receive_data(to_server)
        except HandshakeFailed as exc:
            srv = exc
        out = s.data_to_send()
        if srv is None:
            flight = out
        with pytest.raises(HandshakeFailed) if srv is not None else contextlib.nullcontext() as cli:
            c.receive_data(out)
        if srv is not None or c.state is ConnectionState.FAILED:
            assert cli is not None and srv is not None
            return srv, cli.value, flight
        to_server = c.data_to_send()
    raise AssertionError("the handshake did not fail")


def _records(flight: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each TLS record: a ServerHello flight's shape, without its random values."""
    out, pos = [], 0
    while pos + 5 <= len(flight):
        length = int.from_bytes(flight[pos + 3 : pos + 5], "big")
        out.append((flight[pos], length))
        pos += 5 + length
    return out


@pytest.mark.parametrize(("profile", "alert"), [(ONEM2M_PSK, "bad_record_mac"), (ECDHE_PSK, "bad_record_mac"),
                                                (TLS13_PSK, "decrypt_error")], ids=lambda p: getattr(p, "name", p))
def test_unknown_identity_fails_like_a_wrong_key(table: MemoryPSKTable, profile: object, alert: str) -> None:
    """RFC 4279 §2 hiding (the default): a client cannot tell an unknown identity from a wrong key."""
    unknown = failed_handshake(*contexts(table, (profile,), identity="nobody@in.provider.com"))  # type: ignore[arg-type]
    wrong = failed_handshake(*contexts(table, (profile,), key="0000000000000000"))  # type: ignore[arg-type]
    assert unknown[1].alert == wrong[1].alert == alert  # what the client is told
    assert unknown[1].reason == wrong[1].reason
    if profile is not TLS13_PSK:  # TLS 1.3 encrypts the rest of the flight: only the alert is in clear
        assert _records(unknown[2]) == _records(wrong[2])
    assert unknown[0].reason == "unknown psk identity" and unknown[0].alert == alert  # the server knows
    assert wrong[0].reason != "unknown psk identity"


def test_unknown_identity_decoy_is_stable_and_never_completes(table: MemoryPSKTable) -> None:
    server, client = contexts(table, (ONEM2M_PSK,), identity="nobody@in.provider.com")
    first = failed_handshake(server, client)
    again = failed_handshake(server, client)
    assert first[0].reason == again[0].reason == "unknown psk identity"
    assert first[1].alert == again[1].alert == "bad_record_mac"


@pytest.mark.parametrize(("profile", "alert"), [(ONEM2M_PSK, "unknown_psk_identity"),
                                                (TLS13_PSK, "handshake_failure")], ids=lambda p: getattr(p, "name", p))
def test_reveal_option_restores_the_unknown_identity_alert(table: MemoryPSKTable, profile: object,
                                                           alert: str) -> None:
    server, client = contexts(table, (profile,), identity="nobody@in.provider.com",  # type: ignore[arg-type]
                              reveal_unknown_psk_identity=True)
    srv, cli, _ = failed_handshake(server, client)
    assert srv.reason == "unknown psk identity" and srv.alert == cli.alert == alert


def test_unknown_identity_is_refused_with_the_alert(table: MemoryPSKTable) -> None:
    server, client = contexts(table, (ONEM2M_PSK,), identity="nobody@in.provider.com",
                              reveal_unknown_psk_identity=True)
    with pytest.raises(HandshakeFailed) as info:
        handshake_pair(server, client)
    assert info.value.alert == "unknown_psk_identity"


def test_unknown_identity_alert_reaches_the_client(table: MemoryPSKTable) -> None:
    server, client = contexts(table, (ONEM2M_PSK,), identity="nobody@in.provider.com",
                              reveal_unknown_psk_identity=True)
    s, c = server.connection(), client.connection()
    s.receive_data(c.data_to_send())
    with pytest.raises(HandshakeFailed) as srv_err:
        c.receive_data(s.data_to_send())
        s.receive_data(c.data_to_send())
    assert srv_err.value.alert == "unknown_psk_identity"
    assert s.offered_identity == "nobody@in.provider.com" and s.state is ConnectionState.FAILED
    with pytest.raises(HandshakeFailed, match="unknown psk identity"):
        c.receive_data(s.data_to_send())


@pytest.mark.parametrize(("profile", "reason"), [(ONEM2M_PSK, "bad record mac"), (TLS13_PSK, "binder does not verify")],
                         ids=["onem2m", "tls13"])
def test_wrong_key_fails_the_handshake(table: MemoryPSKTable, profile: object, reason: str) -> None:
    server, client = contexts(table, (profile,), key="0000000000000000")  # type: ignore[arg-type]
    with pytest.raises(HandshakeFailed, match=reason):  # TLS 1.2: at Finished; TLS 1.3: the PSK binder
        handshake_pair(server, client)


def test_lookup_exception_rejects_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def broken(identity: str) -> PSKEntry | None:
        raise RuntimeError("database on fire")

    server = TLSContext.server(ServerConfig(broken, profiles=(ONEM2M_PSK,)))
    client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)))
    with caplog.at_level(logging.ERROR, logger="m2msec.tls"), pytest.raises(HandshakeFailed) as info:
        handshake_pair(server, client)
    assert info.value.reason == "psk lookup failed"
    assert "RuntimeError" in caplog.text and "Traceback" not in caplog.text


def test_garbage_instead_of_client_hello_fails_cleanly(table: MemoryPSKTable) -> None:
    server, _ = contexts(table, (ONEM2M_PSK,))
    s = server.connection()
    with pytest.raises(HandshakeFailed, match="http request"):
        s.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.state is ConnectionState.FAILED
    assert s.receive_data(b"more") == []  # a failed connection ignores further input


def test_eof_during_handshake(table: MemoryPSKTable) -> None:
    server, client = contexts(table, (ONEM2M_PSK,))
    s, c = server.connection(), client.connection()
    s.receive_data(c.data_to_send()[:10])
    with pytest.raises(HandshakeFailed, match="closed by peer"):
        s.receive_data(b"")


def test_byte_at_a_time_feeding(table: MemoryPSKTable) -> None:
    server, client = contexts(table, (ECDHE_PSK,))
    s, c = server.connection(), client.connection()
    for _ in range(10):
        for b in c.data_to_send():
            s.receive_data(bytes([b]))
        for b in s.data_to_send():
            c.receive_data(bytes([b]))
        if s.session and c.session:
            break
    assert s.session is not None and c.session is not None


def test_sni_and_identity_hint(table: MemoryPSKTable) -> None:
    server = TLSContext.server(ServerConfig(table.lookup, profiles=(ONEM2M_PSK,), identity_hint="mn-cse-123456"))
    client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                            server_name="mn-cse-123456.in.provider.com"))
    s, c = handshake_pair(server, client)
    assert s.session is not None and s.session.server_name == "mn-cse-123456.in.provider.com"
    assert c.session is not None and c.session.identity_hint == "mn-cse-123456"


def test_ip_literal_is_not_sent_as_sni(table: MemoryPSKTable) -> None:
    server, _ = contexts(table, (ONEM2M_PSK,))
    client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), server_name="127.0.0.1"))
    s, _ = handshake_pair(server, client)
    assert s.session is not None and s.session.server_name is None


def test_client_refuses_tls_1_3_only_server_when_configured_for_1_2(table: MemoryPSKTable) -> None:
    server = TLSContext.server(ServerConfig(table.lookup, profiles=(TLS13_PSK,)))
    client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_PSK,)))
    with pytest.raises(HandshakeFailed, match="unsupported protocol"):
        handshake_pair(server, client)


def test_identities_map_to_their_own_entities(table: MemoryPSKTable) -> None:
    from conftest import LIGHT2_AE, LIGHT2_KEY

    server, client = contexts(table, (ONEM2M_PSK,), identity=LIGHT2_ID, key=LIGHT2_KEY)
    s, _ = handshake_pair(server, client)
    assert s.session is not None and s.session.entity == LIGHT2_AE


def test_exporter_rejects_reserved_labels_and_use_before_handshake(table: MemoryPSKTable) -> None:
    server, client = contexts(table, (ONEM2M_PSK,))
    with pytest.raises(TLSProtocolError):
        server.connection().export_keying_material("EXPORTER-x", 16)
    s, _ = handshake_pair(server, client)
    for label in ("master secret", "key expansion", "client finished", "server finished", ""):
        with pytest.raises(ConfigurationError):
            s.export_keying_material(label, 16)
    with pytest.raises(ConfigurationError):
        s.export_keying_material("EXPORTER-x", 0)


def test_send_before_handshake_is_an_error(table: MemoryPSKTable) -> None:
    server, _ = contexts(table, (ONEM2M_PSK,))
    with pytest.raises(TLSProtocolError):
        server.connection().send(b"x")


def test_configuration_errors() -> None:
    lookup = MemoryPSKTable().lookup
    with pytest.raises(ConfigurationError, match="certificate"):
        TLSContext.server(ServerConfig(lookup, profiles=(RSA_PSK,)))
    with pytest.raises(ConfigurationError, match="profile"):
        TLSContext.server(ServerConfig(lookup, profiles=()))
    with pytest.raises(ConfigurationError, match="unknown cipher profile"):
        parse_profiles("onem2m,nope")
    with pytest.raises(ConfigurationError, match="identity"):
        TLSContext.client(ClientConfig("", SecretKey(b"k")))
    with pytest.raises(ConfigurationError, match="identity hint"):
        TLSContext.server(ServerConfig(lookup, identity_hint="x" * 300))


def test_no_key_material_in_reprs(table: MemoryPSKTable) -> None:
    key = SecretKey.from_hex(LIGHT1_KEY)
    cfg = ClientConfig(LIGHT1_ID, key)
    server, client = contexts(table, (ONEM2M_PSK,))
    s, c = handshake_pair(server, client)
    texts = [repr(key), str(key), repr(cfg), repr(s), repr(s.session), repr(c.session), repr(table.lookup(LIGHT1_ID)),
             repr(s.export_keying_material("EXPORTER-oneM2M-Connection", 48)), repr(s.master_secret())]
    for text in texts:
        assert LIGHT1_KEY not in text.lower() and "1a2b" not in text.lower()
    assert "redacted" in repr(key)


def test_tls13_unknown_identity_reports_the_alert_actually_sent(table: MemoryPSKTable) -> None:
    server, client = contexts(table, (TLS13_PSK,), identity="nobody@in.provider.com", reveal_unknown_psk_identity=True)
    s, c = server.connection(), client.connection()
    with pytest.raises(HandshakeFailed) as srv:
        s.receive_data(c.data_to_send())
    with pytest.raises(HandshakeFailed) as cli:
        c.receive_data(s.data_to_send())
    assert srv.value.reason == "unknown psk identity"
    assert srv.value.alert == cli.value.alert == "handshake_failure"


# --- D38: a PSK client without trust anchors accepts only a PSK-authenticated server ---------------------------


def _run_to_client_failure(server: TLSContext, client: TLSContext) -> HandshakeFailed:
    s, c = server.connection(), client.connection()
    to_server = c.data_to_send()
    for _ in range(10):
        s.receive_data(to_server)
        try:
            c.receive_data(s.data_to_send())
        except HandshakeFailed as exc:
            assert c.state is ConnectionState.FAILED and c.session is None
            return exc
        to_server = c.data_to_send()
    raise AssertionError("the client accepted the server")


def test_tls13_psk_client_refuses_a_server_that_ignores_the_psk(rsa_cert: tuple[bytes, bytes]) -> None:
    """A TLS 1.3 server that does not take the offered PSK (here: it does not know the identity) falls back to
    certificate authentication; a PSK client has nothing to verify the certificate with and must refuse, before
    sending its Finished, with the reason said (not accept an unauthenticated server)."""
    server = TLSContext.server(ServerConfig(lambda _identity: None, profiles=(TLS13_PSK,),
                                            certificate=CertificateConfig(*rsa_cert), reveal_unknown_psk_identity=True))
    client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(TLS13_PSK,),
                                            peer_entity=HOME_GATEWAY_CSE_ID))
    exc = _run_to_client_failure(server, client)
    assert exc.reason == PSK_NOT_ACCEPTED and exc.alert == "unknown_ca"


def test_rsa_psk_client_without_anchors_reports_no_unverified_certificate(
    table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]
) -> None:
    """RSA_PSK: the server sends a certificate the PSK client cannot verify; the PSK authenticates the session,
    and the unverified certificate is not reported (nothing may read an identity from it)."""
    server, client = contexts(table, (RSA_PSK,), certificate=CertificateConfig(*rsa_cert))
    _, c = handshake_pair(server, client)
    assert c.session is not None and c.session.psk_identity == LIGHT1_ID and c.session.authentication == "psk"
    assert c.session.peer_certificate is None
