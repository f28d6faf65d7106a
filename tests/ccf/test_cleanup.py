"""Cross-API consistency over real TLS: what a deregistered provider function, a withdrawn service API and a removed
AEF leave behind (nothing that grants anything), and the SecurityNotification the invoker gets when its authorization
is revoked (an AEF's ``POST .../delete``, a withdrawal), received by an HTTP receiver on loopback and checked against
the official callback schema of the CAPIF Security API."""

from __future__ import annotations

import asyncio
from typing import Any

from m2msec.capif.schema import validate_request
from m2msec.store import Document

from .ccf_env import (
    PROVIDERS,
    PUBLISHED,
    Identity,
    Provider,
    World,
    interface_description,
    onboard,
    publish,
    register_provider,
    world,
)
from .test_events import EVENTS, Receiver, notifier, subscribe, subscription_id

__all__ = ["world"]

SECURITY = "/capif-security/v1/trustedInvokers"
CALLBACK = "POST /trustedInvokers/{apiInvokerId} callback notificationDestination"


async def security_notification(rx: Receiver, timeout: float = 5.0) -> dict[str, Any]:
    """The next POST the receiver got, which must be a SecurityNotification (official schema)."""
    got = await asyncio.wait_for(rx.got.get(), timeout)
    assert got.headers["content-type"] == "application/json"
    validate_request("capif-security", CALLBACK, got.body)
    body: dict[str, Any] = got.body
    return body


def token_form(inv: Identity, scope: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": inv.identity, "scope": scope}


async def token(world: World, inv: Identity, scope: str) -> tuple[int, dict[str, Any]]:
    async with await world.connect(inv) as conn:
        answer = await conn.request("POST", f"/capif-security/v1/securities/{inv.identity}/token",
                                    form=token_form(inv, scope))
    return answer.status, answer.json()


def aefpsk_records(world: World, **match: str) -> list[Document]:
    return [d for d in world.store.documents("capif-aefpsk") if all(d.body.get(k) == v for k, v in match.items())]


async def put_context(world: World, inv: Identity, destination: str, *entries: dict[str, Any]) -> dict[str, Any]:
    answer = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}", {
        "securityInfo": list(entries), "notificationDestination": destination, "supportedFeatures": "0"})
    assert answer.status == 201, answer.body
    body: dict[str, Any] = answer.json()
    return body


def without(provider: Provider, *gone: Identity) -> dict[str, Any]:
    """The provider's enrolment (as answered) without the functions ``gone``: a PUT that removes them."""
    names = {g.identity for g in gone}
    return dict(provider.answer, apiProvFuncs=[f for f in provider.answer["apiProvFuncs"]
                                               if f["apiProvFuncId"] not in names])


async def test_deregistered_functions_lose_their_subscriptions_at_once(world: World) -> None:
    p = await register_provider(world)
    keep = await register_provider(world)
    subs = {}
    for fn in (p.aef, p.apf, p.amf, keep.aef):
        subs[fn.identity] = subscription_id(await subscribe(world, fn, ["API_INVOKER_ONBOARDED"],
                                                            "http://127.0.0.1:9/"))
    # an update that removes the AEF: its subscription goes with the answer, before any event is emitted
    answer = await world.call(p.amf, "PUT", f"{PROVIDERS}/{p.domain}", without(p, p.aef))
    assert answer.status == 200, answer.body
    assert world.store.get_document("capif-subscription", subs[p.aef.identity]) is None
    assert world.store.get_document("capif-subscription", subs[p.apf.identity]) is not None
    # the domain's deregistration: the APF's and the AMF's go too; another domain's stays
    assert (await world.call(p.amf, "DELETE", f"{PROVIDERS}/{p.domain}")).status == 204
    for fn in (p.apf, p.amf):
        assert world.store.get_document("capif-subscription", subs[fn.identity]) is None
    assert world.store.get_document("capif-subscription", subs[keep.aef.identity]) is not None
    # and the removed functions cannot subscribe again (their certificates are stale)
    again = await world.call(p.aef, "POST", f"{EVENTS}/{p.aef.identity}/subscriptions",
                             {"events": ["API_INVOKER_ONBOARDED"], "notificationDestination": "http://127.0.0.1:9/"})
    assert again.status == 403


