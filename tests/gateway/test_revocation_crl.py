"""Revocation takes effect, certificates (issue 14, part 2, item 3): CRLs in PEM or DER, one or several, refused
when the file holds none, reloaded for new handshakes on both sides, live certificate SAs ended at their next
request, and nextUpdate watched. Real CRLs from m2msec.pki, real handshakes over loopback."""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from test_gateway import RecordingBackend, backend, onem2m  # noqa: F401
from test_revocation import (  # noqa: F401  (fixtures re-used)
    _PEERS,
    _SAS,
    CoapCSE,
    CoapsPeer,
    Inbox,
    _close_clients,
    bump,
    coap_cse,
    eventually,
    rsc,
    write_table,
)

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY
from m2msec.errors import ConfigurationError, HandshakeFailed
from m2msec.gateway import coap
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.pki import CertificateFlavour, Issued, create_ca, create_crl, issue
from m2msec.saef import CertificateCredentials, EstablishedSA, establish_sa
from m2msec.tls.engine import CertificateConfig, ClientConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, ONEM2M_DTLS_PSK, ONEM2M_PSK
from m2msec.transport.dtls import create_dtls_endpoint

SP = "m2m.provider.com"
GATEWAY_CSE = "in-cse"
CLIENT_CSE = "mn-cse-777"

# -- item 3: CRLs (PEM and DER, reload, nextUpdate)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca("provider root", permitted_dns=[SP])


@pytest.fixture(scope="module")
def server_cert(ca: Issued) -> Issued:
    return issue(ca, CertificateFlavour.CSE_ID, GATEWAY_CSE, sp_domain=SP)


def crl_bytes(ca: Issued, revoked: list[int], *, der: bool = False, now: datetime.datetime | None = None,
              days: int = 7) -> bytes:
    crl = create_crl(ca, revoked, now=now, next_update_days=days)
    return crl.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)


async def cert_gateway(backend_port: int, ca: Issued, server_cert: Issued, crl: bytes | None,
                       crls: Any = None) -> Gateway:
    cert = CertificateConfig(server_cert.certificate_pem(), server_cert.private_key_pem(),
                             trust_anchors_pem=ca.certificate_pem(), crl_pem=crl)
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", backend_port), port=0, reload_interval=0.05,
                               profiles=(ONEM2M_PSK, ECDHE_ECDSA), certificate=cert, cse_id=GATEWAY_CSE, sp_id=SP),
                 MemoryPSKTable(), **({"crls": crls} if crls is not None else {}))
    await gw.start()
    return gw


async def cert_connect(gw: Gateway, client: Issued, ca: Issued) -> EstablishedSA:
    creds = CertificateCredentials(client.certificate_pem(), client.private_key_pem(), ca.certificate_pem(),
                                   peer_entity=GATEWAY_CSE)
    _SAS.append(await establish_sa("127.0.0.1", gw.port, creds))
    return _SAS[-1]


async def test_der_crl_revokes(backend: RecordingBackend, ca: Issued, server_cert: Issued) -> None:  # noqa: F811
    """A DER CRL used to load nothing (the PEM splitter found no block) and revoked clients got in."""
    revoked = issue(ca, CertificateFlavour.CSE_ID, CLIENT_CSE, sp_domain=SP)
    good = issue(ca, CertificateFlavour.CSE_ID, "mn-cse-888", sp_domain=SP)
    gw = await cert_gateway(backend.port, ca, server_cert, crl_bytes(ca, [revoked.certificate.serial_number], der=True))
    try:
        with pytest.raises(HandshakeFailed, match="alert certificate revoked"):
            await cert_connect(gw, revoked, ca)
        sa = await cert_connect(gw, good, ca)
        assert (await sa.request(onem2m("/mn-cse-888"))).status == 200
        await sa.close()
    finally:
        await gw.close()


def test_crl_files_pem_der_several_and_none(ca: Issued, tmp_path: Path) -> None:
    from m2msec.crl import CRLFile, load_crls

    other = create_ca("second root", permitted_dns=[SP])
    two_pem = crl_bytes(ca, [5]) + crl_bytes(other, [6])
    two_der = crl_bytes(ca, [5], der=True) + crl_bytes(other, [6], der=True)
    assert len(load_crls(two_pem)) == 2 and len(load_crls(two_der)) == 2
    (tmp_path / "a.crl").write_bytes(two_der)
    assert len(CRLFile(tmp_path / "a.crl", trusted=[ca.certificate, other.certificate]).crls.crls) == 2
    for name, data in [("cert.pem", ca.certificate_pem()), ("empty.crl", b""), ("junk.crl", b"\x30\x03ab")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigurationError, match=f"{name}: (holds no CRL|not a valid CRL)"):
            CRLFile(tmp_path / name, trusted=[ca.certificate])


