"""Hostile review of the identity hardening (D21-D23): impersonation paths that still work, over real TLS/DTLS
handshakes on loopback against a recording backend. Each test fails while the hole is open.

The setting is the one D22 is about: the gateway (and Entity A) trust two CAs, our SP's and another SP's, each
name-constrained to its own DNS domain, as ``m2msec pki ca --permit-dns`` makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from test_gateway import RecordingBackend as RecordingCSE
from test_gateway import backend  # noqa: F401  (fixture re-used)

from conftest import LIGHT1_ID, LIGHT1_KEY, make_table
from forged import forged_leaf
from m2msec import http1
from m2msec.errors import HandshakeFailed
from m2msec.gateway import coap
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import Issued, create_ca, issue
from m2msec.saef import CertificateCredentials, PSKCredentials, establish_sa
from m2msec.tls.engine import CertificateConfig, ClientConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, ONEM2M_DTLS_PSK, ONEM2M_PSK, TLS13_PSK
from m2msec.transport.dtls import create_dtls_endpoint
from m2msec.transport.tls import open_connection

SP = "m2m.provider.com"
FOREIGN_SP = "foreign-sp.example"
GATEWAY_CSE = "in-cse"


@pytest.fixture
async def cse(backend: RecordingCSE) -> RecordingCSE:  # noqa: F811
    return backend


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    ca = create_ca("provider root", permitted_dns=[SP])
    foreign = create_ca("foreign root", permitted_dns=[FOREIGN_SP])  # constrained to its own SP's domain
    return {
        "ca": ca, "foreign": foreign,
        "gateway": issue(ca, F.CSE_ID, GATEWAY_CSE, sp_domain=SP),
        "client": issue(ca, F.CSE_ID, "mn-cse-123456", sp_domain=SP),
        # the other SP's CA certifies an AE of *our* SP: its DNS nameConstraints do not cover URI SANs (m2msec.pki.issue
        # now refuses, D40: the other SP's CA is not bound to use it, so the certificate is made by hand)
        "forged-admin": forged_leaf(foreign, x509.UniformResourceIdentifier(f"//{SP}/{GATEWAY_CSE}/CAdmin")),
        # the other SP's own CSE, which it chose to call in-cse (its right: CSE-IDs are per SP)
        "foreign-in-cse": issue(foreign, F.CSE_ID, GATEWAY_CSE, sp_domain=FOREIGN_SP),
        # an FQDN certificate of our CA for a MEF server (TS-0003 §10.1.3), not a CSE
        "mef-fqdn": issue(ca, F.FQDN, f"mef.{SP}"),
    }


def anchors(pki: dict[str, Issued]) -> bytes:
    return pki["ca"].certificate_pem() + pki["foreign"].certificate_pem()


@contextlib.asynccontextmanager
async def gateway(pki: dict[str, Issued], cse: RecordingCSE, presents: str = "gateway") -> AsyncIterator[Gateway]:
    server = pki[presents]
    cert = CertificateConfig(server.certificate_pem(), server.private_key_pem(), trust_anchors_pem=anchors(pki))
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", cse.port), port=0, profiles=(ONEM2M_PSK, ECDHE_ECDSA),
                               certificate=cert, cse_id=GATEWAY_CSE, sp_id=f"//{SP}"), make_table())
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


def creds(pki: dict[str, Issued], who: str, idb: str) -> CertificateCredentials:
    return CertificateCredentials(pki[who].certificate_pem(), pki[who].private_key_pem(), anchors(pki),
                                  peer_entity=idb)


def get(origin: str) -> http1.Message:
    return http1.Message(headers=[("host", GATEWAY_CSE), ("x-m2m-origin", origin), ("x-m2m-ri", "r1"),
                                 ("x-m2m-rvi", "3")], method="GET", target="/cse-in")


async def attempt(gw: Gateway, client: CertificateCredentials, origin: str) -> http1.Message | None:
    """The response to one request as ``origin``, or None when the handshake was refused."""
    try:
        sa = await establish_sa("127.0.0.1", gw.port, client)
    except HandshakeFailed:
        return None
    try:
        return await sa.request(get(origin))
    finally:
        await sa.close()


# --- 0. a TLS 1.3 PSK client accepts a server that does not know the PSK (Critical) ---------------------------


@pytest.mark.parametrize("idb", [GATEWAY_CSE, f"/{GATEWAY_CSE}", f"//{SP}/{GATEWAY_CSE}"])
async def test_tls13_psk_client_refuses_a_server_without_the_psk(idb: str) -> None:
    """Entity A with (KpsaID, Kpsa) and the `tls13` profile (`m2msec request --profiles tls13`): a TLS 1.3 server
    may ignore the offered external PSK and authenticate with a certificate instead. The PSK client has no trust
    anchors, so OpenSSL verifies nothing (VERIFY_NONE), and check_peer_entity then reads IdB from that unverified
    certificate: an impostor with a self-made certificate for in-cse.<anything> is accepted as Entity B and gets
    the client's requests. Nothing of the Kpsa is needed."""
    sp = SP if idb.startswith("//") else "attacker.example"  # whatever IdB asks for: nobody verifies it
    leaf = issue(create_ca("attacker's own CA", permitted_dns=[sp]), F.CSE_ID, GATEWAY_CSE, sp_domain=sp)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "c.pem").write_bytes(leaf.certificate_pem())
        (Path(d) / "k.pem").write_bytes(leaf.private_key_pem())
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        server_ctx.load_cert_chain(Path(d) / "c.pem", Path(d) / "k.pem")
    seen: list[bytes] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            seen.append(await reader.read(4096))
            writer.write(b"HTTP/1.1 200 OK\r\nx-m2m-rsc: 2000\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0, ssl=server_ctx)
    port = int(server.sockets[0].getsockname()[1])
    try:
        client = PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), idb, profiles=(TLS13_PSK,))
        with pytest.raises(HandshakeFailed):
            sa = await establish_sa("127.0.0.1", port, client)
            try:
                await sa.request(get("Clight-AE1"))
            finally:
                await sa.close()
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [] or seen == [b""]


