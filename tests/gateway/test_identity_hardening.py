"""Identity bypasses (issue 14), over real TLS/DTLS handshakes on loopback: ambiguous HTTP identity headers at
the gateway (a tiny HTTP backend records what reached it and answers with headers of our choosing), Entity A
without IdB or facing the wrong server (TLS and DTLS), and certificates of another SP on the coaps side."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import pytest
from test_gateway import RecordingBackend as RecordingCSE
from test_gateway import backend  # noqa: F401  (fixture re-used)

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, TD_ID, TD_KEY, make_table
from m2msec import http1
from m2msec.errors import BadRequest, ConfigurationError, HandshakeFailed
from m2msec.gateway import coap
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.gateway.headers import check_request_headers, is_single_valued, strip_gateway_headers
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.rules import UnboundPolicy
from m2msec.idb import ANY_ENTITY, AnyEntity
from m2msec.keys.secret import SecretKey
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import Issued, create_ca, issue
from m2msec.saef import CertificateCredentials, EstablishedSA, PSKCredentials, establish_sa
from m2msec.tls.engine import CertificateConfig, ClientConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, ECDHE_ECDSA_DTLS, ONEM2M_DTLS_PSK, ONEM2M_PSK
from m2msec.transport.dtls import create_dtls_endpoint, start_dtls_server


@pytest.fixture
async def cse(backend: RecordingCSE) -> RecordingCSE:  # noqa: F811
    return backend


async def start(cse: RecordingCSE, unbound: UnboundPolicy = UnboundPolicy.REJECT) -> Gateway:
    assert cse.server is not None
    port = int(cse.server.sockets[0].getsockname()[1])
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", port), port=0, unbound_policy=unbound), make_table())
    await gw.start()
    return gw


@pytest.fixture
async def gateway(cse: RecordingCSE) -> AsyncIterator[Gateway]:
    gw = await start(cse)
    yield gw
    await gw.close()


async def connect(gw: Gateway, identity: str = LIGHT1_ID, key: str = LIGHT1_KEY) -> EstablishedSA:
    return await establish_sa("127.0.0.1", gw.port,
                              PSKCredentials(identity, SecretKey.from_hex(key), HOME_GATEWAY_CSE_ID))


def request(headers: list[tuple[str, str]]) -> http1.Message:
    base = [("host", HOME_GATEWAY_CSE_ID), ("x-m2m-rvi", "3")]
    return http1.Message(headers=base + headers, method="GET", target=f"/{HOME_GATEWAY_CSE_ID}")


async def send(gw: Gateway, headers: list[tuple[str, str]]) -> http1.Message:
    sa = await connect(gw)
    try:
        return await sa.request(request(headers))
    finally:
        await sa.close()


def assert_bad_request(resp: http1.Message, reason: str) -> None:
    assert (resp.status, resp.header("x-m2m-rsc")) == (400, "4000")
    assert reason in json.loads(resp.body)["m2m:dbg"]


async def test_duplicate_origin_is_refused_and_never_forwarded(gateway: Gateway, cse: RecordingCSE) -> None:
    for first, second in ((LIGHT1_AE, "CAdmin"), ("CAdmin", LIGHT1_AE), (LIGHT1_AE, LIGHT1_AE)):
        resp = await send(gateway, [("x-m2m-ri", "r1"), ("X-M2M-Origin", first), ("X-M2M-Origin", second)])
        assert_bad_request(resp, "'x-m2m-origin' is repeated")
    assert cse.requests == []
    ok = await send(gateway, [("x-m2m-ri", "r2"), ("x-m2m-origin", LIGHT1_AE)])  # the same SA, one From: fine
    assert ok.status == 200 and [r.header("x-m2m-origin") for r in cse.requests] == [LIGHT1_AE]


@pytest.mark.parametrize("value", [f"{LIGHT1_AE},CAdmin", f"{LIGHT1_AE}, CAdmin", f"{LIGHT1_AE} CAdmin"])
async def test_list_or_folded_origin_is_refused(cse: RecordingCSE, value: str) -> None:
    # with --unbound forward the gateway does not compare From at all: the ambiguity check must still hold
    gw = await start(cse, UnboundPolicy.FORWARD)
    try:
        sa = await connect(gw, TD_ID, TD_KEY)
        resp = await sa.request(request([("x-m2m-ri", "r1"), ("x-m2m-origin", value)]))
        await sa.close()
    finally:
        await gw.close()
    assert_bad_request(resp, "holds a list or a folded value")
    assert cse.requests == []


async def _raw_exchange(sa: EstablishedSA, head: bytes) -> tuple[int, dict[str, str], bytes]:
    sa.writer.write(head)
    raw = await asyncio.wait_for(sa.reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
    body = await asyncio.wait_for(sa.reader.readexactly(int(headers["content-length"])), 10)
    return int(status_line.split()[1]), headers, body


async def test_obs_folded_origin_is_refused(gateway: Gateway, cse: RecordingCSE) -> None:
    sa = await connect(gateway)
    head = (f"GET /{HOME_GATEWAY_CSE_ID} HTTP/1.1\r\nHost: x\r\nX-M2M-RI: r1\r\n"
            f"X-M2M-Origin: {LIGHT1_AE}\r\n CAdmin\r\n\r\n").encode()
    status, headers, body = await _raw_exchange(sa, head)
    await sa.close()
    assert (status, headers["x-m2m-rsc"]) == (400, "4000")
    assert "folded value" in json.loads(body)["m2m:dbg"]
    assert cse.requests == []


@pytest.mark.parametrize("extra", [
    [("x_m2m_origin", "CAdmin")],  # a WSGI/CGI CSE reads HTTP_X_M2M_ORIGIN for both spellings
    [("x-m2m-ri", "r2")],
    [("x-m2m-rvi", "2a")],
    [("x-m2m-gid", "g1"), ("x-m2m-gid", "g2")],
    [("authorization", "Bearer a"), ("authorization", "Bearer b")],
    [("content-type", "application/json;ty=2"), ("content-type", "application/json;ty=16")],
])
async def test_other_single_valued_headers(gateway: Gateway, cse: RecordingCSE, extra: list[tuple[str, str]]) -> None:
    resp = await send(gateway, [("x-m2m-ri", "r1"), ("x-m2m-origin", LIGHT1_AE), *extra])
    assert_bad_request(resp, "disguised" if "_" in extra[0][0] else "is repeated")
    assert cse.requests == []


async def test_client_gateway_namespace_headers_are_stripped(gateway: Gateway, cse: RecordingCSE) -> None:
    spoof = [("x-m2msec-role", "admin"), ("X-M2MSEC-SA-Identity", "CAdmin"), ("x_m2msec_sa_identity", "CAdmin"),
             ("x-m2msec-psk-identity", "admin@x.com")]
    resp = await send(gateway, [("x-m2m-ri", "r1"), ("x-m2m-origin", LIGHT1_AE), *spoof])
    assert resp.status == 200
    [seen] = cse.requests
    ours = [(k, v) for k, v in seen.headers if k.replace("_", "-").startswith("x-m2msec-")]
    assert sorted(ours) == sorted([("x-m2msec-sa-identity", LIGHT1_AE), ("x-m2msec-credential-id", f"12-{LIGHT1_ID}"),
                                   ("x-m2msec-psk-identity", LIGHT1_ID)])


async def test_cse_gateway_namespace_headers_are_stripped_from_responses(gateway: Gateway, cse: RecordingCSE) -> None:
    cse.extra = [("x-m2msec-sa-identity", "CAdmin"), ("X-M2MSEC-Debug", "internal"), ("x_m2msec_note", "n"),
                 ("x-m2m-ri", "r1")]
    resp = await send(gateway, [("x-m2m-ri", "r1"), ("x-m2m-origin", LIGHT1_AE)])
    assert resp.status == 200 and resp.header("x-m2m-ri") == "r1"
    assert [k for k, _ in resp.headers if k.replace("_", "-").startswith("x-m2msec")] == []


async def test_disguised_hop_by_hop_headers_are_not_forwarded(gateway: Gateway, cse: RecordingCSE) -> None:
    # a WSGI/CGI CSE could read Content_Length as the body length: the "_" spellings are dropped like the real ones
    disguised = [("content_length", "999"), ("transfer_encoding", "chunked"), ("connection_", "x")]
    resp = await send(gateway, [("x-m2m-ri", "r1"), ("x-m2m-origin", LIGHT1_AE), *disguised])
    assert resp.status == 200
    [seen] = cse.requests
    names = [k for k, _ in seen.headers]
    assert "content_length" not in names and "transfer_encoding" not in names
    assert "connection_" in names  # not hop-by-hop in any spelling: forwarded


def test_header_rules_are_pure() -> None:
    assert is_single_valued("X-M2M-Origin") and is_single_valued("x_m2m_ri") and is_single_valued("x-m2m-utcmd")
    assert not is_single_valued("accept") and not is_single_valued("x-m2msec-sa-identity")
    check_request_headers([("x-m2m-origin", "Cx"), ("accept", "a"), ("accept", "b")])  # Accept is a list
    with pytest.raises(BadRequest, match="repeated"):
        check_request_headers([("x-m2m-ri", "1"), ("x-m2m-ri", "1")])
    assert strip_gateway_headers([("X-M2MSEC-A", "1"), ("x_m2msec_b", "2"), ("x-m2m-ri", "3")]) == [("x-m2m-ri", "3")]


# --- Entity A: IdB is required (D23), TLS and DTLS ------------------------------------------------------------

SP = "m2m.provider.com"
FOREIGN_SP = "foreign-sp.example"
GATEWAY_CSE = "in-cse"


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    ca = create_ca("provider root", permitted_dns=[SP])
    foreign = create_ca("foreign root", permitted_dns=[FOREIGN_SP])
    return {
        "ca": ca, "foreign": foreign,
        "gateway": issue(ca, F.CSE_ID, GATEWAY_CSE, sp_domain=SP),
        "other-ae": issue(ca, F.AE_ID, f"//{SP}/{GATEWAY_CSE}/Cother"),  # another AE, same CA
        "foreign-cse": issue(foreign, F.CSE_ID, GATEWAY_CSE, sp_domain=FOREIGN_SP),  # our CSE-ID, other SP
        "client": issue(ca, F.CSE_ID, "mn-cse-123456", sp_domain=SP),
        "foreign-ae": issue(foreign, F.AE_ID, f"//{FOREIGN_SP}/{GATEWAY_CSE}/Cx"),
    }


def anchors(pki: dict[str, Issued]) -> bytes:
    return pki["ca"].certificate_pem() + pki["foreign"].certificate_pem()


@contextlib.asynccontextmanager
async def tls_server(pki: dict[str, Issued], cse: RecordingCSE, presents: str) -> AsyncIterator[Gateway]:
    """The gateway (TLS, PSK and ecdhe-ecdsa on one port) presenting the certificate ``pki[presents]``."""
    assert cse.server is not None
    server = pki[presents]
    cert = CertificateConfig(server.certificate_pem(), server.private_key_pem(), trust_anchors_pem=anchors(pki))
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", int(cse.server.sockets[0].getsockname()[1])), port=0,
                               profiles=(ONEM2M_PSK, ECDHE_ECDSA), certificate=cert, cse_id=GATEWAY_CSE, sp_id=SP),
                 make_table())
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


def cert_creds(pki: dict[str, Issued], who: str, idb: str | AnyEntity | None) -> CertificateCredentials:
    return CertificateCredentials(pki[who].certificate_pem(), pki[who].private_key_pem(), anchors(pki),
                                  peer_entity=idb)


async def test_entity_a_without_idb_is_refused_before_connecting(pki: dict[str, Issued]) -> None:
    accepted: list[object] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w) or w.close(), "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        for creds in (cert_creds(pki, "client", None), cert_creds(pki, "client", ""),
                      PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY))):
            with pytest.raises(ConfigurationError, match="no IdB"):
                await establish_sa("127.0.0.1", port, creds)
    finally:
        server.close()
        await server.wait_closed()
    assert accepted == []  # not even a TCP connection


async def test_server_with_another_aes_certificate_is_refused(
    pki: dict[str, Issued], cse: RecordingCSE, caplog: pytest.LogCaptureFixture,
) -> None:
    async with tls_server(pki, cse, "other-ae") as gw:
        with pytest.raises(ConfigurationError, match="no IdB"):  # it was accepted without an IdB before
            await establish_sa("127.0.0.1", gw.port, cert_creds(pki, "client", None))
        for idb in (GATEWAY_CSE, "Cother"):  # IdB names a CSE; B is an AE
            with pytest.raises(HandshakeFailed, match="is a ae-id certificate"):
                await establish_sa("127.0.0.1", gw.port, cert_creds(pki, "client", idb))
        with pytest.raises(ConfigurationError, match="malformed IdB"):  # an AE-ID is no IdB: refused before (D39)
            await establish_sa("127.0.0.1", gw.port, cert_creds(pki, "client", f"//{SP}/{GATEWAY_CSE}/Cother"))
        with caplog.at_level(logging.WARNING, "m2msec.idb"):  # the explicit opt-out still connects, loudly
            sa = await establish_sa("127.0.0.1", gw.port, cert_creds(pki, "client", ANY_ENTITY))
        await sa.close()
        assert "IdB check disabled" in caplog.text


async def test_absolute_idb_pins_the_service_provider(pki: dict[str, Issued], cse: RecordingCSE) -> None:
    async with tls_server(pki, cse, "foreign-cse") as gw:  # in-cse, but certified for another SP
        with pytest.raises(HandshakeFailed, match=f"of SP '{FOREIGN_SP}', not IdB"):
            await establish_sa("127.0.0.1", gw.port, cert_creds(pki, "client", f"//{SP}/{GATEWAY_CSE}"))
    async with tls_server(pki, cse, "gateway") as gw:
        for idb in (f"//{SP}/{GATEWAY_CSE}", f"//{SP.upper()}/{GATEWAY_CSE}", f"/{GATEWAY_CSE}", GATEWAY_CSE):
            sa = await establish_sa("127.0.0.1", gw.port, cert_creds(pki, "client", idb))
            await sa.close()


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.q.put_nowait(data)


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.transport.sendto(data)


@contextlib.asynccontextmanager
async def dtls_echo(pki: dict[str, Issued]) -> AsyncIterator[int]:
    """A DTLS server (PSK and ECDHE-ECDSA CCM_8) presenting the gateway's CSE-ID certificate, echoing data."""
    server = pki["gateway"]
    ctx = TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(ONEM2M_DTLS_PSK, ECDHE_ECDSA_DTLS),
                                              certificate=CertificateConfig(server.certificate_pem(),
                                                                            server.private_key_pem(), anchors(pki))))
    udp, _ = await start_dtls_server(Echo, "127.0.0.1", 0, ctx)
    try:
        yield int(udp.get_extra_info("sockname")[1])
    finally:
        udp.close()


