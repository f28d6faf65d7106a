"""The asyncio adapter over real loopback sockets: any protocol inside TLS-PSK, timeouts, bad peers."""

from __future__ import annotations

import asyncio

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, make_table
from m2msec.errors import HandshakeFailed, HandshakeTimeout
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import ClientConfig, ServerConfig, SessionInfo, TLSContext
from m2msec.transport.tls import create_connection, open_connection, start_server, start_stream_server

SERVER = TLSContext.server(ServerConfig(make_table().lookup))


def client_ctx(identity: str = LIGHT1_ID, key: str = LIGHT1_KEY) -> TLSContext:
    return TLSContext.client(ClientConfig(identity, SecretKey.from_hex(key), peer_entity=HOME_GATEWAY_CSE_ID))


OPEN_WRITERS: set[asyncio.StreamWriter] = set()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    OPEN_WRITERS.add(writer)
    session: SessionInfo = writer.get_extra_info("m2msec_session")
    while data := await reader.read(65536):
        writer.write(session.entity.encode() + b":" + data if session.entity else data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> object:
    server = await start_stream_server(echo, "127.0.0.1", 0, SERVER, handshake_timeout=0.5)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.05)  # let handlers see their peers' close_notify
    while OPEN_WRITERS:
        OPEN_WRITERS.pop().close()
    await asyncio.sleep(0)


async def roundtrip(port: int, payload: bytes = b"hello") -> bytes:
    reader, writer, session = await open_connection("127.0.0.1", port, client_ctx())
    assert session.entity == HOME_GATEWAY_CSE_ID  # Entity A associates the SA with IdB
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.readexactly(len(LIGHT1_AE) + 1 + len(payload)), 5)
    writer.close()
    return data


async def test_streams_echo_with_peer_identity(echo_port: int) -> None:
    assert await roundtrip(echo_port) == f"{LIGHT1_AE}:hello".encode()


async def test_any_asyncio_protocol_runs_inside(echo_port: int) -> None:
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Plain(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            assert transport.get_extra_info("peer_identity") == LIGHT1_ID
            assert transport.get_extra_info("peername")[0] == "127.0.0.1"
            transport.write(b"x" * 100_000)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            got.put_nowait(data)

    adapter, session = await create_connection(Plain, "127.0.0.1", echo_port, client_ctx())
    received = b""
    while len(received) < 100_000 + len(LIGHT1_AE) + 1:
        received += await asyncio.wait_for(got.get(), 5)
    assert received.count(b"x") == 100_000
    assert session.cipher == "PSK-AES128-CBC-SHA256"
    assert adapter.app is not None
    adapter.app.transport.close()  # type: ignore[attr-defined]


async def test_unknown_identity_and_wrong_key_then_server_still_serves(echo_port: int) -> None:
    with pytest.raises(HandshakeFailed) as unknown:
        await open_connection("127.0.0.1", echo_port, client_ctx("nobody@in.provider.com"))
    with pytest.raises(HandshakeFailed) as wrong:
        await open_connection("127.0.0.1", echo_port, client_ctx(key="00" * 8))
    assert unknown.value.alert == wrong.value.alert == "bad_record_mac"  # RFC 4279 §2: identities stay hidden
    assert await roundtrip(echo_port) == f"{LIGHT1_AE}:hello".encode()


@pytest.mark.parametrize("first_bytes", [b"", b"\x16\x03\x01\x00", b"\x16\x03\x03\xff\xff" + b"A" * 100])
async def test_half_open_connections_time_out(echo_port: int, first_bytes: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_port)
    writer.write(first_bytes)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert len(await asyncio.wait_for(reader.read(), 5)) < 64  # at most an alert, then the server closed on us
    assert loop.time() - start < 3
    writer.close()
    assert await roundtrip(echo_port) == f"{LIGHT1_AE}:hello".encode()


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4])
async def test_garbage_is_refused_promptly(echo_port: int, garbage: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_port)
    writer.write(garbage)
    data = await asyncio.wait_for(reader.read(), 2)  # an alert at most, then EOF: no hang
    assert len(data) < 64
    writer.close()
    assert await roundtrip(echo_port) == f"{LIGHT1_AE}:hello".encode()


async def test_client_handshake_timeout_against_silent_server() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with pytest.raises(HandshakeTimeout):
        await open_connection("127.0.0.1", port, client_ctx(), handshake_timeout=0.3)
    server.close()
    await asyncio.sleep(0.05)


async def test_many_concurrent_connections(echo_port: int) -> None:
    results = await asyncio.gather(*(roundtrip(echo_port, f"n{i}".encode()) for i in range(200)))
    assert results == [f"{LIGHT1_AE}:n{i}".encode() for i in range(200)]


async def test_plain_protocol_server() -> None:
    class Upper(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            self.t.write(data.upper())  # type: ignore[attr-defined]

    server = await start_server(Upper, "127.0.0.1", 0, SERVER)
    port = server.sockets[0].getsockname()[1]
    reader, writer, _ = await open_connection("127.0.0.1", port, client_ctx())
    writer.write(b"abc")
    assert await asyncio.wait_for(reader.readexactly(3), 5) == b"ABC"
    writer.close()
    server.close()
    await server.wait_closed()


async def test_writelines_hands_each_buffer_to_the_engine_without_joining_them(echo_port: int) -> None:
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Sink(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.put_nowait(data)

    adapter, _ = await create_connection(Sink, "127.0.0.1", echo_port, client_ctx())
    sent: list[object] = []
    real_send = adapter.tls.send

    def observed(data: bytes) -> None:
        sent.append(data)
        real_send(data)

    adapter.tls.send = observed  # type: ignore[method-assign]  # the real engine still encrypts them
    parts = [b"head:", memoryview(b"y" * 50_000), b":tail"]
    assert adapter._app_transport is not None
    adapter._app_transport.writelines(parts)
    assert len(sent) == 3 and all(a is b for a, b in zip(sent, parts, strict=True))  # no joined copy
    received = b""
    while not received.endswith(b":tail"):  # echoed (prefixed per read by the server): it was sent whole
        received += await asyncio.wait_for(got.get(), 5)
    assert received.count(b"y") == 50_000 and b"head:" in received
    adapter._app_transport.close()
