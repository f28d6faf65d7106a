"""CAPIF Events over real TLS to the CCF, with real HTTP(S) receivers on loopback: subscriptions by invokers and
provider functions, notifications of onboarding and offboarding, filters, delivery that never holds up a request
(a receiver down or silent), retries, redirects not followed, and the refusals (another subscriber, a bad
destination, an event the role may not learn of)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
from cryptography.hazmat.primitives import serialization

from m2msec import http1
from m2msec.capif.ccf.context import certificate_digest
from m2msec.capif.ccf.events import DeliveryPolicy, Notifier, start_notifier
from m2msec.capif.certificates import CAPIFRole, issue_capif_certificate, load_csr
from m2msec.capif.schema import validate_request
from m2msec.pki import create_ca, issue
from m2msec.pki.profile import CertificateFlavour
from m2msec.store import Document

from .ccf_env import INVOKERS, Identity, World, csr_pem, key_pem, new_key, onboard, world

__all__ = ["world"]

EVENTS = "/capif-events/v1"
NOTIFICATION = "POST /{subscriberId}/subscriptions callback notificationDestination"
#: the receivers here are on loopback: invokers may aim at them only with D149's setting on
FAST = DeliveryPolicy(timeout=2.0, retries=2, backoff=0.05, invoker_private_destinations=True)


@dataclass
class Received:
    target: str
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    """An HTTP/1.1 server on loopback that records each POST and answers with the next scripted status (then 204)."""

    statuses: list[int] = field(default_factory=list)
    location: str | None = None
    silent: bool = False  # accept connections and never answer
    tls: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    got: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    count: int = 0
    server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def url(self, path: str = "/notify", host: str | None = None) -> str:
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            if self.silent:
                await asyncio.Event().wait()
            conn = h11.Connection(h11.SERVER)
            msg = await http1.read_message(conn, reader)
            if msg is None:
                return
            self.count += 1
            status = self.statuses.pop(0) if self.statuses else 204
            headers = [("location", self.location)] if self.location and 300 <= status < 400 else []
            await http1.send_message(conn, writer, http1.Message(headers=headers, status=status))
            await self.got.put(Received(msg.target, dict(msg.headers), json.loads(msg.body)))
        finally:
            writer.close()

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self.server.wait_closed()

    async def next(self, timeout: float = 5.0) -> Received:
        received = await asyncio.wait_for(self.got.get(), timeout)
        validate_request("capif-events", NOTIFICATION, received.body)  # the official callback schema
        assert received.headers["content-type"] == "application/json"
        return received


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def provider_function(world: World, role: CAPIFRole, domain: str = "DOM1") -> Identity:
    """An AEF/APF/AMF the CCF certified, recorded as the providers API records it (context.py)."""
    key = new_key()
    identity = role.name + secrets.token_hex(8)
    ccf = world.ccf.ccf
    cert = issue_capif_certificate(ccf.ca, load_csr(csr_pem(key)), role, identity, now=ccf.now())
    world.store.put_document(Document("capif-provider", "func:" + identity, {
        "domain": domain, "role": role.name, "certificate": certificate_digest(cert)}))
    return Identity(identity, cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


async def subscribe(world: World, who: Identity, events: list[str], destination: str, *,
                    subscriber: str | None = None, **extra: Any) -> Any:
    body = {"events": events, "notificationDestination": destination, **extra}
    return await world.call(who, "POST", f"{EVENTS}/{subscriber or who.identity}/subscriptions", body)


def subscription_id(answer: Any) -> str:
    assert answer.status == 201, answer.body
    return str(answer.header("location").rsplit("/", 1)[1])


async def offboard(world: World, inv: Identity) -> None:
    answer = await world.call(inv, "DELETE", f"{INVOKERS}/{inv.identity}")
    assert answer.status == 204, answer.body


@contextlib.asynccontextmanager
async def notifier(world: World, policy: DeliveryPolicy = FAST) -> AsyncIterator[Notifier]:
    """The CCF's notifier replaced for one test by one with ``policy`` (short timeouts and backoff)."""
    ccf = world.ccf.ccf
    old = ccf.events
    async with start_notifier(ccf, policy) as fresh:
        ccf.events = fresh
        try:
            yield fresh
        finally:
            ccf.events = old


