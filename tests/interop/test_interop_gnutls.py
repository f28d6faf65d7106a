"""Our engine against GnuTLS's command-line peers (``gnutls-cli`` / ``gnutls-serv --echo``).

A second, independent TLS implementation: RFC 4279/5489 PSK families and TLS 1.3 external PSK, data
both ways, and RFC 5705 exports compared with what gnutls prints.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from conftest import LIGHT1_AE, LIGHT1_ID
from m2msec.keys.table import MemoryPSKTable
from m2msec.transport.tls import open_connection

from .conftest import (
    EXPORT_LABEL,
    EXPORT_LEN,
    TIMEOUT,
    Family,
    PeerFiles,
    client_context,
    echo_server,
    family_params,
    gnutls_cli,
    gnutls_serv,
    needs_gnutls,
    server_context,
)

pytestmark = [pytest.mark.interop, needs_gnutls]

#: RFC 9266 tls-exporter channel binding, which gnutls-serv prints (32 bytes, empty context)
CHANNEL_BINDING_LABEL = "EXPORTER-Channel-Binding"


@family_params
async def test_gnutls_cli_to_engine_server(
    family: Family, table: MemoryPSKTable, rsa_cert: tuple[bytes, bytes]
) -> None:
    async with echo_server(server_context(table, family, rsa_cert)) as server, gnutls_cli(
        server.port, family, "--keymatexport", EXPORT_LABEL, "--keymatexportsize", str(EXPORT_LEN)
    ) as peer:
        accepted = await server.next_accepted()
        assert accepted.session.cipher == family.cipher
        assert (accepted.session.psk_identity, accepted.session.entity) == (LIGHT1_ID, LIGHT1_AE)
        if family.gnutls_cli_crashes:
            return  # gotcha 8: gnutls-cli dies right after the handshake; the server side is the evidence
        # Send, then let gnutls-cli finish (stdin EOF -> it closes its side, our server closes after echoing)
        # and read all it printed, whatever buffering its stdout has in a pipe.
        await peer.send(b"ping from gnutls\n")
        peer.close_stdin()
        assert await peer.wait() == 0, peer.output.decode(errors="replace")
        printed = await peer.expect(rb"- Key material: ([0-9a-f]+)\s")
        await peer.expect(rb"\nping from gnutls\n")
    assert bytes.fromhex(printed[1].decode()) == accepted.export


@family_params
async def test_engine_client_to_gnutls_serv(family: Family, peer_files: PeerFiles) -> None:
    async with gnutls_serv(family, peer_files) as (peer, port):
        reader, writer, session = await open_connection("127.0.0.1", port, client_context(family),
                                                        handshake_timeout=5)
        try:
            binding = writer.get_extra_info("tls_connection").export_keying_material(
                CHANNEL_BINDING_LABEL, 32, context=b""
            )
            writer.write(b"ping from m2msec\n")
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"ping from m2msec\n"
            await peer.expect(re.escape(f"Connected as '{LIGHT1_ID}'").encode())
            printed = await peer.expect(rb"'tls-exporter': ([0-9a-f]+)\s")
        finally:
            writer.close()
    assert session.cipher == family.cipher
    assert bytes.fromhex(printed[1].decode()) == binding.reveal()
