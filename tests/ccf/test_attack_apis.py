"""Hostile review of the CCF's provider, publish, discover, security and events APIs (issue 18): the findings.

Everything runs against the ``world`` CCF (real TLS on loopback, a real SQLite store, every answer checked against the
official schemas). Each test here marked ``xfail(strict=True)`` demonstrates a problem that is still there (remove the
marker with the fix); attacks the CCF refuses today are kept as regression tests in test_attack_apis_held.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.capif.ccf.context import Caller
from m2msec.capif.ccf.events import DeliveryPolicy
from m2msec.capif.ccf.events_rules import MAX_SUBSCRIPTIONS
from m2msec.capif.ccf.http import CCFRequest
from m2msec.capif.tokens import TokenRefused, verify_access_token

from .ccf_env import (
    PROVIDERS,
    PUBLISHED,
    Identity,
    Provider,
    World,
    expected_aefpsk,
    interface_description,
    onboard,
    provider_function,
    publish,
    register_provider,
    security,
    world,
)
from .test_events import Receiver, notifier, subscribe, subscription_id

__all__ = ["world"]

SECURITY = "/capif-security/v1/trustedInvokers"
TOKEN = "/capif-security/v1/securities"
EVENTS = "/capif-events/v1"






async def unpublish(world: World, p: Provider, api_id: str) -> None:
    gone = await world.call(p.apf, "DELETE", f"{PUBLISHED}/{p.apf.identity}/service-apis/{api_id}")
    assert gone.status == 204, gone.body


async def aef_reads(world: World, aef: Identity, invoker_id: str) -> Any:
    return await world.call(aef, "GET", f"{SECURITY}/{invoker_id}?authenticationInfo=true&authorizationInfo=true")


async def token(world: World, inv: Identity, scope: str | None = None) -> Any:
    form = {"grant_type": "client_credentials", "client_id": inv.identity}
    if scope is not None:
        form["scope"] = scope
    async with await world.connect(inv) as conn:
        return await conn.request("POST", f"{TOKEN}/{inv.identity}/token", form=form)


# ------------------------------------------------------------- F1/F2: withdrawing a service API keeps its grants alive

async def test_unpublished_interface_aefpsk_stays_readable(world: World) -> None:
    p = await register_provider(world)
    iface = interface_description(9101)
    service = await publish(world, p.apf, p.aef, iface, name="gone-api")
    inv = await onboard(world)
    async with await world.connect(inv) as conn:
        put = await conn.request("PUT", f"{SECURITY}/{inv.identity}",
                                 json_body=security({"aefId": p.aef.identity, "prefSecurityMethods": ["PSK"]}))
    assert put.status == 201 and put.json()["securityInfo"][0]["selSecurityMethod"] == "PSK", put.body
    assert (await aef_reads(world, p.aef, inv.identity)).status == 200
    await unpublish(world, p, service["apiId"])
    # the service API and its interface are gone: nothing should still hand the AEF a key for that interface
    after = await aef_reads(world, p.aef, inv.identity)
    assert after.status == 404, after.body


async def test_old_aef_reads_the_aefpsk_of_the_domain_that_took_its_interface_over(world: World) -> None:
    old, new = await register_provider(world), await register_provider(world)
    iface = interface_description(9102)
    p0 = "aef9102.test.example:8443/api"
    service = await publish(world, old.apf, old.aef, iface, name="moved-api")
    inv = await onboard(world)
    async with await world.connect(inv) as conn:
        put = await conn.request("PUT", f"{SECURITY}/{inv.identity}",
                                 json_body=security({"aefId": old.aef.identity, "prefSecurityMethods": ["PSK"]}))
        assert put.status == 201, put.body
        await unpublish(world, old, service["apiId"])
        await publish(world, new.apf, new.aef, iface, name="moved-api")  # the hold was released: allowed
        # the withdrawal removed the invoker's context (it named only that API); the invoker negotiates the new AEF
        # on the same CAPIF-1e connection: the same master secret and session ID, so the same AEFPSK for that P0
        upd = await conn.request("PUT", f"{SECURITY}/{inv.identity}", json_body=security(
            {"interfaceDetails": {k: iface[k] for k in ("fqdn", "port", "apiPrefix")},
             "prefSecurityMethods": ["PSK"]}))
        assert upd.status == 201, upd.body
        master = conn.writer.get_extra_info("tls_connection").master_secret().reveal()
        key = expected_aefpsk(master, conn.session.session_id, p0).hex()
    got_new = await aef_reads(world, new.aef, inv.identity)
    assert got_new.status == 200, got_new.body
    assert [e.get("authenticationInfo") for e in got_new.json()["securityInfo"]] == [key]
    got_old = await aef_reads(world, old.aef, inv.identity)
    # today: 200 and the very key the new domain's AEF authenticates this invoker with
    assert got_old.status == 404 and key.encode() not in got_old.body, got_old.body


async def test_no_token_for_an_unpublished_service_api(world: World) -> None:
    p = await register_provider(world)
    service = await publish(world, p.apf, p.aef, name="withdrawn-api")
    inv = await onboard(world)
    put = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                           security({"aefId": p.aef.identity, "prefSecurityMethods": ["OAUTH"]}))
    assert put.status == 201 and put.json()["securityInfo"][0]["selSecurityMethod"] == "OAUTH", put.body
    assert (await token(world, inv)).status == 200
    await unpublish(world, p, service["apiId"])
    answer = await token(world, inv, f"3gpp#{p.aef.identity}:withdrawn-api")
    assert answer.status == 400, answer.body  # today: 200, a token for a service API that no longer exists


async def test_no_token_for_a_deregistered_aef(world: World) -> None:
    p = await register_provider(world)
    await publish(world, p.apf, p.aef, name="dead-api")
    inv = await onboard(world)
    put = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                           security({"aefId": p.aef.identity, "prefSecurityMethods": ["OAUTH"]}))
    assert put.status == 201, put.body
    gone = await world.call(p.amf, "DELETE", f"{PROVIDERS}/{p.domain}")
    assert gone.status == 204, gone.body
    answer = await token(world, inv)
    assert answer.status == 400, answer.body  # today: 200 with scope 3gpp#<deleted AEF>:dead-api


# ------------------------------------------------------------------------------ F3: a 500 an APF can plant for invokers

async def test_an_overlong_api_prefix_never_makes_a_500(world: World) -> None:
    p = await register_provider(world)
    iface = interface_description(9103, apiPrefix="/" + "a" * 70_000)
    answer = await world.call(p.apf, "POST", f"{PUBLISHED}/{p.apf.identity}/service-apis", {
        "apiName": "long-api", "aefProfiles": [{"aefId": p.aef.identity, "versions": [{"apiVersion": "v1"}],
                                                "interfaceDescriptions": [iface]}]})
    if answer.status == 201:  # published: then the invoker's negotiation must still be answered properly
        inv = await onboard(world)
        answer = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                                  security({"aefId": p.aef.identity, "prefSecurityMethods": ["PSK", "PKI"]}))
    assert answer.status < 500, answer.body


# ---------------------------------------------------------------- F4: one slow receiver holds every delivery worker

async def test_a_silent_receiver_of_one_invoker_does_not_delay_others(world: World) -> None:
    policy = DeliveryPolicy(timeout=0.5, retries=1, backoff=0.05, workers=4, invoker_private_destinations=True)
    p = await register_provider(world)
    attacker = await onboard(world)
    async with notifier(world, policy), Receiver(silent=True) as silent, Receiver() as good:
        for i in range(16):  # MAX_SUBSCRIPTIONS allows 32; 16 are enough at this timeout
            subscription_id(await subscribe(world, attacker, ["SERVICE_API_AVAILABLE"], silent.url(f"/s{i}")))
        subscription_id(await subscribe(world, p.aef, ["API_INVOKER_ONBOARDED"], good.url()))
        await publish(world, p.apf, p.aef, name="bait")  # 16 deliveries to the silent receiver queued first
        victim = await onboard(world)
        got = await good.next(timeout=3 * policy.timeout)  # today: ~16 * 1.05 s / 4 workers ≈ 4 s later
        assert got.body["eventDetail"] == {"apiInvokerIds": [victim.identity]}
    assert MAX_SUBSCRIPTIONS == 32


# -------------------------------------------------------- F5: the subscription bound is not atomic (a concurrent race)

async def test_concurrent_subscriptions_respect_the_bound(world: World) -> None:
    inv = await onboard(world)
    for i in range(MAX_SUBSCRIPTIONS - 2):
        subscription_id(await subscribe(world, inv, ["SERVICE_API_AVAILABLE"], f"https://rx.example/{i}"))
    conns = [await world.connect(inv) for _ in range(12)]  # handshakes done: the requests race in the handler
    body = {"events": ["SERVICE_API_AVAILABLE"], "notificationDestination": "https://rx.example/race"}
    try:
        answers = await asyncio.gather(*(c.request("POST", f"{EVENTS}/{inv.identity}/subscriptions", json_body=body)
                                         for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert {a.status for a in answers} <= {201, 403}
    created = MAX_SUBSCRIPTIONS - 2 + sum(a.status == 201 for a in answers)
    assert created <= MAX_SUBSCRIPTIONS, created


# ------------------------------------------------- F6: SSRF — an invoker points the CCF at internal addresses (D136)

@pytest.mark.parametrize("destination", [
    "http://127.0.0.1:22/", "http://[::1]:6379/", "http://169.254.169.254/latest/meta-data/",
    "http://2130706433:8080/", "http://0x7f.1:8080/"])
async def test_an_invoker_cannot_aim_notifications_at_internal_addresses(world: World, destination: str) -> None:
    inv = await onboard(world)
    answer = await subscribe(world, inv, ["SERVICE_API_AVAILABLE"], destination)
    assert answer.status == 400, answer.body


async def test_an_interface_dropped_by_an_update_keeps_no_aefpsk(world: World) -> None:
    p = await register_provider(world)
    service = await publish(world, p.apf, p.aef, interface_description(9104), name="moving-api")
    inv = await onboard(world)
    async with await world.connect(inv) as conn:
        put = await conn.request("PUT", f"{SECURITY}/{inv.identity}",
                                 json_body=security({"aefId": p.aef.identity, "prefSecurityMethods": ["PSK"]}))
        master = conn.writer.get_extra_info("tls_connection").master_secret().reveal()
        key = expected_aefpsk(master, conn.session.session_id, "aef9104.test.example:8443/api").hex()
    assert put.status == 201 and put.json()["securityInfo"][0]["selSecurityMethod"] == "PSK", put.body
    assert key.encode() in (await aef_reads(world, p.aef, inv.identity)).body
    moved = dict(service)
    moved["aefProfiles"] = [dict(service["aefProfiles"][0], interfaceDescriptions=[interface_description(9105)])]
    answer = await world.call(p.apf, "PUT", f"{PUBLISHED}/{p.apf.identity}/service-apis/{service['apiId']}", moved)
    assert answer.status == 200, answer.body
    other = await register_provider(world)  # the released interface is free for any domain now
    await publish(world, other.apf, other.aef, interface_description(9104), name="taken-api")
    after = await aef_reads(world, p.aef, inv.identity)
    # today: 200 with the AEFPSK for aef9104.test.example:8443/api, an interface of another domain's AEF
    assert key.encode() not in after.body, after.body


# ------------------------------------------------------ F7: a token grants service APIs by name, recorded once (stale)

async def test_a_renamed_api_does_not_carry_its_grant_to_a_new_api_of_the_old_name(world: World) -> None:
    p = await register_provider(world)
    first = await publish(world, p.apf, p.aef, interface_description(9106), name="alpha")
    inv = await onboard(world)
    put = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}", security(
        {"aefId": p.aef.identity, "apiId": first["apiId"], "prefSecurityMethods": ["OAUTH"]}))
    assert put.status == 201 and put.json()["securityInfo"][0]["selSecurityMethod"] == "OAUTH", put.body
    renamed = await world.call(p.apf, "PATCH", f"{PUBLISHED}/{p.apf.identity}/service-apis/{first['apiId']}",
                               {"apiName": "beta"})
    assert renamed.status == 200, renamed.body
    await publish(world, p.apf, p.aef, interface_description(9107), name="alpha")  # another service API
    answer = await token(world, inv, f"3gpp#{p.aef.identity}:alpha")
    # today: 200, a token the AEF reads as a grant for the new "alpha"
    assert answer.status == 400, answer.body


# ------------------------------------------- F8: an apiName writes a grant for another domain's AEF into the token

async def test_an_api_name_cannot_inject_a_grant_for_another_domains_aef(world: World) -> None:
    victim = await register_provider(world)
    await publish(world, victim.apf, victim.aef, interface_description(9108), name="payments")
    attacker = await register_provider(world)
    injected = f"x;{victim.aef.identity}:payments"  # the victim's aefId is in every discovery answer
    answer = await world.call(attacker.apf, "POST", f"{PUBLISHED}/{attacker.apf.identity}/service-apis", {
        "apiName": injected, "aefProfiles": [{"aefId": attacker.aef.identity, "versions": [{"apiVersion": "v1"}],
                                              "securityMethods": ["OAUTH"],
                                              "interfaceDescriptions": [interface_description(9109)]}]})
    if answer.status != 201:  # refused at publication: the fix
        assert answer.status == 400, answer.body
        return
    inv = await onboard(world)
    put = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                           security({"aefId": attacker.aef.identity, "prefSecurityMethods": ["OAUTH"]}))
    assert put.status == 201, put.body
    granted = await token(world, inv)  # no scope: "every service API of every OAUTH entry"
    if granted.status == 200:
        claims = json.loads(base64.urlsafe_b64decode(granted.json()["access_token"].split(".")[1] + "=="))
        grants = [part.split(":", 1)[0] for part in claims["scope"].removeprefix("3gpp#").split(";")]
        ccf = world.ccf.ccf
        with pytest.raises(TokenRefused):  # today: the victim's AEF accepts it for its "payments" API
            verify_access_token(granted.json()["access_token"], ccf.verification_keys, issuer=ccf.policy.issuer,
                                aef_id=victim.aef.identity, api_name="payments", now=int(ccf.clock()))
        assert victim.aef.identity not in grants, claims["scope"]
    read = await world.call(attacker.aef, "GET", f"{SECURITY}/{inv.identity}?authorizationInfo=true")
    assert read.status == 200, read.body
    assert f";{victim.aef.identity}:" not in read.json()["securityInfo"][0].get("authorizationInfo", ""), read.body


# ------------------------------------------------ F9: revocations of one provider domain told to every other domain

async def test_a_revocation_is_not_told_to_another_provider_domain(world: World) -> None:
    mine, theirs = await register_provider(world), await register_provider(world)
    await publish(world, theirs.apf, theirs.aef, interface_description(9110), name="their-api")
    inv = await onboard(world)
    async with notifier(world) as events, Receiver() as rx:
        subscription_id(await subscribe(world, mine.aef, ["API_INVOKER_AUTHORIZATION_REVOKED"], rx.url()))
        put = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                               security({"aefId": theirs.aef.identity, "prefSecurityMethods": ["OAUTH"]}))
        assert put.status == 201, put.body
        assert (await world.call(inv, "DELETE", f"{SECURITY}/{inv.identity}")).status == 204
        await events.drain()
        leaked = rx.count  # counted before the receiver answers, so before drain() returns
    assert leaked == 0, leaked  # today: 1, the other domain learns the invoker and its apiIds


# ------------------------------------- F10: one kind of onboarding credential for invokers and provider domains (D123)

async def test_an_invoker_onboarding_credential_does_not_register_a_provider_domain(world: World) -> None:
    # what `m2msec ccf onboarding-credential --subject app-developer-42` issues for a third-party app developer
    credential = world.credential("app-developer-42")
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    body = {"regSec": "x", "apiProvFuncs": [provider_function(role, key)
                                            for role, key in zip(("AMF", "APF", "AEF"), keys, strict=True)]}
    answer = await world.call(None, "POST", PROVIDERS, body, headers={"authorization": f"Bearer {credential}"})
    # today: 201, and the developer holds AMF, APF and AEF certificates: it publishes service APIs every invoker
    # discovers, holds interfaces (D125) and hears of every invoker's onboarding (D133)
    assert answer.status in (401, 403), answer.body


# ---------------------------------------------------------- F11: the onboarding credential in a CCFRequest's repr

async def test_a_request_repr_carries_no_bearer_credential(world: World) -> None:
    credential = world.credential("repr-check")
    request = CCFRequest(world.ccf.ccf, Caller(None, None, None, None), {}, {}, None,  # type: ignore[arg-type]
                         {"authorization": f"Bearer {credential}"}, {"authorization": [f"Bearer {credential}"]})
    assert request.header("authorization") == f"Bearer {credential}"
    assert credential not in repr(request)


async def test_an_api_grant_narrowed_by_api_id_is_not_a_grant_for_a_namesake(world: World) -> None:
    p = await register_provider(world)
    granted = await publish(world, p.apf, p.aef, interface_description(9111), name="twin")
    answer = await world.call(p.apf, "POST", f"{PUBLISHED}/{p.apf.identity}/service-apis", {
        "apiName": "twin", "aefProfiles": [{"aefId": p.aef.identity, "versions": [{"apiVersion": "v2"}],
                                            "securityMethods": ["OAUTH"],
                                            "interfaceDescriptions": [interface_description(9112)]}]})
    if answer.status != 201:  # a second service API of that name at that AEF refused: one fix
        assert answer.status in (400, 403), answer.body
        return
    inv = await onboard(world)
    put = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}", security(
        {"aefId": p.aef.identity, "apiId": granted["apiId"], "prefSecurityMethods": ["OAUTH"]}))
    assert put.status == 201, put.body
    got = await token(world, inv, f"3gpp#{p.aef.identity}:twin")
    # today: 200 with scope "<aef>:twin", which the AEF cannot tell from a grant for the other "twin" (by name only)
    assert got.status == 400, got.body
