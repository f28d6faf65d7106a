"""Revocation at the AEF front (TS 33.122 §6.8) over real sockets: the CCF (``world``) notifies the front's events
receiver of offboarding and of the AEF's own revocation (trustedInvokers/{id}/delete); live connections of that
invoker are refused at their next request and closed, its next handshake or call fails, other invokers keep working.

Without the receiver the front would keep serving: the PSK resolver caches the key 300 s (D163), the PKI context 30 s
(D167); so a 403 on a kept connection right after the notification is the receiver's doing."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from ccf.ccf_env import CCF_HOST, World, register_provider, world
from m2msec import http1
from m2msec.capif.aef.config import load_config
from m2msec.capif.aef.events import REVOCATION_EVENTS, AEFEventsReceiver
from m2msec.capif.schema import validate_request
from m2msec.errors import M2MSecError

from .aef_env import SECURITY
from .aef_server_env import (
    REFUSED,
    Front,
    Kept,
    access_token,
    call,
    ended,
    invoker_with,
    notified,
    pki_context,
    psk_context,
    psk_invoker,
    running_front,
    server_only_context,
)

#: Kept, ended and notified live in aef_server_env; still importable from here
__all__ = ["Kept", "ended", "notified", "world"]

OFFBOARD = "/api-invoker-management/v1/onboardedInvokers/{}"


async def test_offboarding_cuts_off_live_psk_and_pki_invokers_and_others_keep_working(world: World) -> None:
    async with running_front(world) as aef:
        psk = await psk_invoker(world, aef.iface, aef.p0)
        pki = await invoker_with(world, aef.iface, "PKI")
        other = await psk_invoker(world, aef.iface, aef.p0)
        oauth = await invoker_with(world, aef.iface, "OAUTH")
        token = await access_token(world, oauth)
        kept_psk = await Kept.open(aef.port, psk_context(psk.id, psk.key))
        kept_pki = await Kept.open(aef.port, pki_context(pki, aef.server_ca_pem))
        kept_other = await Kept.open(aef.port, psk_context(other.id, other.key))
        kept_oauth = await Kept.open(aef.port, server_only_context(aef.server_ca_pem))
        try:
            for kept in (kept_psk, kept_pki, kept_other):
                assert (await kept.get()).status == 200
            assert (await kept_oauth.get(token=token)).status == 200
            assert (await world.call(psk.identity, "DELETE", OFFBOARD.format(psk.id))).status == 204
            await notified(aef, 1)
            assert await kept_psk.closed_by_the_front()  # idle: closed at once (D179)
            with pytest.raises(REFUSED):  # the AEFPSK is gone: no handshake
                await call(aef.port, psk_context(psk.id, psk.key))

            assert (await world.call(pki, "DELETE", OFFBOARD.format(pki.identity))).status == 204
            await notified(aef, 2)
            assert await kept_pki.closed_by_the_front()
            again = await call(aef.port, pki_context(pki, aef.server_ca_pem))  # the certificate chains: the call fails
            assert again.status == 403 and again.json()["cause"] == "API_INVOKER_NOT_AUTHORIZED"

            assert (await kept_other.get()).status == 200  # the other invoker: same connection, and a new one
            assert (await call(aef.port, psk_context(other.id, other.key))).status == 200

            # OAuth: the token is unexpired, but the invoker is offboarded
            assert (await world.call(oauth, "DELETE", OFFBOARD.format(oauth.identity))).status == 204
            await notified(aef, 3)
            assert await kept_oauth.closed_by_the_front()  # idle: closed at once (D179)
            again = await call(aef.port, server_only_context(aef.server_ca_pem),
                               headers=(("authorization", f"Bearer {token}"),))
            assert again.status == 403
            assert [m.header("x-capif-invoker-id") for m in aef.backend.seen] == [
                psk.id, pki.identity, other.id, oauth.identity, other.id, other.id]
        finally:
            for kept in (kept_psk, kept_pki, kept_other, kept_oauth):
                kept.close()


async def revoke_at_the_ccf(world: World, aef: Front, invoker_id: str) -> None:
    revoke = await world.call(aef.provider.aef, "POST", f"{SECURITY}/{invoker_id}/delete", {
        "apiInvokerId": invoker_id, "aefId": aef.id, "apiIds": [aef.api["apiId"]], "cause": "OVERLIMIT_USAGE"})
    assert revoke.status == 204, revoke.body


async def test_the_aefs_own_revocation_at_the_ccf_ends_psk_and_pki_invokers(world: World) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        pki = await invoker_with(world, aef.iface, "PKI")
        other = await psk_invoker(world, aef.iface, aef.p0)
        kept = await Kept.open(aef.port, psk_context(inv.id, inv.key))
        kept_pki = await Kept.open(aef.port, pki_context(pki, aef.server_ca_pem))
        try:
            assert (await kept.get()).status == 200 and (await kept_pki.get()).status == 200
            await revoke_at_the_ccf(world, aef, inv.id)
            await notified(aef, 1)
            assert await kept.closed_by_the_front()  # idle: closed at once (D179)
            with pytest.raises(REFUSED):
                await call(aef.port, psk_context(inv.id, inv.key))
            assert (await kept_pki.get()).status == 200  # not revoked yet
            await revoke_at_the_ccf(world, aef, pki.identity)
            await notified(aef, 2)
            assert await kept_pki.closed_by_the_front()  # idle: closed at once (D179)
            assert (await call(aef.port, pki_context(pki, aef.server_ca_pem))).status == 403
            assert (await call(aef.port, psk_context(other.id, other.key))).status == 200
        finally:
            kept.close()
            kept_pki.close()


async def post(destination: str, body: bytes) -> int:
    host_port, _, path = destination.removeprefix("http://").partition("/")
    host, _, port = host_port.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        answer = await http1.request(reader, writer, http1.Message(
            headers=[("host", host_port), ("content-type", "application/json")], body=body, method="POST",
            target="/" + path))
        return answer.status
    finally:
        writer.close()


def notification(subscription: str, invoker_id: str, event: str = "API_INVOKER_OFFBOARDED") -> dict[str, Any]:
    body = {"subscriptionId": subscription, "events": event, "eventDetail": {"apiInvokerIds": [invoker_id]}}
    validate_request("capif-events", "POST /{subscriberId}/subscriptions callback notificationDestination", body)
    return body


async def test_forged_or_malformed_notifications_change_nothing(world: World, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_front(world) as aef:
        events = aef.running.events
        assert events is not None and events.subscription is not None
        inv = await psk_invoker(world, aef.iface, aef.p0)
        kept = await Kept.open(aef.port, psk_context(inv.id, inv.key))
        try:
            assert (await kept.get()).status == 200
            good = json.dumps(notification(events.subscription, inv.id)).encode()
            wrong_path = events.destination.rsplit("/", 1)[0] + "/guessed"
            assert await post(wrong_path, good) == 404
            assert await post(events.destination, b"{not json") == 400
            assert await post(events.destination, json.dumps({"events": "API_INVOKER_OFFBOARDED"}).encode()) == 400
            other_sub = json.dumps(notification("another-subscription", inv.id)).encode()
            assert await post(events.destination, other_sub) == 204
            onboarded = json.dumps(notification(events.subscription, inv.id, "API_INVOKER_ONBOARDED")).encode()
            assert await post(events.destination, onboarded) == 204
            assert events.received == 0 and events.refused == 5
            assert (await kept.get()).status == 200  # still served from the same connection
            # the genuine path and subscription: acted on (what the CCF would send)
            assert await post(events.destination, good) == 204
            assert await kept.closed_by_the_front()  # idle: closed at once (D179)
        finally:
            kept.close()
    assert events.path.rsplit("/", 1)[1] not in caplog.text  # the path's token is never logged


async def test_the_front_subscribes_to_the_revocation_events_and_unsubscribes_on_shutdown(world: World) -> None:
    async with running_front(world) as aef:
        events = aef.running.events
        assert events is not None and events.subscription is not None
        record = world.store.get_document("capif-subscription", events.subscription)
        assert record is not None
        sub = record.body["subscription"]
        assert sub["events"] == list(REVOCATION_EVENTS) and sub["notificationDestination"] == events.destination
        assert events.destination.startswith("http://127.0.0.1:")
        assert record.body["subscriber"] == aef.id
        subscription = events.subscription
    assert world.store.get_document("capif-subscription", subscription) is None


async def test_without_the_receiver_the_cached_key_still_serves(world: World) -> None:
    """The control of the tests above: no subscription, offboarding does not reach the AEF's caches."""
    async with running_front(world, events=None) as aef:
        assert aef.running.events is None
        inv = await psk_invoker(world, aef.iface, aef.p0)
        kept = await Kept.open(aef.port, psk_context(inv.id, inv.key))
        try:
            assert (await kept.get()).status == 200
            assert (await world.call(inv.identity, "DELETE", OFFBOARD.format(inv.id))).status == 204
            await asyncio.sleep(0.5)
            assert (await kept.get()).status == 200
        finally:
            kept.close()



