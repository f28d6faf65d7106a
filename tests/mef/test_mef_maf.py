"""KmID retrieval with a remotely provisioned Km, end to end over real sockets: an Enrolee enrols at the real MEF
(tests/mef/world.py), runs a MAF Handshake with (KeID, Km = §10.3.7 KDF(Ke, 21, MAF-FQDN)) against the real MAF
(which fetches Km from the MEF as its Enrolment Target), gets ``assignedSymmKeyID`` from Client Registration,
then uses (KmID, Km) for later MAF Handshakes and a MAF-based SAEF through the gateway to a recording CSE."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from m2msec import http1
from m2msec.errors import ConfigurationError, HandshakeFailed, MAFError
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.maf_resolver import MAFKeyResolver
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.maf.config import MAFConfig
from m2msec.maf.server import RunningMAF, running_maf
from m2msec.mef.client import Enrolment, MEFCredentials, enrol
from m2msec.mef.procedures import add_target
from m2msec.saef import establish_maf_sa
from m2msec.store import KeyStore, open_store
from m2msec.store import MAFClient as ProvisionedClient

from .world import ENROLEE_ID, KPM, KPMID, MAF, MEF_FQDN, TARGET_PSKS, World

# TS-0003 §10.3.7's label, typed here from the clause (never m2msec.mef.kdf's constant)
LABEL = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"
GW_KMID, GW_KM, IDB = f"gw-b@{MAF}", SecretKey(b"b" * 32), "/mn-cse-b"
MAF2, MAF2_PSK = "maf2.sp.example.com", SecretKey(bytes(range(1, 33)))
KMID_RE = re.compile(r"[0-9a-f]{32}@" + re.escape(MAF))


def km_of(ke: SecretKey, suid: str, target: str) -> SecretKey:
    return SecretKey(hmac.new(ke.reveal(), LABEL + suid.encode("ascii") + target.encode(), hashlib.sha256).digest())


def psk_file(path: Path, key: SecretKey) -> str:
    path.write_text(key.reveal().hex(), encoding="ascii")
    os.chmod(path, 0o600)
    return str(path)


@dataclass
class CSE:
    requests: list[http1.Message] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (req := await http1.read_message(conn, reader)) is not None:
                self.requests.append(req)
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("x-m2m-rsc", "2000"), ("content-type", "application/json")], body=b"{}", status=200))
                conn.start_next_cycle()
        except (http1.HTTPError, ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            writer.close()


@dataclass
class Both:
    mef: World
    maf: RunningMAF
    store: KeyStore

    @property
    def remote_fetches(self) -> int:
        assert self.maf.maf.remote is not None
        return self.maf.maf.remote.fetches

    def client(self, identity: str, km: SecretKey, **kw: object) -> MAFClient:
        creds = MAFCredentials(MAF, kmid=identity, km=km, mef_fqdn=MEF_FQDN)
        return MAFClient("127.0.0.1", self.maf.port, creds, clock=self.mef.clock, **kw)  # type: ignore[arg-type]

    async def enrol(self) -> Enrolment:
        return await enrol(self.mef.address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN, maf_enrolment=True)


def maf_config(tmp_path: Path, world: World, maf_fqdn: str = MAF, psk: SecretKey = TARGET_PSKS[MAF]) -> MAFConfig:
    return MAFConfig(listen="127.0.0.1:0", maf_fqdn=maf_fqdn, sp_id="sp.example.com",
                     store=f"sqlite://{tmp_path}/maf-{maf_fqdn}.db", mef=world.address, mef_fqdn=MEF_FQDN,
                     mef_psk_file=psk_file(tmp_path / f"{maf_fqdn}.psk", psk))


@pytest.fixture
async def both(world: World, tmp_path: Path) -> AsyncIterator[Both]:
    config = maf_config(tmp_path, world)
    store = open_store(config.store)
    store.register_client(ProvisionedClient(GW_KMID, GW_KM, IDB))  # the gateway's own MAF client
    try:
        async with running_maf(config, store=store, clock=world.clock) as maf:
            yield Both(world, maf, store)
    finally:
        store.close()


async def test_keid_registration_assigns_a_kmid_then_the_kmid_runs_a_saef(both: Both) -> None:
    enrolment = await both.enrol()
    km = enrolment.credential(21, MAF)
    assert km == km_of(enrolment.ke, "21", MAF)  # the Enrolee's Km is the clause's HMAC-SHA-256
    seen: list[str] = []
    async with both.client(str(enrolment.keid), km, on_kmid=seen.append) as a:
        reg = await a.register()
        kmid = reg.assigned_symm_key_id
        assert kmid is not None and KMID_RE.fullmatch(kmid) and seen == [kmid]
        assert reg.maf_client_id == ENROLEE_ID and reg.expiration <= enrolment.expires
        assert a.credentials.kmid == kmid and not a.credentials.is_keid
        record = both.store.get_client(kmid)
        assert record is not None and record.km == km and record.identity == ENROLEE_ID
        assert record.expires is not None and record.expires <= enrolment.expires  # §10.7: Km never outlives Ke
        assert both.remote_fetches == 1

        cse = CSE()
        cse_server = await asyncio.start_server(cse.handle, "127.0.0.1", 0)
        resolver = MAFKeyResolver(MAFClient("127.0.0.1", both.maf.port, MAFCredentials(MAF, kmid=GW_KMID, km=GW_KM),
                                            timeout=2.0, clock=both.mef.clock), MemoryPSKTable([]),
                                  clock=both.mef.clock)
        gateway = Gateway(GatewayConfig(backend=Backend("127.0.0.1", cse_server.sockets[0].getsockname()[1]),
                                        port=0, handshake_timeout=5.0), MemoryPSKTable([]), maf=resolver)
        await gateway.start()
        try:
            sa = await establish_maf_sa("127.0.0.1", gateway.port, maf=a, peer_entity=IDB, lifetime=600)
            resp = await sa.request(http1.Message(headers=[("host", "cse-b"), ("x-m2m-origin", ENROLEE_ID),
                                                           ("x-m2m-ri", "r1"), ("x-m2m-rvi", "3")],
                                                  method="GET", target="/cse-b"))
            assert resp.status == 200 and resp.header("x-m2m-rsc") == "2000"
            [got] = cse.requests
            assert got.header("x-m2m-origin") == ENROLEE_ID and got.header("x-m2msec-sa-identity") == ENROLEE_ID
            await sa.close()
        finally:
            await gateway.close()
            await resolver.close()
            cse_server.close()
            await cse_server.wait_closed()
    assert both.remote_fetches == 1  # the key procedures ran over (KmID, Km): the MEF was not asked again

    async with MAFClient("127.0.0.1", both.maf.port, MAFCredentials(MAF, kmid=kmid, km=km),
                         clock=both.mef.clock) as again:  # a fresh client from the stored (KmID, Km)
        assert "mafClientRegCfg" in await again.configuration(reg.reg_id)

    both.mef.clock.now = enrolment.expires + 1  # Ke expired: so has the KmID
    with pytest.raises(HandshakeFailed):
        async with MAFClient("127.0.0.1", both.maf.port, MAFCredentials(MAF, kmid=kmid, km=km),
                             clock=both.mef.clock) as late:
            await late.configuration(reg.reg_id)


async def test_a_second_registration_replaces_the_enrolee_s_previous_kmid(both: Both) -> None:
    enrolment = await both.enrol()
    km = enrolment.credential(21, MAF)
    async with both.client(str(enrolment.keid), km) as a:
        first = (await a.register()).assigned_symm_key_id
    async with both.client(str(enrolment.keid), km) as b:
        second = (await b.register()).assigned_symm_key_id
    assert first and second and first != second
    old, new = both.store.get_client(first), both.store.get_client(second)
    assert old is None and new is not None and new.status == "active"  # the replaced record is deleted (D211)
    with pytest.raises(HandshakeFailed):
        async with MAFClient("127.0.0.1", both.maf.port, MAFCredentials(MAF, kmid=first, km=km)) as stale:
            await stale.configuration("x")
    assert both.remote_fetches == 1  # the second KeID handshake used the cached Km (until the MEF's lifetime)


async def test_other_procedures_on_a_keid_session_are_refused(both: Both) -> None:
    enrolment = await both.enrol()
    async with both.client(str(enrolment.keid), enrolment.credential(21, MAF)) as a:
        for call in (a.configuration("0123"), a.deregister("0123"), a.update_registration("0123", labels=["x"])):
            with pytest.raises(MAFError) as err:
                await call
            assert (err.value.status, err.value.problem) == (403, "kmid-required")
    assert both.store.ids("maf-client") == [GW_KMID]  # nothing assigned


async def test_suid_mismatch_fails_the_handshake(both: Both) -> None:
    enrolment = await both.enrol()
    wrong = enrolment.credential(22, MAF)  # a Kpsa-style key for the MAF: the MAF fetched the SUID 21 Km
    assert wrong == km_of(enrolment.ke, "22", MAF)
    with pytest.raises(HandshakeFailed):
        async with both.client(str(enrolment.keid), wrong) as a:
            await a.register()
    assert both.remote_fetches == 1 and both.store.ids("maf-client") == [GW_KMID]


async def test_expired_ke_is_refused(both: Both, caplog: pytest.LogCaptureFixture) -> None:
    enrolment = await both.enrol()
    both.mef.clock.now = enrolment.expires + 1
    with caplog.at_level(logging.WARNING, "m2msec.maf.enrolment"), pytest.raises(HandshakeFailed):
        async with both.client(str(enrolment.keid), enrolment.credential(21, MAF)) as a:
            await a.register()
    assert "ke-expired" in caplog.text
    assert both.store.ids("maf-client") == [GW_KMID]


async def test_a_maf_the_enrolee_does_not_list_is_refused(world: World, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    add_target(world.store, MAF2, "maf", MAF2_PSK)  # a MAF the MEF knows, but not one of this enrolee's targets
    enrolment = await enrol(world.address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN, maf_enrolment=True)
    async with running_maf(maf_config(tmp_path, world, MAF2, MAF2_PSK), clock=world.clock) as maf2:
        creds = MAFCredentials(MAF2, kmid=str(enrolment.keid), km=enrolment.credential(21, MAF2), mef_fqdn=MEF_FQDN)
        with caplog.at_level(logging.WARNING, "m2msec.maf.enrolment"), pytest.raises(HandshakeFailed):
            async with MAFClient("127.0.0.1", maf2.port, creds, clock=world.clock) as a:
                await a.register()
    assert "not-the-target" in caplog.text
    assert str(enrolment.ke.reveal().hex()) not in caplog.text


def test_config_checks(tmp_path: Path) -> None:
    key = psk_file(tmp_path / "k", TARGET_PSKS[MAF])
    base = MAFConfig(maf_fqdn=MAF, mef="127.0.0.1:1", mef_fqdn=MEF_FQDN, mef_psk_file=key)
    with pytest.raises(ConfigurationError, match="D189"):
        dataclasses.replace(base, mef_fqdn=MAF)
    with pytest.raises(ConfigurationError, match="exactly one"):
        dataclasses.replace(base, mef_psk_file="")
    with pytest.raises(ConfigurationError, match="need mef"):
        MAFConfig(mef_fqdn=MEF_FQDN)
    with pytest.raises(ConfigurationError):
        MAFCredentials(MAF, kmid=f"00ff@{MEF_FQDN}", km=SecretKey(b"k" * 32))  # a KeID without mef_fqdn


async def test_concurrent_keid_handshakes_fetch_once(both: Both) -> None:
    enrolment = await both.enrol()
    km = enrolment.credential(21, MAF)
    clients = [both.client(str(enrolment.keid), km) for _ in range(5)]
    try:
        results = await asyncio.gather(*(c.configuration("0123") for c in clients), return_exceptions=True)
    finally:
        for c in clients:
            await c.close()
    assert all(isinstance(r, MAFError) and r.problem == "kmid-required" for r in results)
    assert both.remote_fetches == 1


async def test_a_key_procedure_from_a_keid_client_registers_first_then_uses_the_kmid(both: Both) -> None:
    enrolment = await both.enrol()
    async with both.client(str(enrolment.keid), enrolment.credential(21, MAF)) as a:
        key = await a.register_key(suid=32, target_ids=[IDB], lifetime=600)
        assert a.registration is not None and a.registration.assigned_symm_key_id == a.credentials.kmid
    assert key.kc is not None and key.source_maf_client_id == ENROLEE_ID


async def test_an_unreachable_mef_fails_keid_handshakes_only(world: World, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    enrolment = await enrol(world.address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN, maf_enrolment=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    config = dataclasses.replace(maf_config(tmp_path, world), mef=f"127.0.0.1:{dead}", mef_timeout=1.0)
    store = open_store(config.store)
    store.register_client(ProvisionedClient(GW_KMID, GW_KM, IDB))
    try:
        async with running_maf(config, store=store, clock=world.clock) as maf:
            creds = MAFCredentials(MAF, kmid=str(enrolment.keid), km=enrolment.credential(21, MAF), mef_fqdn=MEF_FQDN)
            with caplog.at_level(logging.WARNING, "m2msec.maf.enrolment"), pytest.raises(HandshakeFailed):
                async with MAFClient("127.0.0.1", maf.port, creds, clock=world.clock) as a:
                    await a.register()
            assert "cannot ask the MEF" in caplog.text
            async with MAFClient("127.0.0.1", maf.port, MAFCredentials(MAF, kmid=GW_KMID, km=GW_KM),
                                 clock=world.clock) as gw:
                assert (await gw.register(lifetime=600)).assigned_symm_key_id is None
    finally:
        store.close()
