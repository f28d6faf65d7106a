"""A TLS 1.3 server that does not know our PSK and authenticates with a certificate instead (``openssl s_server
-tls1_3 -cert``, no ``-psk``): our PSK client has no trust anchors and must refuse it (docs/decisions.md D38)."""

from __future__ import annotations

import pytest

from m2msec.errors import HandshakeFailed
from m2msec.tls.engine import PSK_NOT_ACCEPTED
from m2msec.transport.tls import open_connection

from .conftest import OPENSSL, TLS13, PeerFiles, client_context, listening_peer, needs_openssl

pytestmark = [pytest.mark.interop, needs_openssl]


async def test_tls13_psk_client_refuses_an_openssl_server_without_the_psk(peer_files: PeerFiles) -> None:
    assert OPENSSL is not None
    argv = (OPENSSL, "s_server", "-tls1_3", "-cert", peer_files.cert, "-key", peer_files.key)
    async with listening_peer(lambda port: (*argv, "-accept", f"127.0.0.1:{port}"), rb"ACCEPT") as (peer, port):
        with pytest.raises(HandshakeFailed) as info:
            _, writer, _ = await open_connection("127.0.0.1", port, client_context(TLS13), handshake_timeout=5)
            writer.close()
        # s_server reports our alert: the handshake never completed on its side either
        await peer.expect(rb"alert unknown ca")
    assert info.value.reason == PSK_NOT_ACCEPTED and info.value.alert == "unknown_ca"
