"""MAFClient over real MAF Handshakes (TLS-PSK over loopback) with the in-memory MAF of saef_maf_stub: every
procedure, the exporter-derived Kc, one such key per handshake, lazy registration, refusals and timeouts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from m2msec.errors import HandshakeFailed, MAFError, TransportError
from m2msec.keys.secret import SecretKey
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.pki import CertificateFlavour, Issued, create_ca, issue
from m2msec.tls.engine import CertificateConfig

from .saef_maf_stub import StubMAF

FQDN = "maf.example.com"
A_KMID, B_KMID = "entity-a@maf.example.com", "entity-b@maf.example.com"
A_KM, B_KM = SecretKey(b"A" * 32), SecretKey(b"B" * 32)
IDB = "//sp.example.com/cse-b"


@pytest.fixture
async def maf() -> AsyncIterator[tuple[StubMAF, int]]:
    stub = StubMAF(FQDN, {A_KMID: (A_KM, "//sp.example.com/cse-a/CAE1"), B_KMID: (B_KM, IDB)})
    port = await stub.start()
    yield stub, port
    await stub.close()


def client(port: int, kmid: str = A_KMID, km: SecretKey = A_KM, **kw: float) -> MAFClient:
    return MAFClient("127.0.0.1", port, MAFCredentials(FQDN, kmid=kmid, km=km), **kw)  # type: ignore[arg-type]


async def test_every_procedure_over_one_handshake(maf: tuple[StubMAF, int]) -> None:
    stub, port = maf
    async with client(port) as a, client(port, B_KMID, B_KM) as b:
        key = await a.register_key(suid=32, target_ids=[IDB], lifetime=600)  # registers first (lazy)
        assert a.registration is not None and a.registration.maf_client_id == "//sp.example.com/cse-a/CAE1"
        assert key.kc is not None and stub.keys[key.relative_key_id]["key"] == key.kc
        assert key.source_maf_client_id == "//sp.example.com/cse-a/CAE1" and key.target_ids == (IDB,)
        got = await b.retrieve_key(key.relative_key_id)
        assert got.key == key.kc and got.suid == 32 and got.source_maf_client_id == key.source_maf_client_id
        cfg = await a.configuration()
        assert cfg["mafClientRegCfg"]["fqdn"] == FQDN
        assert (await a.update_registration(labels=["x"]))["labels"] == ["x"]
        assert "expirationTime" in await a.update_key(key.relative_key_id, lifetime=60)
        supplied = await a.register_key(suid=34, target_ids=[IDB], lifetime=60, key=SecretKey(b"k" * 16))
        assert supplied.kc is None and stub.keys[supplied.relative_key_id]["key"] == SecretKey(b"k" * 16)
        with pytest.raises(MAFError) as err:
            await b.deregister_key(key.relative_key_id)
        assert (err.value.status, err.value.problem) == (403, "not-the-source")
        await a.deregister_key(key.relative_key_id)
        with pytest.raises(MAFError) as err:
            await b.retrieve_key(key.relative_key_id)
        assert (err.value.status, err.value.problem) == (404, "unknown-key")
        await a.deregister()
        assert a.registration is None and not stub.registrations.keys() - {b.registration.reg_id}  # type: ignore[union-attr]
    assert stub.handshakes == 2  # one MAF Handshake per client carried all of its requests


async def test_a_second_exported_key_runs_on_a_new_handshake(maf: tuple[StubMAF, int]) -> None:
    stub, port = maf
    async with client(port) as a:
        first = await a.register_key(suid=32, target_ids=[IDB], lifetime=60)
        second = await a.register_key(suid=32, target_ids=[IDB], lifetime=60)
    assert first.relative_key_id != second.relative_key_id and first.kc != second.kc
    assert stub.handshakes == 2


async def test_relative_key_id_must_be_hex_of_our_kcid(maf: tuple[StubMAF, int]) -> None:
    stub, port = maf
    stub.wrong_relative_id = True
    async with client(port) as a:
        with pytest.raises(MAFError) as err:
            await a.register_key(suid=32, target_ids=[IDB], lifetime=60)
    assert err.value.status == 0 and "hex(KcID)" in str(err.value)


async def test_registration_is_renewed_when_the_maf_forgot_it(maf: tuple[StubMAF, int]) -> None:
    stub, port = maf
    async with client(port) as a:
        await a.register_key(suid=32, target_ids=[IDB], lifetime=60)
        first = a.registration
        stub.registrations.clear()  # the MAF dropped it: 403 not-registered, then one new registration
        await a.register_key(suid=32, target_ids=[IDB], lifetime=60)
        assert a.registration is not None and first is not None and a.registration.reg_id != first.reg_id
    assert sum(r == "POST /maf/v1/registrations" for r in stub.requests) == 2


async def test_wrong_km_and_unreachable_or_silent_maf(maf: tuple[StubMAF, int]) -> None:
    _, port = maf
    async with client(port, km=SecretKey(b"x" * 32)) as a:
        with pytest.raises(HandshakeFailed):
            await a.register(lifetime=60)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    async with client(free) as a:
        with pytest.raises(TransportError):
            await a.register(lifetime=60)
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)  # accepts, never answers
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with client(silent.sockets[0].getsockname()[1], timeout=0.5) as a:
        with pytest.raises(TransportError, match="within"):
            await a.register(lifetime=60)
    assert loop.time() - start < 3
    for w in held:
        w.close()
    silent.close()
    await silent.wait_closed()


def _pki() -> tuple[Issued, Issued, Issued, Issued]:
    ca = create_ca("m2msec MAF test CA", permitted_dns=["example.com"])
    return (ca, issue(ca, CertificateFlavour.FQDN, FQDN), issue(ca, CertificateFlavour.FQDN, "other.example.com"),
            issue(ca, CertificateFlavour.CSE_ID, "cse-a", sp_domain="sp.example.com"))


async def test_certificate_maf_handshake_checks_the_maf_fqdn() -> None:
    ca, maf_cert, other_cert, client_cert = _pki()
    creds = MAFCredentials(FQDN, chain_pem=client_cert.certificate_pem(),
                           private_key_pem=client_cert.private_key_pem(), trust_anchors_pem=ca.certificate_pem())
    for served, ok in ((maf_cert, True), (other_cert, False), (client_cert, False)):
        stub = StubMAF(FQDN, {}, certificate=CertificateConfig(served.certificate_pem(), served.private_key_pem(),
                                                                ca.certificate_pem()))
        port = await stub.start()
        try:
            async with MAFClient("127.0.0.1", port, creds) as a:
                if ok:
                    reg = await a.register(lifetime=60)
                    assert reg.maf_client_id == "cse-a"  # the MAF saw our certificate
                else:
                    with pytest.raises(HandshakeFailed, match="not for the MAF-FQDN"):
                        await a.register(lifetime=60)
        finally:
            await stub.close()


async def test_a_connection_the_maf_closed_is_replaced_once(maf: tuple[StubMAF, int]) -> None:
    stub, port = maf
    stub.close_silently = True
    async with client(port) as a:
        await a.register(lifetime=600)
        await asyncio.sleep(0.05)  # the MAF has closed it by now, the client does not know
        await a.register_key(suid=32, target_ids=[IDB], lifetime=60, key=SecretKey(b"k" * 16))
        await a.configuration()
    assert stub.handshakes == 3 and len(stub.requests) == 3, (stub.handshakes, stub.requests)