async def test_an_aef_is_told_of_onboarding_and_offboarding(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    async with Receiver() as rx:
        answer = await subscribe(world, aef, ["API_INVOKER_ONBOARDED", "API_INVOKER_OFFBOARDED"], rx.url())
        sub = subscription_id(answer)
        assert answer.header("location") == (f"https://ccf.test.example:{world.ccf.port}{EVENTS}/{aef.identity}"
                                             f"/subscriptions/{sub}")
        assert answer.json()["events"] == ["API_INVOKER_ONBOARDED", "API_INVOKER_OFFBOARDED"]
        inv = await onboard(world)
        got = await rx.next()
        assert got.target == "/notify" and got.headers["host"] == f"127.0.0.1:{rx.port}"
        assert got.body == {"subscriptionId": sub, "events": "API_INVOKER_ONBOARDED",
                            "eventDetail": {"apiInvokerIds": [inv.identity]}}
        await offboard(world, inv)
        got = await rx.next()
        assert got.body == {"subscriptionId": sub, "events": "API_INVOKER_OFFBOARDED",
                            "eventDetail": {"apiInvokerIds": [inv.identity]}}


async def test_apf_and_amf_subscribe_too(world: World) -> None:
    async with Receiver() as rx:
        for role in (CAPIFRole.APF, CAPIFRole.AMF):
            fn = provider_function(world, role)
            subscription_id(await subscribe(world, fn, ["API_INVOKER_ONBOARDED"], rx.url(f"/{role.name}")))
        await onboard(world)
        targets = {(await rx.next()).target, (await rx.next()).target}
        assert targets == {"/APF", "/AMF"}


async def test_a_receiver_down_or_silent_does_not_hold_up_onboarding(world: World,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="m2msec.ccf.events")
    aef = provider_function(world, CAPIFRole.AEF)
    policy = DeliveryPolicy(timeout=2.0, retries=1, backoff=0.05)
    async with notifier(world, policy) as events, Receiver(silent=True) as silent, Receiver() as good:
        subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"],
                                        f"http://127.0.0.1:{closed_port()}/down?token=s3cret-down"))
        subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], silent.url("/x?token=s3cret-silent")))
        subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], good.url()))
        started = time.monotonic()
        inv = await onboard(world)
        took = time.monotonic() - started
        assert took < policy.timeout / 2, took  # onboarding did not wait for any delivery
        assert (await good.next()).body["eventDetail"] == {"apiInvokerIds": [inv.identity]}
        await asyncio.wait_for(events.drain(), 4 * policy.timeout)
        assert events.delivered == 1 and events.failed == 2
        assert silent.count == 0
    given_up = [r for r in caplog.records if "given up" in r.getMessage()]
    assert len(given_up) == 2
    assert all(r.exc_info is None and r.exc_text is None for r in caplog.records)
    assert "s3cret" not in caplog.text and "Traceback" not in caplog.text


async def test_a_failed_attempt_is_retried(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    async with notifier(world) as events, Receiver(statuses=[503, 500]) as rx:
        subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], rx.url()))
        await onboard(world)
        bodies = [(await rx.next()).body for _ in range(3)]
        assert bodies[0] == bodies[1] == bodies[2]
        await events.drain()
        assert rx.count == 3 and events.delivered == 1 and events.failed == 0


async def test_a_redirect_is_not_followed_nor_retried(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    async with notifier(world) as events, Receiver() as elsewhere:
        async with Receiver(statuses=[307], location=elsewhere.url()) as rx:
            subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], rx.url()))
            await onboard(world)
            await rx.next()
            await events.drain()
            assert rx.count == 1 and elsewhere.count == 0 and events.failed == 1


async def test_unsubscribing_stops_delivery(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    async with notifier(world) as events, Receiver() as rx:
        sub = subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], rx.url()))
        await onboard(world)
        await rx.next()
        path = f"{EVENTS}/{aef.identity}/subscriptions/{sub}"
        assert (await world.call(aef, "DELETE", path)).status == 204
        assert (await world.call(aef, "DELETE", path)).status == 404
        await onboard(world)
        await events.drain()
        assert rx.count == 1 and rx.got.empty()
        assert world.store.get_document("capif-subscription", sub) is None


