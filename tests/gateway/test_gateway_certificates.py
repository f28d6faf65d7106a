"""The gateway with certificate clients (TS-0003 §8.2.2.2): every flavour end to end over loopback, the 4106
originator check, refusals (wrong CA, expired, revoked), and PSK clients on the same port."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

import pytest
from cryptography import x509
from test_gateway import RecordingBackend, backend, onem2m  # noqa: F401  (fixture re-used)
from test_revocation import _PEERS, CoapCSE, CoapsPeer, Inbox, _close_clients, coap_cse, rsc  # noqa: F401

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, make_table
from forged import forged_leaf, unconstrained_ca
from m2msec.errors import HandshakeFailed
from m2msec.gateway import coap
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.rules import UnboundPolicy
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable
from m2msec.pki import (
    CertificateFlavour,
    Issued,
    create_ca,
    create_crl,
    issue,
)
from m2msec.saef import CertificateCredentials, EstablishedSA, PSKCredentials, establish_sa
from m2msec.tls.engine import CertificateConfig, ClientConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, ECDHE_ECDSA_DTLS, ONEM2M_DTLS_PSK, ONEM2M_PSK
from m2msec.transport.dtls import create_dtls_endpoint

SP = "m2m.provider.com"
GATEWAY_CSE = "in-cse"
F = CertificateFlavour


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca("provider root", permitted_dns=[SP])


@pytest.fixture(scope="module")
def server_cert(ca: Issued) -> Issued:
    return issue(ca, F.CSE_ID, GATEWAY_CSE, sp_domain=SP)


async def start(backend_port: int, ca: Issued, server_cert: Issued, *, crl: bytes | None = None,
                unbound: UnboundPolicy = UnboundPolicy.REJECT, extra_ca: Issued | None = None,
                sp_id: str | None = f"//{SP}") -> Gateway:
    anchors = ca.certificate_pem() + (extra_ca.certificate_pem() if extra_ca is not None else b"")
    cert = CertificateConfig(server_cert.certificate_pem(), server_cert.private_key_pem(),
                             trust_anchors_pem=anchors, crl_pem=crl)
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", backend_port), port=0,
                               profiles=(ONEM2M_PSK, ECDHE_ECDSA), certificate=cert, cse_id=GATEWAY_CSE,
                               unbound_policy=unbound, sp_id=sp_id), make_table())
    await gw.start()
    return gw


@pytest.fixture
async def gateway(backend: RecordingBackend, ca: Issued, server_cert: Issued) -> AsyncIterator[Gateway]:  # noqa: F811
    gw = await start(backend.port, ca, server_cert)
    yield gw
    await gw.close()


async def connect(gw: Gateway, client: Issued, trust: Issued, peer_entity: str | None = GATEWAY_CSE) -> EstablishedSA:
    creds = CertificateCredentials(client.certificate_pem(), client.private_key_pem(), trust.certificate_pem(),
                                   peer_entity=peer_entity)
    return await establish_sa("127.0.0.1", gw.port, creds)


async def exchange(sa: EstablishedSA, origin: str) -> tuple[int, str | None]:
    resp = await sa.request(onem2m(origin))
    return resp.status, resp.header("x-m2m-rsc")


@pytest.mark.parametrize(
    ("flavour", "identity", "good_origins", "associated"),
    [
        (F.CSE_ID, "mn-cse-123456", ["/mn-cse-123456"], "/mn-cse-123456"),
        (F.AE_ID, f"//{SP}/{GATEWAY_CSE}/Clight", [f"//{SP}/{GATEWAY_CSE}/Clight", f"/{GATEWAY_CSE}/Clight", "Clight"],
         f"//{SP}/{GATEWAY_CSE}/Clight"),
        (F.AE_ID, f"//{SP}/Slight", [f"//{SP}/Slight", "Slight"], f"//{SP}/Slight"),
    ],
)
async def test_identity_certificates_are_associated_and_checked(
    gateway: Gateway, backend: RecordingBackend, ca: Issued,  # noqa: F811
    flavour: CertificateFlavour, identity: str, good_origins: list[str], associated: str,
) -> None:
    client = issue(ca, flavour, identity, sp_domain=SP if flavour is F.CSE_ID else None)
    sa = await connect(gateway, client, ca)
    assert sa.session.authentication == "certificate" and sa.session.cipher == "ECDHE-ECDSA-AES128-SHA256"
    for origin in good_origins:
        assert await exchange(sa, origin) == (200, "2000")
    assert await exchange(sa, "/other-cse") == (403, "4106")
    assert await exchange(sa, "Cother") == (403, "4106")
    await sa.close()
    assert len(backend.requests) == len(good_origins)
    for seen in backend.requests:
        assert seen.header("x-m2msec-sa-identity") == associated
        assert seen.header("x-m2msec-psk-identity") is None


@pytest.mark.parametrize(("flavour", "identity", "credential_id"), [
    (F.DEVICE, "1.3.6.1.4.1.99999.1/SN-0001", "31-1.3.6.1.4.1.99999.1.SN-0001"),
    (F.NODE_ID, "1.3.6.1.4.1.99999.7.42", "34-1.3.6.1.4.1.99999.7.42"),
])
async def test_device_and_node_certificates_get_a_credential_id(
    backend: RecordingBackend, ca: Issued, server_cert: Issued,  # noqa: F811
    flavour: CertificateFlavour, identity: str, credential_id: str,
) -> None:
    client = issue(ca, flavour, identity)
    for policy, expected in ((UnboundPolicy.REJECT, (403, "4106")), (UnboundPolicy.FORWARD, (200, "2000"))):
        gw = await start(backend.port, ca, server_cert, unbound=policy)
        try:
            sa = await connect(gw, client, ca, peer_entity=f"//{SP}/{GATEWAY_CSE}")  # no SP in A's certificate (D39)
            assert await exchange(sa, "Cdevice") == expected
            await sa.close()
        finally:
            await gw.close()
    [seen] = backend.requests  # only the FORWARD policy let it through, with the TS-0003 §10.4 Credential-ID
    assert seen.header("x-m2msec-credential-id") == credential_id and seen.header("x-m2msec-sa-identity") is None


async def test_psk_clients_share_the_port(gateway: Gateway, backend: RecordingBackend) -> None:  # noqa: F811
    sa = await establish_sa("127.0.0.1", gateway.port,
                            PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), peer_entity=GATEWAY_CSE))
    assert sa.session.authentication == "psk"
    assert await exchange(sa, LIGHT1_AE) == (200, "2000")
    await sa.close()


async def test_refused_certificates(gateway: Gateway, ca: Issued, backend: RecordingBackend,  # noqa: F811
                                    server_cert: Issued) -> None:
    other_ca = create_ca("another root", permitted_dns=[SP])
    stranger = issue(other_ca, F.CSE_ID, "mn-cse-1", sp_domain=SP)
    with pytest.raises(HandshakeFailed) as refused:
        await connect(gateway, stranger, ca)
    assert refused.value.alert == "unknown_ca"
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    expired = issue(ca, F.CSE_ID, "mn-cse-1", sp_domain=SP, now=past, days=1)
    with pytest.raises(HandshakeFailed) as refused:
        await connect(gateway, expired, ca)
    assert refused.value.alert == "certificate_expired"
    revoked = issue(ca, F.CSE_ID, "mn-cse-2", sp_domain=SP)
    crl = create_crl(ca, [revoked.certificate.serial_number])
    from cryptography.hazmat.primitives.serialization import Encoding

    gw = await start(backend.port, ca, server_cert, crl=crl.public_bytes(Encoding.PEM))
    try:
        with pytest.raises(HandshakeFailed) as refused:
            await connect(gw, revoked, ca)
        assert refused.value.alert == "certificate_revoked"
        ok = await connect(gw, issue(ca, F.CSE_ID, "mn-cse-3", sp_domain=SP), ca)
        await ok.close()
    finally:
        await gw.close()
    good = await connect(gateway, issue(ca, F.CSE_ID, "mn-cse-4", sp_domain=SP), ca)  # still serving
    await good.close()



async def test_a_certificate_and_crl_issued_by_a_clock_just_ahead_are_accepted(
    ca: Issued, backend: RecordingBackend, server_cert: Issued,  # noqa: F811
) -> None:
    """D235: the CA's clock 30 s ahead of the gateway's, standing for OpenSSL's coarse clock a few ms behind the one
    ``issue``/``create_crl`` date with (the flaky "tls alert bad certificate" right after issuance)."""
    ahead = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    crl = create_crl(ca, [], now=ahead)
    from cryptography.hazmat.primitives.serialization import Encoding

    gw = await start(backend.port, ca, server_cert, crl=crl.public_bytes(Encoding.PEM))
    try:
        sa = await connect(gw, issue(ca, F.CSE_ID, "mn-cse-5", sp_domain=SP, now=ahead), ca)
        assert await exchange(sa, "/mn-cse-5") == (200, "2000")
        await sa.close()
    finally:
        await gw.close()

async def test_entity_a_checks_idb_in_the_server_certificate(gateway: Gateway, ca: Issued) -> None:
    client = issue(ca, F.CSE_ID, "mn-cse-123456", sp_domain=SP)
    with pytest.raises(HandshakeFailed, match="not IdB 'some-other-cse'"):
        await connect(gateway, client, ca, peer_entity="some-other-cse")
    sa = await connect(gateway, client, ca, peer_entity=f"/{GATEWAY_CSE}")
    assert sa.session.entity == f"/{GATEWAY_CSE}"
    await sa.close()
    await asyncio.sleep(0)


FOREIGN_SP = "foreign-sp.example"


@pytest.mark.parametrize(("flavour", "identity", "associated", "local_forms"), [
    # another SP's AE under a CSE-ID that happens to equal ours: only //foreign-sp/... is that AE
    (F.AE_ID, f"//{FOREIGN_SP}/{GATEWAY_CSE}/Cx", f"//{FOREIGN_SP}/{GATEWAY_CSE}/Cx", [f"/{GATEWAY_CSE}/Cx", "Cx"]),
    (F.AE_ID, f"//{FOREIGN_SP}/Sx", f"//{FOREIGN_SP}/Sx", ["Sx", "/Sx"]),
    (F.CSE_ID, "mn-cse-123456", f"//{FOREIGN_SP}/mn-cse-123456", ["/mn-cse-123456", "mn-cse-123456"]),
])
async def test_foreign_sp_certificates_keep_their_absolute_form_only(
    backend: RecordingBackend, ca: Issued, server_cert: Issued,  # noqa: F811
    flavour: CertificateFlavour, identity: str, associated: str, local_forms: list[str],
) -> None:
    foreign_ca = create_ca("foreign root", permitted_dns=[FOREIGN_SP])
    client = issue(foreign_ca, flavour, identity, sp_domain=FOREIGN_SP if flavour is F.CSE_ID else None)
    gw = await start(backend.port, ca, server_cert, extra_ca=foreign_ca)
    try:
        sa = await connect(gw, client, ca, peer_entity=f"//{SP}/{GATEWAY_CSE}")  # B is of another SP than A (D39)
        for origin in local_forms:
            assert await exchange(sa, origin) == (403, "4106"), origin
        assert await exchange(sa, associated) == (200, "2000")
        await sa.close()
    finally:
        await gw.close()
    [seen] = backend.requests
    assert seen.header("x-m2m-origin") == associated and seen.header("x-m2msec-sa-identity") == associated


async def test_without_sp_id_every_certificate_identity_is_foreign(
    backend: RecordingBackend, ca: Issued, server_cert: Issued,  # noqa: F811
) -> None:
    gw = await start(backend.port, ca, server_cert, sp_id=None)
    try:
        sa = await connect(gw, issue(ca, F.AE_ID, f"//{SP}/{GATEWAY_CSE}/Clight"), ca)
        assert await exchange(sa, "Clight") == (403, "4106")
        assert await exchange(sa, f"//{SP}/{GATEWAY_CSE}/Clight") == (200, "2000")
        await sa.close()
        sa = await connect(gw, issue(ca, F.CSE_ID, "mn-cse-123456", sp_domain=SP), ca)
        assert await exchange(sa, "/mn-cse-123456") == (403, "4106")
        assert await exchange(sa, f"//{SP}/mn-cse-123456") == (200, "2000")
        await sa.close()
    finally:
        await gw.close()


def test_sp_id_forms_are_compared_as_domains() -> None:
    from m2msec.gateway.rules import ae_id_forms, normalize_sp_id

    assert normalize_sp_id("//M2M.Provider.com") == "m2m.provider.com" == normalize_sp_id("m2m.provider.com")
    own = f"//{SP}/{GATEWAY_CSE}/Cx"
    assert ae_id_forms(own, GATEWAY_CSE, "//M2M.provider.COM") == {own, f"/{GATEWAY_CSE}/Cx", "Cx"}
    assert ae_id_forms(own, GATEWAY_CSE) == {own}
    assert ae_id_forms(f"//{FOREIGN_SP}/{GATEWAY_CSE}/Cx", GATEWAY_CSE, SP) == {f"//{FOREIGN_SP}/{GATEWAY_CSE}/Cx"}


# --- D40: a CA vouches only for the SPs of its permitted DNS subtrees; D41: CSE-ID certificates are marked -----


async def refused_as(gw: Gateway, client: Issued, trust: Issued, origin: str) -> str:
    """Returns the diagnostic of the 403 / 4106 refusal of one request as *origin*."""
    sa = await connect(gw, client, trust, f"//{SP}/{GATEWAY_CSE}")  # absolute IdB: some clients name no SP
    try:
        resp = await sa.request(onem2m(origin))
    finally:
        await sa.close()
    assert (resp.status, resp.header("x-m2m-rsc")) == (403, "4106")
    return resp.body.decode()


async def test_every_ca_of_the_verified_chain_must_permit_the_sp(
    backend: RecordingBackend, ca: Issued, server_cert: Issued,  # noqa: F811
) -> None:
    """The root permits both SPs, the intermediate only the foreign one: it cannot certify an AE of ours."""
    root = create_ca("shared root", permitted_dns=["provider.com", FOREIGN_SP])
    ours = create_ca("our intermediate", permitted_dns=[SP], issuer=root)
    theirs = create_ca("their intermediate", permitted_dns=[FOREIGN_SP], issuer=root)
    admin = f"//{SP}/{GATEWAY_CSE}/CAdmin"
    gw = await start(backend.port, ca, server_cert, extra_ca=root)
    try:
        good = issue(ours, F.AE_ID, admin)
        sa = await establish_sa("127.0.0.1", gw.port, CertificateCredentials(
            good.certificate_pem() + ours.certificate_pem(), good.private_key_pem(), ca.certificate_pem(),
            peer_entity=GATEWAY_CSE))
        assert await exchange(sa, "CAdmin") == (200, "2000")
        await sa.close()
        forged = forged_leaf(theirs, x509.UniformResourceIdentifier(admin))
        sa = await establish_sa("127.0.0.1", gw.port, CertificateCredentials(
            forged.certificate_pem() + theirs.certificate_pem(), forged.private_key_pem(), ca.certificate_pem(),
            peer_entity=GATEWAY_CSE))
        try:
            for origin in ("CAdmin", admin):
                resp = await sa.request(onem2m(origin))
                assert (resp.status, resp.header("x-m2m-rsc")) == (403, "4106")
                assert f"SP '{SP}' is outside the nameConstraints of CA 'CN=their intermediate'" in resp.body.decode()
        finally:
            await sa.close()
    finally:
        await gw.close()
    assert [r.header("x-m2msec-sa-identity") for r in backend.requests] == [admin]


async def test_an_unconstrained_ca_certifies_no_sp(
    backend: RecordingBackend, ca: Issued, server_cert: Issued,  # noqa: F811
) -> None:
    """CA_MUST_BIND_SP: a trusted CA without nameConstraints (TS-0003 §8.1.2.2 says it shall have them) gives its
    AE-ID and CSE-ID certificates no identity; device certificates keep their Credential-ID."""
    free = unconstrained_ca("unconstrained root")
    gw = await start(backend.port, ca, server_cert, extra_ca=free, unbound=UnboundPolicy.FORWARD)
    try:
        ae = forged_leaf(free, x509.UniformResourceIdentifier(f"//{SP}/{GATEWAY_CSE}/Clight"))
        assert f"no CA of the chain binds SP '{SP}'" in await refused_as(gw, ae, ca, "Clight")
        cse = forged_leaf(free, x509.DNSName(f"mn-cse-1.{SP}"), cse_id_marker=True)
        assert "no CA of the chain binds" in await refused_as(gw, cse, ca, "/mn-cse-1")
        sa = await connect(gw, issue(free, F.DEVICE, "1.3.6.1.4.1.99999.1/SN-9"), ca, f"//{SP}/{GATEWAY_CSE}")
        assert await exchange(sa, "Cdevice") == (200, "2000")
        await sa.close()
    finally:
        await gw.close()
    [seen] = backend.requests
    assert seen.header("x-m2msec-credential-id") == "31-1.3.6.1.4.1.99999.1.SN-9"


async def test_a_dns_name_without_the_cse_id_marker_is_no_cse(
    gateway: Gateway, backend: RecordingBackend, ca: Issued,  # noqa: F811
) -> None:
    """D41: a dNSName certificate of our own CA without the marker (an FQDN certificate, or a CSE-ID certificate
    of an older CA) is not associated with the first label as CSE-ID."""
    unmarked = forged_leaf(ca, x509.DNSName(f"mn-cse-123456.{SP}"))
    assert "fqdn certificate" in await refused_as(gateway, unmarked, ca, "/mn-cse-123456")
    fqdn = issue(ca, F.FQDN, f"mef.{SP}")
    assert f"fqdn certificate 'mef.{SP}'" in await refused_as(gateway, fqdn, ca, "/mef")
    assert backend.requests == []


async def test_coaps_refuses_another_sps_ca_certifying_an_ae_of_ours(
    coap_cse: tuple[CoapCSE, int], ca: Issued, server_cert: Issued,  # noqa: F811
) -> None:
    """D40 on the coaps side (DTLS sessions carry the verified chain too): 4.03 / 4106, nothing reaches the CSE."""
    foreign_ca = create_ca("foreign root", permitted_dns=[FOREIGN_SP])
    forged = forged_leaf(foreign_ca, x509.UniformResourceIdentifier(f"//{SP}/{GATEWAY_CSE}/CAdmin"))
    cert = CertificateConfig(server_cert.certificate_pem(), server_cert.private_key_pem(),
                             trust_anchors_pem=ca.certificate_pem() + foreign_ca.certificate_pem())
    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=coap_cse[1], port=0,
                                  profiles=(ONEM2M_DTLS_PSK, ECDHE_ECDSA_DTLS), certificate=cert,
                                  cse_id=GATEWAY_CSE, sp_id=SP), MemoryPSKTable())
    await gw.start()
    try:
        ctx = TLSContext.dtls_client(ClientConfig(None, profiles=(ECDHE_ECDSA_DTLS,), certificate=CertificateConfig(
            forged.certificate_pem(), forged.private_key_pem(), trust_anchors_pem=ca.certificate_pem()),
            peer_entity=GATEWAY_CSE))
        transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, ctx, handshake_timeout=5)
        assert isinstance(inbox, Inbox)
        peer = CoapsPeer(transport, inbox)
        _PEERS.append(peer)
        answer = await peer.get("CAdmin")
        assert (answer.code, rsc(answer)) == (coap.make_code(4, 3), 4106)
        assert f"SP '{SP}' is outside the nameConstraints of CA".encode() in answer.payload  # (truncated diagnostic)
    finally:
        await gw.close()
    assert coap_cse[0].received == []
