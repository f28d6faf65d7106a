"""m2msec.tunnel over real loopback: a plain HTTP client -> Tunnel -> certificate / PSK gateway -> HTTP backend."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator

import pytest
from tunnel_env import (
    IN_CSE,
    MN_CSE,
    SP,
    Certificates,
    EchoBackend,
    PlainClient,
    client_credentials,
    make_certificates,
    onem2m,
    start_gateway,
)

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY
from leaks import assert_no_secret
from m2msec.errors import ConfigurationError
from m2msec.gateway.http_gateway import Gateway
from m2msec.keys.secret import SecretKey
from m2msec.pki import create_ca
from m2msec.saef import CertificateCredentials, PSKCredentials
from m2msec.tls.engine import CertificateConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA
from m2msec.transport.tls import start_stream_server
from m2msec.tunnel import DEFAULT_MAX_CONNECTIONS, Tunnel, TunnelConfig, should_close


@pytest.fixture(scope="module")
def certs() -> Certificates:
    return make_certificates()


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    rec = await EchoBackend().start()
    yield rec
    await rec.close()


@pytest.fixture
async def gateway(backend: EchoBackend, certs: Certificates) -> AsyncIterator[Gateway]:
    gw = await start_gateway(backend.port, certs)
    yield gw
    await gw.close()


def tunnel_to(port: int, credentials: PSKCredentials | CertificateCredentials, **kw: object) -> Tunnel:
    return Tunnel(TunnelConfig("127.0.0.1", port, credentials, **kw))  # type: ignore[arg-type]


async def test_certificate_tunnel_carries_the_identity_of_its_certificate(
    gateway: Gateway, backend: EchoBackend, certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    async with tunnel_to(gateway.port, client_credentials(certs)) as tunnel:
        with caplog.at_level(logging.INFO, logger="m2msec.tunnel"):
            client = await PlainClient.connect(tunnel.port)
            ok = await client.request(onem2m(f"/{MN_CSE}", body=b'{"m2m:csr": {}}'))
        [established] = [r.getMessage() for r in caplog.records if r.name == "m2msec.tunnel"]
        assert f"SA with {IN_CSE} (certificate authentication, TLSv1.2 ECDHE-ECDSA-" in established, established
        assert (ok.status, ok.header("x-m2m-rsc"), ok.body) == (200, "2000", b'{"m2m:csr": {}}')
        # the gateway's originator check sees the tunnel's certificate identity, not what the plain client claims
        other = await client.request(onem2m("/other-cse", ri="req-2"))
        assert (other.status, other.header("x-m2m-rsc")) == (403, "4106")
        again = await client.request(onem2m(f"/{MN_CSE}", ri="req-3"))  # the same connection goes on
        assert again.status == 200
        await client.close()
    assert len(backend.requests) == 2
    assert {r.header("x-m2msec-sa-identity") for r in backend.requests} == {f"/{MN_CSE}"}
    assert tunnel.accepted == 1 and tunnel.failed == 0


async def test_psk_tunnel(gateway: Gateway, backend: EchoBackend) -> None:
    creds = PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), peer_entity=IN_CSE)
    async with tunnel_to(gateway.port, creds) as tunnel:
        client = await PlainClient.connect(tunnel.port)
        ok = await client.request(onem2m(LIGHT1_AE))
        assert (ok.status, ok.header("x-m2m-rsc")) == (200, "2000")
        bad = await client.request(onem2m("Cother", ri="req-2"))
        assert (bad.status, bad.header("x-m2m-rsc")) == (403, "4106")
        await client.close()
    [seen] = backend.requests
    assert seen.header("x-m2msec-sa-identity") == LIGHT1_AE
    assert seen.header("x-m2msec-psk-identity") == LIGHT1_ID


async def closed_without_response(port: int, *, within: float) -> float:
    """Connect to the tunnel, send a request; the connection must end (EOF or reset) with no byte back within
    ``within`` seconds. Returns how long it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /in-cse HTTP/1.1\r\nhost: in-cse\r\nx-m2m-origin: /mn-cse-123456\r\n\r\n")
    try:
        async with asyncio.timeout(within):
            data = await reader.read()
    except ConnectionResetError:
        data = b""
    finally:
        writer.close()
    assert data == b""
    return loop.time() - start


async def test_wrong_ca_closes_the_plain_connection_without_a_response(
    gateway: Gateway, backend: EchoBackend, certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    other_ca = create_ca("another root", permitted_dns=[SP])
    async with tunnel_to(gateway.port, client_credentials(certs, trust=other_ca)) as tunnel:
        with caplog.at_level(logging.WARNING, logger="m2msec.tunnel"):
            await closed_without_response(tunnel.port, within=5)
            for _ in range(50):
                if tunnel.failed:
                    break
                await asyncio.sleep(0.02)
        assert tunnel.failed == 1 and tunnel.active == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "m2msec.tunnel"]
    assert len(lines) == 1 and f"127.0.0.1:{gateway.port} failed" in lines[0], lines
    assert backend.requests == []


