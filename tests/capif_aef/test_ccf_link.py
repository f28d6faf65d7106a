"""The AEF's CAPIF-3 link (m2msec.capif.aef.ccf_link) against a real CCF: the parsed security context, the JWK Set
that verifies a token the CCF's token endpoint issued, connection reuse with one reconnect, an unreachable CCF."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from ccf.ccf_env import World, onboard, register_provider, security, world
from m2msec.capif.aef.ccf_link import CCFLinkError
from m2msec.capif.tokens import verify_access_token

from .aef_env import SECURITY, Relay, link_for, psk_invoker, running_aef

__all__ = ["world"]


async def test_the_parsed_context_of_a_psk_invoker(world: World) -> None:
    async with running_aef(world) as aef:
        inv = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        trusted = await aef.link.trusted_invoker(inv.id)
        assert trusted is not None and trusted.invoker_id == inv.id
        (entry,) = trusted.entries
        assert (entry.method, entry.interface, entry.aefpsk is not None) == ("PSK", aef.listener.p0, True)
        assert entry.aefpsk is not None and entry.aefpsk.reveal() == inv.key
        assert trusted.api_names(aef.id) == (aef.api["apiName"],) and trusted.api_names("AEFother") == ()
        assert inv.key.hex() not in repr(trusted) + repr(aef.link)
        # one connection served both the GETs of this test and is kept
        assert await aef.link.trusted_invoker("INVnobody") is None
        assert aef.link.connects == 1


async def test_a_stale_connection_is_replaced_once(world: World) -> None:
    async with running_aef(world) as aef:
        inv = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        assert await aef.link.trusted_invoker(inv.id) is not None
        (kept,) = aef.link._idle
        kept.writer.transport.abort()  # the CCF dropped it while idle
        assert await aef.link.trusted_invoker(inv.id) is not None
        assert aef.link.connects == 2


async def test_jwks_verifies_a_token_from_the_ccf(world: World) -> None:
    async with running_aef(world) as aef:
        who = await onboard(world)
        async with await world.connect(who) as conn:
            put = await conn.request("PUT", f"{SECURITY}/{who.identity}", json_body=security(
                {"interfaceDetails": aef.listener.iface, "prefSecurityMethods": ["OAUTH"]}))
            assert put.status == 201
            got = await conn.request("POST", f"/capif-security/v1/securities/{who.identity}/token",
                                     form={"grant_type": "client_credentials", "client_id": who.identity})
            assert got.status == 200, got.body
        keys = await aef.link.jwks()
        claims = verify_access_token(got.json()["access_token"], keys, issuer=world.ccf.ccf.policy.issuer,
                                     aef_id=aef.id, api_name=aef.api["apiName"], now=int(time.time()))
        assert claims.client_id == who.identity
        trusted = await aef.link.trusted_invoker(who.identity)
        assert trusted is not None and trusted.entries[0].method == "OAUTH" and trusted.entries[0].aefpsk is None


async def test_an_unreachable_ccf_is_a_clean_error(world: World) -> None:
    provider_aef = (await register_provider(world)).aef
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = int(s.getsockname()[1])
    async with link_for(world, provider_aef, closed) as link:
        with pytest.raises(CCFLinkError, match="cannot reach the CCF") as failed:
            await link.trusted_invoker("INVsomeone")
        assert failed.value.status == 0 and failed.value.__cause__ is None



async def test_the_deadline_bounds_a_call(world: World) -> None:
    """D160: a CCF that accepts and never answers costs at most the deadline, even under a longer handshake timeout."""
    aef = (await register_provider(world)).aef
    relay = Relay(world.ccf.port)
    relay.silent = True
    await relay.start()
    try:
        async with link_for(world, aef, relay.port, timeout=5.0, deadline=0.5) as link:
            started = asyncio.get_running_loop().time()
            with pytest.raises(CCFLinkError, match=r"did not answer within 0\.5 s"):
                await link.trusted_invoker("INVsomeone")
            assert asyncio.get_running_loop().time() - started < 2.0
    finally:
        await relay.down()