async def test_one_subscriber_cannot_reach_anothers_subscriptions(world: World) -> None:
    aef1 = provider_function(world, CAPIFRole.AEF)
    aef2 = provider_function(world, CAPIFRole.AEF)
    inv = await onboard(world)
    dest = "http://127.0.0.1:9/notify"
    sub = subscription_id(await subscribe(world, aef1, ["API_INVOKER_ONBOARDED"], dest))
    body = {"events": ["API_INVOKER_OFFBOARDED"], "notificationDestination": dest}
    assert (await subscribe(world, aef2, ["API_INVOKER_ONBOARDED"], dest, subscriber=aef1.identity)).status == 403
    assert (await subscribe(world, inv, ["SERVICE_API_AVAILABLE"], dest, subscriber=aef1.identity)).status == 403
    mine = f"{EVENTS}/{aef1.identity}/subscriptions/{sub}"
    theirs = f"{EVENTS}/{aef2.identity}/subscriptions/{sub}"
    for path, status in ((mine, 403), (theirs, 404)):
        assert (await world.call(aef2, "PUT", path, body)).status == status
        assert (await world.call(aef2, "PATCH", path, {"events": ["API_INVOKER_OFFBOARDED"]},
                                 content_type="application/merge-patch+json")).status == status
        assert (await world.call(aef2, "DELETE", path)).status == status
    no_certificate = await world.call(None, "POST", f"{EVENTS}/{aef1.identity}/subscriptions", body)
    assert no_certificate.status == 401
    kept = world.store.get_document("capif-subscription", sub)
    assert kept is not None and kept.body["subscription"]["events"] == ["API_INVOKER_ONBOARDED"]


async def test_a_stale_certificate_cannot_subscribe(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    world.store.put_document(Document("capif-provider", "func:" + aef.identity, {
        "domain": "DOM1", "role": "AEF", "certificate": "00" * 32}), replace=True)
    answer = await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], "http://127.0.0.1:9/")
    assert answer.status == 403


@pytest.mark.parametrize("destination", [
    "ftp://127.0.0.1/notify", "notaurl", "/relative/path", "http://user:pw@127.0.0.1/notify", "https:///nohost",
    "javascript:alert(1)", "file:///etc/passwd", "http://127.0.0.1:99999/", "http://127.0.0.1/a b",
    "http://127.0.0.1/notify#frag", "http://127.0.0.1:0/", "http://127.0.0.1/" + "a" * 2100,
])
async def test_a_bad_destination_is_refused(world: World, destination: str) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    answer = await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], destination)
    assert answer.status == 400, answer.body
    assert answer.header("content-type") == "application/problem+json"
    assert world.store.documents("capif-subscription") == []


async def test_which_events_a_role_may_subscribe_to(world: World) -> None:
    inv = await onboard(world)
    aef = provider_function(world, CAPIFRole.AEF)
    dest = "https://invoker.test.example/notify"
    for event in ("API_INVOKER_ONBOARDED", "API_INVOKER_OFFBOARDED", "API_INVOKER_AUTHORIZATION_REVOKED"):
        refused = await subscribe(world, inv, ["SERVICE_API_AVAILABLE", event], dest)
        assert refused.status == 403, refused.body
    for event in ("SERVICE_API_AVAILABLE", "SERVICE_API_UNAVAILABLE", "SERVICE_API_UPDATE"):
        assert (await subscribe(world, inv, [event], dest)).status == 201
    for event in ("SERVICE_API_INVOCATION_SUCCESS", "ACCESS_CONTROL_POLICY_UPDATE", "NO_SUCH_EVENT"):
        refused = await subscribe(world, aef, [event], dest)
        assert refused.status == 400 and refused.json()["cause"] == "MANDATORY_IE_INCORRECT"
    schema = await subscribe(world, aef, [], dest)
    assert schema.status == 400 and schema.json()["cause"] == "INVALID_MSG_FORMAT"
    assert (await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], dest, eventReq={"immRep": True})).status == 400


async def test_filters_apply_one_per_event(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    first, second = await onboard(world), await onboard(world)
    async with notifier(world) as events, Receiver() as rx:
        sub = subscription_id(await subscribe(
            world, aef, ["API_INVOKER_ONBOARDED", "API_INVOKER_OFFBOARDED"], rx.url(),
            eventFilters=[{}, {"apiInvokerIds": [first.identity]}]))
        await offboard(world, second)
        await offboard(world, first)
        await events.drain()
        got = await rx.next()
        assert got.body == {"subscriptionId": sub, "events": "API_INVOKER_OFFBOARDED",
                            "eventDetail": {"apiInvokerIds": [first.identity]}}
        assert rx.got.empty()
        third = await onboard(world)  # the empty filter of the first event lets every onboarding through
        assert (await rx.next()).body["eventDetail"] == {"apiInvokerIds": [third.identity]}
    dest = "http://127.0.0.1:9/"
    mismatch = await subscribe(world, aef, ["API_INVOKER_ONBOARDED", "API_INVOKER_OFFBOARDED"], dest,
                               eventFilters=[{"apiInvokerIds": ["x"]}])
    assert mismatch.status == 400
    wrong_list = await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], dest, eventFilters=[{"apiIds": ["x"]}])
    assert wrong_list.status == 400 and "apiIds" in wrong_list.json()["detail"]


