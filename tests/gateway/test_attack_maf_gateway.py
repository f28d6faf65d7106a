"""Hostile review of `m2msec gateway --maf` (Entity B of the MAF-based SAEF): attacks that worked, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.maf_resolver import MAF_RETRIEVALS_IN_FLIGHT, MAFKeyResolver
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.saef import ANY_ENTITY, PSKCredentials, establish_sa

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
