"""Events delivery hardening (issue 18 findings F4, F5, F6): the fair queue and its circuit breaker (D150), the
subscription slots (D136), and where an API invoker's notifications may go (D149). Expected values are written here:
address classes from the RFCs, not from the code under test."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from typing import Any

import pytest

from m2msec.capif.ccf import events_address
from m2msec.capif.ccf.config import CCFConfig
from m2msec.capif.ccf.events import DeliveryPolicy
from m2msec.capif.ccf.events_address import is_public_address, literal_address, refuse_internal_literal
from m2msec.capif.ccf.events_queue import Delivery, FairQueue
from m2msec.capif.ccf.events_rules import MAX_SUBSCRIPTIONS
from m2msec.capif.ccf.events_slots import SLOT_GRACE
from m2msec.capif.certificates import CAPIFRole
from m2msec.errors import CAPIFError
from m2msec.store import Document

from .ccf_env import World, onboard, world
from .test_events import EVENTS, Receiver, closed_port, notifier, provider_function, subscribe, subscription_id

__all__ = ["world"]

STRICT = DeliveryPolicy(timeout=1.0, retries=0, backoff=0.05)  # D149's default: invokers to public addresses only


def delivery(origin: str, owner: str = "sub", n: int = 0) -> Delivery:
    return Delivery(f"d{n}", f"http://{origin}/", b"{}", origin, owner, False)


# ------------------------------------------------------------------------------------------ D150: the fair queue

def test_destinations_are_served_round_robin_under_in_flight_caps() -> None:
    q = FairQueue(100, per_destination=1, per_owner=2)
    for n in range(3):
        assert q.put(delivery("slow:1", "attacker", n), 0) is None
    assert q.put(delivery("good:1", "aef", 9), 0) is None
    first, _ = q.take(0)
    second, _ = q.take(0)
    assert first is not None and first.origin == "slow:1"
    assert second is not None and second.origin == "good:1"  # not the slow destination's second delivery
    assert q.take(0) == (None, [])  # slow:1 has one in flight (its cap), good:1 is empty
    q.done(second, True, 0)
    q.done(first, True, 0)
    third, _ = q.take(0)
    assert third is not None and third.label == "d1"


def test_one_owner_holds_at_most_its_cap_across_destinations() -> None:
    q = FairQueue(100, per_destination=1, per_owner=2)
    for port in range(4):
        assert q.put(delivery(f"h:{port}", "attacker"), 0) is None
    assert q.put(delivery("good:1", "aef"), 0) is None
    taken = [q.take(0)[0] for _ in range(4)]
    assert [d.owner if d else None for d in taken] == ["attacker", "attacker", "aef", None]


def test_queues_are_bounded_in_total_and_per_destination() -> None:
    q = FairQueue(5, per_queue=3)
    assert [q.put(delivery("a:1", n=n), 0) for n in range(4)] == [None, None, None, "destination queue full"]
    assert q.put(delivery("b:1"), 0) is None and q.put(delivery("c:1"), 0) is None
    assert q.put(delivery("d:1"), 0) == "delivery queue full"
    assert q.queued == 5


def test_the_breaker_suspends_a_failing_destination_then_tries_again() -> None:
    q = FairQueue(100, failures=2, cooldown=60.0)
    for n in range(4):
        q.put(delivery("dead:1", n=n), 0)
    q.put(delivery("ok:1"), 0)
    d, _ = q.take(0)
    assert d is not None and not q.done(d, False, 1)  # one delivery given up: not yet
    ok, _ = q.take(1)
    assert ok is not None and ok.origin == "ok:1"
    q.done(ok, True, 1)
    d, _ = q.take(2)
    assert d is not None and q.done(d, False, 3)  # the second in a row opens it
    assert q.suspended("dead:1", 3) and not q.suspended("ok:1", 3)
    nothing, dropped = q.take(4)
    assert nothing is None and [x.label for x in dropped] == ["d2", "d3"] and q.queued == 0
    assert q.put(delivery("dead:1", n=5), 30) == "destination suspended"
    assert q.put(delivery("dead:1", n=6), 63.5) is None  # the cooldown is over: one more try
    d, _ = q.take(63.5)
    assert d is not None and q.done(d, False, 64)  # half-open: a single failure re-opens it
    assert q.suspended("dead:1", 64)
    q.put(delivery("dead:1", n=7), 125)
    d, _ = q.take(125)
    assert d is not None and not q.done(d, True, 125)
    assert q.put(delivery("dead:1", n=8), 125) is None  # a success closes it
    refused, _ = q.take(125)
    assert refused is not None and not q.done(refused, None, 126)  # a refusal (3xx, 4xx) is no failure


def test_the_breakers_remembered_are_bounded() -> None:
    q = FairQueue(100, failures=1, tracked=3)
    for port in range(5):
        q.put(delivery(f"h:{port}"), 0)
        d, _ = q.take(0)
        assert d is not None and q.done(d, False, 0)
    assert [q.suspended(f"h:{p}", 1) for p in range(5)] == [False, False, True, True, True]


async def test_a_failing_destination_is_suspended_and_others_still_served(world: World,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "m2msec.ccf.events")
    dead = provider_function(world, CAPIFRole.AEF)
    live = provider_function(world, CAPIFRole.AEF)
    url = f"http://127.0.0.1:{closed_port()}/cb?token=secret-token"
    async with notifier(world, DeliveryPolicy(timeout=1.0, retries=0, backoff=0.01)) as events, Receiver() as rx:
        subscription_id(await subscribe(world, dead, ["API_INVOKER_ONBOARDED"], url))
        subscription_id(await subscribe(world, live, ["API_INVOKER_ONBOARDED"], rx.url()))
        for _ in range(4):
            await onboard(world)
            await events.drain()
        assert rx.count == 4
        assert events.failed == 2 and events.dropped == 2  # two given up open the breaker, then two dropped
    assert "suspended" in caplog.text and "secret-token" not in caplog.text


# ------------------------------------------------------------------------------------- D136: atomic slot records

async def test_a_subscriber_holds_a_bounded_number_of_subscriptions(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    other = provider_function(world, CAPIFRole.AEF)
    held = [subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], "http://127.0.0.1:9/"))
            for _ in range(MAX_SUBSCRIPTIONS)]
    refused = await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], "http://127.0.0.1:9/")
    assert refused.status == 403 and str(MAX_SUBSCRIPTIONS) in refused.json()["detail"]
    assert (await subscribe(world, other, ["API_INVOKER_ONBOARDED"], "http://127.0.0.1:9/")).status == 201
    assert (await world.call(aef, "DELETE", f"{EVENTS}/{aef.identity}/subscriptions/{held[0]}")).status == 204
    assert (await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], "http://127.0.0.1:9/")).status == 201
    assert (await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], "http://127.0.0.1:9/")).status == 403
    # a slot record is never a subscription: not reachable, not deletable through the API
    slot = f"slot~{aef.identity}~0"
    assert world.store.get_document("capif-subscription", slot) is not None
    assert (await world.call(aef, "DELETE", f"{EVENTS}/{aef.identity}/subscriptions/{slot}")).status == 404


async def test_an_orphan_slot_is_taken_over_after_the_grace_period(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    now = world.ccf.ccf.clock()
    for n in range(MAX_SUBSCRIPTIONS):  # slots whose subscriptions were never written (a crash in between)
        since = now - 2 * SLOT_GRACE if n == 7 else now
        world.store.put_document(Document("capif-subscription", f"slot~{aef.identity}~{n}",
                                          {"holder": f"never-{n}", "since": since}))
    sub = subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], "http://127.0.0.1:9/"))
    record = world.store.get_document("capif-subscription", sub)
    assert record is not None and record.body["slot"] == 7
    slot = world.store.get_document("capif-subscription", f"slot~{aef.identity}~7")
    assert slot is not None and slot.body["holder"] == sub
    assert (await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], "http://127.0.0.1:9/")).status == 403


# --------------------------------------------------------------------------- D149: an invoker's destinations

@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0x7f.1", "0.0.0.0", "0", "10.0.0.1",
    "172.16.3.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "224.0.0.251", "255.255.255.255", "240.0.0.1",
    "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:169.254.169.254",
    "2002:a00:1::", "64:ff9b::7f00:1", "localhost", "LOCALHOST.", "api.localhost", "999.0.0.1", "1.2.3.4.5"])
def test_internal_hosts_are_refused_for_invokers(host: str) -> None:
    with pytest.raises(CAPIFError) as refused:
        refuse_internal_literal(host)
    assert refused.value.status == 400


@pytest.mark.parametrize("host", ["8.8.8.8", "134744072", "0x8.0x8.0x8.0x8", "2001:4860:4860::8888",
                                  "::ffff:8.8.8.8", "rx.example.com", "10.example.com"])
def test_public_hosts_and_names_pass_the_literal_check(host: str) -> None:
    refuse_internal_literal(host)


def test_numeric_ipv4_forms_read_as_inet_aton_reads_them() -> None:
    assert literal_address("2130706433") == ipaddress.IPv4Address("127.0.0.1")
    assert literal_address("0x7f.1") == ipaddress.IPv4Address("127.0.0.1")
    assert literal_address("10.1") == ipaddress.IPv4Address("10.0.0.1")
    assert literal_address("192.168.257") == ipaddress.IPv4Address("192.168.1.1")
    assert literal_address("017.0.0.1") == ipaddress.IPv4Address("15.0.0.1")
    assert literal_address("example.com") is None
    assert socket.inet_aton("0x7f.1") == ipaddress.IPv4Address("127.0.0.1").packed  # the libc agrees
    assert not is_public_address(ipaddress.IPv6Address("::ffff:10.0.0.1"))


async def test_an_invoker_cannot_subscribe_put_or_patch_to_internal_addresses(world: World) -> None:
    inv = await onboard(world)
    assert (await subscribe(world, inv, ["SERVICE_API_AVAILABLE"], "http://[::ffff:127.0.0.1]:80/")).status == 400
    sub = subscription_id(await subscribe(world, inv, ["SERVICE_API_AVAILABLE"], "https://rx.example/cb"))
    path = f"{EVENTS}/{inv.identity}/subscriptions/{sub}"
    put = await world.call(inv, "PUT", path, {"events": ["SERVICE_API_AVAILABLE"],
                                              "notificationDestination": "http://10.0.0.5/"})
    assert put.status == 400 and put.json()["cause"] == "MANDATORY_IE_INCORRECT", put.body
    patch = await world.call(inv, "PATCH", path, {"notificationDestination": "http://localhost:8080/"},
                             content_type="application/merge-patch+json")
    assert patch.status == 400, patch.body
    aef = provider_function(world, CAPIFRole.AEF)  # operator-credentialed: D136 unchanged
    assert (await subscribe(world, aef, ["SERVICE_API_AVAILABLE"], "http://127.0.0.1:9/")).status == 201


async def test_a_name_resolving_to_an_internal_address_is_not_contacted(world: World,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    inv = await onboard(world)
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    async with notifier(world, STRICT) as events, Receiver() as rx:
        async def rebinding(host: Any, port: Any, **kw: Any) -> Any:
            if host == "rx.test.example":
                return await real("127.0.0.1", port, **kw)
            return await real(host, port, **kw)

        monkeypatch.setattr(loop, "getaddrinfo", rebinding)
        subscription_id(await subscribe(world, inv, ["SERVICE_API_AVAILABLE"], rx.url(host="rx.test.example")))
        await events.emit("SERVICE_API_AVAILABLE", {"apiIds": ["api-1"]})
        await events.drain()
        assert rx.count == 0 and events.failed == 1 and events.delivered == 0


async def test_the_address_checked_is_the_address_connected_to(world: World,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that resolves to a public address when checked, then to an internal one: the POST goes to the first
    (here 127.0.0.1 stands for the public address, 127.0.0.2 for the internal one)."""
    inv = await onboard(world)
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    lookups: list[str] = []
    monkeypatch.setattr(events_address, "is_public_address", lambda a: str(a) == "127.0.0.1")
    async with notifier(world, STRICT) as events, Receiver() as rx:
        async def rebinding(host: Any, port: Any, **kw: Any) -> Any:
            if host == "rx.test.example":
                lookups.append(host)
                return await real("127.0.0.1" if len(lookups) == 1 else "127.0.0.2", port, **kw)
            return await real(host, port, **kw)

        monkeypatch.setattr(loop, "getaddrinfo", rebinding)
        sub = subscription_id(await subscribe(world, inv, ["SERVICE_API_AVAILABLE"], rx.url(host="rx.test.example")))
        await events.emit("SERVICE_API_AVAILABLE", {"apiIds": ["api-1"]})
        got = await rx.next()
        assert got.body == {"subscriptionId": sub, "events": "SERVICE_API_AVAILABLE",
                            "eventDetail": {"apiIds": ["api-1"]}}
        assert got.headers["host"] == f"rx.test.example:{rx.port}"
        await events.drain()
    assert lookups == ["rx.test.example"]


