"""m2msec.transport.tls with a psk_resolver: real handshakes over loopback while resolutions wait (issue 16 part 1)."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import (
    HOME_GATEWAY_CSE_ID,
    LIGHT1_AE,
    LIGHT1_ID,
    LIGHT1_KEY,
    LIGHT2_ID,
    LIGHT2_KEY,
    TD_ID,
    TD_KEY,
    make_table,
)
from m2msec.errors import ConfigurationError, HandshakeFailed, HandshakeTimeout
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry
from m2msec.tls.engine import ClientConfig, ServerConfig, SessionInfo, TLSContext
from m2msec.tls.profiles import ECDHE_PSK, ONEM2M_DTLS_PSK, ONEM2M_PSK, TLS13_PSK
from m2msec.transport.dtls import create_dtls_endpoint, start_dtls_server
from m2msec.transport.psk_resolver import PendingLookups
from m2msec.transport.tls import open_connection, start_stream_server

TABLE = make_table()
ASYNC_SERVER = TLSContext.server(ServerConfig(None, profiles=(ONEM2M_PSK, ECDHE_PSK, TLS13_PSK), async_psk=True))


def client_ctx(identity: str = LIGHT1_ID, key: str = LIGHT1_KEY, profile: object = ONEM2M_PSK) -> TLSContext:
    return TLSContext.client(ClientConfig(identity, SecretKey.from_hex(key), profiles=(profile,),  # type: ignore[arg-type]
                                          peer_entity=HOME_GATEWAY_CSE_ID))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    session: SessionInfo = writer.get_extra_info("m2msec_session")
    writer.write((session.entity or "-").encode())
    await writer.drain()
    writer.close()


async def greet(port: int, identity: str = LIGHT1_ID, key: str = LIGHT1_KEY, profile: object = ONEM2M_PSK) -> bytes:
    reader, writer, _ = await open_connection("127.0.0.1", port, client_ctx(identity, key, profile),
                                              handshake_timeout=10)
    data = await asyncio.wait_for(reader.read(100), 10)
    writer.close()
    return data


async def test_200_handshakes_while_one_resolution_is_held() -> None:
    release = asyncio.Event()
    slow_started = asyncio.Event()

    async def resolver(identity: str) -> PSKEntry | None:
        if identity == LIGHT2_ID:
            slow_started.set()
            await release.wait()  # a key fetched from far away
        return TABLE.lookup(identity)

    server = await start_stream_server(echo, "127.0.0.1", 0, ASYNC_SERVER, psk_resolver=resolver,
                                       handshake_timeout=30, pending_lookups=PendingLookups(1024, 1024))
    port = server.sockets[0].getsockname()[1]
    try:
        start = time.monotonic()
        slow = asyncio.create_task(greet(port, LIGHT2_ID, LIGHT2_KEY))
        await asyncio.wait_for(slow_started.wait(), 10)
        results = await asyncio.gather(*(greet(port, profile=(ONEM2M_PSK, TLS13_PSK)[i % 2]) for i in range(200)))
        assert results == [LIGHT1_AE.encode()] * 200
        assert not slow.done()  # the held resolution stalled nobody else
        await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - start)))
        assert not slow.done()
        release.set()
        assert await asyncio.wait_for(slow, 10) == b"Clight-AE2"
    finally:
        server.close()
        await server.wait_closed()


async def test_raising_resolver_refuses_that_client_only(caplog: pytest.LogCaptureFixture) -> None:
    async def resolver(identity: str) -> PSKEntry | None:
        if identity == LIGHT2_ID:
            raise RuntimeError("MAF down")
        return TABLE.lookup(identity)

    server = await start_stream_server(echo, "127.0.0.1", 0, ASYNC_SERVER, psk_resolver=resolver)
    port = server.sockets[0].getsockname()[1]
    try:
        for profile in (ONEM2M_PSK, TLS13_PSK):
            with pytest.raises(HandshakeFailed):
                await greet(port, LIGHT2_ID, LIGHT2_KEY, profile)
            assert await greet(port, profile=profile) == LIGHT1_AE.encode()
        assert "PSK resolver raised RuntimeError" in caplog.text and LIGHT2_KEY not in caplog.text
    finally:
        server.close()
        await server.wait_closed()


async def test_resolver_outlasting_the_handshake_timeout_refuses_that_client_only() -> None:
    cancelled = asyncio.Event()

    async def resolver(identity: str) -> PSKEntry | None:
        if identity == LIGHT2_ID:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return TABLE.lookup(identity)

    pending = PendingLookups()
    server = await start_stream_server(echo, "127.0.0.1", 0, ASYNC_SERVER, psk_resolver=resolver,
                                       handshake_timeout=0.5, pending_lookups=pending)
    port = server.sockets[0].getsockname()[1]
    try:
        slow = asyncio.create_task(greet(port, LIGHT2_ID, LIGHT2_KEY))
        assert await greet(port) == LIGHT1_AE.encode()
        with pytest.raises((HandshakeFailed, ConnectionError)):
            await asyncio.wait_for(slow, 10)
        await asyncio.wait_for(cancelled.wait(), 5)
        assert pending.total == 0
        assert await greet(port) == LIGHT1_AE.encode()
    finally:
        server.close()
        await server.wait_closed()


async def test_pending_lookups_are_capped_per_source() -> None:
    release = asyncio.Event()

    async def resolver(identity: str) -> PSKEntry | None:
        if identity == LIGHT2_ID:
            await release.wait()
        return TABLE.lookup(identity)

    pending = PendingLookups(max_pending=100, max_per_source=1)
    server = await start_stream_server(echo, "127.0.0.1", 0, ASYNC_SERVER, psk_resolver=resolver,
                                       pending_lookups=pending)
    port = server.sockets[0].getsockname()[1]
    try:
        held = asyncio.create_task(greet(port, LIGHT2_ID, LIGHT2_KEY))
        while pending.total == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(HandshakeFailed):
            await greet(port)  # same source, one lookup already pending: refused as an unknown identity
        assert pending.refused == 1
        release.set()
        assert await asyncio.wait_for(held, 10) == b"Clight-AE2"
        assert await greet(port) == LIGHT1_AE.encode()
    finally:
        server.close()
        await server.wait_closed()


async def test_resolver_needs_an_async_context() -> None:
    async def resolver(identity: str) -> PSKEntry | None:
        return None

    with pytest.raises(ConfigurationError):
        await start_stream_server(echo, "127.0.0.1", 0, TLSContext.server(ServerConfig(TABLE.lookup)),
                                  psk_resolver=resolver)
    with pytest.raises(ConfigurationError):
        await start_stream_server(echo, "127.0.0.1", 0, ASYNC_SERVER)


def dtls_client(identity: str, key: str) -> TLSContext:
    return TLSContext.dtls_client(ClientConfig(identity, SecretKey.from_hex(key), profiles=(ONEM2M_DTLS_PSK,),
                                               peer_entity=HOME_GATEWAY_CSE_ID))


async def test_dtls_resolver_held_raising_and_served() -> None:
    release = asyncio.Event()

    async def resolver(identity: str) -> PSKEntry | None:
        if identity == LIGHT2_ID:
            await release.wait()
            return TABLE.lookup(identity)
        if identity == TD_ID:
            raise RuntimeError("key store down")
        return TABLE.lookup(identity)

    context = TLSContext.dtls_server(ServerConfig(None, profiles=(ONEM2M_DTLS_PSK,), async_psk=True))
    transport, protocol = await start_dtls_server(asyncio.DatagramProtocol, "127.0.0.1", 0, context,
                                                  psk_resolver=resolver, handshake_timeout=5)
    port = transport.get_extra_info("sockname")[1]
    try:
        slow = asyncio.create_task(create_dtls_endpoint(asyncio.DatagramProtocol, "127.0.0.1", port,
                                                        dtls_client(LIGHT2_ID, LIGHT2_KEY)))
        while protocol.pending_lookups.total == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(HandshakeTimeout):  # refused as an unknown identity: DTLS silence (D34)
            await create_dtls_endpoint(asyncio.DatagramProtocol, "127.0.0.1", port, dtls_client(TD_ID, TD_KEY),
                                       handshake_timeout=1.5)
        served, _, session = await create_dtls_endpoint(asyncio.DatagramProtocol, "127.0.0.1", port,
                                                        dtls_client(LIGHT1_ID, LIGHT1_KEY))
        assert session.entity == HOME_GATEWAY_CSE_ID and not slow.done()
        served.close()
        release.set()
        held, _, _ = await asyncio.wait_for(slow, 10)
        held.close()
        assert protocol.pending_lookups.total == 0
    finally:
        transport.close()
