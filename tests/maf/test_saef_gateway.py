"""The MAF-based SAEF through the gateway over real sockets, with the in-memory MAF of saef_maf_stub (whose clock
the tests set): Entity A -> MAF -> gateway (Entity B) -> a recording CSE. The same flow against the real MAF
service is tests/maf/test_saef_e2e.py."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11
import pytest

from m2msec import http1
from m2msec.errors import HandshakeFailed
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.maf_resolver import MAFKeyResolver
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.saef import PSKCredentials, establish_maf_sa, establish_sa
from m2msec.transport.psk_resolver import MISS

from .saef_maf_stub import StubMAF

FQDN = "maf.example.com"
A_KMID, B_KMID, C_KMID = "entity-a@maf.example.com", "gateway-b@maf.example.com", "entity-c@maf.example.com"
A_KM, B_KM, C_KM = SecretKey(b"A" * 32), SecretKey(b"B" * 32), SecretKey(b"C" * 32)
A_ID, IDB = "//sp.example.com/cse-a/CAE1", "//sp.example.com/cse-b"
PSK_ID, PSK_KEY = "plain@in.provider.com", SecretKey(b"p" * 16)


@dataclass
class Clock:
    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now


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
class World:
    maf: StubMAF
    maf_port: int
    cse: CSE
    gateway: Gateway
    resolver: MAFKeyResolver
    clock: Clock

    async def close(self) -> None:
        await self.gateway.close()
        await self.resolver.close()
        await self.maf.close()
        assert self.cse.server is not None
        self.cse.server.close()
        await self.cse.server.wait_closed()

    def entity_a(self, kmid: str = A_KMID, km: SecretKey = A_KM) -> MAFClient:
        return MAFClient("127.0.0.1", self.maf_port, MAFCredentials(FQDN, kmid=kmid, km=km), clock=self.clock)


async def start_world(clock: Clock, *, maf_port: int | None = None, **gw: object) -> World:
    stub = StubMAF(FQDN, {A_KMID: (A_KM, A_ID), B_KMID: (B_KM, IDB), C_KMID: (C_KM, None)}, clock=clock)
    port = await stub.start()
    cse = CSE()
    cse.server = await asyncio.start_server(cse.handle, "127.0.0.1", 0)
    table = MemoryPSKTable([PSKEntry(PSK_ID, PSK_KEY, "CPlain")])
    client = MAFClient("127.0.0.1", maf_port or port, MAFCredentials(FQDN, kmid=B_KMID, km=B_KM), timeout=1.0,
                       clock=clock)
    resolver = MAFKeyResolver(client, table, clock=clock)
    config = GatewayConfig(backend=Backend("127.0.0.1", cse.server.sockets[0].getsockname()[1]), port=0,
                           handshake_timeout=5.0)
    gateway = Gateway(config, table, maf=resolver, **gw)  # type: ignore[arg-type]
    await gateway.start()
    return World(stub, port, cse, gateway, resolver, clock)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = await start_world(Clock())
    yield w
    await w.close()


def request(origin: str, ri: str = "r1") -> http1.Message:
    return http1.Message(headers=[("host", "cse-b"), ("x-m2m-origin", origin), ("x-m2m-ri", ri), ("x-m2m-rvi", "3")],
                         method="GET", target="/cse-b")


async def test_full_flow_and_a_foreign_from_is_4106(world: World) -> None:
    async with world.entity_a() as maf:
        sa = await establish_maf_sa("127.0.0.1", world.gateway.port, maf=maf, peer_entity=IDB, lifetime=600)
    assert sa.maf_key is not None and sa.session.psk_identity == f"{sa.maf_key.relative_key_id}@{FQDN}"
    resp = await sa.request(request(A_ID))
    assert resp.status == 200 and resp.header("x-m2m-rsc") == "2000"
    [seen] = world.cse.requests
    assert seen.header("x-m2m-origin") == A_ID and seen.header("x-m2msec-sa-identity") == A_ID
    assert seen.header("x-m2msec-psk-identity") == sa.session.psk_identity
    resp = await sa.request(request("//sp.example.com/cse-a/CAE2", "r2"))  # another AE's From on A's SA
    assert resp.status == 403 and resp.header("x-m2m-rsc") == "4106"
    assert len(world.cse.requests) == 1
    await sa.close()


async def test_many_handshakes_one_retrieval_then_cached(world: World) -> None:
    async with world.entity_a() as maf:
        key = await maf.register_key(suid=32, target_ids=[IDB], lifetime=600)
    assert key.kc is not None
    creds = PSKCredentials(f"{key.relative_key_id}@{FQDN}", key.kc, peer_entity=IDB)
    sas = await asyncio.gather(*(establish_sa("127.0.0.1", world.gateway.port, creds) for _ in range(8)))
    assert world.resolver.retrievals == 1
    again = await establish_sa("127.0.0.1", world.gateway.port, creds)
    assert world.resolver.retrievals == 1
    for sa in [*sas, again]:
        await sa.close()


async def test_target_not_authorized_is_refused(world: World, caplog: pytest.LogCaptureFixture) -> None:
    async with world.entity_a() as maf:
        with caplog.at_level(logging.WARNING, "m2msec.gateway.maf"), pytest.raises(HandshakeFailed):
            # the Kc is for another CSE: B may not retrieve it, so B cannot prove to A it holds it
            key = await maf.register_key(suid=32, target_ids=["//sp.example.com/cse-other"], lifetime=600)
            assert key.kc is not None
            await establish_sa("127.0.0.1", world.gateway.port,
                               PSKCredentials(f"{key.relative_key_id}@{FQDN}", key.kc, peer_entity=IDB))
    assert "403 not-a-target" in caplog.text
    assert not world.cse.requests


async def test_a_key_of_another_suid_is_refused(world: World, caplog: pytest.LogCaptureFixture) -> None:
    async with world.entity_a() as maf:
        key = await maf.register_key(suid=33, target_ids=[IDB], lifetime=600)  # an ESPrim key offered to B
    assert key.kc is not None
    with caplog.at_level(logging.WARNING, "m2msec.gateway.maf"), pytest.raises(HandshakeFailed):
        await establish_sa("127.0.0.1", world.gateway.port,
                           PSKCredentials(f"{key.relative_key_id}@{FQDN}", key.kc, peer_entity=IDB))
    assert "SUID 33" in caplog.text and world.resolver.cached(f"{key.relative_key_id}@{FQDN}") is None


async def test_expired_kc_refuses_new_handshakes_and_ends_live_sas(world: World) -> None:
    async with world.entity_a() as maf:
        sa = await establish_maf_sa("127.0.0.1", world.gateway.port, maf=maf, peer_entity=IDB, lifetime=60)
    assert sa.maf_key is not None
    assert (await sa.request(request(A_ID))).status == 200
    world.clock.now += 61  # the gateway's and the MAF's clock: Kc expired; the next request sees it
    resp = await sa.request(request(A_ID, "r2"))
    assert resp.status == 403 and resp.header("x-m2m-rsc") == "4106"
    await sa.close()
    with pytest.raises(HandshakeFailed):  # not from the cache, and the MAF answers key-expired
        await establish_sa("127.0.0.1", world.gateway.port,
                           PSKCredentials(sa.session.psk_identity or "", sa.maf_key.kc or SecretKey(b"x"),
                                          peer_entity=IDB))
    assert world.resolver.retrievals == 2


async def test_credential_id_source_is_resolved_like_a_psk_credential(world: World) -> None:
    class Resolver:
        def resolve(self, credential_id: str) -> frozenset[str] | None:
            return frozenset({"CAE9"}) if credential_id == f"11-{C_KMID}" else None

    world.gateway.resolver = Resolver()
    async with world.entity_a(C_KMID, C_KM) as maf:  # provisioned without an identity: 11-<KmID>
        sa = await establish_maf_sa("127.0.0.1", world.gateway.port, maf=maf, peer_entity=IDB, lifetime=600)
    assert (await sa.request(request("CAE9"))).status == 200
    assert (await sa.request(request("CAE1", "r2"))).header("x-m2m-rsc") == "4106"
    await sa.close()
    [seen] = world.cse.requests
    assert seen.header("x-m2msec-credential-id") == f"11-{C_KMID}" and seen.header("x-m2msec-sa-identity") is None


async def test_maf_down_fails_that_client_only(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    w = await start_world(Clock(), maf_port=dead)
    try:
        async with w.entity_a() as maf:  # A reaches the (real) MAF; B's MAF address is dead
            key = await maf.register_key(suid=32, target_ids=[IDB], lifetime=600)
        assert key.kc is not None
        with caplog.at_level(logging.WARNING, "m2msec.gateway.maf"), pytest.raises(HandshakeFailed):
            await establish_sa("127.0.0.1", w.gateway.port,
                               PSKCredentials(f"{key.relative_key_id}@{FQDN}", key.kc, peer_entity=IDB))
        assert "MAF Key Retrieval" in caplog.text and "failed" in caplog.text
        plain = await establish_sa("127.0.0.1", w.gateway.port, PSKCredentials(PSK_ID, PSK_KEY, peer_entity=IDB))
        resp = await plain.request(request("CPlain"))
        assert resp.status == 200 and json.loads(resp.body) == {}
        await plain.close()
    finally:
        await w.close()


async def test_the_kc_cache_is_bounded(world: World) -> None:
    world.resolver.max_cache = 1
    creds = []
    async with world.entity_a() as maf:
        for _ in range(2):
            key = await maf.register_key(suid=32, target_ids=[IDB], lifetime=600)
            assert key.kc is not None
            creds.append(PSKCredentials(f"{key.relative_key_id}@{FQDN}", key.kc, peer_entity=IDB))
    for c in [*creds, creds[1], creds[0]]:  # the second key pushes the first out; it is retrieved again
        await (await establish_sa("127.0.0.1", world.gateway.port, c)).close()
    assert world.resolver.retrievals == 3
    assert world.resolver.cached(creds[0].kpsa_id) is not None and world.resolver.cached(creds[1].kpsa_id) is None


async def test_a_removed_psk_still_ends_its_sa_at_the_next_request(world: World) -> None:
    plain = await establish_sa("127.0.0.1", world.gateway.port, PSKCredentials(PSK_ID, PSK_KEY, peer_entity=IDB))
    assert (await plain.request(request("CPlain"))).status == 200
    table = world.resolver.table
    assert isinstance(table, MemoryPSKTable)
    table.replace([])  # with --maf the guard reads the in-memory table at once, as without it
    resp = await plain.request(request("CPlain", "r2"))
    assert resp.status == 403 and resp.header("x-m2m-rsc") == "4106"
    await plain.close()


async def test_no_key_material_in_logs_or_errors(world: World, caplog: pytest.LogCaptureFixture) -> None:
    import base64

    with caplog.at_level(logging.DEBUG):
        async with world.entity_a() as maf:
            sa = await establish_maf_sa("127.0.0.1", world.gateway.port, maf=maf, peer_entity=IDB, lifetime=600)
            bad = await maf.register_key(suid=33, target_ids=[IDB], lifetime=600)
        assert sa.maf_key is not None and sa.maf_key.kc is not None and bad.kc is not None
        await sa.request(request(A_ID))
        with pytest.raises(HandshakeFailed) as err:
            await establish_sa("127.0.0.1", world.gateway.port,
                               PSKCredentials(f"{bad.relative_key_id}@{FQDN}", bad.kc, peer_entity=IDB))
        await sa.close()
    text = caplog.text + str(err.value) + repr(sa.maf_key) + repr(world.resolver) + repr(world.resolver.client)
    for secret in (sa.maf_key.kc.reveal(), bad.kc.reveal(), A_KM.reveal(), B_KM.reveal()):
        assert secret.hex() not in text and base64.b64encode(secret).decode() not in text
        assert secret.decode("latin-1") not in text


async def test_lookup_now_answers_cached_kc_and_table_identities_at_once(world: World) -> None:
    async with world.entity_a() as maf:
        key = await maf.register_key(suid=32, target_ids=[IDB], lifetime=60)
    assert key.kc is not None
    identity = f"{key.relative_key_id}@{FQDN}"
    assert world.resolver.lookup_now(identity) is MISS  # not retrieved yet: the transport awaits the resolver
    sa = await establish_sa("127.0.0.1", world.gateway.port, PSKCredentials(identity, key.kc, peer_entity=IDB))
    await sa.close()
    entry = world.resolver.lookup_now(identity)
    assert isinstance(entry, PSKEntry) and entry.identity == identity and entry.entity == A_ID
    plain = world.resolver.lookup_now(PSK_ID)
    assert isinstance(plain, PSKEntry) and plain.entity == "CPlain"
    assert world.resolver.lookup_now("nobody@in.provider.com") is None
    assert world.resolver.lookup_now(f"{'ab' * 8}@other-maf.example.com") is None  # not our MAF: the table's
    world.clock.now += 61
    assert world.resolver.lookup_now(identity) is MISS  # expired: asked again (the MAF says key-expired)
    assert world.resolver.retrievals == 1