def dtls_cert_client(pki: dict[str, Issued], idb: str | None) -> TLSContext:
    own = CertificateConfig(pki["client"].certificate_pem(), pki["client"].private_key_pem(), anchors(pki))
    return TLSContext.dtls_client(ClientConfig(None, None, profiles=(ECDHE_ECDSA_DTLS,), certificate=own,
                                               peer_entity=idb))


async def test_dtls_client_checks_idb(pki: dict[str, Issued]) -> None:
    async with dtls_echo(pki) as port:
        with pytest.raises(HandshakeFailed, match="not IdB 'some-other-cse'"):  # a real DTLS handshake, then refused
            await create_dtls_endpoint(Inbox, "127.0.0.1", port, dtls_cert_client(pki, "some-other-cse"))
        with pytest.raises(HandshakeFailed, match="not IdB"):
            await create_dtls_endpoint(Inbox, "127.0.0.1", port, dtls_cert_client(pki, None),
                                       peer_entity=f"//{FOREIGN_SP}/{GATEWAY_CSE}")
        with pytest.raises(ConfigurationError, match="no IdB"):
            await create_dtls_endpoint(Inbox, "127.0.0.1", port, dtls_cert_client(pki, None))
        psk = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                                  profiles=(ONEM2M_DTLS_PSK,)))
        with pytest.raises(ConfigurationError, match="no IdB"):
            await create_dtls_endpoint(Inbox, "127.0.0.1", port, psk)
        for ctx, idb in ((dtls_cert_client(pki, GATEWAY_CSE), None), (psk, ANY_ENTITY)):
            transport, app, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", port, ctx, peer_entity=idb)
            transport.sendto(b"ping")
            assert await asyncio.wait_for(app.q.get(), 5) == b"ping"  # type: ignore[attr-defined]
            transport.close()


