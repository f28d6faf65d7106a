"""Hostile review of the CCF's provider, publish, discover, security and events APIs (issue 18): attacks the CCF
refuses today, kept as regression tests (the findings are in test_attack_apis.py). Over real TLS against ``world``."""

from __future__ import annotations

import copy
from typing import Any

from .ccf_env import (
    PROVIDERS,
    PUBLISHED,
    World,
    discover_path,
    interface_description,
    new_key,
    onboard,
    provider_function,
    publish,
    register_provider,
    service_description,
    world,
)
from .test_attack_apis import SECURITY, TOKEN, security

__all__ = ["world"]

EVENTS = "/capif-events/v1"


def _apis(apf_id: str) -> str:
    return f"{PUBLISHED}/{apf_id}/service-apis"


async def test_one_domains_amf_never_reaches_another_domain(world: World) -> None:
    a, b = await register_provider(world), await register_provider(world)
    # A's AMF on B's registration, however it asks
    for method, body in (("PUT", b.answer), ("PATCH", {"apiProvDomInfo": "mine now"}), ("DELETE", None)):
        answer = await world.call(a.amf, method, f"{PROVIDERS}/{b.domain}", body)
        assert answer.status == 403, (method, answer.body)
    # A's AMF adopting B's APF into its own domain (the function ID of another domain in an update)
    adopt = copy.deepcopy(a.answer)
    adopt["apiProvFuncs"].append(copy.deepcopy(next(f for f in b.answer["apiProvFuncs"]
                                                    if f["apiProvFuncRole"] == "APF")))
    answer = await world.call(a.amf, "PUT", f"{PROVIDERS}/{a.domain}", adopt)
    assert answer.status == 400, answer.body
    # ... or re-keying it with its own key under B's function ID
    rekey = copy.deepcopy(adopt)
    rekey["apiProvFuncs"][-1]["regInfo"] = provider_function("APF", new_key())["regInfo"]
    answer = await world.call(a.amf, "PUT", f"{PROVIDERS}/{a.domain}", rekey)
    assert answer.status == 400, answer.body
    # B is untouched: its APF still works with its certificate
    assert (await world.call(b.apf, "GET", _apis(b.apf.identity))).status == 200


async def test_role_confusion_and_client_chosen_ids_are_refused(world: World) -> None:
    p = await register_provider(world)
    for who in (p.apf, p.aef):  # an APF or AEF certificate used as the AMF
        answer = await world.call(who, "DELETE", f"{PROVIDERS}/{p.domain}")
        assert answer.status == 403, answer.body
    inv = await onboard(world)
    for who in (p.amf, p.aef, inv):  # only an APF publishes, and only under its own ID
        answer = await world.call(who, "POST", _apis(who.identity),
                                  service_description(p.aef, interface_description(9201)))
        assert answer.status == 403, answer.body
    # IDs are the CCF's to assign, the regSec the client sent is never echoed
    body = {"regSec": "s3cret-regsec", "apiProvDomId": "DOMmine",
            "apiProvFuncs": [provider_function("AMF", new_key())]}
    answer = await world.call(None, "POST", PROVIDERS, body,
                              headers={"authorization": f"Bearer {world.credential(purpose='provider')}"})
    assert answer.status == 400, answer.body
    del body["apiProvDomId"]
    body["apiProvFuncs"][0]["apiProvFuncId"] = p.amf.identity  # an existing function's ID
    answer = await world.call(None, "POST", PROVIDERS, body,
                              headers={"authorization": f"Bearer {world.credential(purpose='provider')}"})
    assert answer.status == 400, answer.body
    del body["apiProvFuncs"][0]["apiProvFuncId"]
    answer = await world.call(None, "POST", PROVIDERS, body,
                              headers={"authorization": f"Bearer {world.credential(purpose='provider')}"})
    assert answer.status == 201 and b"s3cret-regsec" not in answer.body, answer.body


