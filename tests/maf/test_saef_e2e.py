"""The MAF-based SAEF end to end against the real MAF service (m2msec.maf, in process on loopback, SQLite store,
its clock injected): Entity A (m2msec.saef.establish_maf_sa) -> MAF -> gateway (Entity B, MAFKeyResolver over its
own MAF Handshake) -> a recording CSE."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from m2msec.errors import HandshakeFailed, MAFError
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.maf_resolver import MAFKeyResolver
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.maf.config import MAFConfig
from m2msec.maf.server import RunningMAF, running_maf
from m2msec.saef import PSKCredentials, establish_maf_sa, establish_sa
from m2msec.store import MAFClient as ProvisionedClient
from m2msec.store import open_store

from .test_saef_gateway import CSE, Clock, request

SP = "sp.example.com"
FQDN = "maf.sp.example.com"
KMID_A, KMID_B, KMID_C = f"cae1@{FQDN}", f"gw-b@{FQDN}", f"dev-c@{FQDN}"
KM_A, KM_B, KM_C = SecretKey(b"a" * 32), SecretKey(b"b" * 32), SecretKey(b"c" * 32)
A_ABSOLUTE = f"//{SP}/mn-cse-a/CAE1"
IDB = "/mn-cse-b"  # IdB as Entity A knows it; the MAF keeps targetIDs in absolute form
PSK_ID, PSK_KEY = "plain@in.provider.com", SecretKey(b"p" * 16)


@dataclass
class World:
    maf: RunningMAF
    clock: Clock
    cse: CSE
    gateway: Gateway
    resolver: MAFKeyResolver

    def client(self, kmid: str = KMID_A, km: SecretKey = KM_A) -> MAFClient:
        return MAFClient("127.0.0.1", self.maf.port, MAFCredentials(FQDN, kmid=kmid, km=km), clock=self.clock)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[RunningMAF, Clock]]:
    clock = Clock()
    store = open_store(f"sqlite://{tmp_path}/maf.db")
    store.register_client(ProvisionedClient(KMID_A, KM_A, "/mn-cse-a/CAE1"))
    store.register_client(ProvisionedClient(KMID_B, KM_B, IDB))
    store.register_client(ProvisionedClient(KMID_C, KM_C, ""))  # known by its Credential-ID 11-<KmID>
    with socket.socket() as sock:  # a real port: the MAF announces it in its client configuration (httpPort)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = MAFConfig(listen=f"127.0.0.1:{port}", maf_fqdn=FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/maf.db")
    try:
        async with running_maf(config, store=store, clock=clock) as maf:
            yield maf, clock
    finally:
        store.close()


async def start_gateway(maf_port: int, clock: Clock) -> tuple[CSE, Gateway, MAFKeyResolver]:
    cse = CSE()
    cse.server = await asyncio.start_server(cse.handle, "127.0.0.1", 0)
    table = MemoryPSKTable([PSKEntry(PSK_ID, PSK_KEY, "CPlain")])
    resolver = MAFKeyResolver(MAFClient("127.0.0.1", maf_port, MAFCredentials(FQDN, kmid=KMID_B, km=KM_B),
                                        timeout=1.0, clock=clock), table, clock=clock)
    config = GatewayConfig(backend=Backend("127.0.0.1", cse.server.sockets[0].getsockname()[1]), port=0)
    gateway = Gateway(config, table, maf=resolver)
    await gateway.start()
    return cse, gateway, resolver


async def stop_gateway(cse: CSE, gateway: Gateway, resolver: MAFKeyResolver) -> None:
    await gateway.close()
    await resolver.close()
    assert cse.server is not None
    cse.server.close()
    await cse.server.wait_closed()


@pytest.fixture
async def world(running: tuple[RunningMAF, Clock]) -> AsyncIterator[World]:
    maf, clock = running
    cse, gateway, resolver = await start_gateway(maf.port, clock)
    yield World(maf, clock, cse, gateway, resolver)
    await stop_gateway(cse, gateway, resolver)


async def offer(world: World, suid: int = 32, target: str = IDB) -> PSKCredentials:
    """Entity A registers a Kc and offers it to the gateway as-is (the gateway decides)."""
    async with world.client() as a:
        key = await a.register_key(suid=suid, target_ids=[target], lifetime=600)
    assert key.kc is not None
    return PSKCredentials(f"{key.relative_key_id}@{FQDN}", key.kc, peer_entity=IDB)


async def test_full_flow_the_cse_sees_the_source_and_a_foreign_from_is_4106(world: World) -> None:
    async with world.client() as a:
        sa = await establish_maf_sa("127.0.0.1", world.gateway.port, maf=a, peer_entity=IDB, lifetime=600)
        assert a.registration is not None and a.registration.maf_client_id == A_ABSOLUTE
    assert sa.maf_key is not None and sa.maf_key.target_ids == (f"//{SP}/mn-cse-b",)
    resp = await sa.request(request(A_ABSOLUTE))
    assert resp.status == 200 and resp.header("x-m2m-rsc") == "2000"
    [seen] = world.cse.requests
    assert seen.header("x-m2m-origin") == A_ABSOLUTE and seen.header("x-m2msec-sa-identity") == A_ABSOLUTE
    assert seen.header("x-m2msec-psk-identity") == f"{sa.maf_key.relative_key_id}@{FQDN}"
    resp = await sa.request(request(f"//{SP}/mn-cse-a/CAdmin", "r2"))  # a second request with a foreign From
    assert resp.status == 403 and resp.header("x-m2m-rsc") == "4106"
    assert len(world.cse.requests) == 1
    await sa.close()
    assert world.resolver.retrievals == 1


async def test_gateway_not_in_target_ids_is_refused(world: World, caplog: pytest.LogCaptureFixture) -> None:
    creds = await offer(world, target="/mn-cse-other")
    with caplog.at_level(logging.WARNING, "m2msec.gateway.maf"), pytest.raises(HandshakeFailed):
        await establish_sa("127.0.0.1", world.gateway.port, creds)
    assert "403 not-a-target" in caplog.text and not world.cse.requests


async def test_a_key_of_another_suid_is_refused(world: World, caplog: pytest.LogCaptureFixture) -> None:
    creds = await offer(world, suid=33)  # an ESPrim key for the gateway, offered as a SAEF key
    with caplog.at_level(logging.WARNING, "m2msec.gateway.maf"), pytest.raises(HandshakeFailed):
        await establish_sa("127.0.0.1", world.gateway.port, creds)
    assert "SUID 33 is not the MAF-based SAEF's" in caplog.text and not world.cse.requests


async def test_expired_kc_ends_the_sa_and_refuses_new_handshakes(world: World,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    async with world.client() as a:
        sa = await establish_maf_sa("127.0.0.1", world.gateway.port, maf=a, peer_entity=IDB, lifetime=60)
    assert (await sa.request(request(A_ABSOLUTE))).status == 200
    world.clock.now += 120  # the MAF's and the gateway's clock: the next request sees it
    resp = await sa.request(request(A_ABSOLUTE, "r2"))
    assert resp.status == 403 and resp.header("x-m2m-rsc") == "4106"
    await sa.close()
    assert sa.maf_key is not None and sa.maf_key.kc is not None
    creds = PSKCredentials(f"{sa.maf_key.relative_key_id}@{FQDN}", sa.maf_key.kc, peer_entity=IDB)
    with caplog.at_level(logging.WARNING, "m2msec.gateway.maf"), pytest.raises(HandshakeFailed):
        await establish_sa("127.0.0.1", world.gateway.port, creds)
    assert "410 key-expired" in caplog.text and len(world.cse.requests) == 1


async def test_credential_id_source_is_unbound_without_a_resolver(world: World) -> None:
    async with world.client(KMID_C, KM_C) as c:
        sa = await establish_maf_sa("127.0.0.1", world.gateway.port, maf=c, peer_entity=IDB, lifetime=600)
    resp = await sa.request(request("CAE9"))
    assert resp.status == 403 and resp.header("x-m2m-rsc") == "4106"  # --unbound reject, as for a PSK

    class Resolver:
        def resolve(self, credential_id: str) -> frozenset[str] | None:
            return frozenset({"CAE9"}) if credential_id == f"11-{KMID_C}" else None

    world.gateway.resolver = Resolver()
    await sa.close()
    async with world.client(KMID_C, KM_C) as c:
        sa = await establish_maf_sa("127.0.0.1", world.gateway.port, maf=c, peer_entity=IDB, lifetime=600)
    assert (await sa.request(request("CAE9"))).status == 200
    await sa.close()
    [seen] = world.cse.requests
    assert seen.header("x-m2msec-credential-id") == f"11-{KMID_C}"


async def test_maf_down_fails_that_client_only(running: tuple[RunningMAF, Clock],
                                               caplog: pytest.LogCaptureFixture) -> None:
    maf, clock = running
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cse, gateway, resolver = await start_gateway(dead, clock)  # the gateway's MAF is unreachable
    try:
        async with MAFClient("127.0.0.1", maf.port, MAFCredentials(FQDN, kmid=KMID_A, km=KM_A), clock=clock) as a:
            key = await a.register_key(suid=32, target_ids=[IDB], lifetime=600)
        assert key.kc is not None
        with caplog.at_level(logging.WARNING, "m2msec.gateway.maf"), pytest.raises(HandshakeFailed):
            await establish_sa("127.0.0.1", gateway.port,
                               PSKCredentials(f"{key.relative_key_id}@{FQDN}", key.kc, peer_entity=IDB))
        assert "cannot connect to the MAF" in caplog.text
        plain = await establish_sa("127.0.0.1", gateway.port, PSKCredentials(PSK_ID, PSK_KEY, peer_entity=IDB))
        assert (await plain.request(request("CPlain"))).status == 200
        await plain.close()
    finally:
        await stop_gateway(cse, gateway, resolver)


async def test_client_library_procedures_against_the_service(world: World) -> None:
    async with world.client() as a, world.client(KMID_B, KM_B) as b:
        reg = await a.register(lifetime=600)
        assert reg.maf_client_id == A_ABSOLUTE
        assert "mafClientRegCfg" in await a.configuration()
        await a.update_registration(labels=["x"])
        key = await a.register_key(suid=34, target_ids=[IDB, "/mn-cse-c"], lifetime=600, key=SecretKey(b"k" * 16))
        got = await b.retrieve_key(key.relative_key_id)
        assert got.key == SecretKey(b"k" * 16) and got.suid == 34 and got.source_maf_client_id == A_ABSOLUTE
        await a.update_key(key.relative_key_id, target_ids=["/mn-cse-c"])
        with pytest.raises(MAFError) as err:
            await b.retrieve_key(key.relative_key_id)
        assert (err.value.status, err.value.problem) == (403, "not-a-target")
        await a.deregister_key(key.relative_key_id)
        with pytest.raises(MAFError) as err:
            await a.retrieve_key(key.relative_key_id)
        assert err.value.status == 404
        await a.deregister()
        assert a.registration is None
