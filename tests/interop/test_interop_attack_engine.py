"""Post-handshake traffic from ``openssl s_client`` against our engine's server (issue 15 attack pass): TLS 1.3
KeyUpdate asking for ours, a TLS 1.2 renegotiation attempt (refused: OP_NO_RENEGOTIATION), data around both.
Every byte echoed once, in order; nothing hangs."""

from __future__ import annotations

import pytest

from conftest import make_table

from .conftest import ONEM2M, TLS13, echo_server, needs_openssl, s_client, server_context

pytestmark = [pytest.mark.interop, needs_openssl]


async def test_tls13_key_update_both_ways_keeps_the_stream(rsa_cert: tuple[bytes, bytes]) -> None:
    async with echo_server(server_context(make_table(), TLS13, rsa_cert)) as server:
        async with s_client(server.port, *TLS13.openssl_args) as peer:
            await server.next_accepted()
            await peer.send(b"before update\n")
            await peer.expect(rb"\nbefore update\n")
            for n in range(3):
                await peer.send(b"K\n")  # KeyUpdate, update_requested: our server must update its keys too
                await peer.expect(rb"(?s)(?:KEYUPDATE.*?){%d}" % (n + 1))  # expect() searches all the output
                await peer.send(b"after update %d\n" % n)
                await peer.expect(rb"\nafter update %d\n" % n)


async def test_tls12_renegotiation_refused_then_the_server_keeps_serving(rsa_cert: tuple[bytes, bytes]) -> None:
    async with echo_server(server_context(make_table(), ONEM2M, rsa_cert)) as server:
        async with s_client(server.port, *ONEM2M.openssl_args) as peer:
            await server.next_accepted()
            await peer.send(b"before renegotiation\n")
            await peer.expect(rb"\nbefore renegotiation\n")
            await peer.send(b"R\n")  # a ClientHello on the established connection
            await peer.expect(rb"no renegotiation")  # refused with the no_renegotiation alert
        async with s_client(server.port, *ONEM2M.openssl_args) as peer:
            await server.next_accepted()
            await peer.send(b"next client\n")
            await peer.expect(rb"\nnext client\n")
