"""The resolver's synchronous probe (``lookup_now``): real TLS and DTLS handshakes over loopback answered at once,
without a task and outside the pending-lookup caps, checked like an asynchronous answer (issue 16 part 5)."""

from __future__ import annotations

import asyncio

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY, TD_ID, TD_KEY
from m2msec.errors import HandshakeFailed, HandshakeTimeout
from m2msec.keys.table import PSKEntry
from m2msec.tls.engine import ServerConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK, ONEM2M_PSK, TLS13_PSK
from m2msec.transport.dtls import create_dtls_endpoint, start_dtls_server
from m2msec.transport.psk_resolver import MISS, PendingLookups, ProbeAnswer, SyncProbe
from m2msec.transport.tls import start_stream_server
from test_async_resolver import ASYNC_SERVER, TABLE, dtls_client, echo, greet

WRONG_ID = "wrong@in.provider.com"


class Probing:
    """lookup_now: LIGHT1 at once, LIGHT2 only asynchronously, TD raises, WRONG_ID gets LIGHT1's entry."""

    def __init__(self) -> None:
        self.probes = 0
        self.calls = 0

    def lookup_now(self, identity: str) -> ProbeAnswer:
        self.probes += 1
        if identity == LIGHT2_ID:
            return MISS
        if identity == TD_ID:
            raise RuntimeError("cache corrupted")
        if identity == WRONG_ID:
            return TABLE.lookup(LIGHT1_ID)
        return TABLE.lookup(identity)

    async def __call__(self, identity: str) -> PSKEntry | None:
        self.calls += 1
        return TABLE.lookup(identity)


def test_probing_is_a_sync_probe() -> None:
    assert isinstance(Probing(), SyncProbe)


async def test_a_hit_needs_no_task_and_no_pending_slot(caplog: pytest.LogCaptureFixture) -> None:
    resolver = Probing()
    closed = PendingLookups(max_pending=0, max_per_source=0)  # every asynchronous lookup refused
    server = await start_stream_server(echo, "127.0.0.1", 0, ASYNC_SERVER, psk_resolver=resolver,
                                       pending_lookups=closed)
    port = server.sockets[0].getsockname()[1]
    try:
        for profile in (ONEM2M_PSK, TLS13_PSK):
            assert await greet(port, profile=profile) == LIGHT1_AE.encode()
        assert resolver.calls == 0 and closed.refused == 0 and resolver.probes == 2
        with pytest.raises(HandshakeFailed):  # a miss needs a lookup slot: none here
            await greet(port, LIGHT2_ID, LIGHT2_KEY)
        assert closed.refused == 1 and resolver.calls == 0
        for identity, key in ((TD_ID, TD_KEY), (WRONG_ID, LIGHT1_KEY), ("nobody@x.example", LIGHT1_KEY)):
            with pytest.raises(HandshakeFailed):  # raised, another identity's entry, unknown: refused at once
                await greet(port, identity, key)
        assert resolver.calls == 0 and closed.refused == 1
        assert "PSK resolver raised RuntimeError" in caplog.text
        assert f"answered identity {WRONG_ID!r}" in caplog.text and LIGHT1_KEY not in caplog.text
    finally:
        server.close()
        await server.wait_closed()


async def test_a_miss_is_resolved_asynchronously() -> None:
    resolver = Probing()
    pending = PendingLookups()
    server = await start_stream_server(echo, "127.0.0.1", 0, ASYNC_SERVER, psk_resolver=resolver,
                                       pending_lookups=pending)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await greet(port, LIGHT2_ID, LIGHT2_KEY) == b"Clight-AE2"
        assert resolver.calls == 1 and pending.total == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_dtls_hit_needs_no_task_and_no_pending_slot() -> None:
    resolver = Probing()
    context = TLSContext.dtls_server(ServerConfig(None, profiles=(ONEM2M_DTLS_PSK,), async_psk=True))
    transport, protocol = await start_dtls_server(asyncio.DatagramProtocol, "127.0.0.1", 0, context,
                                                  psk_resolver=resolver, handshake_timeout=5,
                                                  pending_lookups=PendingLookups(0, 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        served, _, session = await create_dtls_endpoint(asyncio.DatagramProtocol, "127.0.0.1", port,
                                                        dtls_client(LIGHT1_ID, LIGHT1_KEY))
        assert session.entity == HOME_GATEWAY_CSE_ID and resolver.calls == 0
        served.close()
        with pytest.raises(HandshakeTimeout):  # a miss over the cap: refused as unknown, DTLS silence (D34)
            await create_dtls_endpoint(asyncio.DatagramProtocol, "127.0.0.1", port,
                                       dtls_client(LIGHT2_ID, LIGHT2_KEY), handshake_timeout=1.5)
        assert protocol.pending_lookups.refused == 1 and resolver.calls == 0
    finally:
        transport.close()


