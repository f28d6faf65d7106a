"""AEFPSK (TS 33.122 Annex A.1) over the TS 33.220 Annex B.2 KDF: every value checked against an independent
computation written here from the formula (hmac + hashlib, and ``openssl mac``), never against m2msec's own output."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import subprocess
import unicodedata

import pytest

from conftest import contexts, handshake_pair, make_table
from m2msec.capif.kdf import AEFPSK_FC, aefpsk, interface_information, kdf_input
from m2msec.errors import ConfigurationError
from m2msec.keys.secret import SecretKey
from m2msec.tls.profiles import parse_profiles


def reference(master: bytes, session_id: bytes, info: str) -> bytes:
    """TS 33.220 B.2.0 written out: S = FC || P0 || L0 || P1 || L1, HMAC-SHA-256(master secret, S); P0 NFKC UTF-8."""
    p0 = unicodedata.normalize("NFKC", info).encode()
    s = b"\x7a" + p0 + len(p0).to_bytes(2, "big") + session_id + len(session_id).to_bytes(2, "big")
    return hmac.new(master, s, hashlib.sha256).digest()


MASTER, SESSION_ID = bytes(range(48)), bytes(range(0x20, 0x40))


def test_fc_is_0x7a_and_s_is_laid_out_as_b2() -> None:
    assert AEFPSK_FC == 0x7A  # TS 33.122 Annex A.1
    assert kdf_input(0x7A, b"ab", b"\x01") == b"\x7a" + b"ab\x00\x02" + b"\x01\x00\x01"
    assert kdf_input(0x10) == b"\x10"
    with pytest.raises(ConfigurationError):
        kdf_input(0xFF, b"x")  # 0xFF starts a two-octet FC
    with pytest.raises(ConfigurationError, match="P0"):
        kdf_input(0x7A, b"x" * 0x10000)


@pytest.mark.parametrize("info", ["aef.example.com:8443/nef", "192.0.2.7:443", "[2001:db8::1]:8443/api",
                                  "\uff41\uff45\uff46.example.com:443"])  # fullwidth letters: NFKC, ASCII
def test_aefpsk_is_the_formula(info: str) -> None:
    assert aefpsk(SecretKey(MASTER), SESSION_ID, info).reveal() == reference(MASTER, SESSION_ID, info)


def test_aefpsk_against_openssl_mac() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    info = "aef.example.com:8443/nef"
    p0 = info.encode()
    s = b"\x7a" + p0 + len(p0).to_bytes(2, "big") + SESSION_ID + len(SESSION_ID).to_bytes(2, "big")
    out = subprocess.run(["openssl", "mac", "-digest", "SHA256", "-macopt", f"hexkey:{MASTER.hex()}", "HMAC"],
                         input=s, capture_output=True, check=True, timeout=30).stdout
    assert aefpsk(SecretKey(MASTER), SESSION_ID, info).reveal().hex().upper() == out.decode().strip().upper()


def test_p0_is_nfkc_normalized() -> None:
    """TS 33.220 B.2.1.2: a character string parameter is UTF-8 after NFKC."""
    fullwidth = "\uff41\uff45\uff46.example.com:443"
    key = SecretKey(MASTER)
    assert aefpsk(key, SESSION_ID, fullwidth) == aefpsk(key, SESSION_ID, "aef.example.com:443")


def test_a_value_computed_elsewhere() -> None:
    """A cross-check computed with a separate implementation of the same formula (not an official 3GPP vector):
    interface information "https://aef.example.com:8443/nef", master secret 00..2f, session ID 20..3f."""
    got = aefpsk(SecretKey(MASTER), SESSION_ID, "https://aef.example.com:8443/nef")
    assert got.reveal().hex() == "646a4caaab7fc412cdbccd1f444133905a6bf868987ccadb686ff9a88f2117d7"


def test_both_ends_of_a_real_tls12_session_derive_the_same_aefpsk() -> None:
    """The engine's TLS 1.2 session values (a real handshake): CCF and invoker derive the same key, equal to the
    formula over the exported master secret and session ID."""
    server, client = contexts(make_table(), parse_profiles("onem2m"))
    s, c = handshake_pair(server, client)
    assert s.session is not None and c.session is not None and s.session.version == "TLSv1.2"
    assert s.session.session_id == c.session.session_id and len(s.session.session_id) == 32
    info = interface_information(fqdn="aef.example.com", port=8443, api_prefix="/nef")
    ccf, invoker = (aefpsk(x.master_secret(), x.session.session_id, info) for x in (s, c))  # type: ignore[union-attr]
    assert ccf == invoker
    assert ccf.reveal() == reference(s.master_secret().reveal(), s.session.session_id, info)
    other = aefpsk(s.master_secret(), s.session.session_id, interface_information(fqdn="aef.example.com", port=8444))
    assert other != ccf  # one key per interface


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"fqdn": "AEF.Example.COM.", "port": 8443, "api_prefix": "/nef"}, "aef.example.com:8443/nef"),
    ({"fqdn": "aef.example.com"}, "aef.example.com:443"),
    ({"ipv4_addr": "192.0.2.7", "port": 9443}, "192.0.2.7:9443"),
    ({"ipv6_addr": "2001:0db8:0000:0000:0000:0000:0000:0001", "port": 8443, "api_prefix": "/api"},
     "[2001:db8::1]:8443/api"),
    ({"fqdn": "aef.example.com", "ipv4_addr": "192.0.2.7"}, "aef.example.com:443"),  # fqdn first
])
def test_interface_information_is_one_spelling(kwargs: dict[str, object], expected: str) -> None:
    assert interface_information(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{}, {"ipv4_addr": "300.1.1.1"}, {"ipv6_addr": "zz::1"},
                                    {"fqdn": "a.example", "port": 0}, {"fqdn": "a.example", "port": 70000}])
def test_bad_interface_descriptions(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        interface_information(**kwargs)  # type: ignore[arg-type]


def test_only_a_tls12_full_handshake_session_qualifies() -> None:
    with pytest.raises(ConfigurationError, match="48-octet"):
        aefpsk(SecretKey(bytes(32)), SESSION_ID, "a:443")
    for sid in (b"", bytes(33)):
        with pytest.raises(ConfigurationError, match="session ID"):
            aefpsk(SecretKey(MASTER), sid, "a:443")
    with pytest.raises(ConfigurationError, match="interface"):
        aefpsk(SecretKey(MASTER), SESSION_ID, "")
    assert "redacted" in repr(aefpsk(SecretKey(MASTER), SESSION_ID, "a:443"))


def test_interface_information_of_an_interface_description() -> None:
    from m2msec.capif.kdf import interface_information_of

    assert interface_information_of({"fqdn": "AEF.example.com", "port": 8443, "apiPrefix": "/nef",
                                     "securityMethods": ["PSK"]}) == "aef.example.com:8443/nef"
    assert interface_information_of({"ipv4Addr": "192.0.2.7"}) == "192.0.2.7:443"
    for bad in ({}, {"fqdn": "a.example", "ipv4Addr": "192.0.2.7"}, {"fqdn": 7}, {"fqdn": "a.example", "port": "1"},
                {"fqdn": "a.example", "port": True}):
        with pytest.raises(ConfigurationError):
            interface_information_of(bad)
