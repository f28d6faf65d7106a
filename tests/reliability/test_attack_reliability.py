"""Hostile review of issue 21's defences (rel-review): the failed-handshake rate limit (D220), the DTLS junk filter,
the HTTP framing refusals (D225/D226) and the CoAP option refusals (D227/D228).

xfail(strict) tests are confirmed problems (the report ranks them L1..); plain tests are attacks that were refused
and are worth keeping. Real TLS over loopback (127/8 gives distinct source addresses) where the defence is a socket
path; the pure function where the defence is one.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest
from test_http_smuggling import RecordingCSE, cse, exchange, gateway, req  # noqa: F401 (fixtures)

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_ID, LIGHT1_KEY, LIGHT2_KEY, make_table, until
from m2msec.capif.invoker_folder import INFO
from m2msec.capif.invoker_folder import load as load_invoker
from m2msec.errors import ConfigurationError, HandshakeFailed, StorageError
from m2msec.gateway.coap import (
    BLOCK2,
    KNOWN_CRITICAL_OPTIONS,
    LOCATION_PATH,
    NON_REPEATABLE_OPTIONS,
    URI_PATH,
    URI_QUERY,
    CoAPFormatError,
    Message,
    MessageType,
    check_repeats,
    make_code,
)
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.store.records import _load as load_record_fields
from m2msec.tls.engine import DEFAULT_DTLS_MTU, ClientConfig, ServerConfig, SessionInfo, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK, ONEM2M_PSK
from m2msec.transport.dtls import DTLSServerProtocol, start_dtls_server
from m2msec.transport.dtls_records import is_initial_client_hello, without_plaintext_alerts
from m2msec.transport.limits import ConnectionLimiter, FailureRate, source_of
from m2msec.transport.tls import TLSAdapter, open_connection, start_server

SERVER = "127.0.0.1"
ETAG = 4  # RFC 7252 §5.10.6, Repeatable in a request
NAT = "127.0.0.2"  # one public address shared by an attacker and a legitimate device (carrier NAT, L4 balancer)


async def handshake_from(source: str, port: int, key: str) -> tuple[TLSAdapter, SessionInfo]:
    ctx = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(key), profiles=(ONEM2M_PSK,)))
    loop = asyncio.get_running_loop()
    _, adapter = await loop.create_connection(lambda: TLSAdapter(ctx, asyncio.Protocol), SERVER, port,
                                              local_addr=(source, 0))
    try:
        return adapter, await asyncio.wait_for(adapter.handshake, 5)
    except BaseException:
        if adapter.raw_transport is not None:
            adapter.raw_transport.close()
        raise


async def succeeds(source: str, port: int) -> bool:
    try:
        adapter, session = await handshake_from(source, port, LIGHT1_KEY)
    except (HandshakeFailed, ConnectionError, TimeoutError):
        return False
    assert session.psk_identity == LIGHT1_ID and adapter.raw_transport is not None
    adapter.raw_transport.close()
    return True


async def psk_server(limiter: ConnectionLimiter) -> asyncio.Server:
    context = TLSContext.server(ServerConfig(make_table().lookup, profiles=(ONEM2M_PSK,)))
    return await start_server(asyncio.Protocol, SERVER, 0, context, limiter=limiter, handshake_timeout=5)


# ------------------------------------------------------------------ D220: the failed-handshake limit, lock-out


async def test_l2_a_device_behind_a_failing_nat_is_served_once_one_failure_has_drained() -> None:
    """L2 as resolved after the second review (R1): before a handshake the source address is all there is, so a
    device behind the same NAT as a failing client shares its bucket. It is refused while the bucket is full, and
    served as soon as one failure's weight (window / limit) has drained, not at the end of a fixed window (D229)."""
    limiter = ConnectionLimiter(100, failed_per_source=3, failure_window=1.5)  # one failure drains in 0.5 s
    server = await psk_server(limiter)
    port = server.sockets[0].getsockname()[1]
    try:
        for _ in range(3):  # the attacker's wrong-key handshakes, from the shared address
            with pytest.raises(HandshakeFailed):
                await handshake_from(NAT, port, LIGHT2_KEY)
        await until(lambda: limiter.failures is not None and limiter.failures.blocked(NAT))
        assert not await succeeds(NAT, port), "the bucket is full: the shared address is refused"
        await until(lambda: limiter.failures is not None and not limiter.failures.blocked(NAT), timeout=1.0)
        assert await succeeds(NAT, port), "a device with the right key, behind the same NAT, is refused"
    finally:
        server.close()
        await server.wait_closed()