# --- 1. another SP's CA certifies an AE-ID of our SP (High) --------------------------------------------------


@pytest.mark.parametrize("origin", ["CAdmin", f"/{GATEWAY_CSE}/CAdmin", f"//{SP}/{GATEWAY_CSE}/CAdmin"])
async def test_foreign_ca_cannot_certify_an_ae_of_our_sp(pki: dict[str, Issued], cse: RecordingCSE,
                                                         origin: str) -> None:
    """D22 keeps a foreign SP's certificate to its absolute form, but takes the SP from the certificate's own
    claim. A CA trusted for FOREIGN_SP (nameConstraints: DNS foreign-sp.example, as `m2msec pki ca` makes it)
    issues the URI SAN //m2m.provider.com/in-cse/CAdmin; DNS subtrees do not constrain URIs (docs/pki.md) and URI
    subtrees break every scheme-less AE-ID in OpenSSL, so nothing stops it: the gateway takes it for our SP's
    admin AE and forwards its requests as CAdmin, stem form included."""
    async with gateway(pki, cse) as gw:
        resp = await attempt(gw, creds(pki, "forged-admin", GATEWAY_CSE), origin)
    assert resp is None or (resp.status, resp.header("x-m2m-rsc")) == (403, "4106")
    assert [(r.header("x-m2m-origin"), r.header("x-m2msec-sa-identity")) for r in cse.requests] == []


# --- 2. Entity A: an SP-relative IdB accepts another SP's CSE (High) -----------------------------------------


@pytest.mark.parametrize("idb", [GATEWAY_CSE, f"/{GATEWAY_CSE}"])
async def test_sp_relative_idb_does_not_accept_another_sps_cse(pki: dict[str, Issued], cse: RecordingCSE,
                                                               idb: str) -> None:
    """`--entity-id in-cse` (the form docs/pki.md shows) or `/in-cse` (an SP-relative CSE-ID: a CSE of our SP,
    TS-0001 §7.2): Entity A, whose own certificate says it belongs to m2m.provider.com, accepts the other SP's
    certificate for in-cse.foreign-sp.example as Entity B. Anyone holding a certificate from the foreign CA for
    a CSE they named in-cse is taken for our IN-CSE; Entity A then sends its requests (and its data) there."""
    async with gateway(pki, cse, presents="foreign-in-cse") as impostor:
        with pytest.raises(HandshakeFailed):
            sa = await establish_sa("127.0.0.1", impostor.port, creds(pki, "client", idb))
            await sa.close()


# --- 3. an FQDN certificate is a CSE-ID certificate (Medium) -------------------------------------------------


