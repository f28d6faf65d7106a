"""One client must not hurt the others (issue 14): per-source handshake caps over real TLS and DTLS from
different loopback source addresses (the whole 127/8 is local on Linux), bounded waits and the request-body
budget of the HTTP gateway, and the file-descriptor check at start."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import h11
import pytest

from conftest import (
    HOME_GATEWAY_CSE_ID,
    LIGHT1_AE,
    LIGHT1_ID,
    LIGHT1_KEY,
    LIGHT2_AE,
    LIGHT2_ID,
    LIGHT2_KEY,
    make_table,
    until,
)
from m2msec import http1
from m2msec.errors import ConfigurationError, HandshakeFailed
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.limits import FD_HEADROOM, BodyBudget, fds_needed, fit_connection_cap
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import DEFAULT_DTLS_MTU, ClientConfig, ServerConfig, SessionInfo, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK, ONEM2M_PSK
from m2msec.transport.dtls import DTLSServerProtocol, _ClientProtocol, start_dtls_server
from m2msec.transport.limits import IPV6_SOURCE_PREFIX, SourceLimiter, source_of
from m2msec.transport.tls import ConnectionLimiter, TLSAdapter, open_connection, start_server

SERVER = "127.0.0.1"
ATTACKER, VICTIM, OTHER, FOURTH = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"


def test_source_of_aggregates_ipv6_per_64_and_unmaps_ipv4() -> None:
    assert IPV6_SOURCE_PREFIX == 64
    assert source_of(("2001:db8::1", 5000, 0, 0)) == source_of(("2001:db8::ffff:1", 6000, 0, 0)) == "2001:db8::/64"
    assert source_of(("2001:db8:0:1::1", 5000, 0, 0)) != source_of(("2001:db8::1", 5000, 0, 0))
    assert source_of(("fe80::1%eth0", 1, 0, 2)) == "fe80::/64"
    assert source_of(("::ffff:127.0.0.2", 5000, 0, 0)) == source_of(("127.0.0.2", 1)) == "127.0.0.2"
    assert source_of(("127.0.0.2", 1)) != source_of(("127.0.0.3", 1))
    limiter = SourceLimiter(2)
    assert limiter.acquire("a") and limiter.acquire("a") and not limiter.acquire("a") and limiter.acquire("b")
    limiter.release("a")
    assert limiter.acquire("a") and limiter.refused == 1
    limiter.release("a"), limiter.release("a"), limiter.release("b")
    assert limiter.held == {}


# ------------------------------------------------------------------------------------------------ TLS


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def tls_client() -> TLSContext:
    return TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_PSK,)))


async def tls_handshake_from(source: str, port: int) -> tuple[TLSAdapter, SessionInfo]:
    loop = asyncio.get_running_loop()
    _, adapter = await loop.create_connection(lambda: TLSAdapter(tls_client(), asyncio.Protocol), SERVER, port,
                                              local_addr=(source, 0))
    return adapter, await asyncio.wait_for(adapter.handshake, 5)


def stalled_tcp(source: str, port: int, count: int) -> list[socket.socket]:
    """``count`` TCP connections from ``source`` that never send a ClientHello."""
    return [socket.create_connection((SERVER, port), source_address=(source, 0)) for _ in range(count)]


async def test_tls_one_source_cannot_take_every_handshake_slot() -> None:
    limiter = ConnectionLimiter(6, per_source_handshakes=3)
    context = TLSContext.server(ServerConfig(make_table().lookup, profiles=(ONEM2M_PSK,)))
    server = await start_server(Echo, SERVER, 0, context, limiter=limiter, handshake_timeout=30)
    port = server.sockets[0].getsockname()[1]
    held: list[socket.socket] = []
    try:
        held += stalled_tcp(ATTACKER, port, 10)  # many source ports, one source address
        await until(lambda: limiter.sources is not None and limiter.sources.refused == 7 and limiter.open == 3)
        assert limiter.sources is not None and limiter.sources.held == {ATTACKER: 3}
        adapter, session = await tls_handshake_from(VICTIM, port)  # another source still gets through
        assert session.psk_identity == LIGHT1_ID and session.version.endswith("v1.2")
        assert limiter.sources.held == {ATTACKER: 3}  # an established connection holds no handshake slot
        # the global cap still holds: 3 stalled + 1 established + 2 more = 6, the 7th is reset
        held += stalled_tcp(OTHER, port, 2)
        held += stalled_tcp(FOURTH, port, 1)
        await until(lambda: limiter.refused == 1 and limiter.open == 6)
        assert limiter.sources.held == {ATTACKER: 3, OTHER: 2}
        with pytest.raises(HandshakeFailed, match="connection lost during the handshake"):
            await tls_handshake_from(FOURTH, port)
        assert adapter.raw_transport is not None
        adapter.raw_transport.close()
    finally:
        for s in held:
            s.close()
        server.close()
        await server.wait_closed()
    await until(lambda: limiter.open == 0)
    assert limiter.sources.held == {}


# ----------------------------------------------------------------------------------------------- DTLS


def dtls_client() -> TLSContext:
    return TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_DTLS_PSK,),
                                               peer_entity=HOME_GATEWAY_CSE_ID))


class Silent(asyncio.DatagramProtocol):
    pass


async def stalled_dtls(source: str, port: int, count: int) -> list[socket.socket]:
    """``count`` DTLS clients from ``source`` that return the cookie, then never finish their handshake."""
    loop = asyncio.get_running_loop()
    sockets = []
    for _ in range(count):
        conn = dtls_client().dtls_connection((SERVER, port))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(s)
        s.setblocking(False)
        s.bind((source, 0))
        s.connect((SERVER, port))
        s.send(conn.datagrams_to_send()[0])
        conn.receive_datagram(await asyncio.wait_for(loop.sock_recv(s, 2048), 2))  # HelloVerifyRequest
        s.send(conn.datagrams_to_send()[0])  # ClientHello with the cookie: the server keeps state now
    return sockets


async def dtls_handshake_from(source: str, port: int) -> tuple[asyncio.DatagramTransport, SessionInfo]:
    loop = asyncio.get_running_loop()
    udp, proto = await loop.create_datagram_endpoint(
        lambda: _ClientProtocol(dtls_client(), Silent, mtu=DEFAULT_DTLS_MTU, remote=(SERVER, port)),
        local_addr=(source, 0), remote_addr=(SERVER, port))
    try:
        return udp, await asyncio.wait_for(proto.handshake, 3)
    except BaseException:
        udp.close()
        raise


async def test_dtls_one_source_cannot_take_every_handshake_slot() -> None:
    context = TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(ONEM2M_DTLS_PSK,)))
    udp, proto = await start_dtls_server(Silent, SERVER, 0, context, max_handshaking=6,
                                         max_handshaking_per_source=3, handshake_timeout=30)
    assert isinstance(proto, DTLSServerProtocol)
    port = udp.get_extra_info("sockname")[1]
    held: list[socket.socket] = []
    try:
        held += await stalled_dtls(ATTACKER, port, 10)
        await until(lambda: proto.sources.refused == 7)
        assert proto.handshaking == 3 and proto.sources.held == {ATTACKER: 3}
        client, session = await dtls_handshake_from(VICTIM, port)
        assert session.psk_identity == LIGHT1_ID and session.version.endswith("v1.2")
        assert proto.handshaking == 3 and proto.sources.held == {ATTACKER: 3}
        # the global cap still holds: 3 + 3 from a third source fill it, a fourth source is dropped
        held += await stalled_dtls(OTHER, port, 3)
        await until(lambda: proto.handshaking == 6)
        dropped = proto.dropped
        held += await stalled_dtls(FOURTH, port, 1)
        await until(lambda: proto.dropped == dropped + 1)
        assert proto.handshaking == 6 and FOURTH not in proto.sources.held
        client.close()
    finally:
        for s in held:
            s.close()
        udp.close()
    await until(lambda: proto.handshaking == 0)
    assert proto.sources.held == {}


async def test_tls_open_connections_are_capped_per_source_and_per_credential() -> None:
    limiter = ConnectionLimiter(10, per_source_connections=3, per_sa=2)  # D47
    context = TLSContext.server(ServerConfig(make_table().lookup, profiles=(ONEM2M_PSK,)))
    server = await start_server(Echo, SERVER, 0, context, limiter=limiter, handshake_timeout=30)
    port = server.sockets[0].getsockname()[1]
    held: list[socket.socket] = []
    adapters: list[TLSAdapter] = []
    try:
        for _ in range(2):
            adapters.append((await tls_handshake_from(ATTACKER, port))[0])
        assert limiter.per_sa is not None and limiter.per_sa.held == {f"psk:{LIGHT1_ID}": 2}
        third, _ = await tls_handshake_from(ATTACKER, port)  # the handshake completes, then the server closes
        adapters.append(third)
        await until(lambda: limiter.open == 2 and third.raw_transport is None)
        assert limiter.per_sa.refused == 1 and limiter.per_sa.held == {f"psk:{LIGHT1_ID}": 2}
        held += stalled_tcp(ATTACKER, port, 3)  # 2 open + 1: the source's cap; the other 2 are reset
        assert limiter.open_per_source is not None
        await until(lambda: limiter.open_per_source is not None and limiter.open_per_source.refused == 2)
        assert limiter.open_per_source.held == {ATTACKER: 3} and limiter.open == 3
        held += stalled_tcp(VICTIM, port, 1)  # another source still gets a slot
        await until(lambda: limiter.open == 4)
    finally:
        for s in held:
            s.close()
        for adapter in adapters:
            if adapter.raw_transport is not None:
                adapter.raw_transport.close()
        server.close()
        await server.wait_closed()
    await until(lambda: limiter.open == 0)
    assert limiter.per_sa.held == {} and limiter.open_per_source.held == {}


async def test_dtls_peers_are_capped_per_source_and_per_credential() -> None:
    context = TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(ONEM2M_DTLS_PSK,)))
    udp, proto = await start_dtls_server(Silent, SERVER, 0, context, max_peers=10, max_peers_per_source=3,
                                         max_peers_per_sa=2, handshake_timeout=30)
    assert isinstance(proto, DTLSServerProtocol)
    port = udp.get_extra_info("sockname")[1]
    clients: list[asyncio.DatagramTransport] = []
    held: list[socket.socket] = []
    try:
        for _ in range(3):  # the third completes its handshake and is dropped at once: its credential has 2
            clients.append((await dtls_handshake_from(ATTACKER, port))[0])
        await until(lambda: proto.peer_sas.refused == 1)
        assert len(proto.peers) == 2 and proto.peer_sas.held == {f"psk:{LIGHT1_ID}": 2}
        assert proto.peer_sources.held == {ATTACKER: 2}
        held += await stalled_dtls(ATTACKER, port, 1)  # the source's third peer
        dropped = proto.dropped
        conn = dtls_client().dtls_connection((SERVER, port))  # a fourth: dropped once its cookie is back
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        held.append(s)
        s.setblocking(False)
        s.bind((ATTACKER, 0))
        s.connect((SERVER, port))
        s.send(conn.datagrams_to_send()[0])
        conn.receive_datagram(await asyncio.wait_for(asyncio.get_running_loop().sock_recv(s, 2048), 2))
        s.send(conn.datagrams_to_send()[0])
        await until(lambda: proto.dropped == dropped + 1)
        assert proto.peer_sources.refused == 1 and proto.peer_sources.held == {ATTACKER: 3}
    finally:
        for c in clients:
            c.close()
        for s in held:
            s.close()
        udp.close()
    await until(lambda: proto.peer_sources.held == {} and proto.peer_sas.held == {})


def test_body_budget_takes_memory_back_from_the_client_holding_most() -> None:
    budget = BodyBudget(1000)  # D46
    evicted: list[str] = []
    hog1 = budget.lease("psk:light1", lambda: evicted.append("hog1"))
    hog2 = budget.lease("psk:light1", lambda: evicted.append("hog2"))
    assert budget.reserve(600, hog1) and budget.reserve(400, hog2)
    assert not budget.reserve(1, hog2) and evicted == []  # light 1 holds the most: its own requests are refused
    victim = budget.lease("psk:light2", lambda: evicted.append("victim"))
    assert budget.reserve(100, victim)  # light 2 holds nothing: light 1's largest connection gives way
    assert evicted == ["hog1"] and hog1.evicted and hog1.size == 0 and budget.used == 500
    assert not budget.reserve(10, hog1)  # an evicted connection takes nothing more
    budget.release(600, hog1)  # its reader gives back what it thought it held: nothing is counted twice
    assert budget.used == 500 and budget.held_by("psk:light1") == 400
    assert budget.reserve(500, victim) and budget.used == 1000  # free memory first, no eviction
    assert not budget.reserve(1, victim) and evicted == ["hog1"]  # light 2 now holds more (600 > 400)
    for lease in (hog1, hog2, victim):
        budget.close(lease)
    assert budget.used == 0 and budget.leases == set()


# ------------------------------------------------------------------------------- the HTTP gateway's bounds


def psk_client() -> TLSContext:
    return TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), peer_entity=HOME_GATEWAY_CSE_ID))


class CSE:
    """A real HTTP server on loopback standing in for the CSE: answers ``body_size`` bytes, or never reads."""

    def __init__(self, body_size: int = 100, *, reads: bool = True) -> None:
        self.body_size, self.reads = body_size, reads
        self.server: asyncio.Server | None = None
        self.seen: list[int] = []  # body sizes received
        self.tasks: set[asyncio.Task[object]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            if not self.reads:
                await asyncio.sleep(3600)
            conn = h11.Connection(h11.SERVER)
            req = await http1.read_message(conn, reader, max_body=64 * 1024 * 1024)
            if req is not None:
                self.seen.append(len(req.body))
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("x-m2m-rsc", "2000"), ("x-m2m-ri", req.header("x-m2m-ri") or "")],
                    body=b"r" * self.body_size, status=200))
        except (http1.HTTPError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.handle, SERVER, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def gateway_for(backend_port: int, **kw: object) -> Gateway:
    gw = Gateway(GatewayConfig(backend=Backend(SERVER, backend_port), port=0, **kw), make_table())  # type: ignore[arg-type]
    await gw.start()
    return gw


def request_head(body_size: int) -> bytes:
    return (f"POST /{HOME_GATEWAY_CSE_ID} HTTP/1.1\r\nhost: x\r\nx-m2m-origin: {LIGHT1_AE}\r\nx-m2m-ri: r1\r\n"
            f"content-length: {body_size}\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> http1.Message:
    resp = await asyncio.wait_for(http1.read_message(h11.Connection(h11.CLIENT), reader), 10)
    assert resp is not None
    return resp


class Stalled(asyncio.Protocol):
    """Sends one request once the handshake is done, then stops reading: a client that never reads its response."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(request_head(0))  # type: ignore[attr-defined]
        transport.pause_reading()  # type: ignore[attr-defined]