async def test_a_security_notification_to_an_internal_address_is_not_queued(world: World) -> None:
    async with notifier(world, STRICT) as events, Receiver() as rx:
        assert not events.deliver(rx.url(), {"apiInvokerId": "x"}, "SecurityNotification to API invoker x")
        assert not events.deliver("http://169.254.169.254/", {}, "SecurityNotification to API invoker x")
        assert rx.count == 0
    async with notifier(world) as allowed, Receiver() as rx:  # the setting on: loopback allowed
        assert allowed.deliver(rx.url(), {"apiInvokerId": "x"}, "SecurityNotification to API invoker x")
        await allowed.drain()
        assert rx.count == 1


def test_the_setting_defaults_to_public_destinations_only() -> None:
    assert CCFConfig().invoker_private_destinations is False
    assert DeliveryPolicy().invoker_private_destinations is False


async def test_the_setting_reaches_the_running_ccfs_notifier(world: World, tmp_path: Any) -> None:
    from m2msec.capif.ccf.config import load_config
    from m2msec.capif.ccf.events import Notifier
    from m2msec.capif.ccf.server import running_ccf

    toml = tmp_path / "ccf.toml"
    toml.write_text('listen = "127.0.0.1:0"\nccf_host = "ccf.test.example"\ninvoker_private_destinations = true\n')
    config = load_config(toml)
    assert config.invoker_private_destinations is True
    async with running_ccf(config, store=world.store) as other:  # a second instance on the same store
        assert isinstance(other.ccf.events, Notifier) and other.ccf.events.private_destinations_allowed()
    assert isinstance(world.ccf.ccf.events, Notifier) and not world.ccf.ccf.events.private_destinations_allowed()