async def test_fqdn_certificate_is_not_associated_with_a_cse_id(pki: dict[str, Issued], cse: RecordingCSE) -> None:
    """docs/gateway.md: "FQDN, or no oneM2M identity -> nothing (refused)". But the dNSName of an FQDN certificate
    (a MAF/MEF server, TS-0003 §10.1.3, or any TLS server certificate the SP's CA issued for a host in its
    domain) is read as <CSE-ID>.<SP domain>: the holder of mef.m2m.provider.com's key acts as the CSE /mef."""
    async with gateway(pki, cse) as gw:
        resp = await attempt(gw, creds(pki, "mef-fqdn", f"//{SP}/{GATEWAY_CSE}"), "/mef")
    assert resp is None or resp.status == 403
    assert cse.requests == []


# --- 4. the TLS transport reports an unchecked IdB (Low) -----------------------------------------------------


async def test_open_connection_does_not_report_an_unchecked_idb(pki: dict[str, Issued], cse: RecordingCSE) -> None:
    """m2msec.transport.tls.open_connection (public) with a certificate ClientConfig(peer_entity='in-cse') against
    a server holding another CSE's certificate: the session says entity='in-cse' ("the identity the security
    context is associated with") although nobody checked it; only saef.establish_sa checks (the DTLS transport,
    create_dtls_endpoint, checks itself)."""
    own = CertificateConfig(pki["client"].certificate_pem(), pki["client"].private_key_pem(), anchors(pki))
    ctx = TLSContext.client(ClientConfig(None, None, profiles=(ECDHE_ECDSA,), certificate=own,
                                         peer_entity=GATEWAY_CSE))
    async with gateway(pki, cse, presents="client") as other:  # presents mn-cse-123456's certificate
        try:
            _, writer, session = await open_connection("127.0.0.1", other.port, ctx)
        except HandshakeFailed:
            return
        writer.close()
    assert session.entity != GATEWAY_CSE, "the session claims IdB in-cse for a server certified as mn-cse-123456"


# --- 5. coaps: identity options in non-request messages reach the CSE (Low) ---------------------------------


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.q.put_nowait(data)


class _CoapCSE(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.seen: list[coap.Message] = []
        self.got = asyncio.Event()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.seen.append(coap.Message.decode(data))
        self.got.set()


@pytest.mark.parametrize("code", [coap.make_code(2, 4), coap.make_code(7, 1), coap.make_code(1, 0)])
async def test_coaps_client_identity_options_never_reach_the_cse(code: int) -> None:
    """docs/gateway.md: the identity options (65002/65006/65010) are the gateway's; "client copies dropped". They
    are dropped from requests only: a response, an ACK with a response code, or a message with a code of a class
    CoAP has no request in (1.xx, 6.xx, 7.xx) goes to the CSE unchanged (coap.decide -> Pass), carrying
    65002 = CAdmin. A CSE answering a NOTIFY it sent, or one that reads 65002 on whatever it receives, is lied to."""
    loop = asyncio.get_running_loop()
    udp, coap_backend = await loop.create_datagram_endpoint(_CoapCSE, local_addr=("127.0.0.1", 0))
    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=int(udp.get_extra_info("sockname")[1]),
                                  port=0, profiles=(ONEM2M_DTLS_PSK,)), make_table())
    await gw.start()
    try:
        ctx = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                                  profiles=(ONEM2M_DTLS_PSK,), peer_entity=GATEWAY_CSE))
        transport, _, _ = await create_dtls_endpoint(_Inbox, "127.0.0.1", gw.port, ctx)
        try:
            spoof = [(coap.OPTION_SA_IDENTITY, b"CAdmin"), (coap.OPTION_PSK_IDENTITY, b"admin@in.provider.com")]
            transport.sendto(coap.Message(coap.MessageType.NON, code, 0x4242, b"\x01", spoof, b"x").encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(coap_backend.got.wait(), 2)
        finally:
            transport.close()
    finally:
        await gw.close()
        udp.close()
    leaked = [(n, v) for m in coap_backend.seen for n, v in m.options if n in coap.IDENTITY_OPTIONS]
    assert leaked == []


def test_pki_refuses_to_issue_outside_the_cas_sp() -> None:
    """The same hole at issuing time: `m2msec pki issue --ca foreign ...` signs an AE-ID of another SP, since a CA
    made with --permit-dns only has DNS subtrees and those say nothing about URIs (pki._within returns None)."""
    foreign = create_ca("foreign root", permitted_dns=[FOREIGN_SP])
    with pytest.raises(Exception, match="nameConstraints"):
        issue(foreign, F.AE_ID, f"//{SP}/{GATEWAY_CSE}/CAdmin")