async def test_l4_a_tcp_health_check_is_no_failed_handshake() -> None:
    limiter = ConnectionLimiter(100, failed_per_source=300)
    server = await psk_server(limiter)
    port = server.sockets[0].getsockname()[1]
    try:
        for _ in range(5):
            probe = socket.create_connection((SERVER, port), timeout=5, source_address=(NAT, 0))
            probe.close()
        await asyncio.sleep(0.5)  # every probe accepted and gone
        assert limiter.open == 0
        assert limiter.failures is not None and limiter.failures.debt == {}, limiter.failures.debt
    finally:
        server.close()
        await server.wait_closed()


async def test_a_device_that_fails_once_and_retries_with_the_right_key_is_served() -> None:
    limiter = ConnectionLimiter(100, failed_per_source=3, failure_window=30.0)
    server = await psk_server(limiter)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(HandshakeFailed):
            await handshake_from(NAT, port, LIGHT2_KEY)
        assert await succeeds(NAT, port)
        assert await succeeds(NAT, port)
        assert limiter.failures is not None and limiter.failures.count(NAT) == pytest.approx(1, abs=0.01)
    finally:
        server.close()
        await server.wait_closed()


# ------------------------------------------------------------------ D220: evasion


def test_l3_a_blocked_source_stays_blocked_while_other_sources_fail() -> None:
    rate = FailureRate(3)  # the defaults: 60 s window, FAILED_HANDSHAKE_SOURCES sources
    attacker = source_of(("2001:db8:0:1::7", 443))
    for _ in range(3):
        rate.failed(attacker)
    assert rate.blocked(attacker)
    prefix_48 = [source_of((f"2001:db8:1:{i:x}::1", 443)) for i in range(65536)]
    assert len(set(prefix_48)) == 65536  # one customer's /48 is 65,536 distinct sources (the /64 granularity)
    for source in prefix_48:
        rate.failed(source)
    assert rate.blocked(attacker)


def test_l5_no_more_than_the_limit_of_failures_in_any_window_long_span() -> None:
    clock = [100.0]
    rate = FailureRate(300, 60.0, clock=lambda: clock[0])

    def burst() -> int:
        n = 0
        while not rate.blocked("a"):
            rate.failed("a")
            n += 1
        return n

    rate.failed("a")  # one failure opens the window at t=100
    clock[0] = 159.95
    first = burst()
    clock[0] = 160.0  # 50 ms later the window is over
    second = burst()
    assert first + second <= rate.limit, f"{first + second} failures within 50 ms"


# ------------------------------------------------------------------ D220 over DTLS: an off-path spoofer


class Silent(asyncio.DatagramProtocol):
    pass


FATAL_ALERT = b"\x15\xfe\xfd\x00\x00" + b"\x00\x00\x00\x00\x00\x63" + b"\x00\x02" + b"\x02\x28"  # epoch 0


async def dtls_handshake_by_hand(spoofed: bytes | None) -> tuple[dict[str, float], bool]:
    """A victim's handshake driven by hand from a UDP socket of 127.0.0.3: cookie exchange done, the server's flight
    received; then ``spoofed`` (a datagram the victim never sent: an off-path attacker spoofing its address and port,
    which the server cannot tell from one sent on the victim's socket, which is how it is sent here), then the
    victim's own next flight. The failures counted per source once it is over, and whether the handshake completed."""
    context = TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(ONEM2M_DTLS_PSK,)))
    udp, proto = await start_dtls_server(Silent, SERVER, 0, context, handshake_timeout=5)
    assert isinstance(proto, DTLSServerProtocol)
    failures = proto.limiter.failures = FailureRate(2, 30.0)
    server = (SERVER, udp.get_extra_info("sockname")[1])
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.3", 0))
    victim.setblocking(False)
    loop = asyncio.get_running_loop()
    client = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_DTLS_PSK,),
                                                 peer_entity=HOME_GATEWAY_CSE_ID))
    conn = client.dtls_connection(server, mtu=DEFAULT_DTLS_MTU)

    def send() -> None:
        for datagram in conn.datagrams_to_send():
            victim.sendto(datagram, server)

    async def receive() -> bytes:
        return await asyncio.wait_for(loop.sock_recv(victim, 65536), 2)

    try:
        send()  # ClientHello
        conn.receive_datagram(await receive())  # HelloVerifyRequest
        send()  # ClientHello with the cookie: the server keeps a peer now
        flight = await receive()
        assert len(proto.peers) == 1
        if spoofed is not None:
            victim.sendto(spoofed, server)
        await asyncio.sleep(0.2)
        conn.receive_datagram(flight)
        send()  # the victim's own next flight
        try:
            events = conn.receive_datagram(await receive())
            completed = any(type(e).__name__ == "HandshakeCompleted" for e in events)
        except (HandshakeFailed, TimeoutError):
            completed = False
        await asyncio.sleep(0.1)
        return dict(failures.debt), completed  # a handshake in progress holds a charge until it ends (D230)
    finally:
        victim.close()
        udp.close()