async def test_deregistration_leaves_no_live_certificate_nor_hold(world: World) -> None:
    p = await register_provider(world)
    iface = interface_description(9202)
    await publish(world, p.apf, p.aef, iface)
    assert (await world.call(p.amf, "DELETE", f"{PROVIDERS}/{p.domain}")).status == 204
    for who, method, path in ((p.amf, "PATCH", f"{PROVIDERS}/{p.domain}"), (p.apf, "GET", _apis(p.apf.identity)),
                              (p.aef, "POST", f"{EVENTS}/{p.aef.identity}/subscriptions")):
        body = {"apiProvDomInfo": "x"} if method == "PATCH" else (
            {"events": ["SERVICE_API_AVAILABLE"], "notificationDestination": "https://rx.example/"}
            if method == "POST" else None)
        answer = await world.call(who, method, path, body)
        assert answer.status == 403, (method, path, answer.body)
    other = await register_provider(world)
    await publish(world, other.apf, other.aef, iface)  # the interface hold went with the domain


async def test_interface_takeover_by_another_spelling_is_refused(world: World) -> None:
    a, b = await register_provider(world), await register_provider(world)
    held = [{"ipv6Addr": "2001:db8::7", "port": 443, "apiPrefix": "/x", "securityMethods": ["PSK"]},
            {"ipv4Addr": "192.0.2.9", "apiPrefix": "/y", "securityMethods": ["PSK"]},
            {"fqdn": "held.test.example", "apiPrefix": "/z", "securityMethods": ["PSK"]}]
    for i, iface in enumerate(held):
        await publish(world, a.apf, a.aef, iface, name=f"held-{i}")
    spellings = [{"ipv6Addr": "2001:0DB8:0000:0000:0000:0000:0000:0007", "apiPrefix": "/x"},
                 {"ipv6Addr": "2001:db8:0::7", "port": 443, "apiPrefix": "/x"},
                 {"ipv4Addr": "192.0.2.9", "port": 443, "apiPrefix": "/y"},
                 {"fqdn": "HELD.test.EXAMPLE.", "port": 443, "apiPrefix": "/z"}]
    for spelling in spellings:
        iface = dict(spelling, securityMethods=["PSK"])
        answer = await world.call(b.apf, "POST", _apis(b.apf.identity), service_description(b.aef, iface))
        assert answer.status == 403 and answer.json()["cause"] == "INTERFACE_HELD_BY_ANOTHER_AEF", (spelling,
                                                                                                      answer.body)
    # forms the CCF cannot write one way are refused rather than treated as another interface
    for bad in ({"ipv4Addr": "192.000.002.009"}, {"fqdn": "held.test.example..", "apiPrefix": "/z"},
                {"fqdn": "held.test.example", "apiPrefix": "z"}, {"fqdn": "held.test.example", "apiPrefix": "/z:1"}):
        iface = dict(bad, securityMethods=["PSK"])
        answer = await world.call(b.apf, "POST", _apis(b.apf.identity), service_description(b.aef, iface))
        assert answer.status == 400, (bad, answer.body)


async def test_an_apf_never_moves_a_service_to_a_foreign_aef_nor_touches_anothers(world: World) -> None:
    a, b = await register_provider(world), await register_provider(world)
    mine = await publish(world, a.apf, a.aef, name="mine")
    theirs = await publish(world, b.apf, b.aef, name="theirs")
    foreign = service_description(b.aef, interface_description(9203), "mine")
    answer = await world.call(a.apf, "PUT", f"{_apis(a.apf.identity)}/{mine['apiId']}", foreign)
    assert answer.status == 403 and answer.json()["cause"] == "AEF_NOT_IN_PROVIDER_DOMAIN", answer.body
    answer = await world.call(a.apf, "PATCH", f"{_apis(a.apf.identity)}/{mine['apiId']}",
                              {"aefProfiles": foreign["aefProfiles"]})
    assert answer.status == 403, answer.body
    answer = await world.call(a.apf, "PATCH", f"{_apis(a.apf.identity)}/{mine['apiId']}",
                              {"apiStatus": {"aefIds": [b.aef.identity]}})
    assert answer.status == 400, answer.body
    for path in (f"{_apis(b.apf.identity)}/{theirs['apiId']}", f"{_apis(a.apf.identity)}/{theirs['apiId']}"):
        answer = await world.call(a.apf, "DELETE", path)
        assert answer.status in (403, 404), answer.body
    assert (await world.call(b.apf, "GET", f"{_apis(b.apf.identity)}/{theirs['apiId']}")).status == 200