def published_by(world: World, api_id: str, domain: str) -> None:
    """A service API record of ``domain`` (its APF's), as the publish API keeps it (context.py)."""
    apf = provider_function(world, CAPIFRole.APF, domain)
    world.store.put_document(Document("capif-service", api_id, {"apf": apf.identity, "description": {}}))


async def test_service_api_and_revocation_events(world: World) -> None:
    inv = await onboard(world)
    aef = provider_function(world, CAPIFRole.AEF)  # of DOM1
    amf2 = provider_function(world, CAPIFRole.AMF, "DOM2")
    amf3 = provider_function(world, CAPIFRole.AMF, "DOM3")
    published_by(world, "api-1", "DOM1")
    published_by(world, "api-2", "DOM2")
    async with notifier(world) as events, Receiver() as rx:
        api_sub = subscription_id(await subscribe(world, inv, ["SERVICE_API_AVAILABLE"], rx.url("/inv"),
                                                  eventFilters=[{"apiIds": ["api-1"]}]))
        rev_sub = subscription_id(await subscribe(world, aef, ["API_INVOKER_AUTHORIZATION_REVOKED"], rx.url("/aef")))
        rev2 = subscription_id(await subscribe(world, amf2, ["API_INVOKER_AUTHORIZATION_REVOKED"], rx.url("/amf2")))
        subscription_id(await subscribe(world, amf3, ["API_INVOKER_AUTHORIZATION_REVOKED"], rx.url("/amf3")))
        await events.emit("SERVICE_API_AVAILABLE", {"apiIds": ["api-2"]})  # filtered out
        await events.emit("SERVICE_API_AVAILABLE", {"apiIds": ["api-1", "api-3"]})
        # D151: each domain learns of its own APIs only (DOM3 of none; api-9 is withdrawn: of no domain)
        await events.emit("API_INVOKER_AUTHORIZATION_REVOKED",
                          {"apiInvokerIds": [inv.identity], "apiIds": ["api-1", "api-2", "api-9"]})
        await events.drain()
        got = {r.target: r.body for r in [await rx.next(), await rx.next(), await rx.next()]}
        assert rx.got.empty()
        assert got == {
            "/inv": {"subscriptionId": api_sub, "events": "SERVICE_API_AVAILABLE",
                     "eventDetail": {"apiIds": ["api-1", "api-3"]}},
            "/aef": {"subscriptionId": rev_sub, "events": "API_INVOKER_AUTHORIZATION_REVOKED",
                     "eventDetail": {"apiInvokerIds": [inv.identity], "apiIds": ["api-1"]}},
            "/amf2": {"subscriptionId": rev2, "events": "API_INVOKER_AUTHORIZATION_REVOKED",
                      "eventDetail": {"apiInvokerIds": [inv.identity], "apiIds": ["api-2"]}},
        }


async def test_put_and_patch_change_a_subscription(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    async with notifier(world) as events, Receiver() as first, Receiver() as second:
        sub = subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], first.url()))
        path = f"{EVENTS}/{aef.identity}/subscriptions/{sub}"
        patched = await world.call(aef, "PATCH", path, {"notificationDestination": second.url()},
                                   content_type="application/merge-patch+json")
        assert patched.status == 200, patched.body
        assert patched.json() == {"events": ["API_INVOKER_ONBOARDED"], "notificationDestination": second.url()}
        inv = await onboard(world)
        assert (await second.next()).body["events"] == "API_INVOKER_ONBOARDED"
        put = await world.call(aef, "PUT", path, {"events": ["API_INVOKER_OFFBOARDED"],
                                                  "notificationDestination": first.url(), "supportedFeatures": "f"})
        assert put.status == 200 and put.json()["supportedFeatures"] == "0"
        await onboard(world)
        await offboard(world, inv)
        got = await first.next()
        assert got.body == {"subscriptionId": sub, "events": "API_INVOKER_OFFBOARDED",
                            "eventDetail": {"apiInvokerIds": [inv.identity]}}
        await events.drain()
        assert first.got.empty() and second.got.empty()
        bad = await world.call(aef, "PATCH", path, {"notificationDestination": "gopher://127.0.0.1/"},
                               content_type="application/merge-patch+json")
        assert bad.status == 400
        drop = await world.call(aef, "PATCH", path, {"notificationDestination": None},
                                content_type="application/merge-patch+json")
        assert drop.status == 400
        still = world.store.get_document("capif-subscription", sub)
        assert still is not None and still.body["subscription"]["notificationDestination"] == first.url()
    missing = await world.call(aef, "PUT", f"{EVENTS}/{aef.identity}/subscriptions/nosuch",
                               {"events": ["API_INVOKER_ONBOARDED"], "notificationDestination": "http://127.0.0.1/"})
    assert missing.status == 404