async def test_the_hand_driven_dtls_handshake_completes_without_a_spoofed_datagram() -> None:
    assert await dtls_handshake_by_hand(None) == ({}, True)


async def test_l1_a_spoofed_alert_neither_aborts_a_dtls_handshake_nor_counts_against_its_source() -> None:
    counted, completed = await dtls_handshake_by_hand(FATAL_ALERT)
    assert counted == {}, f"the spoofed datagram counted against the victim's source: {counted}"
    assert completed, "the victim's handshake was aborted"


# ------------------------------------------------------------------ the DTLS junk filter


def dtls_record(content_type: int, version: bytes, epoch: int, body: bytes) -> bytes:
    return bytes([content_type]) + version + struct.pack("!H", epoch) + b"\0" * 6 + struct.pack("!H", len(body)) + body


def client_hello_fragment(msg_seq: int, offset: int, total: int, fragment: bytes) -> bytes:
    return (b"\x01" + total.to_bytes(3, "big") + struct.pack("!H", msg_seq) + offset.to_bytes(3, "big")
            + len(fragment).to_bytes(3, "big") + fragment)


@pytest.mark.parametrize("version", [b"\xfe\xff", b"\xfe\xfd"], ids=["dtls1.0-record", "dtls1.2-record"])
def test_the_dtls_filter_keeps_every_form_of_client_hello(version: bytes) -> None:
    body = b"\xfe\xfd" + b"\x11" * 40
    whole = dtls_record(22, version, 0, client_hello_fragment(0, 0, len(body), body))
    retransmitted_with_cookie = dtls_record(22, version, 0, client_hello_fragment(1, 0, len(body), body))
    second_fragment = dtls_record(22, version, 0, client_hello_fragment(0, 20, len(body), body[20:]))
    assert is_initial_client_hello(whole)
    assert is_initial_client_hello(retransmitted_with_cookie)
    assert is_initial_client_hello(second_fragment)  # a ClientHello split over records: its later part too
    assert not is_initial_client_hello(dtls_record(23, version, 1, b"\x00" * 40))  # epoch-1 data of a lost peer
    assert not is_initial_client_hello(dtls_record(21, version, 0, b"\x02\x28" + b"\0" * 20))  # an alert


def test_plaintext_alerts_are_cut_out_of_a_datagram_and_nothing_else() -> None:
    hello = dtls_record(22, b"\xfe\xfd", 0, client_hello_fragment(2, 0, 4, b"abcd"))
    alert = dtls_record(21, b"\xfe\xfd", 0, b"\x02\x28")
    protected_alert = dtls_record(21, b"\xfe\xfd", 1, b"\x99" * 26)  # epoch 1: the engine authenticates it
    assert without_plaintext_alerts(alert) == b""
    assert without_plaintext_alerts(alert + hello + alert) == hello
    assert without_plaintext_alerts(hello + protected_alert) == hello + protected_alert
    truncated = alert[:-1]  # a record longer than the datagram: left whole for the engine to refuse
    assert without_plaintext_alerts(hello + truncated) == hello + truncated


# ------------------------------------------------------------------ CoAP: D227 / D228


def coap_request(*options: tuple[int, bytes]) -> Message:
    return Message(MessageType.CON, make_code(0, 1), 1, b"t", list(options))


def test_repeatable_and_elective_options_still_pass() -> None:
    check_repeats(coap_request((URI_PATH, b"cse"), (URI_PATH, b"ae"), (URI_QUERY, b"a=1"), (URI_QUERY, b"b=2"),
                               (1, b"e1"), (1, b"e2"), (ETAG, b"x"), (ETAG, b"y"),
                               (LOCATION_PATH, b"a"), (LOCATION_PATH, b"b")))
    # elective options nobody here knows (Observe 6, Echo 252, No-Response 258, Request-Tag 292, a private 2048)
    check_repeats(coap_request((6, b""), (252, b"e"), (258, b"\x02"), (292, b"r"), (2048, b"v"), (2048, b"w")))
    # every oneM2M option once, as a CSE or AE sends them
    check_repeats(coap_request(*((n, b"1") for n in sorted(NON_REPEATABLE_OPTIONS))))
    assert BLOCK2 in KNOWN_CRITICAL_OPTIONS


@pytest.mark.parametrize("number", [9, 19, 31, 35, 39, 341])
def test_unknown_critical_and_proxy_options_are_refused(number: int) -> None:
    with pytest.raises(CoAPFormatError):
        check_repeats(coap_request((URI_PATH, b"cse"), (number, b"v")))