# --- the coaps side associates certificates by SP too (D22) ---------------------------------------------------


class CoapCSE(asyncio.DatagramProtocol):
    """A CoAP 'CSE' on loopback UDP: records requests, answers each with an ACK 2.05."""

    def __init__(self) -> None:
        self.seen: list[coap.Message] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        msg = coap.Message.decode(data)
        self.seen.append(msg)
        ack = coap.Message(coap.MessageType.ACK, coap.make_code(2, 5), msg.message_id, msg.token, [], b"ok")
        self.transport.sendto(ack.encode(), addr)


async def test_coaps_foreign_sp_certificate_keeps_its_absolute_form(pki: dict[str, Issued]) -> None:
    loop = asyncio.get_running_loop()
    udp, coap_backend = await loop.create_datagram_endpoint(CoapCSE, local_addr=("127.0.0.1", 0))
    server = pki["gateway"]
    gw = CoapsGateway(CoapsConfig(
        backend_host="127.0.0.1", backend_port=int(udp.get_extra_info("sockname")[1]), port=0,
        profiles=(ONEM2M_DTLS_PSK, ECDHE_ECDSA_DTLS), cse_id=GATEWAY_CSE, sp_id=f"//{SP}",
        certificate=CertificateConfig(server.certificate_pem(), server.private_key_pem(), anchors(pki))), make_table())
    await gw.start()
    try:
        ae = pki["foreign-ae"]
        own = CertificateConfig(ae.certificate_pem(), ae.private_key_pem(), anchors(pki))
        ctx = TLSContext.dtls_client(ClientConfig(None, None, profiles=(ECDHE_ECDSA_DTLS,), certificate=own,
                                                  peer_entity=f"//{SP}/{GATEWAY_CSE}"))  # B: not A's SP (D39)
        transport, app, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, ctx)
        try:
            answers = []
            for mid, frm in enumerate(("Cx", f"/{GATEWAY_CSE}/Cx", f"//{FOREIGN_SP}/{GATEWAY_CSE}/Cx")):
                get = coap.Message(coap.MessageType.CON, coap.GET, 0x100 + mid, bytes([mid + 1]),
                                   [(coap.URI_PATH, b"in-cse"), (coap.ONEM2M_FR, frm.encode()),
                                    (coap.ONEM2M_RQI, b"r")])
                transport.sendto(get.encode())
                reply = coap.Message.decode(await asyncio.wait_for(app.q.get(), 5))  # type: ignore[attr-defined]
                answers.append((coap.format_code(reply.code), coap.decode_uint(reply.option(coap.ONEM2M_RSC) or b"")))
        finally:
            transport.close()
    finally:
        await gw.close()
        udp.close()
    assert answers == [("4.03", 4106), ("4.03", 4106), ("2.05", 0)]
    [seen] = coap_backend.seen
    assert seen.option(coap.OPTION_SA_IDENTITY) == f"//{FOREIGN_SP}/{GATEWAY_CSE}/Cx".encode()