async def test_offboarding_drops_the_invokers_subscriptions(world: World) -> None:
    inv = await onboard(world)
    other = await onboard(world)
    mine = subscription_id(await subscribe(world, inv, ["SERVICE_API_UPDATE"], "https://rx.example/a"))
    theirs = subscription_id(await subscribe(world, other, ["SERVICE_API_UPDATE"], "https://rx.example/b"))
    await offboard(world, inv)
    assert world.store.get_document("capif-subscription", mine) is None
    assert world.store.get_document("capif-subscription", theirs) is not None
    slots = [d.body for d in world.store.documents("capif-subscription") if d.record_id.startswith("slot~")]
    assert [s["holder"] for s in slots] == [theirs]  # the offboarded invoker's slot is freed


async def test_a_deregistered_function_is_no_longer_notified(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    async with notifier(world) as events, Receiver() as rx:
        sub = subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], rx.url()))
        world.store.delete_document("capif-provider", "func:" + aef.identity)  # what deregistration does
        await onboard(world)
        await events.drain()
        assert rx.count == 0
        assert world.store.get_document("capif-subscription", sub) is None


async def test_a_full_queue_drops_and_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="m2msec.ccf.events")
    idle = Notifier(world.ccf.ccf, DeliveryPolicy(queue_size=2))  # not started: nothing takes from the queue
    started = time.monotonic()
    for i in range(5):
        await idle.emit("API_INVOKER_ONBOARDED", {"apiInvokerIds": [f"INV{i}"]})
    assert time.monotonic() - started < 0.5
    assert idle.dropped == 3
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 3


def _tls_receiver_context(tmp: Any) -> tuple[ssl.SSLContext, bytes]:
    """A server context for ``localhost`` from a CA made here, and that CA's certificate."""
    ca = create_ca("events test CA", permitted_dns=["localhost"])
    leaf = issue(ca, CertificateFlavour.FQDN, "localhost")
    (tmp / "chain.pem").write_bytes(leaf.certificate_pem())
    (tmp / "key.pem").write_bytes(leaf.private_key_pem())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "chain.pem", tmp / "key.pem")
    return context, ca.certificate_pem()


async def test_https_delivery_trusts_the_configured_cas_only(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    server_context, ca_pem = _tls_receiver_context(world.tmp)
    trusting = ssl.create_default_context(cadata=ca_pem.decode())
    async with Receiver(tls=server_context) as rx:
        subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], rx.url(host="localhost")))
        async with notifier(world, DeliveryPolicy(timeout=2.0, retries=0)) as system_cas:
            await onboard(world)
            await system_cas.drain()
            assert system_cas.failed == 1 and rx.got.empty()  # the test CA is not among the system's
        async with notifier(world, DeliveryPolicy(timeout=2.0, retries=0, ssl_context=trusting)) as configured:
            inv = await onboard(world)
            got = await rx.next()
            assert got.body["eventDetail"] == {"apiInvokerIds": [inv.identity]}
            await configured.drain()
            assert configured.delivered == 1


async def test_an_event_detail_that_is_not_json_is_dropped_not_raised(world: World) -> None:
    idle = Notifier(world.ccf.ccf, DeliveryPolicy(queue_size=2))
    await idle.emit("API_INVOKER_ONBOARDED", {"apiInvokerIds": [object()]})
    assert idle.dropped == 0 and idle._events.empty()


async def test_a_notification_that_breaks_the_schema_is_not_sent(world: World,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    async with notifier(world) as events, Receiver() as rx:
        subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], rx.url()))
        await events.emit("API_INVOKER_ONBOARDED", {"apiInvokerIds": "INV-not-a-list"})
        await events.drain()
        assert rx.count == 0
    assert "breaks the official schema at eventDetail/apiInvokerIds" in caplog.text
    assert "INV-not-a-list" not in caplog.text


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_an_ipv6_destination_with_a_query(world: World) -> None:
    aef = provider_function(world, CAPIFRole.AEF)
    async with notifier(world), Receiver(host="::1") as rx:
        subscription_id(await subscribe(world, aef, ["API_INVOKER_ONBOARDED"], rx.url("/cb/path?k=v&x=1")))
        await onboard(world)
        got = await rx.next()
        assert got.target == "/cb/path?k=v&x=1" and got.headers["host"] == f"[::1]:{rx.port}"