# ------------------------------------------------------------------ HTTP framing: D225 / D226 variants


FRAMING_REFUSED: list[tuple[str, bytes]] = [
    ("te chunked, identity", req("te-ci", "Transfer-Encoding: chunked, identity", method="POST", body=b"0\r\n\r\n")),
    ("te Chunked with a content-length", req("te-case", "Content-Length: 5", "Transfer-Encoding: Chunked",
                                              method="POST", body=b"0\r\n\r\n")),
    ("te with a tab and a content-length", req("te-tab", "Content-Length: 5", "Transfer-Encoding:\tchunked",
                                                method="POST", body=b"0\r\n\r\n")),
    ("te chunked twice", req("te-2", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked", method="POST",
                             body=b"0\r\n\r\n")),
    ("content-length with a plus", req("cl-plus", "Content-Length: +3", method="POST", body=b"abc")),
    ("content-length with a space inside", req("cl-sp", "Content-Length: 1 0", method="POST", body=b"a" * 10)),
]


@pytest.mark.parametrize(("case", "raw"), FRAMING_REFUSED, ids=[c for c, _ in FRAMING_REFUSED])
async def test_framing_variants_are_refused_and_never_forwarded(gateway: Gateway, cse: RecordingCSE,  # noqa: F811
                                                                case: str, raw: bytes) -> None:
    answers, _ = await exchange(gateway, raw)
    assert [a.status for a in answers][:1] in ([400], [501]), (case, answers)
    assert cse.requests == [], case


async def test_leading_zero_content_length_is_reframed_not_passed_on(gateway: Gateway,  # noqa: F811
                                                                     cse: RecordingCSE) -> None:  # noqa: F811
    answers, _ = await exchange(gateway, req("cl-zero", "Content-Length: 0003", method="POST", body=b"abc"))
    assert [a.status for a in answers] == [200]
    assert [v for k, v in cse.requests[0].headers if k == "content-length"] == ["3"]
    assert cse.requests[0].body == b"abc"


async def test_a_lone_chunked_body_is_forwarded_with_the_gateways_own_length(gateway: Gateway,  # noqa: F811
                                                                             cse: RecordingCSE) -> None:  # noqa: F811
    raw = req("te-up", "Transfer-Encoding: CHUNKED", method="POST")[:-2] + b"\r\n3\r\nabc\r\n0\r\n\r\n"
    answers, _ = await exchange(gateway, raw)
    assert [a.status for a in answers] == [200]
    forwarded = cse.requests[0]
    assert forwarded.body == b"abc" and forwarded.header("transfer-encoding") is None
    assert forwarded.header("content-length") == "3"


# ------------------------------------------------------------------ JSON depth: readers the issue-21 fix missed

DEEP = "[" * 100_000


def test_l6_a_deeply_nested_store_record_is_a_storage_error() -> None:
    with pytest.raises(StorageError):
        load_record_fields(DEEP, "maf-key", "r1")


def test_l6_a_deeply_nested_invoker_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / INFO).write_text(DEEP)
    with pytest.raises(ConfigurationError):
        load_invoker(tmp_path)


# ------------------------------------------------------------------ HTTP framing of the CSE's answer


RAW_ANSWERS = {
    "chunked": b"HTTP/1.1 200 OK\r\nX-M2M-RSC: 2000\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "Chunked and a content-length": (b"HTTP/1.1 200 OK\r\nX-M2M-RSC: 2000\r\nContent-Length: 40\r\n"
                                     b"Transfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("kind", list(RAW_ANSWERS))
async def test_a_chunked_cse_answer_reaches_the_client_reframed_once(kind: str) -> None:
    """The CSE's Transfer-Encoding (with a Content-Length too) never reaches the client: one answer, the gateway's
    own Content-Length, the decoded body, and the connection still serves the next request."""

    async def raw_cse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(RAW_ANSWERS[kind])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(raw_cse, SERVER, 0)
    gw = Gateway(GatewayConfig(backend=Backend(SERVER, server.sockets[0].getsockname()[1]), port=0), make_table())
    await gw.start()
    try:
        ctx = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_PSK,),
                                             peer_entity=HOME_GATEWAY_CSE_ID))
        reader, writer, _ = await open_connection(SERVER, gw.port, ctx)
        for ri in ("a1", "a2"):
            writer.write(req(ri))
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1").lower()
            assert head.startswith("http/1.1 200") and "transfer-encoding" not in head, head
            assert "\r\ncontent-length: 3\r\n" in head, head
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"abc"
        writer.close()
    finally:
        await gw.close()
        server.close()
        await server.wait_closed()