async def test_discovery_query_tricks(world: World) -> None:
    p = await register_provider(world)
    await publish(world, p.apf, p.aef, name="found")
    inv, other = await onboard(world), await onboard(world)
    base = discover_path(inv.identity)
    cases = [
        (f"{base}&api-invoker-id={other.identity}", 400),  # repeated: never read once and used twice
        (f"{discover_path(other.identity)}", 403),
        (f"{discover_path(None)}?api-invoker-id={other.identity.replace('I', '%49', 1)}", 403),  # encoded
        (f"{base}&API-NAME=found", 400),  # names are case-sensitive: an unknown one is refused, not ignored
        (f"{base}&api-name=found&api-name=other", 400),
        (f"{base}&preferred-aef-loc=" + "%5B" * 5000, 400),
        (f"{base}&supported-features=0x1", 400),
        (f"{base}&api-supported-features=FF", 400),  # only with api-name
    ]
    for path, status in cases:
        answer = await world.call(inv, "GET", path)
        assert answer.status == status, (path, answer.body)
    assert (await world.call(inv, "GET", base)).status == 200


async def test_security_cross_party_attacks_are_refused(world: World) -> None:
    a, b = await register_provider(world), await register_provider(world)
    await publish(world, a.apf, a.aef, name="a-api")
    await publish(world, b.apf, b.aef, name="b-api")
    inv, other = await onboard(world), await onboard(world)
    entry = {"aefId": a.aef.identity, "prefSecurityMethods": ["PSK"]}
    assert (await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}", security(entry))).status == 201
    # another invoker on inv's context; provider roles on the invoker's operations
    for who in (other, a.aef, a.apf, a.amf):
        for method, path, body in (("PUT", f"{SECURITY}/{inv.identity}", security(entry)),
                                   ("POST", f"{SECURITY}/{inv.identity}/update", security(entry)),
                                   ("DELETE", f"{SECURITY}/{inv.identity}", None)):
            answer = await world.call(who, method, path, body)
            assert answer.status == 403, (who.identity, method, answer.body)
    # B's AEF: not named by the context, learns nothing, revokes nothing
    assert (await world.call(b.aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")).status == 404
    for notice in ({"apiInvokerId": inv.identity, "aefId": a.aef.identity, "apiIds": ["x"]},
                   {"apiInvokerId": inv.identity, "apiIds": ["x"]}):
        answer = await world.call(b.aef, "POST", f"{SECURITY}/{inv.identity}/delete",
                                  dict(notice, cause="UNEXPECTED_REASON"))
        assert answer.status in (403, 404), answer.body
    got = await world.call(a.aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
    assert got.status == 200 and len(got.json()["securityInfo"][0]["authenticationInfo"]) == 64


async def test_token_endpoint_tricks(world: World) -> None:
    p = await register_provider(world)
    await publish(world, p.apf, p.aef, name="tok-api")
    inv = await onboard(world)
    put = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                           security({"aefId": p.aef.identity, "prefSecurityMethods": ["OAUTH"]}))
    assert put.status == 201, put.body
    aef = p.aef.identity
    path = f"{TOKEN}/{inv.identity}/token"
    cases: list[tuple[bytes, int, str]] = [
        (f"grant_type=client_credentials&client_id={inv.identity}&client_id=x".encode(), 400, "invalid_request"),
        (f"grant_type=client_credentials&grant_type=password&client_id={inv.identity}".encode(), 400,
         "invalid_request"),
        (f"grant_type=CLIENT_CREDENTIALS&client_id={inv.identity}".encode(), 400, "unsupported_grant_type"),
        (f"grant_type=client_credentials&client_id={inv.identity}%00".encode(), 401, "invalid_client"),
        (f"grant_type=client_credentials&client_id={inv.identity}&scope={aef}:tok-api;{aef}:tok-api".encode(),
         400, "invalid_scope"),
        (f"grant_type=client_credentials&client_id={inv.identity}&scope=3gpp%233gpp%23{aef}:tok-api".encode(),
         400, "invalid_scope"),
        (f"grant_type=client_credentials&client_id={inv.identity}&scope={aef}:tok-api%20{aef}:x".encode(),
         400, "invalid_scope"),
        (f"grant_type=client_credentials&client_id={inv.identity}&scope={aef}:tok-api,".encode(),
         400, "invalid_scope"),
    ]
    async with await world.connect(inv) as conn:
        for raw, status, error in cases:
            answer = await conn.request("POST", path, raw=raw, content_type="application/x-www-form-urlencoded")
            assert answer.status == status and answer.json()["error"] == error, (raw, answer.body)
            assert b"access_token" not in answer.body
    offboarded = await world.call(inv, "DELETE", f"/api-invoker-management/v1/onboardedInvokers/{inv.identity}")
    assert offboarded.status == 204
    async with await world.connect(inv) as conn:
        answer = await conn.request("POST", path, form={"grant_type": "client_credentials",
                                                        "client_id": inv.identity})
    assert answer.status == 401 and answer.json()["error"] == "invalid_client", answer.body


async def test_jwks_publishes_no_private_member(world: World) -> None:
    answer = await world.call(None, "GET", "/capif-security/v1/jwks")
    assert answer.status == 200, answer.body
    keys: list[dict[str, Any]] = answer.json()["keys"]
    assert keys and all(k["kty"] == "EC" and k["crv"] == "P-256" for k in keys)
    private = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
    assert all(not (private & set(k)) for k in keys), keys
    secret = world.ccf.ccf.token_key.private_numbers().private_value
    assert secret.to_bytes(32, "big").hex().encode() not in answer.body.lower()


async def test_events_as_someone_else_or_beyond_the_role(world: World) -> None:
    p = await register_provider(world)
    inv, other = await onboard(world), await onboard(world)
    sub = {"events": ["SERVICE_API_AVAILABLE"], "notificationDestination": "https://rx.example/n"}
    for who, subscriber in ((inv, other.identity), (p.aef, inv.identity), (inv, p.aef.identity)):
        answer = await world.call(who, "POST", f"{EVENTS}/{subscriber}/subscriptions", sub)
        assert answer.status == 403, answer.body
    for event in ("API_INVOKER_ONBOARDED", "API_INVOKER_OFFBOARDED", "API_INVOKER_AUTHORIZATION_REVOKED"):
        answer = await world.call(inv, "POST", f"{EVENTS}/{inv.identity}/subscriptions",
                                  dict(sub, events=[event]))
        assert answer.status == 403, answer.body  # an invoker never learns of other invokers
    made = await world.call(other, "POST", f"{EVENTS}/{other.identity}/subscriptions", sub)
    assert made.status == 201, made.body
    location = made.header("location")
    assert location is not None
    sid = location.rsplit("/", 1)[1]
    answer = await world.call(inv, "DELETE", f"{EVENTS}/{inv.identity}/subscriptions/{sid}")
    assert answer.status == 404, answer.body
    answer = await world.call(inv, "PUT", f"{EVENTS}/{inv.identity}/subscriptions/{sid}", sub)
    assert answer.status == 404, answer.body
