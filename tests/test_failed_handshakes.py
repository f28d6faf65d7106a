"""Failed handshakes are rate-limited per source (issue 21 part 3, docs/decisions.md D220): real TLS and DTLS over
loopback from different source addresses (the whole 127/8 is local on Linux), wrong keys and garbage."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_ID, LIGHT1_KEY, LIGHT2_KEY, make_table, until
from m2msec.cli.gateway import prepare
from m2msec.cli.main import build_parser
from m2msec.errors import HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import DEFAULT_DTLS_MTU, ClientConfig, ServerConfig, SessionInfo, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK, ONEM2M_PSK
from m2msec.transport.dtls import DTLSServerProtocol, _ClientProtocol, start_dtls_server
from m2msec.transport.limits import DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE, ConnectionLimiter, FailureRate
from m2msec.transport.tls import TLSAdapter, start_server

SERVER = "127.0.0.1"
ATTACKER, VICTIM = "127.0.0.2", "127.0.0.3"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failure_rate_blocks_a_source_while_its_bucket_is_full() -> None:
    clock = Clock()
    rate = FailureRate(3, 10.0, clock=clock)  # each failure weighs 10/3 s and drains at 1 s/s (D229)
    for _ in range(2):
        rate.failed("a")
    assert not rate.blocked("a")
    rate.failed("a")
    assert rate.blocked("a") and not rate.blocked("b")
    assert rate.count("a") == pytest.approx(3.0)
    clock.now += 3.3  # not quite one failure's weight (10/3 s) drained: still blocked
    assert rate.blocked("a")
    clock.now += 0.04  # one failure drained: room for one more (GCRA), and no more
    assert not rate.blocked("a") and rate.count("a") == pytest.approx(2.0, abs=0.02)
    rate.failed("a")
    assert rate.blocked("a")
    rate.refund("a")  # a handshake charged at admission that completed gives its weight back (D230)
    assert not rate.blocked("a")
    clock.now += 10.0  # drained
    assert not rate.blocked("a") and "a" not in rate.debt


def test_failure_rate_memory_is_bounded_and_keeps_blocked_sources() -> None:
    clock = Clock()
    rate = FailureRate(2, 10.0, clock=clock, max_sources=8)
    for _ in range(2):
        rate.failed("blocked")
    for source in "abc":
        rate.failed(source)
    clock.now += 6  # a, b, c drained (5 s each); "blocked" drained 6 of its 10 s
    for _ in range(4):
        rate.failed("blocked")  # full again
    for source in "defghij":
        rate.failed(source)  # 8 tracked with "j": full
    assert len(rate.debt) <= 8 and "a" not in rate.debt and rate.blocked("blocked")
    for source in "klmnop":
        rate.failed(source)  # room is made from the least indebted open sources, never from a blocked one
    assert len(rate.debt) <= 8 and rate.blocked("blocked") and "p" in rate.debt
    full = FailureRate(1, 10.0, clock=clock, max_sources=2)
    full.failed("x")
    full.failed("y")
    full.failed("z")  # every tracked source is blocked: the newcomer is not tracked, nobody is forgotten
    assert set(full.debt) == {"x", "y"} and full.untracked == 1
    with pytest.raises(ValueError):
        FailureRate(0)


def test_the_limit_is_on_by_default_and_can_be_turned_off() -> None:
    assert DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE >= 100  # generous: NATs, retrying devices
    limiter = ConnectionLimiter(10)
    assert limiter.failures is not None and limiter.failures.limit == DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE
    assert ConnectionLimiter(10, failed_per_source=None).failures is None


# ------------------------------------------------------------------------------------------------ TLS


def tls_client(key: str) -> TLSContext:
    return TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(key), profiles=(ONEM2M_PSK,)))


async def tls_handshake_from(source: str, port: int, key: str = LIGHT1_KEY) -> tuple[TLSAdapter, SessionInfo]:
    loop = asyncio.get_running_loop()
    _, adapter = await loop.create_connection(lambda: TLSAdapter(tls_client(key), asyncio.Protocol), SERVER, port,
                                              local_addr=(source, 0))
    try:
        return adapter, await asyncio.wait_for(adapter.handshake, 5)
    except BaseException:
        if adapter.raw_transport is not None:
            adapter.raw_transport.close()
        raise


async def test_tls_a_source_failing_its_handshakes_is_refused_and_others_are_not() -> None:
    limiter = ConnectionLimiter(100, per_source_handshakes=8, failed_per_source=3, failure_window=1.0)
    context = TLSContext.server(ServerConfig(make_table().lookup, profiles=(ONEM2M_PSK,)))
    server = await start_server(asyncio.Protocol, SERVER, 0, context, limiter=limiter, handshake_timeout=5)
    port = server.sockets[0].getsockname()[1]
    try:
        for _ in range(2):  # wrong key: the server refuses the Finished
            with pytest.raises(HandshakeFailed):
                await tls_handshake_from(ATTACKER, port, LIGHT2_KEY)
        reader, writer = await asyncio.open_connection(SERVER, port, local_addr=(ATTACKER, 0))
        writer.write(b"\x16\x03\x01\x00\x05garbage, not a ClientHello")
        answer = await asyncio.wait_for(reader.read(), 5)  # an alert, then the close
        assert answer[:1] == b"\x15"
        writer.close()
        await until(lambda: limiter.failures is not None and limiter.failures.blocked(ATTACKER))
        # the source has used up its failures: even the right key is refused now, before any handshake
        with pytest.raises(HandshakeFailed, match="connection lost during the handshake"):
            await tls_handshake_from(ATTACKER, port)
        assert limiter.failures is not None and limiter.failures.refused == 1
        adapter, session = await tls_handshake_from(VICTIM, port)  # another source is served
        assert session.psk_identity == LIGHT1_ID
        assert adapter.raw_transport is not None
        adapter.raw_transport.close()
        # one failure's weight (1/3 s) drains: room for one handshake. A silent connection takes it while it is in
        # progress (D230: a source cannot open many handshakes each time its bucket drains by one) ...
        await until(lambda: limiter.failures is not None and not limiter.failures.blocked(ATTACKER), timeout=1.0)
        silent = socket.create_connection((SERVER, port), timeout=5, source_address=(ATTACKER, 0))
        await until(lambda: limiter.handshaking == 1)
        assert limiter.failures.blocked(ATTACKER)
        silent.close()  # ... and gives it back when it goes without a byte (D231)
        await until(lambda: limiter.handshaking == 0)
        assert not limiter.failures.blocked(ATTACKER)
        adapter, session = await tls_handshake_from(ATTACKER, port)  # the right key is served, and costs nothing
        assert session.psk_identity == LIGHT1_ID
        assert adapter.raw_transport is not None
        adapter.raw_transport.close()
        assert not limiter.failures.blocked(ATTACKER)
    finally:
        server.close()
        await server.wait_closed()
    await until(lambda: limiter.open == 0 and limiter.handshaking == 0)
    assert limiter.sources is not None and limiter.sources.held == {}


async def test_tls_a_completed_handshake_is_no_failure() -> None:
    limiter = ConnectionLimiter(100, failed_per_source=1)
    context = TLSContext.server(ServerConfig(make_table().lookup, profiles=(ONEM2M_PSK,)))
    server = await start_server(asyncio.Protocol, SERVER, 0, context, limiter=limiter)
    port = server.sockets[0].getsockname()[1]
    try:
        for _ in range(3):
            adapter, _ = await tls_handshake_from(ATTACKER, port)
            assert adapter.raw_transport is not None
            adapter.raw_transport.close()
            await until(lambda: limiter.open == 0)
        assert limiter.failures is not None and limiter.failures.debt == {}
    finally:
        server.close()
        await server.wait_closed()


# ----------------------------------------------------------------------------------------------- DTLS


class Silent(asyncio.DatagramProtocol):
    pass


async def dtls_handshake_from(source: str, port: int, key: str) -> tuple[asyncio.DatagramTransport, SessionInfo]:
    client = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(key), profiles=(ONEM2M_DTLS_PSK,),
                                                 peer_entity=HOME_GATEWAY_CSE_ID))
    loop = asyncio.get_running_loop()
    udp, proto = await loop.create_datagram_endpoint(
        lambda: _ClientProtocol(client, Silent, mtu=DEFAULT_DTLS_MTU, remote=(SERVER, port)),
        local_addr=(source, 0), remote_addr=(SERVER, port))
    try:
        return udp, await asyncio.wait_for(proto.handshake, 1.5)
    except BaseException:
        udp.close()
        raise


async def test_dtls_wrong_key_peers_are_counted_after_the_cookie_and_their_source_refused() -> None:
    context = TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(ONEM2M_DTLS_PSK,)))
    udp, proto = await start_dtls_server(Silent, SERVER, 0, context, handshake_timeout=0.3)
    assert isinstance(proto, DTLSServerProtocol)
    proto.limiter.failures = FailureRate(2, 30.0)
    port = udp.get_extra_info("sockname")[1]
    try:
        # spoofed-source ClientHellos never return the cookie: no state, nothing counted against anyone
        spoof = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        spoof.bind((ATTACKER, 0))
        for _ in range(50):
            spoof.sendto(b"\x16\xfe\xfd" + bytes(10) + b"\x00\x10" + bytes(16), (SERVER, port))
        spoof.close()
        await asyncio.sleep(0.1)
        assert proto.limiter.failures.debt == {} and proto.handshaking == 0
        for _ in range(2):  # a wrong key is answered with silence (RFC 4279 §2): the server times it out
            with pytest.raises((HandshakeFailed, TimeoutError)):
                await dtls_handshake_from(ATTACKER, port, LIGHT2_KEY)
        await until(lambda: proto.limiter.failures is not None and proto.limiter.failures.blocked(ATTACKER))
        # blocked: even the right key's ClientHello is dropped before the engine sees it (no HelloVerifyRequest)
        dropped, refused = proto.dropped, proto.limiter.failures.refused
        with pytest.raises((HandshakeFailed, TimeoutError)):
            await dtls_handshake_from(ATTACKER, port, LIGHT1_KEY)
        assert proto.dropped > dropped and proto.limiter.failures.refused > refused and proto.peers == {}
        client, session = await dtls_handshake_from(VICTIM, port, LIGHT1_KEY)
        assert session.psk_identity == LIGHT1_ID
        client.close()
    finally:
        udp.close()
    await until(lambda: proto.handshaking == 0)


# ------------------------------------------------------------------------------------------------ CLI


def _args(tmp_path: Path, *extra: str) -> list[str]:
    table = tmp_path / "psk.toml"
    table.write_text(f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\n')
    table.chmod(0o600)
    return ["gateway", "--psk-table", str(table), "--backend", "http://127.0.0.1:1", "--listen", "127.0.0.1:0",
            *extra]


def test_cli_option_reaches_the_limiter(tmp_path: Path) -> None:
    parser = build_parser()
    http, _ = prepare(parser.parse_args(_args(tmp_path)))
    assert http is not None and http.limiter.failures is not None
    assert http.limiter.failures.limit == DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE
    http, _ = prepare(parser.parse_args(_args(tmp_path, "--max-failed-handshakes-per-source", "7")))
    assert http is not None and http.limiter.failures is not None and http.limiter.failures.limit == 7
    http, _ = prepare(parser.parse_args(_args(tmp_path, "--max-failed-handshakes-per-source", "0")))
    assert http is not None and http.limiter.failures is None


def test_cli_refuses_a_negative_failure_limit(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "m2msec.cli.main",
                           *_args(tmp_path, "--max-failed-handshakes-per-source", "-1")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--max-failed-handshakes-per-source must be 0 (no limit) or more" in proc.stderr


async def test_dtls_datagrams_that_are_no_client_hello_are_dropped_unparsed() -> None:
    context = TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(ONEM2M_DTLS_PSK,)))
    udp, proto = await start_dtls_server(Silent, SERVER, 0, context, handshake_timeout=2)
    assert isinstance(proto, DTLSServerProtocol)
    port = udp.get_extra_info("sockname")[1]
    try:
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        junk.bind((ATTACKER, 0))
        junk.setblocking(False)
        # random bytes, an application-data record, a handshake record in epoch 1, one too short to be a ClientHello
        datagrams = [bytes(range(200)), b"\x17\xfe\xfd" + bytes(60), b"\x16\xfe\xfd\x00\x01" + bytes(60),
                     b"\x16\xfe\xfd" + bytes(10)]
        for datagram in datagrams * 25:
            junk.sendto(datagram, (SERVER, port))
        await until(lambda: proto.ignored == 100)
        junk.close()
        assert proto.peers == {} and proto.handshaking == 0
        client, session = await dtls_handshake_from(ATTACKER, port, LIGHT1_KEY)  # a real ClientHello still is one
        assert session.psk_identity == LIGHT1_ID and proto.ignored == 100
        client.close()
    finally:
        udp.close()


@pytest.mark.parametrize(("limit", "expected"), [(7, 7), (0, None)])
async def test_the_configs_carry_the_limit_to_both_sides(limit: int, expected: int | None) -> None:
    """An embedder sets the limit through GatewayConfig / CoapsConfig (SidePolicy), as the CLI does."""
    from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
    from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig

    http = Gateway(GatewayConfig(backend=Backend("127.0.0.1", 9), port=0, max_failed_handshakes_per_source=limit),
                   make_table())
    coaps = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=9, port=0,
                                     max_failed_handshakes_per_source=limit), make_table())
    await coaps.start()
    try:
        assert coaps.protocol is not None
        for limiter in (http.limiter, coaps.protocol.limiter):
            assert (limiter.failures.limit if limiter.failures is not None else None) == expected
    finally:
        await coaps.close()
