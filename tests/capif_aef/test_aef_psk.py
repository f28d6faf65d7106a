"""CAPIF-2e Method 1 at the AEF (TS 33.122 §6.5.2.1) over real sockets: a real CCF, an invoker that obtains PSK and
derives AEFPSK, the AEF's engine TLS-PSK listener resolving psk_identity = API invoker ID through the async PSK path
(m2msec.capif.aef.psk) with the key from the CCF (m2msec.capif.aef.ccf_link)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from ccf.ccf_env import INVOKERS, World, expected_aefpsk, onboard, publish, register_provider, security, world
from m2msec.errors import HandshakeFailed, HandshakeTimeout
from m2msec.tls.profiles import DHE_PSK, ECDHE_PSK, PSK, RSA_PSK, CipherProfile

from .aef_env import SECURITY, Listener, Relay, hold_lookups, link_for, psk_invoker, running_aef, say_hello

__all__ = ["world"]

REFUSED = (HandshakeFailed, HandshakeTimeout, ConnectionError)


@contextlib.asynccontextmanager
async def relay_closed(relay: Relay) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await relay.down()


@pytest.mark.parametrize("profile", [PSK, DHE_PSK, ECDHE_PSK], ids=lambda p: p.name)
async def test_an_invoker_connects_with_its_aefpsk(world: World, profile: CipherProfile) -> None:
    async with running_aef(world) as aef:
        inv = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        answer = await say_hello(aef.listener.port, inv.id, inv.key, profile)
        name, cipher = answer.split(" ")
        assert name == f"{inv.id}:hello" and cipher in profile.tls12_ciphers.split(":")
        # the next handshakes are answered from the cache: one GET to the CCF in all
        assert (await say_hello(aef.listener.port, inv.id, inv.key, profile)).startswith(f"{inv.id}:hello")
        assert aef.resolver.fetches == 1
        trusted = aef.resolver.trusted(inv.id)
        assert trusted is not None and trusted.api_names(aef.id) == (aef.api["apiName"],)
        assert inv.key.hex() not in repr(trusted) and inv.key.hex() not in repr(aef.resolver)


async def test_rsa_psk_with_the_aefs_rsa_certificate(world: World, rsa_cert: tuple[bytes, bytes]) -> None:
    async with running_aef(world, profiles="rsa-psk,psk", certificate=rsa_cert) as aef:
        inv = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        answer = await say_hello(aef.listener.port, inv.id, inv.key, RSA_PSK)
        assert answer.split(" ")[1] in RSA_PSK.tls12_ciphers.split(":")
        with pytest.raises(REFUSED):
            await say_hello(aef.listener.port, inv.id, bytes([inv.key[0] ^ 1]) + inv.key[1:], RSA_PSK)


async def test_refusals(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_aef(world) as aef:
        inv = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        port = aef.listener.port
        # a key one bit off
        with pytest.raises(REFUSED):
            await say_hello(port, inv.id, bytes([inv.key[0] ^ 0x80]) + inv.key[1:])
        # an invoker ID the CCF does not know, and an onboarded invoker without a security context
        bare = await onboard(world)
        for unknown in ("INVnobody", bare.identity):
            with pytest.raises(REFUSED):
                await say_hello(port, unknown, inv.key)
        # an invoker whose context names another AEF: the CCF tells this AEF nothing (404)
        other = await register_provider(world)
        other_listener = Listener()
        try:
            await publish(world, other.apf, other.aef, interface=other_listener.iface)
            elsewhere = await psk_invoker(world, other_listener.iface, other_listener.p0)
        finally:
            await other_listener.stop()
        with pytest.raises(REFUSED):
            await say_hello(port, elsewhere.id, elsewhere.key)
        assert await aef.link.trusted_invoker(elsewhere.id) is None
        # the good invoker still gets in; the refusals were cached (one fetch each), never a key in the log
        assert (await say_hello(port, inv.id, inv.key)).startswith(f"{inv.id}:hello")
        fetched = aef.resolver.fetches
        with pytest.raises(REFUSED):
            await say_hello(port, "INVnobody", inv.key)
        assert aef.resolver.fetches == fetched
        for key in (inv.key, elsewhere.key):
            assert key.hex() not in caplog.text


async def test_an_identity_that_is_no_invoker_id_is_not_sent_to_the_ccf(world: World) -> None:
    async with running_aef(world) as aef:
        with pytest.raises(REFUSED):
            await say_hello(aef.listener.port, "INV a/b?x=1", bytes(32))
        assert aef.resolver.fetches == 0


async def test_offboarding_then_invalidate_ends_the_psk(world: World) -> None:
    async with running_aef(world) as aef:
        inv = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        assert (await say_hello(aef.listener.port, inv.id, inv.key)).startswith(f"{inv.id}:hello")
        assert (await world.call(inv.identity, "DELETE", f"{INVOKERS}/{inv.id}")).status == 204
        # until the AEF is told (the events receiver calls invalidate), the cached key serves
        assert (await say_hello(aef.listener.port, inv.id, inv.key)).startswith(f"{inv.id}:hello")
        aef.resolver.invalidate(inv.id)
        with pytest.raises(REFUSED):
            await say_hello(aef.listener.port, inv.id, inv.key)
        assert aef.resolver.fetches == 2 and aef.resolver.trusted(inv.id) is None


async def test_invalidate_during_a_fetch_hands_out_no_key(world: World) -> None:
    async with running_aef(world) as aef:
        inv = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        gate = hold_lookups(aef)
        attempt = asyncio.create_task(say_hello(aef.listener.port, inv.id, inv.key))
        while not aef.resolver.fetches:
            await asyncio.sleep(0.01)
        aef.resolver.invalidate(inv.id)
        gate.set()
        with pytest.raises(REFUSED):
            await attempt
        assert aef.resolver.trusted(inv.id) is None


async def test_lookups_are_coalesced_and_others_are_not_stalled(world: World) -> None:
    async with running_aef(world) as aef:
        slow_one = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        quick = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        asked: list[str] = []
        gate = hold_lookups(aef, only=slow_one.id, asked=asked)
        waiting = [asyncio.create_task(say_hello(aef.listener.port, slow_one.id, slow_one.key)) for _ in range(5)]
        while not asked:
            await asyncio.sleep(0.01)
        # while the CCF's answer for one invoker is held, another invoker (not cached) connects
        assert (await say_hello(aef.listener.port, quick.id, quick.key, timeout=5)).startswith(f"{quick.id}:hello")
        assert not any(t.done() for t in waiting)
        gate.set()
        answers = await asyncio.gather(*waiting)
        assert all(a.startswith(f"{slow_one.id}:hello") for a in answers)
        assert asked.count(slow_one.id) == 1 and aef.resolver.fetches == 2


async def test_ccf_down_refuses_the_uncached_client_only(world: World, caplog: pytest.LogCaptureFixture) -> None:
    relay = Relay(world.ccf.port)
    await relay.start()
    async with running_aef(world, port=relay.port) as aef, relay_closed(relay):
        cached = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        later = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        assert (await say_hello(aef.listener.port, cached.id, cached.key)).startswith(f"{cached.id}:hello")
        await relay.down()
        caplog.set_level(logging.WARNING, "m2msec.capif.aef")
        with pytest.raises(REFUSED):
            await say_hello(aef.listener.port, later.id, later.key)
        assert "not obtained from the CCF" in caplog.text and later.key.hex() not in caplog.text
        assert aef.resolver.failures == 1
        assert (await say_hello(aef.listener.port, cached.id, cached.key)).startswith(f"{cached.id}:hello")
        # the failure was not cached: with the CCF back, the client gets in
        await relay.up()
        aef.link.port = relay.port
        assert (await say_hello(aef.listener.port, later.id, later.key)).startswith(f"{later.id}:hello")


async def test_a_silent_ccf_is_bounded(world: World) -> None:
    relay = Relay(world.ccf.port)
    relay.silent = True
    await relay.start()
    try:
        async with running_aef(world, port=relay.port, timeout=0.5, deadline=1.0) as aef:
            inv = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
            started = asyncio.get_running_loop().time()
            with pytest.raises(REFUSED):
                await say_hello(aef.listener.port, inv.id, inv.key)
            assert asyncio.get_running_loop().time() - started < 4.0  # under the 5 s handshake timeout
            assert aef.resolver.failures == 1
    finally:
        await relay.down()


async def test_aef_roles_only(world: World) -> None:
    """The link is the AEF's: with an APF's certificate the CCF refuses, and that is an error, not 'unknown'."""
    from m2msec.capif.aef.ccf_link import CCFLinkError

    provider = await register_provider(world)
    async with link_for(world, provider.apf) as link:
        with pytest.raises(CCFLinkError) as refused:
            await link.trusted_invoker("INVsomeone")
        assert refused.value.status in (401, 403)


async def test_the_key_of_another_interface_of_this_aef_is_refused(world: World) -> None:
    """D162: the listener takes the AEFPSK of its own interface (P0) only, not that of another interface of the AEF."""
    async with running_aef(world) as aef:
        second = Listener()
        try:
            await publish(world, aef.provider.apf, aef.provider.aef, interface=second.iface)
            there = await psk_invoker(world, second.iface, second.p0)
        finally:
            await second.stop()
        trusted = await aef.link.trusted_invoker(there.id)
        assert trusted is not None and [e.interface for e in trusted.entries] == [second.p0]
        with pytest.raises(REFUSED):
            await say_hello(aef.listener.port, there.id, there.key)


async def test_an_entry_naming_aef_and_api(world: World) -> None:
    """D162: an entry by ``aefId`` + ``apiId`` is matched when the listener serves that API."""
    async with running_aef(world) as aef:
        who = await onboard(world)
        async with await world.connect(who) as conn:
            answer = await conn.request("PUT", f"{SECURITY}/{who.identity}", json_body=security(
                {"aefId": aef.id, "apiId": aef.api["apiId"], "prefSecurityMethods": ["PSK"]}))
            assert answer.status == 201 and answer.json()["securityInfo"][0]["selSecurityMethod"] == "PSK"
            tls = conn.writer.get_extra_info("tls_connection")
            key = expected_aefpsk(tls.master_secret().reveal(), conn.session.session_id, aef.listener.p0)
        with pytest.raises(REFUSED):  # the listener was not told it serves that API
            await say_hello(aef.listener.port, who.identity, key)
        aef.resolver.api_ids = frozenset({aef.api["apiId"]})
        aef.resolver.invalidate(who.identity)
        assert (await say_hello(aef.listener.port, who.identity, key)).startswith(f"{who.identity}:hello")


async def test_fetches_in_flight_are_capped(world: World) -> None:
    """D163: with the cap of fetches reached, a handshake needing one more is refused at once, not queued."""
    async with running_aef(world) as aef:
        held = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        other = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        gate = hold_lookups(aef)
        aef.resolver.max_inflight = 1
        first = asyncio.create_task(say_hello(aef.listener.port, held.id, held.key))
        while not aef.resolver.fetches:
            await asyncio.sleep(0.01)
        with pytest.raises(REFUSED):
            await say_hello(aef.listener.port, other.id, other.key, timeout=3)
        assert aef.resolver.refused_busy == 1 and aef.resolver.fetches == 1
        gate.set()
        assert (await first).startswith(f"{held.id}:hello")
        assert (await say_hello(aef.listener.port, other.id, other.key)).startswith(f"{other.id}:hello")
