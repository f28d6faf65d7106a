"""Our engine against OpenSSL's own command-line peers (``openssl s_client`` / ``s_server``).

Each case is a real handshake over 127.0.0.1 for one key-exchange family (five TLS 1.2 families and
TLS 1.3 external PSK), then data both ways and the TS-0003 §10.3.1 export compared byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_KEY
from m2msec.keys.table import MemoryPSKTable
from m2msec.transport.tls import open_connection

from .conftest import (
    EXPORT_LABEL,
    EXPORT_LEN,
    ONEM2M,
    TIMEOUT,
    TLS13,
    EchoServer,
    Family,
    PeerFiles,
    client_context,
    echo_server,
    family_params,
    needs_openssl,
    s_client,
    s_server,
    server_context,
)

pytestmark = [pytest.mark.interop, needs_openssl]

SNI = f"{HOME_GATEWAY_CSE_ID}.test"
_EXPORT_ARGS = ("-keymatexport", EXPORT_LABEL, "-keymatexportlen", str(EXPORT_LEN))


async def _check_s_client_session(server: EchoServer, family: Family) -> None:
    """A good ``s_client`` connection: handshake, echo, cipher, session facts and export agree with our server."""
    async with s_client(server.port, "-servername", SNI, *family.openssl_args, *_EXPORT_ARGS) as peer:
        printed = await peer.expect(rb"Keying material: ([0-9A-F]+)\s")
        accepted = await server.next_accepted()
        await peer.send(b"ping from openssl\n")
        await peer.expect(rb"\nping from openssl\n")
    session = accepted.session
    assert _printed(rb"Cipher is (\S+)", peer.output) == session.cipher == family.cipher
    assert session.version == ("TLSv1.3" if family.tls13 else "TLSv1.2")
    assert (session.psk_identity, session.entity, session.server_name) == (LIGHT1_ID, LIGHT1_AE, SNI)
    if not family.tls13:  # TLS 1.3 has no session ID and no identity hint
        assert _printed(rb"Session-ID: ([0-9A-F]+)", peer.output) == session.session_id.hex().upper()
        assert _printed(rb"PSK identity hint: (\S+)", peer.output) == HOME_GATEWAY_CSE_ID
    assert bytes.fromhex(printed[1].decode()) == accepted.export


def _printed(pattern: bytes, output: bytes) -> str:
    match = re.search(pattern, output)
    assert match is not None, f"{pattern!r} not in:\n{output.decode(errors='replace')}"
    return match[1].decode()


@family_params
async def test_s_client_to_engine_server(
    family: Family, table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]
) -> None:
    async with echo_server(server_context(table, family, rsa_cert)) as server:
        await _check_s_client_session(server, family)


@family_params
async def test_engine_client_to_s_server(family: Family, peer_files: PeerFiles) -> None:
    async with s_server(family, peer_files) as (peer, port):
        reader, writer, session = await open_connection("127.0.0.1", port, client_context(family),
                                                        handshake_timeout=5)
        try:
            ours = writer.get_extra_info("tls_connection").export_keying_material(EXPORT_LABEL, EXPORT_LEN)
            printed = await peer.expect(rb"Keying material: ([0-9A-F]+)\s")
            writer.write(b"ping from m2msec\n")
            await peer.expect(rb"ping from m2msec\n")
            await peer.send(b"pong from openssl\n")
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"pong from openssl\n"
        finally:
            writer.close()
    assert _printed(rb"CIPHER is (\S+)", peer.output) == session.cipher == family.cipher
    assert session.identity_hint == (None if family.tls13 else HOME_GATEWAY_CSE_ID)
    assert bytes.fromhex(printed[1].decode()) == ours.reveal()


@pytest.mark.parametrize(
    ("family", "identity", "key", "client_sees", "server_logs", "reveal"),
    [
        # RFC 4279 §2 hiding (the default): an unknown identity fails as a wrong key does, the server knows why
        pytest.param(ONEM2M, "nobody@in.provider.com", LIGHT1_KEY, rb"alert bad record mac",
                     "unknown psk identity", False, id="unknown-identity"),
        pytest.param(ONEM2M, LIGHT1_ID, LIGHT2_KEY, rb"alert bad record mac", "bad record mac", False, id="wrong-key"),
        pytest.param(ONEM2M, b"\xff\xfe@x", LIGHT1_KEY, rb"alert bad record mac",
                     "psk identity is not valid UTF-8", False, id="non-utf8-identity"),
        # TLS 1.3 (RFC 8446 §4.2.11): a wrong key fails the binder (decrypt_error), and so does an unknown identity
        pytest.param(TLS13, "nobody@in.provider.com", LIGHT1_KEY, rb"alert decrypt error",
                     "unknown psk identity", False, id="tls13-unknown-identity"),
        pytest.param(TLS13, LIGHT1_ID, LIGHT2_KEY, rb"alert decrypt error", "binder does not verify",
                     False, id="tls13-wrong-key"),
        pytest.param(TLS13, b"\xff\xfe@x", LIGHT1_KEY, rb"alert decrypt error",
                     "psk identity is not valid UTF-8", False, id="tls13-non-utf8-identity"),
        # --reveal-unknown-psk-identity: the alerts OpenSSL sends when the callback refuses the identity
        pytest.param(ONEM2M, "nobody@in.provider.com", LIGHT1_KEY, rb"alert unknown psk identity",
                     "unknown psk identity", True, id="reveal-unknown-identity"),
        pytest.param(TLS13, "nobody@in.provider.com", LIGHT1_KEY, rb"alert handshake failure",
                     "unknown psk identity", True, id="reveal-tls13-unknown-identity"),
    ],
)
async def test_s_client_rejected_then_server_keeps_serving(
    family: Family, identity: str | bytes, key: str, client_sees: bytes, server_logs: str, reveal: bool,
    table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="m2msec.transport")
    async with echo_server(server_context(table, family, rsa_cert, reveal=reveal)) as server:
        async with s_client(server.port, *family.openssl_args, identity=identity, key=key) as peer:
            assert await peer.wait() == 1
            assert re.search(client_sees, peer.output), peer.output.decode(errors="replace")
        assert server.accepted.empty()
        assert any("failed" in r.getMessage() and server_logs in r.getMessage() for r in caplog.records)
        await _check_s_client_session(server, family)