def test_engine_refuses_crl_data_without_a_crl(ca: Issued, server_cert: Issued) -> None:
    """--crl with a certificate file used to leave CRL checking "on" with nothing loaded; now it is refused."""
    from m2msec.tls.engine import ServerConfig

    cert = CertificateConfig(server_cert.certificate_pem(), server_cert.private_key_pem(),
                             trust_anchors_pem=ca.certificate_pem(), crl_pem=ca.certificate_pem())
    with pytest.raises(ConfigurationError, match="holds no CRL"):
        TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), certificate=cert))


async def test_crl_reload_refuses_new_and_ends_live_sas(
    backend: RecordingBackend, ca: Issued, server_cert: Issued, tmp_path: Path  # noqa: F811
) -> None:
    from m2msec.crl import CRLFile

    client = issue(ca, CertificateFlavour.CSE_ID, CLIENT_CSE, sp_domain=SP)
    path = tmp_path / "ca.crl"
    path.write_bytes(crl_bytes(ca, []))
    crls = CRLFile(path, trusted=[ca.certificate])
    gw = await cert_gateway(backend.port, ca, server_cert, path.read_bytes(), crls)
    try:
        live = await cert_connect(gw, client, ca)
        assert (await live.request(onem2m(f"/{CLIENT_CSE}"))).status == 200
        path.write_bytes(crl_bytes(ca, [client.certificate.serial_number], der=True))  # revoke, now as DER
        bump(path)
        await eventually(lambda: crls.generation == 1)
        await asyncio.sleep(0.1)
        with pytest.raises(HandshakeFailed, match="alert certificate revoked"):
            await cert_connect(gw, client, ca)
        resp = await live.request(onem2m(f"/{CLIENT_CSE}"))
        assert (resp.status, resp.header("x-m2m-rsc")) == (403, "4106")
        assert b"is revoked" in resp.body
        assert len(backend.requests) == 1
    finally:
        await gw.close()


