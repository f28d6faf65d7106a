"""Remotely provisioned Kpsa through the gateway, in process over real sockets: the real MEF (tests/mef/world.py,
SQLite, clock injected) -> an Enrolee (mef.client.enrol over TLS-PSK with KpmID/Kpm) -> the gateway (Entity B,
MEFKeyResolver over its own MEF Handshake as Enrolment Target in-cse.sp.example.com) -> a recording CSE.

Every key the tests expect is computed here with hmac + hashlib from the Enrolee's Ke (TS-0003 §10.3.7), never by
m2msec.mef.kdf."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from leaks import assert_no_secret
from m2msec import http1
from m2msec.errors import HandshakeFailed
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.maf_resolver import MAFKeyResolver
from m2msec.gateway.mef_resolver import ChainResolver, MEFKeyResolver, RemoteKeyResolver
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.mef.client import Enrolment, MEFCredentials, MEFFetcher, enrol
from m2msec.mef.config import MEFConfig
from m2msec.mef.procedures import EnrolmentTarget, add_enrolee
from m2msec.mef.server import running_mef
from m2msec.saef import PSKCredentials, establish_sa
from m2msec.store import open_store

from .world import ENROLEE_ID, GW, KPM, KPMID, MEF_FQDN, OTHER, SP, TARGET_PSKS, Clock, World, provision

LABEL = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"
IDB = "/in-cse"
PSK_ID, PSK_KEY = "plain@in.provider.com", SecretKey(b"p" * 16)
LOG = "m2msec.gateway.mef"


def kpsa(enrolment: Enrolment, target: str = GW, suid: bytes = b"22") -> SecretKey:
    """§10.3.7 computed here: HMAC-SHA-256(Ke, label || SUID digits || Enrolment-Target-ID)."""
    return SecretKey(hmac.new(enrolment.ke.reveal(), LABEL + suid + target.encode(), hashlib.sha256).digest())


@dataclass
class CSE:
    requests: list[http1.Message] = field(default_factory=list)
    server: asyncio.Server | None = None

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
class Gw:
    cse: CSE
    gateway: Gateway
    resolver: RemoteKeyResolver

    @property
    def port(self) -> int:
        return self.gateway.port

    async def close(self) -> None:
        await self.gateway.close()
        await self.resolver.close()
        assert self.cse.server is not None
        self.cse.server.close()
        await self.cse.server.wait_closed()


def mef_resolver(address: str, clock: Clock, target: str = GW, table: MemoryPSKTable | None = None,
                 timeout: float = 1.0) -> MEFKeyResolver:
    fetcher = MEFFetcher(address, MEFCredentials(target, TARGET_PSKS[target]), mef_fqdn=MEF_FQDN, timeout=timeout)
    return MEFKeyResolver(fetcher, table, clock=clock)


async def start_gateway(make: object) -> Gw:
    cse = CSE()
    cse.server = await asyncio.start_server(cse.handle, "127.0.0.1", 0)
    table = MemoryPSKTable([PSKEntry(PSK_ID, PSK_KEY, "CPlain")])
    resolver = make(table)  # type: ignore[operator]
    config = GatewayConfig(backend=Backend("127.0.0.1", cse.server.sockets[0].getsockname()[1]), port=0,
                           handshake_timeout=5.0)
    gateway = Gateway(config, table, maf=resolver)
    await gateway.start()
    return Gw(cse, gateway, resolver)


@pytest.fixture
async def gw(world: World) -> AsyncIterator[Gw]:
    g = await start_gateway(lambda table: mef_resolver(world.address, world.clock, table=table))
    yield g
    await g.close()


def request(origin: str, ri: str = "r1") -> http1.Message:
    return http1.Message(headers=[("host", "in-cse"), ("x-m2m-origin", origin), ("x-m2m-ri", ri),
                                  ("x-m2m-rvi", "3")], method="GET", target="/in-cse")


async def enrolled(world: World, kpmid: str = KPMID, kpm: SecretKey = KPM) -> Enrolment:
    return await enrol(world.address, MEFCredentials(kpmid, kpm), mef_fqdn=MEF_FQDN)


async def test_provisioned_kpsa_reaches_the_cse_bound_to_the_enrolee_id(world: World, gw: Gw,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    e = await enrolled(world)
    key = kpsa(e)
    assert e.credential(22, GW) == key  # the Enrolee's derivation is §10.3.7 as computed here
    assert str(e.keid) == e.keid.relative_ke_id.hex() + "@" + MEF_FQDN and e.enrolee_id == ENROLEE_ID
    sa = await establish_sa("127.0.0.1", gw.port, PSKCredentials(str(e.keid), key, peer_entity=IDB))
    resp = await sa.request(request(ENROLEE_ID))
    assert resp.status == 200 and resp.header("x-m2m-rsc") == "2000"
    [seen] = gw.cse.requests
    assert seen.header("x-m2m-origin") == seen.header("x-m2msec-sa-identity") == ENROLEE_ID
    assert seen.header("x-m2msec-psk-identity") == str(e.keid)
    resp = await sa.request(request(f"//{SP}/in-cse/CAE2", "r2"))  # another AE's From on this SA: 4106
    assert resp.status == 403 and resp.header("x-m2m-rsc") == "4106" and len(gw.cse.requests) == 1
    await sa.close()
    assert isinstance(gw.resolver, MEFKeyResolver)
    entry = gw.resolver.lookup(str(e.keid))
    assert entry is not None and entry.key == key and entry.entity == ENROLEE_ID  # the MEF's Ke gave the same key
    # the other hex case shares the cached entry: no second fetch, handshakes answered from the cache
    upper = str(e.keid).replace(e.keid.relative_ke_id.hex(), e.keid.relative_ke_id.hex().upper())
    sas = await asyncio.gather(*(establish_sa("127.0.0.1", gw.port, PSKCredentials(ident, key, peer_entity=IDB))
                                 for ident in (str(e.keid), upper, str(e.keid))))
    assert gw.resolver.fetches == 1
    for s in sas:
        await s.close()
    plain = await establish_sa("127.0.0.1", gw.port, PSKCredentials(PSK_ID, PSK_KEY, peer_entity=IDB))
    assert (await plain.request(request("CPlain", "r3"))).status == 200  # the table still serves its identities
    await plain.close()
    assert_no_secret(caplog.text + repr(gw.resolver) + repr(entry), [e.ke.reveal(), key.reveal(), KPM.reveal()],
                     where="gateway log")


async def test_concurrent_handshakes_one_fetch(world: World, gw: Gw) -> None:
    e = await enrolled(world)
    creds = PSKCredentials(str(e.keid), kpsa(e), peer_entity=IDB)
    sas = await asyncio.gather(*(establish_sa("127.0.0.1", gw.port, creds) for _ in range(6)))
    assert isinstance(gw.resolver, MEFKeyResolver) and gw.resolver.fetches == 1
    for sa in sas:
        await sa.close()


async def test_gateway_not_a_target_of_the_enrolee_is_refused(world: World,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    # the gateway runs as OTHER, a cse target the enrolee does not list; the Enrolee derives for OTHER all the same
    g = await start_gateway(lambda table: mef_resolver(world.address, world.clock, target=OTHER, table=table))
    try:
        e = await enrolled(world)
        key = kpsa(e, OTHER)
        with caplog.at_level(logging.WARNING, LOG), pytest.raises(HandshakeFailed):
            await establish_sa("127.0.0.1", g.port, PSKCredentials(str(e.keid), key, peer_entity=IDB))
        assert f"MEF fetch of '{e.keid}' refused by {MEF_FQDN}: 403 not-the-target" in caplog.text
        assert not g.cse.requests
        assert_no_secret(caplog.text, [e.ke.reveal(), key.reveal()], where="gateway log")
    finally:
        await g.close()


async def test_a_gateway_allowed_only_suid_21_is_refused(world: World, gw: Gw,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    kpm2 = SecretKey(bytes(range(60, 92)))
    add_enrolee(world.store, "kpm-km-only", enrolee_id=f"//{SP}/in-cse/CAE7", kpm=kpm2, lifetime=3600,
                targets=[EnrolmentTarget(GW, (21,))])
    e = await enrolled(world, "kpm-km-only", kpm2)
    for suid in (b"22", b"21"):  # neither the SAEF key nor the Km the record allows is accepted as a Kpsa
        key = kpsa(e, GW, suid)
        with caplog.at_level(logging.WARNING, LOG), pytest.raises(HandshakeFailed):
            await establish_sa("127.0.0.1", gw.port, PSKCredentials(str(e.keid), key, peer_entity=IDB))
    assert f"MEF fetch of '{e.keid}' refused by {MEF_FQDN}: 403 suid-not-allowed" in caplog.text
    assert not gw.cse.requests


async def test_expired_ke_drops_the_cached_key_and_refuses_new_handshakes(
        world: World, gw: Gw, caplog: pytest.LogCaptureFixture) -> None:
    e = await enrolled(world)
    key = kpsa(e)
    sa = await establish_sa("127.0.0.1", gw.port, PSKCredentials(str(e.keid), key, peer_entity=IDB))
    assert (await sa.request(request(ENROLEE_ID))).status == 200
    assert isinstance(gw.resolver, MEFKeyResolver)
    assert gw.resolver.cached(str(e.keid)) is not None
    world.clock.now += 3601  # the enrolee's Enrolment Expiry is 3600 s: past Ke's expiry for the MEF and gateway
    assert gw.resolver.cached(str(e.keid)) is None  # dropped at its expiry
    resp = await sa.request(request(ENROLEE_ID, "r2"))  # the live SA ends at its next request
    assert resp.status == 403 and resp.header("x-m2m-rsc") == "4106"
    await sa.close()
    with caplog.at_level(logging.WARNING, LOG), pytest.raises(HandshakeFailed):
        await establish_sa("127.0.0.1", gw.port, PSKCredentials(str(e.keid), key, peer_entity=IDB))
    assert "410 ke-expired" in caplog.text and gw.resolver.fetches == 2 and len(gw.cse.requests) == 1
    again = await enrolled(world)  # a new enrolment: a new KeID and Kpsa that work
    assert again.keid != e.keid
    sa = await establish_sa("127.0.0.1", gw.port, PSKCredentials(str(again.keid), kpsa(again), peer_entity=IDB))
    assert (await sa.request(request(ENROLEE_ID, "r3"))).status == 200
    await sa.close()


async def test_mef_down_the_gateway_serves_table_and_cached_keids(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    config = MEFConfig(listen="127.0.0.1:0", mef_fqdn=MEF_FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/mef.db")
    store = open_store(config.store, clock=clock)
    provision(store)
    try:
        async with running_mef(config, store=store, clock=clock) as running:
            address = f"127.0.0.1:{running.port}"
            g = await start_gateway(lambda table: mef_resolver(address, clock, table=table, timeout=1.0))
            cached, new = [await enrol(address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN) for _ in range(2)]
            sa = await establish_sa("127.0.0.1", g.port, PSKCredentials(str(cached.keid), kpsa(cached),
                                                                        peer_entity=IDB))
            await sa.close()
        # the MEF is gone; its port now accepts connections and never answers (a hung MEF)
        silent_conns: list[asyncio.StreamWriter] = []

        async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            silent_conns.append(writer)

        host, port = address.rsplit(":", 1)
        hung = await asyncio.start_server(silent, host, int(port))
        try:
            sa = await establish_sa("127.0.0.1", g.port, PSKCredentials(str(cached.keid), kpsa(cached),
                                                                        peer_entity=IDB))
            assert (await sa.request(request(ENROLEE_ID))).status == 200
            await sa.close()
            plain = await establish_sa("127.0.0.1", g.port, PSKCredentials(PSK_ID, PSK_KEY, peer_entity=IDB))
            assert (await plain.request(request("CPlain", "r2"))).status == 200
            await plain.close()
            caplog.clear()
            start = time.monotonic()
            with caplog.at_level(logging.WARNING, LOG), pytest.raises(HandshakeFailed):
                await establish_sa("127.0.0.1", g.port, PSKCredentials(str(new.keid), kpsa(new), peer_entity=IDB))
            elapsed = time.monotonic() - start
            assert 0.9 <= elapsed < 4.0, elapsed  # refused at the 1 s fetch timeout, well before the 5 s handshake's
            lines = [r for r in caplog.records if r.name == LOG]
            assert len(lines) == 1 and f"MEF fetch of '{new.keid}' failed" in lines[0].getMessage()
            assert len(g.cse.requests) == 2
        finally:
            for w in silent_conns:
                w.close()
            hung.close()
            await g.close()
    finally:
        store.close()


async def test_chain_routes_keids_to_the_mef_and_maf_ids_to_the_maf(world: World,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # --maf with --mef: the MAF is unreachable here; a MAF identity must go there, a KeID to the MEF, the rest on
    maf_fqdn = "maf.sp.example.com"
    maf = MAFKeyResolver(MAFClient("127.0.0.1", 9, MAFCredentials(maf_fqdn, kmid=f"gw@{maf_fqdn}",
                                                                  km=SecretKey(b"m" * 32)), timeout=1.0))
    g = await start_gateway(lambda table: ChainResolver([maf, mef_resolver(world.address, world.clock)], table))
    try:
        e = await enrolled(world)
        sa = await establish_sa("127.0.0.1", g.port, PSKCredentials(str(e.keid), kpsa(e), peer_entity=IDB))
        assert (await sa.request(request(ENROLEE_ID))).status == 200
        await sa.close()
        plain = await establish_sa("127.0.0.1", g.port, PSKCredentials(PSK_ID, PSK_KEY, peer_entity=IDB))
        assert (await plain.request(request("CPlain", "r2"))).status == 200
        await plain.close()
        with caplog.at_level(logging.WARNING, "m2msec.gateway"), pytest.raises(HandshakeFailed):
            await establish_sa("127.0.0.1", g.port, PSKCredentials(f"{'ab' * 16}@{maf_fqdn}", SecretKey(b"k" * 32),
                                                                   peer_entity=IDB))
        assert "MAF Key Retrieval" in caplog.text and "MEF fetch" not in caplog.text and maf.retrievals == 1
    finally:
        await g.close()


def test_docs_cite_the_gateway_decisions_with_their_values() -> None:
    from m2msec.gateway import mef_resolver

    root = Path(__file__).resolve().parents[2]
    decisions = (root / "docs" / "decisions.md").read_text()
    mef_doc, gw_doc = (root / "docs" / "mef.md").read_text(), (root / "docs" / "gateway.md").read_text()
    for number, constant in (("D196", "BOUND_ENROLEE_PREFIX"), ("D200", "MEF_FETCHES_IN_FLIGHT"),
                             ("D201", "MEF_KEY_CACHE_SIZE")):
        [row] = [line for line in decisions.splitlines() if line.startswith(f"| {number} |")]
        assert f"m2msec.gateway.mef_resolver.{constant}" in row and number in mef_doc and number in gw_doc
    assert mef_resolver.MEF_FETCHES_IN_FLIGHT == 64 and "at most 64 fetches" in gw_doc
    assert mef_resolver.MEF_KEY_CACHE_SIZE == 4096 and "at most 4096 keys" in gw_doc
    assert mef_resolver.SUID_KPSA == 22
