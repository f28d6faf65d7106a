"""``m2msec.tunnel`` against ``openssl s_server -www`` as the TLS peer: a plain HTTP client through the tunnel gets
OpenSSL's status page, over a certificate handshake (s_server requires and verifies the tunnel's certificate)
and over a PSK one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import LIGHT1_ID, LIGHT1_KEY
from m2msec.keys.secret import SecretKey
from m2msec.pki import CertificateFlavour, create_ca, issue
from m2msec.saef import CertificateCredentials, PSKCredentials
from m2msec.tunnel import Tunnel, TunnelConfig

from .conftest import OPENSSL, TIMEOUT, listening_peer, needs_openssl

pytestmark = [pytest.mark.interop, needs_openssl]
SP = "m2m.provider.com"


async def through(tunnel: Tunnel) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        data = await reader.read()
    writer.close()
    return data


async def test_certificate_tunnel_to_openssl_s_server(tmp_path: Path) -> None:
    assert OPENSSL is not None
    ca = create_ca("provider root", permitted_dns=[SP])
    server = issue(ca, CertificateFlavour.CSE_ID, "in-cse", sp_domain=SP)
    client = issue(ca, CertificateFlavour.CSE_ID, "mn-cse-123456", sp_domain=SP)
    for name, data in (("server.crt", server.certificate_pem()), ("server.key", server.private_key_pem()),
                       ("ca.crt", ca.certificate_pem())):
        (tmp_path / name).write_bytes(data)
    argv = lambda port: (OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", tmp_path / "server.crt",  # noqa: E731
                         "-key", tmp_path / "server.key", "-CAfile", tmp_path / "ca.crt", "-Verify", "2",
                         "-no_tls1_3", "-www")
    async with listening_peer(argv, rb"ACCEPT") as (_peer, port):
        creds = CertificateCredentials(client.certificate_pem(), client.private_key_pem(), ca.certificate_pem(),
                                       peer_entity="in-cse")
        async with Tunnel(TunnelConfig("127.0.0.1", port, creds)) as tunnel:
            data = await through(tunnel)
    assert data.startswith(b"HTTP/1.0 200 ok"), data[:200]
    assert b"ECDHE-ECDSA" in data


async def test_psk_tunnel_to_openssl_s_server() -> None:
    assert OPENSSL is not None
    argv = lambda port: (OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-nocert", "-psk", LIGHT1_KEY,  # noqa: E731
                         "-psk_identity", LIGHT1_ID, "-no_tls1_3", "-cipher", "PSK-AES128-CBC-SHA256", "-www")
    async with listening_peer(argv, rb"ACCEPT") as (_peer, port):
        creds = PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), peer_entity="in-cse")
        async with Tunnel(TunnelConfig("127.0.0.1", port, creds)) as tunnel:
            data = await through(tunnel)
    assert data.startswith(b"HTTP/1.0 200 ok"), data[:200]
    assert b"PSK-AES128-CBC-SHA256" in data


async def test_wrong_psk_against_openssl_resets_the_plain_side() -> None:
    assert OPENSSL is not None
    argv = lambda port: (OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-nocert", "-psk", "00" * 16,  # noqa: E731
                         "-no_tls1_3", "-cipher", "PSK-AES128-CBC-SHA256", "-www")
    async with listening_peer(argv, rb"ACCEPT") as (_peer, port):
        creds = PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), peer_entity="in-cse")
        async with Tunnel(TunnelConfig("127.0.0.1", port, creds)) as tunnel:
            try:
                data = await through(tunnel)
            except ConnectionResetError:
                data = b""
            assert data == b"" and tunnel.failed == 1