async def test_stale_crl_is_an_error_and_a_fresh_one_needs_no_restart(
    backend: RecordingBackend, ca: Issued, server_cert: Issued, tmp_path: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    from m2msec.crl import CRLFile

    client = issue(ca, CertificateFlavour.CSE_ID, CLIENT_CSE, sp_domain=SP)
    path = tmp_path / "ca.crl"
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    path.write_bytes(crl_bytes(ca, [], now=past, days=1))  # nextUpdate two days ago
    crls = CRLFile(path, trusted=[ca.certificate])
    assert any(r.levelno == logging.ERROR and "passed its nextUpdate" in r.getMessage() for r in caplog.records)
    gw = await cert_gateway(backend.port, ca, server_cert, path.read_bytes(), crls)
    try:
        with pytest.raises(HandshakeFailed, match="alert certificate expired"):  # OpenSSL: CRL has expired
            await cert_connect(gw, client, ca)
        path.write_bytes(crl_bytes(ca, []))  # the operator installs a fresh CRL: no restart
        bump(path)
        await eventually(lambda: crls.generation == 1)
        await asyncio.sleep(0.1)
        sa = await cert_connect(gw, client, ca)
        assert (await sa.request(onem2m(f"/{CLIENT_CSE}"))).status == 200
        await sa.close()
    finally:
        await gw.close()


def test_crl_warning_before_next_update(ca: Issued, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from m2msec.crl import CRLFile

    path = tmp_path / "ca.crl"
    path.write_bytes(crl_bytes(ca, [], days=1))
    CRLFile(path, trusted=[ca.certificate], warning_margin=2 * 86400)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "reaches its nextUpdate" in warnings[0].getMessage()
    caplog.clear()
    path.write_bytes(crl_bytes(ca, [], days=3))
    CRLFile(path, trusted=[ca.certificate])  # default margin (one day): three days left is quiet
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- the pure decision, time injected


def test_sa_status_pure(ca: Issued) -> None:
    from m2msec.crl import CRLSet
    from m2msec.gateway.revocation import Grant, sa_status

    entry = PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE)
    psk = Grant(1000.0, LIGHT1_ID, entry, None)
    table = MemoryPSKTable([entry])
    assert sa_status(psk, 1099.0, max_lifetime=100, lookup=table.lookup, crls=None) is None
    assert "lifetime" in (sa_status(psk, 1100.0, max_lifetime=100, lookup=table.lookup, crls=None) or "")
    assert "failed" in (sa_status(psk, 1001.0, max_lifetime=100, lookup=lambda _: 1 // 0, crls=None) or "")

    client = issue(ca, CertificateFlavour.CSE_ID, CLIENT_CSE, sp_domain=SP, days=10)
    t0 = client.certificate.not_valid_before_utc.timestamp()
    cert = Grant(t0, None, None, client.certificate)
    issued_at = client.certificate.not_valid_before_utc
    fresh = CRLSet((create_crl(ca, [], now=issued_at),))
    revoked = CRLSet((create_crl(ca, [client.certificate.serial_number], now=issued_at),))
    foreign = CRLSet((create_crl(create_ca("other root", permitted_dns=[SP]), [], now=issued_at),))
    big = 10**9
    assert sa_status(cert, t0 + 60, max_lifetime=big, lookup=None, crls=fresh) is None
    assert "is revoked" in (sa_status(cert, t0 + 60, max_lifetime=big, lookup=None, crls=revoked) or "")
    assert "no CRL from its issuer" in (sa_status(cert, t0 + 60, max_lifetime=big, lookup=None, crls=foreign) or "")
    assert "nextUpdate" in (sa_status(cert, t0 + 8 * 86400, max_lifetime=big, lookup=None, crls=fresh) or "")
    assert "expired" in (sa_status(cert, t0 + 11 * 86400, max_lifetime=big, lookup=None, crls=None) or "")


# -- CLI: one clear line, non-zero exit


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--crl", "{ca}"], "holds no CRL"),  # a certificate given as --crl: refused, not "CRL checking on" with none
        (["--crl", "{tmp}/absent.crl"], "cannot read CRL file"),
        (["--crl", "{tmp}/forged.crl"], "holds a CRL not signed by any client CA certificate"),  # D50
        (["--max-sa-lifetime", "0"], "--max-sa-lifetime must be a positive number of seconds"),
    ],
)
def test_gateway_cli_refuses_bad_crl_and_lifetime(
    tmp_path: Path, ca: Issued, server_cert: Issued, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from m2msec.cli.main import main
    from m2msec.pki import write_issued

    srv, _ = write_issued(server_cert, tmp_path / "gw")
    ca_crt, _ = write_issued(Issued(ca.certificate, None), tmp_path / "ca")
    table = tmp_path / "psk.toml"
    write_table(table, (LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE))
    forger = create_ca("provider root", permitted_dns=[SP])  # the same name as the client CA, another key
    (tmp_path / "forged.crl").write_bytes(crl_bytes(forger, []))
    # every case is refused before anything starts serving (the backend port is never contacted)
    args = ["gateway", "--psk-table", str(table), "--backend", "http://127.0.0.1:9", "--listen", "127.0.0.1:0",
            "--cert", str(srv), "--key", str(tmp_path / "gw.key"), "--client-ca", str(ca_crt),
            *[a.replace("{ca}", str(ca_crt)).replace("{tmp}", str(tmp_path)) for a in extra]]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


async def test_coaps_crl_reload_ends_a_live_certificate_peer(
    coap_cse: tuple[CoapCSE, int], ca: Issued, server_cert: Issued, tmp_path: Path  # noqa: F811
) -> None:
    """The coaps side takes reloaded CRLs too: a new handshake is refused, the live peer's next request is 4106."""
    from m2msec.crl import CRLFile
    from m2msec.tls.profiles import ECDHE_ECDSA_DTLS

    client = issue(ca, CertificateFlavour.CSE_ID, CLIENT_CSE, sp_domain=SP)
    path = tmp_path / "ca.crl"
    path.write_bytes(crl_bytes(ca, []))
    crls = CRLFile(path, trusted=[ca.certificate])
    cert = CertificateConfig(server_cert.certificate_pem(), server_cert.private_key_pem(),
                             trust_anchors_pem=ca.certificate_pem(), crl_pem=path.read_bytes())
    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=coap_cse[1], port=0, reload_interval=0.05,
                                  profiles=(ONEM2M_DTLS_PSK, ECDHE_ECDSA_DTLS), certificate=cert,
                                  cse_id=GATEWAY_CSE, sp_id=SP), MemoryPSKTable(), crls=crls)
    await gw.start()

    async def cert_peer() -> CoapsPeer:
        ctx = TLSContext.dtls_client(ClientConfig(None, profiles=(ECDHE_ECDSA_DTLS,), certificate=CertificateConfig(
            client.certificate_pem(), client.private_key_pem(), trust_anchors_pem=ca.certificate_pem()),
            peer_entity=GATEWAY_CSE))
        transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, ctx, handshake_timeout=5)
        assert isinstance(inbox, Inbox)
        _PEERS.append(CoapsPeer(transport, inbox))
        return _PEERS[-1]

    try:
        live = await cert_peer()
        assert rsc(await live.get(f"/{CLIENT_CSE}")) == 2000
        path.write_bytes(crl_bytes(ca, [client.certificate.serial_number]))
        bump(path)
        await eventually(lambda: crls.generation == 1)
        await asyncio.sleep(0.1)
        with pytest.raises(HandshakeFailed, match="alert certificate revoked"):
            await cert_peer()
        answer = await live.get(f"/{CLIENT_CSE}")
        assert (answer.code, rsc(answer)) == (coap.make_code(4, 3), 4106)
        assert b"is revoked" in answer.payload
        await asyncio.wait_for(live.inbox.lost.wait(), 5)
    finally:
        await gw.close()