async def test_client_that_does_not_read_its_response_is_dropped_after_the_write_timeout() -> None:
    async with CSE(body_size=48 * 1024 * 1024) as cse_port:  # far more than the socket buffers hold
        gw = await gateway_for(cse_port, write_timeout=0.5, max_body=64 * 1024 * 1024)
        try:
            loop = asyncio.get_running_loop()
            _, adapter = await loop.create_connection(lambda: TLSAdapter(psk_client(), Stalled), SERVER, gw.port)
            await asyncio.wait_for(adapter.handshake, 5)
            await until(lambda: len(gw._clients) == 1)
            # the response cannot be delivered: within the write timeout (plus the forwarding) the gateway gives up,
            # aborts the connection (close would keep the unread megabytes buffered) and frees its slot
            await until(lambda: not gw._clients and gw.limiter.open == 0, timeout=15)
            assert adapter.raw_transport is not None
            adapter.raw_transport.abort()
        finally:
            await gw.close()


async def test_stalled_responses_count_in_the_body_memory_and_yield_to_another_client() -> None:
    size = 16 * 1024 * 1024  # far more than the socket buffers hold: the response waits in the gateway
    async with CSE(body_size=size) as cse_port:
        gw = await gateway_for(cse_port, write_timeout=30, max_body=2 * size, max_body_memory=size + size // 2)
        adapters: list[TLSAdapter] = []
        try:
            loop = asyncio.get_running_loop()
            for _ in range(2):  # Light 1 GETs twice and never reads
                _, adapter = await loop.create_connection(lambda: TLSAdapter(psk_client(), Stalled), SERVER,
                                                          gw.port)
                adapters.append(adapter)
                await asyncio.wait_for(adapter.handshake, 5)
                await until(lambda: gw.body_budget.used == size or gw.body_budget.refused == 1, timeout=10)
            # one response is held (counted until read, D46), the other did not fit: 503 for Light 1
            await until(lambda: gw.body_budget.refused == 1 and gw.body_budget.used == size, timeout=10)
            r, w, _ = await open_connection(SERVER, gw.port, TLSContext.client(ClientConfig(
                LIGHT2_ID, SecretKey.from_hex(LIGHT2_KEY), peer_entity=HOME_GATEWAY_CSE_ID)))
            w.write((f"GET /{HOME_GATEWAY_CSE_ID} HTTP/1.1\r\nhost: x\r\nx-m2m-origin: {LIGHT2_AE}\r\n"
                     "x-m2m-ri: r2\r\n\r\n").encode())
            resp = await asyncio.wait_for(http1.read_message(h11.Connection(h11.CLIENT), r, max_body=2 * size), 20)
            assert resp is not None and resp.status == 200 and len(resp.body) == size  # Light 2 is served
            assert gw.body_budget.evicted == 1  # Light 1's stalled response gave way: its connection was dropped
            await until(lambda: gw.body_budget.used == 0 and gw.limiter.open == 2, timeout=10)  # Light 1 has one left
            w.close()
        finally:
            for adapter in adapters:
                if adapter.raw_transport is not None:
                    adapter.raw_transport.abort()
            await gw.close()


async def test_request_body_memory_is_capped_across_connections() -> None:
    async with CSE() as cse_port:
        gw = await gateway_for(cse_port, max_body=8000, max_body_memory=10000)
        try:
            r1, w1, _ = await open_connection(SERVER, gw.port, psk_client())
            w1.write(request_head(8000) + b"a" * 6000)  # holds 6000 bytes of the budget, body unfinished
            await until(lambda: gw.body_budget.used == 6000)
            r2, w2, _ = await open_connection(SERVER, gw.port, psk_client())
            w2.write(request_head(5000) + b"b" * 5000)  # fine alone, but 6000 + 5000 > 10000
            busy = await read_response(r2)
            assert busy.status == 503 and busy.header("x-m2m-rsc") == "5000"
            assert busy.header("retry-after") == "1" and busy.header("connection") == "close"
            w1.write(b"a" * 2000)  # the first request completes and is forwarded
            ok = await read_response(r1)
            assert ok.status == 200 and ok.header("x-m2m-rsc") == "2000"
            await until(lambda: gw.body_budget.used == 0)  # released once answered
            r3, w3, _ = await open_connection(SERVER, gw.port, psk_client())
            w3.write(request_head(5000) + b"c" * 5000)
            assert (await read_response(r3)).status == 200
            for w in (w1, w2, w3):
                w.close()
            await asyncio.sleep(0.05)
        finally:
            await gw.close()
    assert gw.body_budget.used == 0 and gw.body_budget.refused == 1


async def test_a_client_stalling_mid_body_gives_its_budget_back_on_idle_timeout() -> None:
    async with CSE() as cse_port:
        gw = await gateway_for(cse_port, max_body=8000, max_body_memory=10000, idle_timeout=0.5)
        try:
            _, w1, _ = await open_connection(SERVER, gw.port, psk_client())
            w1.write(request_head(8000) + b"a" * 6000)
            await until(lambda: gw.body_budget.used == 6000)
            await until(lambda: gw.body_budget.used == 0 and not gw._clients, timeout=5)
            w1.close()
        finally:
            await gw.close()


async def test_a_cse_that_does_not_read_is_bounded_by_the_backend_timeout() -> None:
    async with CSE(reads=False) as cse_port:
        gw = await gateway_for(cse_port, backend_timeout=0.5, max_body=16 * 1024 * 1024)
        try:
            r, w, _ = await open_connection(SERVER, gw.port, psk_client())
            w.write(request_head(12 * 1024 * 1024) + b"x" * (12 * 1024 * 1024))
            resp = await read_response(r)
            assert resp.status == 404 and resp.header("x-m2m-rsc") == "5103"  # TARGET_NOT_REACHABLE
            await until(lambda: gw.body_budget.used == 0)
            w.close()
        finally:
            await gw.close()


# ------------------------------------------------------------------------------------ descriptors at start


class RLimits:
    def __init__(self, soft: int, hard: int) -> None:
        self.soft, self.hard = soft, hard

    def get(self, _: int) -> tuple[int, int]:
        return self.soft, self.hard

    def set(self, _: int, limits: tuple[int, int]) -> None:
        self.soft, self.hard = limits


def test_fd_check_raises_the_soft_limit_lowers_a_default_and_refuses_an_explicit_cap() -> None:
    fake = RLimits(1024, 100_000)
    assert fit_connection_cap(10_000, 10_000, 0, getrlimit=fake.get, setrlimit=fake.set) == 10_000
    assert fake.soft == fds_needed(10_000, 0) == 2 * 10_000 + FD_HEADROOM  # raised towards the hard limit
    fake = RLimits(1024, 4096)
    with pytest.raises(ConfigurationError, match=r"--max-connections need up to 20064 file descriptors but the "
                                                 r"limit is 1024 \(hard 4096\)"):
        fit_connection_cap(10_000, 10_000, 0, getrlimit=fake.get, setrlimit=fake.set)
    assert fit_connection_cap(None, 10_000, 1000, getrlimit=fake.get, setrlimit=fake.set) == (4096 - 64 - 1000) // 2
    assert fake.soft == 4096
    with pytest.raises(ConfigurationError, match="coaps peer cap"):
        fit_connection_cap(0, 10_000, 5000, getrlimit=fake.get, setrlimit=fake.set)


def _low_fd_limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def gateway_args(tmp_path: Path) -> list[str]:
    table = tmp_path / "psk.toml"
    table.write_text(f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\n')
    table.chmod(0o600)
    return [sys.executable, "-m", "m2msec.cli.main", "gateway", "--psk-table", str(table), "--backend",
            "http://127.0.0.1:1", "--listen", "127.0.0.1:0"]


def test_cli_refuses_max_connections_above_the_fd_limit(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*gateway_args(tmp_path), "--max-connections", "200"],
        capture_output=True, text=True, timeout=60, preexec_fn=_low_fd_limit,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--max-connections need up to 464 file descriptors but the limit is 256" in proc.stderr


@pytest.mark.parametrize("flag", ["--max-connections-per-source", "--max-connections-per-sa"])
def test_cli_refuses_a_per_client_connection_cap_below_one(tmp_path: Path, flag: str) -> None:
    proc = subprocess.run([*gateway_args(tmp_path), flag, "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"{flag} must be at least 1" in proc.stderr


def test_gateway_options_reach_the_connection_limiter() -> None:
    gw = Gateway(GatewayConfig(backend=Backend(SERVER, 1), port=0, max_connections=100,
                               max_connections_per_source=7, max_connections_per_sa=80), make_table())
    assert gw.limiter.open_per_source is not None and gw.limiter.open_per_source.limit == 7
    assert gw.limiter.per_sa is not None and gw.limiter.per_sa.limit == 50  # at most half of the slots (D47)


def test_cli_lowers_the_default_max_connections_to_the_fd_limit(tmp_path: Path) -> None:
    gw = subprocess.Popen(
        gateway_args(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_low_fd_limit,
    )
    try:
        assert gw.stdout is not None and gw.stderr is not None
        line = gw.stdout.readline()
        assert line.startswith("m2msec gateway on 127.0.0.1:"), gw.stderr.read()
    finally:
        gw.terminate()
        _, err = gw.communicate(timeout=10)
    assert f"--max-connections lowered to {(256 - FD_HEADROOM) // 2}" in err


# ------------------------------------------------------------------ --reveal-unknown-psk-identity, end to end


async def test_gateway_process_hides_unknown_identities_unless_told_to_reveal(tmp_path: Path) -> None:
    stranger = TLSContext.client(ClientConfig("nobody@in.provider.com", SecretKey.from_hex(LIGHT1_KEY),
                                              peer_entity=HOME_GATEWAY_CSE_ID))
    alerts = []
    for extra in ([], ["--reveal-unknown-psk-identity"]):
        gw = subprocess.Popen([*gateway_args(tmp_path), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        try:
            assert gw.stdout is not None
            line = await asyncio.to_thread(gw.stdout.readline)
            assert line.startswith("m2msec gateway on 127.0.0.1:"), line
            port = int(line.split()[3].rsplit(":", 1)[1])
            with pytest.raises(HandshakeFailed) as info:
                await open_connection(SERVER, port, stranger, handshake_timeout=5)
            alerts.append(info.value.alert)
        finally:
            gw.terminate()
            _, err = await asyncio.to_thread(gw.communicate, timeout=10)
        assert "'nobody@in.provider.com'" in err and "unknown psk identity" in err  # the gateway logs the truth
    assert alerts == ["bad_record_mac", "unknown_psk_identity"]


async def test_coaps_gateway_reveal_option_reaches_the_dtls_server() -> None:
    from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
    from m2msec.transport.dtls import create_dtls_endpoint

    stranger = TLSContext.dtls_client(ClientConfig("nobody@x.com", SecretKey.from_hex(LIGHT1_KEY),
                                                   profiles=(ONEM2M_DTLS_PSK,), peer_entity=HOME_GATEWAY_CSE_ID))
    gw = CoapsGateway(CoapsConfig(backend_host=SERVER, port=0, reveal_unknown_psk_identity=True,
                                  max_handshaking_per_source=7, max_peers=40, max_peers_per_source=9,
                                  max_peers_per_sa=30), make_table())
    await gw.start()
    try:
        assert gw.protocol is not None and gw.protocol.sources.limit == 7
        assert gw.protocol.peer_sources.limit == 9 and gw.protocol.peer_sas.limit == 20  # half of max_peers (D47)
        with pytest.raises(HandshakeFailed) as info:
            await create_dtls_endpoint(Silent, SERVER, gw.port, stranger, handshake_timeout=5)
        assert info.value.alert == "unknown_psk_identity"
    finally:
        await gw.close()


def test_a_lease_whose_request_is_at_the_cse_is_never_evicted() -> None:
    """D46: once a connection's request was forwarded, evicting it would answer 503 Retry-After ("retry") for a
    request the CSE executed; the requester is refused instead."""
    budget = BodyBudget(10000)
    evicted: list[str] = []
    big = budget.lease("psk:light2", lambda: evicted.append("light2"))
    assert budget.reserve(6000, big)
    big.forwarded = True
    small = budget.lease("psk:light1", lambda: evicted.append("light1"))
    assert not budget.reserve(5000, small)
    assert evicted == [] and not big.evicted and budget.used == 6000
    big.forwarded = False  # its response read: evictable again while it is written
    assert budget.reserve(5000, small)
    assert evicted == ["light2"] and big.evicted
