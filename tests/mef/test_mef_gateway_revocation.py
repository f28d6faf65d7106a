"""D202, D203 at the gateway: a revocation at the MEF reaches a live SA (the background recheck past
MEF_RECHECK_INTERVAL) and new handshakes; the MEF unreachable keeps a live SA; refusals are remembered briefly.
Real MEF, real gateway (tests/mef/test_mef_gateway.py's), clocks injected."""

from __future__ import annotations

import asyncio

from m2msec.gateway.mef_resolver import MEF_RECHECK_INTERVAL, MEF_REFUSAL_CACHE_TTL, MEFKeyResolver
from m2msec.mef.procedures import revoke_enrolee
from m2msec.saef import PSKCredentials, establish_sa

from .test_attack_mef_use import gw
from .test_mef_gateway import IDB, Gw, enrolled, kpsa, request
from .world import ENROLEE_ID, KPMID, World, world

__all__ = ["gw", "world"]


async def test_a_live_sa_of_a_revoked_enrolee_ends_after_the_recheck(world: World, gw: Gw) -> None:
    e = await enrolled(world)
    sa = await establish_sa("127.0.0.1", gw.port, PSKCredentials(str(e.keid), kpsa(e), peer_entity=IDB))
    try:
        assert (await sa.request(request(ENROLEE_ID))).status == 200
        assert isinstance(gw.resolver, MEFKeyResolver)
        fetches = gw.resolver.fetches
        world.clock.now += MEF_RECHECK_INTERVAL / 2  # before the recheck: served from the cache, no fetch
        assert (await sa.request(request(ENROLEE_ID))).status == 200 and gw.resolver.fetches == fetches
        revoke_enrolee(world.store, KPMID)
        world.clock.now += MEF_RECHECK_INTERVAL  # past it: the live SA is served once more, the MEF asked again
        first = await sa.request(request(ENROLEE_ID))
        assert first.status == 200
        async with asyncio.timeout(5):
            while gw.resolver.fetches == fetches:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the MEF's refusal arrives
        assert gw.resolver.lookup(str(e.keid)) is None
        ended = await sa.request(request(ENROLEE_ID))
        assert ended.status == 403 and ended.header("x-m2m-rsc") == "4106", ended.status  # the SA ended (D202)
    finally:
        await sa.close()


async def test_a_refused_keid_is_asked_again_after_the_refusal_ttl(world: World, gw: Gw) -> None:
    import secrets

    from m2msec.errors import HandshakeFailed

    e = await enrolled(world)
    made_up = f"{secrets.token_hex(16)}@{e.keid.mef_fqdn}"
    assert isinstance(gw.resolver, MEFKeyResolver)
    for _ in range(2):
        try:
            await establish_sa("127.0.0.1", gw.port, PSKCredentials(made_up, kpsa(e), peer_entity=IDB))
        except HandshakeFailed:
            pass
    assert gw.resolver.fetches == 1
    world.clock.now += MEF_REFUSAL_CACHE_TTL + 1
    try:
        await establish_sa("127.0.0.1", gw.port, PSKCredentials(made_up, kpsa(e), peer_entity=IDB))
    except HandshakeFailed:
        pass
    assert gw.resolver.fetches == 2