async def test_wrong_psk_is_logged_once_without_the_key(
    gateway: Gateway, backend: EchoBackend, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "00112233445566778899aabbccddeeff"
    creds = PSKCredentials(LIGHT1_ID, SecretKey.from_hex(wrong), peer_entity=IN_CSE)
    async with tunnel_to(gateway.port, creds) as tunnel:
        with caplog.at_level(logging.DEBUG):
            await closed_without_response(tunnel.port, within=5)
    tunnel_lines = [r.getMessage() for r in caplog.records if r.name == "m2msec.tunnel"]
    assert len(tunnel_lines) == 1, tunnel_lines
    assert_no_secret("\n".join(r.getMessage() for r in caplog.records), [bytes.fromhex(wrong),
                                                                          bytes.fromhex(LIGHT1_KEY)], where="logs")
    assert backend.requests == []


async def test_target_down_closes_quickly(certs: Certificates) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with tunnel_to(port, client_credentials(certs)) as tunnel:
        assert await closed_without_response(tunnel.port, within=5) < 2
        # and again: the listener keeps serving
        assert await closed_without_response(tunnel.port, within=5) < 2
    assert tunnel.failed == 2


async def test_silent_target_is_given_up_after_the_connect_timeout(certs: Certificates) -> None:
    """A target that accepts TCP and never answers the ClientHello: the plain side is closed after the timeout."""
    held: list[asyncio.StreamWriter] = []

    async def mute(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with tunnel_to(port, client_credentials(certs), connect_timeout=0.5) as tunnel:
            took = await closed_without_response(tunnel.port, within=5)
            assert 0.4 < took < 3
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_many_concurrent_connections(backend: EchoBackend, certs: Certificates) -> None:
    async def one(i: int) -> None:
        client = await PlainClient.connect(tunnel.port)
        for j in range(3):
            body = f"client {i} request {j}".encode()
            resp = await client.request(onem2m(f"/{MN_CSE}", body=body, ri=f"r{i}-{j}"), timeout=60)
            assert (resp.status, resp.body) == (200, body)
        await client.close()

    # as many as the tunnel and the gateway's per-credential cap allow (64), more than the gateway's handshakes in
    # progress from one source (32): the tunnel queues its handshakes, so none is refused
    gateway = await start_gateway(backend.port, certs)
    try:
        async with tunnel_to(gateway.port, client_credentials(certs)) as tunnel:
            await asyncio.gather(*(one(i) for i in range(DEFAULT_MAX_CONNECTIONS)))
            assert tunnel.accepted == DEFAULT_MAX_CONNECTIONS and tunnel.failed == 0
    finally:
        await gateway.close()
    assert len(backend.requests) == 3 * DEFAULT_MAX_CONNECTIONS


async def test_large_bodies_both_ways(gateway: Gateway, certs: Certificates) -> None:
    body = os.urandom(4 * 1024 * 1024)
    async with tunnel_to(gateway.port, client_credentials(certs)) as tunnel:
        client = await PlainClient.connect(tunnel.port)
        resp = await client.request(onem2m(f"/{MN_CSE}", body=body), timeout=60)
        assert resp.status == 200 and resp.body == body
        await client.close()


async def test_half_close_still_delivers_the_response(gateway: Gateway, certs: Certificates) -> None:
    """The plain client sends its request and shuts its sending side: the response still comes back, then EOF
    (the gateway closes after Connection: close, which ends the tunnelled connection)."""
    async with tunnel_to(gateway.port, client_credentials(certs)) as tunnel:
        reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)
        writer.write(b"GET /in-cse HTTP/1.1\r\nhost: in-cse\r\nx-m2m-origin: /mn-cse-123456\r\nx-m2m-ri: 1\r\n"
                     b"x-m2m-rvi: 3\r\nconnection: close\r\n\r\n")
        writer.write_eof()
        async with asyncio.timeout(10):
            data = await reader.read()
        writer.close()
        assert data.startswith(b"HTTP/1.1 200 ") and b"x-m2m-rsc: 2000" in data
        for _ in range(100):
            if tunnel.active == 0:
                break
            await asyncio.sleep(0.02)
        assert tunnel.active == 0


async def test_gateway_closing_closes_the_plain_side(gateway: Gateway, certs: Certificates) -> None:
    async with tunnel_to(gateway.port, client_credentials(certs)) as tunnel:
        client = await PlainClient.connect(tunnel.port)
        assert (await client.request(onem2m(f"/{MN_CSE}"))).status == 200
        await gateway.close()  # the TLS side ends
        async with asyncio.timeout(10):
            assert await client.reader.read() == b""
        await client.close()


async def test_idle_connections_are_closed(gateway: Gateway, certs: Certificates) -> None:
    async with tunnel_to(gateway.port, client_credentials(certs), idle_timeout=0.3) as tunnel:
        client = await PlainClient.connect(tunnel.port)
        assert (await client.request(onem2m(f"/{MN_CSE}"))).status == 200
        start = asyncio.get_running_loop().time()
        async with asyncio.timeout(5):
            assert await client.reader.read() == b""
        assert asyncio.get_running_loop().time() - start >= 0.25
        await client.close()
        assert tunnel.active == 0


async def test_connections_over_the_cap_are_reset_at_once(gateway: Gateway, certs: Certificates) -> None:
    async with tunnel_to(gateway.port, client_credentials(certs), max_connections=2) as tunnel:
        first, second = await PlainClient.connect(tunnel.port), await PlainClient.connect(tunnel.port)
        for c in (first, second):
            assert (await c.request(onem2m(f"/{MN_CSE}"))).status == 200
        assert await closed_without_response(tunnel.port, within=5) < 2
        assert tunnel.refused == 1
        await first.close()
        for _ in range(100):
            if tunnel.active < 2:
                break
            await asyncio.sleep(0.02)
        third = await PlainClient.connect(tunnel.port)
        assert (await third.request(onem2m(f"/{MN_CSE}"))).status == 200
        await third.close()
        await second.close()


async def test_close_ends_open_connections(gateway: Gateway, certs: Certificates) -> None:
    tunnel = tunnel_to(gateway.port, client_credentials(certs))
    await tunnel.start()
    client = await PlainClient.connect(tunnel.port)
    assert (await client.request(onem2m(f"/{MN_CSE}"))).status == 200
    await asyncio.wait_for(tunnel.close(), 5)
    async with asyncio.timeout(5):
        assert await client.reader.read() == b""
    await client.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.com"])
def test_non_loopback_listen_is_refused(host: str, certs: Certificates) -> None:
    with pytest.raises(ConfigurationError, match="unauthenticated"):
        TunnelConfig("127.0.0.1", 1, client_credentials(certs), listen_host=host).check()
    TunnelConfig("127.0.0.1", 1, client_credentials(certs), listen_host=host, allow_remote=True).check()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_listen_is_accepted(host: str, certs: Certificates) -> None:
    TunnelConfig("127.0.0.1", 1, client_credentials(certs), listen_host=host).check()


def test_idb_is_required(certs: Certificates) -> None:
    creds = CertificateCredentials(certs.mn_cse.certificate_pem(), certs.mn_cse.private_key_pem(),
                                   certs.ca.certificate_pem())
    with pytest.raises(ConfigurationError):
        Tunnel(TunnelConfig("127.0.0.1", 1, creds))


async def test_a_client_that_does_not_read_stops_the_sender(certs: Certificates) -> None:
    """Backpressure: while the plain client reads nothing, the tunnel stops reading from the TLS side, so the
    sender's writes stall once the buffers on the way are full (the tunnel does not take 64 MiB into memory);
    once the client reads, every byte arrives in order."""
    total, chunk = 64 * 1024 * 1024, 256 * 1024
    sent = 0
    done = asyncio.Event()

    async def flood(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        block = bytes(range(256)) * (chunk // 256)
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += chunk
        done.set()
        writer.close()

    server_cert = CertificateConfig(certs.gateway.certificate_pem(), certs.gateway.private_key_pem(),
                                    trust_anchors_pem=certs.ca.certificate_pem())
    context = TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), certificate=server_cert))
    server = await start_stream_server(flood, "127.0.0.1", 0, context)
    try:
        port = server.sockets[0].getsockname()[1]
        async with tunnel_to(port, client_credentials(certs)) as tunnel:
            reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)
            await asyncio.sleep(1.5)  # not reading
            stalled = sent
            assert stalled < total // 2, stalled
            received, expected_byte = 0, 0
            async with asyncio.timeout(60):
                while data := await reader.read(1 << 20):
                    assert data[0] == expected_byte % 256
                    received += len(data)
                    expected_byte += len(data)
            writer.close()
            assert received == total and done.is_set()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("tls_ended", "plain_ended", "failed", "last_upstream", "close"), [
    (True, False, False, False, True),  # the gateway closed: its answer is delivered, then both close
    (True, True, False, True, True),
    (False, False, True, None, True),  # a write failed
    (False, True, False, True, False),  # half-close right after a request: wait for the answer
    (False, True, False, False, True),  # the client closed after the last answer
    (False, True, False, None, True),  # the client closed without sending anything
    (False, False, False, True, False),  # nothing ended
])
def test_when_a_connection_ends(tls_ended: bool, plain_ended: bool, failed: bool, last_upstream: bool | None,
                                close: bool) -> None:
    assert should_close(tls_ended=tls_ended, plain_ended=plain_ended, failed=failed,
                        last_upstream=last_upstream) is close


def test_no_key_material_in_reprs(certs: Certificates) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(certs.mn_cse.private_key_pem(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    psk = TunnelConfig("127.0.0.1", 1, PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), peer_entity=IN_CSE))
    cert = TunnelConfig("127.0.0.1", 1, client_credentials(certs))
    text = repr(psk) + repr(cert) + repr(Tunnel(psk).config)
    assert_no_secret(text, [bytes.fromhex(LIGHT1_KEY), scalar])
    assert b"PRIVATE KEY" not in text.encode()