@pytest.mark.parametrize(("line", "expected"), [("", ("127.0.0.1", 0)), ('events = "off"\n', None),
                                                 ('events = "10.1.2.3:8099"\n', ("10.1.2.3", 8099))])
def test_the_events_listener_is_configurable(tmp_path: Path, line: str, expected: tuple[str, int] | None) -> None:
    from .test_aef_server_config import GOOD, files

    config = load_config(files(tmp_path, line + GOOD))
    assert config.events_listen == expected


async def test_no_subscription_no_receiver(world: World) -> None:
    """D170: the CCF unreachable, or refusing (another AEF's ID), at start: the receiver raises and does not listen."""
    provider = await register_provider(world)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = int(closed.getsockname()[1])
    closed.close()
    creds = dict(ccf_host=CCF_HOST, ca_pem=world.ca_pem, certificate_pem=provider.aef.certificate_pem,
                 private_key_pem=provider.aef.private_key_pem)
    for aef_id, port in ((provider.aef.identity, closed_port), ("AEFnotmine", world.ccf.port)):
        receiver = AEFEventsReceiver(aef_id, lambda _: None, ccf_address=("127.0.0.1", port), **creds)
        with pytest.raises(M2MSecError):
            async with receiver:
                pytest.fail("started without a subscription")
        assert receiver.subscription is None and receiver._server is None
