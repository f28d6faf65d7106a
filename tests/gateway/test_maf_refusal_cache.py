"""D213: the gateway's --maf resolver remembers a MAF refusal for MAF_REFUSAL_CACHE_TTL seconds (a real MAF, a real
gateway, real TLS-PSK handshakes over loopback)."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from m2msec.errors import HandshakeFailed
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.maf_resolver import MAFKeyResolver
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.maf.config import MAFConfig
from m2msec.maf.server import running_maf
from m2msec.saef import ANY_ENTITY, PSKCredentials, establish_maf_sa, establish_sa
from m2msec.store import MAFClient as StoredMAFClient
from m2msec.store import open_store

FQDN, SP = "maf.example.com", "sp.example.com"
A_KMID, A_KM, A_ID = f"cae1@{FQDN}", SecretKey(b"A" * 32), f"//{SP}/cse-a/CAE1"
B_KMID, B_KM, B_ID = f"gateway-b@{FQDN}", SecretKey(b"B" * 32), f"//{SP}/cse-b"


@dataclass
class World:
    gateway: Gateway
    resolver: MAFKeyResolver
    maf_port: int


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    config = MAFConfig(listen="127.0.0.1:0", maf_fqdn=FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/maf.db")
    store = open_store(config.store)
    store.register_client(StoredMAFClient(A_KMID, A_KM, A_ID))
    store.register_client(StoredMAFClient(B_KMID, B_KM, B_ID))
    backend = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        async with running_maf(config, store=store) as maf:
            client = MAFClient("127.0.0.1", maf.port, MAFCredentials(FQDN, kmid=B_KMID, km=B_KM))
            resolver = MAFKeyResolver(client, MemoryPSKTable())
            gateway = Gateway(GatewayConfig(backend=Backend("127.0.0.1", backend.sockets[0].getsockname()[1]),
                                            port=0, handshake_timeout=5.0), MemoryPSKTable(), maf=resolver)
            await gateway.start()
            try:
                yield World(gateway, resolver, maf.port)
            finally:
                await gateway.close()
                await resolver.close()
    finally:
        backend.close()
        store.close()


async def _offer(world: World, identity: str) -> None:
    creds = PSKCredentials(identity, SecretKey(secrets.token_bytes(32)), peer_entity=ANY_ENTITY)
    with pytest.raises(HandshakeFailed):
        await establish_sa("127.0.0.1", world.gateway.port, creds)


async def test_a_refused_identity_is_not_retrieved_again_while_its_refusal_stands(  # the default 5 s
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    made_up = f"{secrets.token_hex(16)}@{FQDN}"
    await _offer(world, made_up)
    assert world.resolver.retrievals == 1
    assert "refused by maf.example.com: 404 unknown-key" in caplog.text
    for spelling in (made_up, made_up.upper(), made_up):  # other spellings share the refusal
        await _offer(world, spelling)
    assert world.resolver.retrievals == 1
    # another made-up identity is its own retrieval
    await _offer(world, f"{secrets.token_hex(16)}@{FQDN}")
    assert world.resolver.retrievals == 2


async def test_after_the_refusal_cache_the_maf_is_asked_again(world: World) -> None:
    world.resolver.refusal_ttl = 0.3
    made_up = f"{secrets.token_hex(16)}@{FQDN}"
    await _offer(world, made_up)
    await _offer(world, made_up)
    assert world.resolver.retrievals == 1
    await asyncio.sleep(0.4)
    await _offer(world, made_up)
    assert world.resolver.retrievals == 2


async def test_a_failure_to_reach_the_maf_is_not_remembered() -> None:
    with socket.socket() as probe:  # a port nothing listens on: every Key Retrieval fails to connect
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    resolver = MAFKeyResolver(MAFClient("127.0.0.1", port, MAFCredentials(FQDN, kmid=B_KMID, km=B_KM), timeout=2.0))
    made_up = f"{secrets.token_hex(16)}@{FQDN}"
    try:
        assert await resolver(made_up) is None
        assert await resolver(made_up) is None
        assert resolver.retrievals == 2
    finally:
        await resolver.close()


async def test_a_registered_key_is_served_and_refusals_of_others_do_not_touch_it(world: World) -> None:
    for _ in range(3):
        await _offer(world, f"{secrets.token_hex(16)}@{FQDN}")
    async with MAFClient("127.0.0.1", world.maf_port, MAFCredentials(FQDN, kmid=A_KMID, km=A_KM)) as maf:
        sa = await establish_maf_sa("127.0.0.1", world.gateway.port, maf=maf, peer_entity=B_ID, lifetime=600)
    assert sa.session.psk_identity is not None
    assert world.resolver.lookup(sa.session.psk_identity) is not None
    assert world.resolver.retrievals == 4
    await sa.close()
