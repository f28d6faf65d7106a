"""Hostile review of `m2msec gateway --maf` (Entity B of the MAF-based SAEF): attacks that worked, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest

from m2msec import http1
from m2msec.errors import HandshakeFailed
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.maf_resolver import MAF_RETRIEVALS_IN_FLIGHT, MAFKeyResolver
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.maf.config import MAFConfig
from m2msec.maf.server import running_maf
from m2msec.saef import ANY_ENTITY, PSKCredentials, establish_maf_sa, establish_sa
from m2msec.store import MAFClient as MAFClient_
from m2msec.store import open_store

FQDN = "maf.example.com"
B_KMID, B_KM = f"gateway-b@{FQDN}", SecretKey(b"B" * 32)


@dataclass
class Blackhole:
    """A MAF that accepts TCP connections and never answers (a MAF overloaded, or a network that drops replies)."""

    server: asyncio.Server
    held: list[asyncio.StreamWriter]

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def gateway_with_silent_maf() -> AsyncIterator[tuple[Gateway, MAFKeyResolver]]:
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    hole = Blackhole(await asyncio.start_server(accept, "127.0.0.1", 0), held)
    backend = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    client = MAFClient("127.0.0.1", hole.port, MAFCredentials(FQDN, kmid=B_KMID, km=B_KM), timeout=2.0)
    resolver = MAFKeyResolver(client, MemoryPSKTable())
    config = GatewayConfig(backend=Backend("127.0.0.1", backend.sockets[0].getsockname()[1]), port=0,
                           handshake_timeout=5.0)
    gateway = Gateway(config, MemoryPSKTable(), maf=resolver)
    await gateway.start()
    try:
        yield gateway, resolver
    finally:
        await gateway.close()
        await resolver.close()
        for w in held:
            w.close()
        hole.server.close()
        backend.close()


async def _hello_and_leave(port: int) -> None:
    """An unauthenticated client: a ClientHello offering a made-up MAF Key Identifier, then gone."""
    creds = PSKCredentials(f"{secrets.token_hex(16)}@{FQDN}", SecretKey(secrets.token_bytes(32)),
                           peer_entity=ANY_ENTITY)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(establish_sa("127.0.0.1", port, creds), 0.3)


async def test_made_up_maf_identities_cannot_queue_unbounded_key_retrievals(caplog: pytest.LogCaptureFixture) -> None:
    # Each made-up identity used to start a Key Retrieval that outlived its handshake (shielded for the other
    # waiters) and queued behind the others on the gateway's one MAF connection: a client sending ClientHellos
    # and leaving piled up work for (attempts x MAF timeout) seconds, ahead of every real client's retrieval.
    assert MAF_RETRIEVALS_IN_FLIGHT >= 1
    async with gateway_with_silent_maf() as (gateway, resolver):
        resolver.max_inflight = 4
        for _ in range(16):
            await _hello_and_leave(gateway.port)
        assert resolver.retrievals <= 4
        assert resolver.refused_busy >= 12
        assert "retrievals are running already" in caplog.text


SP = "sp.example.com"
A_KMID, A_KM, A_ID = f"cae1@{FQDN}", SecretKey(b"A" * 32), f"//{SP}/cse-a/CAE1"
B_ID = f"//{SP}/cse-b"


@dataclass
class World:
    gateway: Gateway
    resolver: MAFKeyResolver
    maf_port: int

    def entity_a(self) -> MAFClient:
        return MAFClient("127.0.0.1", self.maf_port, MAFCredentials(FQDN, kmid=A_KMID, km=A_KM))


async def _cse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while await http1.read_message(conn, reader) is not None:
            await http1.send_message(conn, writer, http1.Message(
                headers=[("x-m2m-rsc", "2000"), ("content-type", "application/json")], body=b"{}", status=200))
            conn.start_next_cycle()
    except (http1.HTTPError, ConnectionError, h11.LocalProtocolError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """The real MAF service (A = an AE, B = the gateway), and the gateway with --maf in front of a CSE."""
    config = MAFConfig(listen="127.0.0.1:0", maf_fqdn=FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/maf.db")
    store = open_store(config.store)
    store.register_client(MAFClient_(A_KMID, A_KM, A_ID))
    store.register_client(MAFClient_(B_KMID, B_KM, B_ID))
    cse = await asyncio.start_server(_cse, "127.0.0.1", 0)
    try:
        async with running_maf(config, store=store) as maf:
            client = MAFClient("127.0.0.1", maf.port, MAFCredentials(FQDN, kmid=B_KMID, km=B_KM))
            resolver = MAFKeyResolver(client, MemoryPSKTable())
            gateway = Gateway(GatewayConfig(backend=Backend("127.0.0.1", cse.sockets[0].getsockname()[1]), port=0,
                                            handshake_timeout=5.0), MemoryPSKTable(), maf=resolver)
            await gateway.start()
            try:
                yield World(gateway, resolver, maf.port)
            finally:
                await gateway.close()
                await resolver.close()
    finally:
        cse.close()
        store.close()


def _request(origin: str, ri: str) -> http1.Message:
    return http1.Message(headers=[("host", "cse-b"), ("x-m2m-origin", origin), ("x-m2m-ri", ri), ("x-m2m-rvi", "3")],
                         method="GET", target="/cse-b")


def _spellings(identity: str, count: int) -> list[str]:
    """Other spellings of one MAF Key Identifier: hex digits and MAF-FQDN in other letter cases."""
    relative, _, fqdn = identity.partition("@")
    letters = [i for i, c in enumerate(relative) if c in "abcdef"]
    out = []
    for n in range(1, count + 1):
        chars = list(relative)
        for bit, i in enumerate(letters[:12]):
            if n >> bit & 1:
                chars[i] = chars[i].upper()
        out.append("".join(chars) + "@" + (fqdn.upper() if n > 2 ** 12 else fqdn))
    return out


async def test_other_spellings_of_an_overheard_key_id_neither_retrieve_again_nor_evict_live_keys(
        world: World) -> None:
    # Entity A's MAF Key Identifier travels in clear in its ClientHello. Anyone who saw it could offer it in other
    # letter cases (the hex and the FQDN are case-insensitive): each spelling was a separate cache entry and a
    # separate, successful Key Retrieval, so a few thousand ClientHellos without any key evicted every cached Kc
    # (D92: a live SA whose key is dropped ends at its next request) and made the MAF work for each of them.
    world.resolver.max_cache = 4
    async with world.entity_a() as maf:
        sa = await establish_maf_sa("127.0.0.1", world.gateway.port, maf=maf, peer_entity=B_ID, lifetime=600)
    assert (await sa.request(_request(A_ID, "r1"))).header("x-m2m-rsc") == "2000"
    assert world.resolver.retrievals == 1
    identity = sa.session.psk_identity
    assert identity is not None
    for spelling in _spellings(identity, 8):  # the attacker has no Kc: its handshakes fail
        creds = PSKCredentials(spelling, SecretKey(secrets.token_bytes(32)), peer_entity=ANY_ENTITY)
        with pytest.raises(HandshakeFailed):
            await establish_sa("127.0.0.1", world.gateway.port, creds)
    assert world.resolver.retrievals == 1
    resp = await sa.request(_request(A_ID, "r2"))
    assert resp.status == 200 and resp.header("x-m2m-rsc") == "2000"
    await sa.close()
    # Entity A itself may still spell its identifier in upper case: same key, same association, no retrieval
    assert sa.maf_key is not None and sa.maf_key.kc is not None
    upper = await establish_sa("127.0.0.1", world.gateway.port,
                               PSKCredentials(identity.upper(), sa.maf_key.kc, peer_entity=B_ID))
    assert upper.session.psk_identity == identity.upper()
    assert (await upper.request(_request(A_ID, "r3"))).header("x-m2m-rsc") == "2000"
    assert (await upper.request(_request("//sp.example.com/cse-a/CAE2", "r4"))).header("x-m2m-rsc") == "4106"
    await upper.close()
    assert world.resolver.retrievals == 1