async def test_a_withdrawn_service_api_grants_nothing(world: World) -> None:
    p = await register_provider(world)
    iface_a, iface_b = interface_description(9001), interface_description(9002)
    api_a = await publish(world, p.apf, p.aef, iface_a, name="api-a")
    api_b = await publish(world, p.apf, p.aef, iface_b, name="api-b")
    inv = await onboard(world)
    async with notifier(world) as events, Receiver() as rx:
        put = await put_context(world, inv, rx.url("/security"),
                                {"interfaceDetails": iface_a, "prefSecurityMethods": ["PSK"]},
                                {"interfaceDetails": iface_b, "prefSecurityMethods": ["OAUTH"]})
        assert [e["selSecurityMethod"] for e in put["securityInfo"]] == ["PSK", "OAUTH"]
        assert len(aefpsk_records(world, invoker=inv.identity)) == 1
        before = await world.call(p.aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
        assert [e["selSecurityMethod"] for e in before.json()["securityInfo"]] == ["PSK", "OAUTH"]

        deleted = await world.call(p.apf, "DELETE", f"{PUBLISHED}/{p.apf.identity}/service-apis/{api_a['apiId']}")
        assert deleted.status == 204, deleted.body
        # the PSK entry (api-a only) and its AEFPSK are gone; the OAUTH entry stays
        assert aefpsk_records(world, invoker=inv.identity) == []
        after = await world.call(p.aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
        assert after.status == 200, after.body
        assert [e["selSecurityMethod"] for e in after.json()["securityInfo"]] == ["OAUTH"]
        # an OAUTH entry carries no key, only its context's generation (D176; the AEFPSK went with its entry)
        left = after.json()["securityInfo"][0].get("authenticationInfo")
        assert left is not None and len(left) != 64
        # the invoker is told (official callback, cause UNEXPECTED_REASON: D140)
        assert await security_notification(rx) == {"apiInvokerId": inv.identity, "aefId": p.aef.identity,
                                                    "apiIds": [api_a["apiId"]], "cause": "UNEXPECTED_REASON"}
        # a token for the withdrawn API is refused as for an API the CCF never heard of; the kept one is granted
        withdrawn = await token(world, inv, f"3gpp#{p.aef.identity}:api-a")
        unknown = await token(world, inv, f"3gpp#{p.aef.identity}:api-never-published")
        assert withdrawn[0] == unknown[0] == 400
        assert withdrawn[1]["error"] == unknown[1]["error"] == "invalid_scope"
        kept = await token(world, inv, f"3gpp#{p.aef.identity}:api-b")
        assert kept[0] == 200 and kept[1]["scope"] == f"3gpp#{p.aef.identity}:api-b"

        # the last API withdrawn: the context itself goes
        deleted = await world.call(p.apf, "DELETE", f"{PUBLISHED}/{p.apf.identity}/service-apis/{api_b['apiId']}")
        assert deleted.status == 204
        assert (await world.call(p.aef, "GET", f"{SECURITY}/{inv.identity}")).status == 404
        assert (await world.call(inv, "GET", f"{SECURITY}/{inv.identity}")).status == 404
        assert world.store.get_document("capif-security", inv.identity) is None
        assert (await security_notification(rx))["apiIds"] == [api_b["apiId"]]
        await events.drain()
        assert rx.count == 2


async def test_an_aef_entry_keeps_the_apis_not_withdrawn(world: World) -> None:
    p = await register_provider(world)
    iface = interface_description(9101)
    api_a = await publish(world, p.apf, p.aef, iface, name="api-a")
    api_b = await publish(world, p.apf, p.aef, iface, name="api-b")
    inv = await onboard(world)
    async with notifier(world) as events, Receiver() as rx:
        await put_context(world, inv, rx.url(), {"aefId": p.aef.identity, "prefSecurityMethods": ["PSK"]})
        [record] = aefpsk_records(world, invoker=inv.identity)
        key = record.key
        assert key is not None
        assert (await world.call(p.apf, "DELETE",
                                 f"{PUBLISHED}/{p.apf.identity}/service-apis/{api_a['apiId']}")).status == 204
        got = await world.call(p.aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true"
                               "&authorizationInfo=true")
        assert got.status == 200, got.body
        [entry] = got.json()["securityInfo"]
        # one interface still used by api-b: the same AEFPSK, now granting api-b only
        assert entry["apiId"] == api_b["apiId"] and entry["selSecurityMethod"] == "PSK"
        assert entry["authenticationInfo"] == key.reveal().hex()
        assert entry["authorizationInfo"] == f"3gpp#{p.aef.identity}:api-b"
        assert (await security_notification(rx))["apiIds"] == [api_a["apiId"]]
        await events.drain()


async def test_a_removed_aef_leaves_no_aefpsk(world: World) -> None:
    p = await register_provider(world)
    other = await register_provider(world)
    api = await publish(world, p.apf, p.aef, name="api-gone")
    elsewhere = await publish(world, other.apf, other.aef, name="api-stays")
    inv = await onboard(world)
    async with notifier(world) as events, Receiver() as rx:
        await put_context(world, inv, rx.url(),
                          {"aefId": p.aef.identity, "prefSecurityMethods": ["PSK"]},
                          {"aefId": other.aef.identity, "prefSecurityMethods": ["PSK"]})
        assert len(aefpsk_records(world, aefId=p.aef.identity)) == 1
        # a stray AEFPSK of that AEF no context names (a crash between two writes): it must go as well
        stray = aefpsk_records(world, aefId=p.aef.identity)[0]
        world.store.put_document(Document("capif-aefpsk", f"INVstray {p.aef.identity} x:1/",
                                          {"invoker": "INVstray", "aefId": p.aef.identity, "interface": "x:1/"},
                                          stray.key))
        answer = await world.call(p.amf, "PUT", f"{PROVIDERS}/{p.domain}", without(p, p.aef))
        assert answer.status == 200, answer.body
        assert aefpsk_records(world, aefId=p.aef.identity) == []
        assert len(aefpsk_records(world, aefId=other.aef.identity)) == 1
        assert world.store.get_document("capif-service", api["apiId"]) is None
        got = await world.call(other.aef, "GET", f"{SECURITY}/{inv.identity}")
        assert [e["aefId"] for e in got.json()["securityInfo"]] == [other.aef.identity]
        assert await security_notification(rx) == {"apiInvokerId": inv.identity, "aefId": p.aef.identity,
                                                    "apiIds": [api["apiId"]], "cause": "UNEXPECTED_REASON"}
        assert world.store.get_document("capif-service", elsewhere["apiId"]) is not None
        await events.drain()


async def test_an_aef_revocation_is_told_to_the_invoker_and_its_own_delete_is_not(world: World) -> None:
    p = await register_provider(world)
    api = await publish(world, p.apf, p.aef, name="api-r")
    inv = await onboard(world)
    async with notifier(world) as events, Receiver() as rx:
        await put_context(world, inv, rx.url("/revoked?token=abc"),
                          {"aefId": p.aef.identity, "prefSecurityMethods": ["PKI"]})
        answer = await world.call(p.aef, "POST", f"{SECURITY}/{inv.identity}/delete", {
            "apiInvokerId": inv.identity, "aefId": p.aef.identity, "apiIds": [api["apiId"]],
            "cause": "OVERLIMIT_USAGE"})
        assert answer.status == 204, answer.body
        got = await asyncio.wait_for(rx.got.get(), 5.0)
        assert got.target == "/revoked?token=abc"
        validate_request("capif-security", CALLBACK, got.body)
        assert got.body == {"apiInvokerId": inv.identity, "aefId": p.aef.identity, "apiIds": [api["apiId"]],
                            "cause": "OVERLIMIT_USAGE"}
        # the invoker's own DELETE revokes too, but the invoker asked for it: no notification
        await put_context(world, inv, rx.url(), {"aefId": p.aef.identity, "prefSecurityMethods": ["PKI"]})
        assert (await world.call(inv, "DELETE", f"{SECURITY}/{inv.identity}")).status == 204
        await events.drain()
        assert rx.count == 1


async def test_an_updated_service_api_grants_only_what_it_still_publishes(world: World) -> None:
    p = await register_provider(world)
    iface_old, iface_new = interface_description(9201), interface_description(9202)
    psk_api = await publish(world, p.apf, p.aef, iface_old, name="api-moved")
    oauth_api = await publish(world, p.apf, p.aef, interface_description(9203), name="api-renamed")
    inv = await onboard(world)
    service = f"{PUBLISHED}/{p.apf.identity}/service-apis"
    async with notifier(world) as events, Receiver() as rx:
        await put_context(world, inv, rx.url(),
                          {"interfaceDetails": iface_old, "prefSecurityMethods": ["PSK"]},
                          {"aefId": p.aef.identity, "apiId": oauth_api["apiId"], "prefSecurityMethods": ["OAUTH"]})
        assert len(aefpsk_records(world, invoker=inv.identity)) == 1
        # the PSK API moves to another interface: the AEFPSK of the old one no longer names a published interface
        moved = dict(psk_api)
        moved["aefProfiles"] = [dict(psk_api["aefProfiles"][0], interfaceDescriptions=[iface_new])]
        answer = await world.call(p.apf, "PUT", f"{service}/{psk_api['apiId']}", moved)
        assert answer.status == 200, answer.body
        assert aefpsk_records(world, invoker=inv.identity) == []
        assert await security_notification(rx) == {"apiInvokerId": inv.identity, "aefId": p.aef.identity,
                                                    "apiIds": [psk_api["apiId"]], "cause": "UNEXPECTED_REASON"}
        got = await world.call(p.aef, "GET", f"{SECURITY}/{inv.identity}")
        assert [e["selSecurityMethod"] for e in got.json()["securityInfo"]] == ["OAUTH"]
        # the OAUTH API is renamed: the grant follows the new name, the old one is unknown
        renamed = await world.call(p.apf, "PATCH", f"{service}/{oauth_api['apiId']}", {"apiName": "api-new-name"},
                                   content_type="application/merge-patch+json")
        assert renamed.status == 200, renamed.body
        assert (await token(world, inv, f"{p.aef.identity}:api-new-name"))[0] == 200
        assert (await token(world, inv, f"{p.aef.identity}:api-renamed"))[1]["error"] == "invalid_scope"
        # OAUTH no longer published for it: revoked, and the context (now empty) is gone
        no_oauth = await world.call(p.apf, "PATCH", f"{service}/{oauth_api['apiId']}", {"aefProfiles": [
            dict(oauth_api["aefProfiles"][0], securityMethods=["PKI"],
                 interfaceDescriptions=[dict(interface_description(9203), securityMethods=["PKI"])])]},
                                    content_type="application/merge-patch+json")
        assert no_oauth.status == 200, no_oauth.body
        assert (await security_notification(rx))["apiIds"] == [oauth_api["apiId"]]
        assert world.store.get_document("capif-security", inv.identity) is None
        await events.drain()
        assert rx.count == 2
