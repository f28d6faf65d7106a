"""A server with async PSK resolution and certificate suites on one port: once its ServerHello chose a TLS 1.2
certificate suite, the PSK peeker lets every later client byte through unread. Before, it went on parsing the
client's records and read the encrypted Finished as a plaintext handshake header; when that "header" claimed more
bytes than its record held, the peeker held the record back for good and the handshake stalled (about 1 in 1,000
ECDHE-ECDSA handshakes, found by bench/aef_bench.py)."""

from __future__ import annotations

from m2msec.tls.async_psk import AsyncPSK


def _server_hello(suite: int) -> bytes:
    """A TLS 1.2 ServerHello record choosing ``suite`` (what the peeker reads of our own first flight)."""
    body = b"\x03\x03" + bytes(32) + b"\x00" + suite.to_bytes(2, "big") + b"\x00"
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(hs).to_bytes(2, "big") + hs


def _fake_encrypted_finished() -> bytes:
    """A handshake record (type 22) of 40 bytes whose first bytes, read as a handshake header, claim 4,000 bytes."""
    payload = b"\x14" + (4000).to_bytes(3, "big") + bytes(36)
    return b"\x16\x03\x03" + len(payload).to_bytes(2, "big") + payload


def test_a_certificate_suite_ends_the_peeking() -> None:
    peek = AsyncPSK(dtls=False, tls13=True, certificates=True, reveal=False)
    peek.saw_output(_server_hello(0xC02B))  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    assert peek.tls is not None
    ccs = b"\x14\x03\x03\x00\x01\x01"
    record = _fake_encrypted_finished()
    assert peek.tls.feed(ccs + record) == ccs + record  # everything through, nothing held
    assert peek.tls.held == 0


def test_a_psk_suite_still_peeks_its_client_key_exchange() -> None:
    peek = AsyncPSK(dtls=False, tls13=True, certificates=True, reveal=False)
    peek.saw_output(_server_hello(0x00A8))  # TLS_PSK_WITH_AES_128_GCM_SHA256
    assert peek.tls is not None and not peek.tls.gave_up and peek.tls.client_key_exchange


def test_a_tls13_server_hello_keeps_peeking() -> None:
    """A TLS 1.3 suite says nothing of PSK (a HelloRetryRequest is followed by a second ClientHello to read)."""
    peek = AsyncPSK(dtls=False, tls13=True, certificates=True, reveal=False)
    peek.saw_output(_server_hello(0x1301))
    assert peek.tls is not None and not peek.tls.gave_up