async def test_one_subscribers_silent_receivers_hold_two_workers_not_all(world: World) -> None:
    """Before the breaker can open (each attempt waits its whole timeout), the in-flight caps alone keep the other
    subscribers served: an invoker with four silent destinations holds two of the four workers."""
    policy = DeliveryPolicy(timeout=4.0, retries=0, workers=4, invoker_private_destinations=True)
    attacker = await onboard(world)
    aef = provider_function(world, CAPIFRole.AEF)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(notifier(world, policy))
        silent = [await stack.enter_async_context(Receiver(silent=True)) for _ in range(4)]
        good = await stack.enter_async_context(Receiver())
        for rx in silent:
            subscription_id(await subscribe(world, attacker, ["SERVICE_API_AVAILABLE"], rx.url()))
        sub = subscription_id(await subscribe(world, aef, ["SERVICE_API_UPDATE"], good.url()))
        events = world.ccf.ccf.events
        await events.emit("SERVICE_API_AVAILABLE", {"apiIds": ["api-1"]})  # four silent deliveries first
        await events.emit("SERVICE_API_UPDATE", {"apiIds": ["api-1"]})
        got = await good.next(timeout=1.0)
        assert got.body == {"subscriptionId": sub, "events": "SERVICE_API_UPDATE", "eventDetail": {"apiIds": ["api-1"]}}
