"""Publish Service over real TLS: only the APF the URL names publishes and manages its service APIs, only with AEFs
of its own provider domain; no two AEFs ever share an interface (AEFPSK's P0); events for each change."""

from __future__ import annotations

import copy
from typing import Any

from .ccf_env import (
    PROVIDERS,
    PUBLISHED,
    Provider,
    World,
    identities,
    interface_description,
    new_key,
    onboard,
    provider_function,
    publish,
    register_provider,
    service_description,
    world,
)

__all__ = ["world"]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def emit(self, event: str, detail: dict[str, Any]) -> None:
        self.events.append((event, detail))


def _recorder(world: World) -> Recorder:
    rec = Recorder()
    world.ccf.ccf.events = rec
    return rec


def _apis(p: Provider) -> str:
    return f"{PUBLISHED}/{p.apf.identity}/service-apis"


async def test_publish_read_update_delete_with_events(world: World) -> None:
    rec = _recorder(world)
    p = await register_provider(world)
    iface = interface_description(1)
    body = service_description(p.aef, iface, "weather")
    created = await world.call(p.apf, "POST", _apis(p), body)
    assert created.status == 201, created.body
    service = created.json()
    api_id = service["apiId"]
    assert created.header("location") == f"https://ccf.test.example:{world.ccf.port}{_apis(p)}/{api_id}"
    assert {k: v for k, v in service.items() if k != "apiId"} == body
    assert rec.events == [("SERVICE_API_AVAILABLE", {"apiIds": [api_id]})]
    one = await world.call(p.apf, "GET", f"{_apis(p)}/{api_id}")
    assert one.status == 200 and one.json() == service
    second = await publish(world, p.apf, p.aef, name="traffic")
    listing = await world.call(p.apf, "GET", _apis(p))
    assert listing.status == 200
    assert sorted(s["apiId"] for s in listing.json()) == sorted([api_id, second["apiId"]])
    # PUT replaces, PATCH merges; both report SERVICE_API_UPDATE
    changed = dict(copy.deepcopy(service), description="changed")
    put = await world.call(p.apf, "PUT", f"{_apis(p)}/{api_id}", changed)
    assert put.status == 200 and put.json()["description"] == "changed"
    patch = await world.call(p.apf, "PATCH", f"{_apis(p)}/{api_id}", {"serviceAPICategory": "forecast"},
                             content_type="application/merge-patch+json")
    assert patch.status == 200, patch.body
    assert patch.json()["serviceAPICategory"] == "forecast" and patch.json()["description"] == "changed"
    assert rec.events[-2:] == [("SERVICE_API_UPDATE", {"apiIds": [api_id]})] * 2
    wrong_id = await world.call(p.apf, "PUT", f"{_apis(p)}/{api_id}", dict(changed, apiId=second["apiId"]))
    assert wrong_id.status == 400
    # DELETE: gone, SERVICE_API_UNAVAILABLE
    assert (await world.call(p.apf, "DELETE", f"{_apis(p)}/{api_id}")).status == 204
    assert rec.events[-1] == ("SERVICE_API_UNAVAILABLE", {"apiIds": [api_id]})
    assert (await world.call(p.apf, "GET", f"{_apis(p)}/{api_id}")).status == 404
    assert (await world.call(p.apf, "DELETE", f"{_apis(p)}/{api_id}")).status == 404
    assert [s["apiId"] for s in (await world.call(p.apf, "GET", _apis(p))).json()] == [second["apiId"]]


async def test_only_the_named_apf_publishes(world: World) -> None:
    a = await register_provider(world)
    b = await register_provider(world)
    service = await publish(world, a.apf, a.aef)
    url = f"{_apis(a)}/{service['apiId']}"
    body = service_description(a.aef, interface_description(2))
    inv = await onboard(world)
    for who in (b.apf, a.aef, a.amf, inv):  # another APF, or another role of the same domain
        assert (await world.call(who, "POST", _apis(a), body)).status == 403
        assert (await world.call(who, "GET", _apis(a))).status == 403
        assert (await world.call(who, "GET", url)).status == 403
        assert (await world.call(who, "PUT", url, service)).status == 403
        assert (await world.call(who, "DELETE", url)).status == 403
    assert (await world.call(None, "GET", _apis(a))).status == 401
    # B's APF cannot reach A's service under its own apfId either
    assert (await world.call(b.apf, "GET", f"{_apis(b)}/{service['apiId']}")).status == 404
    assert (await world.call(b.apf, "DELETE", f"{_apis(b)}/{service['apiId']}")).status == 404
    # an AEF cannot publish under its own ID: it is not an APF
    own = await world.call(a.aef, "POST", f"{PUBLISHED}/{a.aef.identity}/service-apis", body)
    assert own.status == 403
    assert (await world.call(a.apf, "GET", url)).status == 200


async def test_aefs_must_be_of_the_apfs_domain(world: World) -> None:
    a = await register_provider(world)
    b = await register_provider(world)
    for aef in (b.aef.identity, "AEFnobody", a.apf.identity, a.amf.identity):
        answer = await world.call(a.apf, "POST", _apis(a), service_description(aef, interface_description(3)))
        assert answer.status == 403, aef
        assert answer.json()["cause"] == "AEF_NOT_IN_PROVIDER_DOMAIN"
    # nor can an update bring one in
    service = await publish(world, a.apf, a.aef)
    moved = copy.deepcopy(service)
    moved["aefProfiles"][0]["aefId"] = b.aef.identity
    assert (await world.call(a.apf, "PUT", f"{_apis(a)}/{service['apiId']}", moved)).status == 403


async def test_two_aefs_never_share_an_interface(world: World) -> None:
    a = await register_provider(world)
    b = await register_provider(world)
    iface = {"fqdn": "shared.test.example", "port": 443, "apiPrefix": "/v1", "securityMethods": ["PSK"]}
    first = await publish(world, a.apf, a.aef, iface)
    # the same P0 however written: case, trailing dot, the default port left out
    for spelling in (iface, {"fqdn": "Shared.Test.Example.", "apiPrefix": "/v1", "securityMethods": ["PKI"]}):
        clash = await world.call(b.apf, "POST", _apis(b), service_description(b.aef, spelling))
        assert clash.status == 403, clash.body
        assert clash.json()["cause"] == "INTERFACE_HELD_BY_ANOTHER_AEF"
    # another prefix or port is another interface
    await publish(world, b.apf, b.aef, dict(iface, apiPrefix="/v2"))
    await publish(world, b.apf, b.aef, dict(iface, port=8443))
    # the same AEF may expose several service APIs on one interface
    again = await publish(world, a.apf, a.aef, iface, name="other-api")
    # once A no longer publishes on it, B may
    assert (await world.call(a.apf, "DELETE", f"{_apis(a)}/{first['apiId']}")).status == 204
    blocked = await world.call(b.apf, "POST", _apis(b), service_description(b.aef, iface))
    assert blocked.status == 403  # still held by the other service API of A's AEF
    moved = copy.deepcopy(again)
    moved["aefProfiles"][0]["interfaceDescriptions"] = [interface_description(4)]
    assert (await world.call(a.apf, "PUT", f"{_apis(a)}/{again['apiId']}", moved)).status == 200
    await publish(world, b.apf, b.aef, iface)
    # and A cannot take it back
    taken = await world.call(a.apf, "PATCH", f"{_apis(a)}/{again['apiId']}",
                             {"aefProfiles": service_description(a.aef, iface)["aefProfiles"]})
    assert taken.status == 403


async def test_two_aefs_of_one_description_never_share_an_interface(world: World) -> None:
    p = await register_provider(world)
    key = new_key()
    funcs = [*p.answer["apiProvFuncs"], provider_function("AEF", key)]
    answer = await world.call(p.amf, "PATCH", f"{PROVIDERS}/{p.domain}", {"apiProvFuncs": funcs})
    assert answer.status == 200
    aef2 = identities({"apiProvFuncs": answer.json()["apiProvFuncs"][3:]}, [key])[0]
    iface = interface_description(5)
    body = service_description(p.aef, iface)
    body["aefProfiles"].append(dict(copy.deepcopy(body["aefProfiles"][0]), aefId=aef2.identity))
    clash = await world.call(p.apf, "POST", _apis(p), body)
    assert clash.status == 403 and clash.json()["cause"] == "INTERFACE_HELD_BY_ANOTHER_AEF"
    body["aefProfiles"][1]["interfaceDescriptions"] = [interface_description(6)]
    assert (await world.call(p.apf, "POST", _apis(p), body)).status == 201


async def test_security_methods_and_interfaces_are_required(world: World) -> None:
    p = await register_provider(world)
    body = service_description(p.aef, interface_description(7))
    profile = body["aefProfiles"][0]
    del profile["securityMethods"]
    del profile["interfaceDescriptions"][0]["securityMethods"]
    none = await world.call(p.apf, "POST", _apis(p), body)
    assert none.status == 400 and none.json()["cause"] == "NO_SECURITY_METHOD"
    profile["interfaceDescriptions"][0]["securityMethods"] = ["OAUTH"]  # the interface's own suffice
    assert (await world.call(p.apf, "POST", _apis(p), body)).status == 201
    empty = service_description(p.aef, interface_description(8, securityMethods=[]))
    schema = await world.call(p.apf, "POST", _apis(p), empty)  # minItems 1: the schema's refusal
    assert schema.status == 400 and schema.json()["cause"] == "INVALID_MSG_FORMAT"
    no_profiles = {k: v for k, v in service_description(p.aef, interface_description(9)).items()
                   if k != "aefProfiles"}
    assert (await world.call(p.apf, "POST", _apis(p), no_profiles)).status == 400
    domain_only = service_description(p.aef, interface_description(10))
    domain_only["aefProfiles"][0].pop("interfaceDescriptions")
    domain_only["aefProfiles"][0]["domainName"] = "aef.test.example"
    assert (await world.call(p.apf, "POST", _apis(p), domain_only)).status == 400
    bad_prefix = service_description(p.aef, interface_description(11, apiPrefix="no-slash"))
    assert (await world.call(p.apf, "POST", _apis(p), bad_prefix)).status == 400


async def test_schema_violations_and_assigned_ids(world: World) -> None:
    p = await register_provider(world)
    body = service_description(p.aef, interface_description(12))
    no_name = {k: v for k, v in body.items() if k != "apiName"}
    answer = await world.call(p.apf, "POST", _apis(p), no_name)
    assert answer.status == 400 and answer.json()["cause"] == "INVALID_MSG_FORMAT"
    assert (await world.call(p.apf, "POST", _apis(p), dict(body, apiId="mine"))).status == 400
    status = dict(body, apiStatus={"aefIds": ["AEFelsewhere"]})
    assert (await world.call(p.apf, "POST", _apis(p), status)).status == 400
    ok = await world.call(p.apf, "POST", _apis(p), dict(body, apiStatus={"aefIds": [p.aef.identity]}))
    assert ok.status == 201


_ODD: list[Any] = [None, "", "x" * 300, -1, 0, 70000, 1.5, True, [], {}, ["PSK"], "Aef.Test.Example.", "::1",
                   "192.0.2.300", "/a:b", "\u212a", "a\u0000b", {"ipv4Addr": "192.0.2.1"}]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


def _mutate(body: dict[str, Any], rnd: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    path = rnd.choice(_paths(body))
    parent: Any = body
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and rnd.random() < 0.3:
        del parent[path[-1]]
    else:
        parent[path[-1]] = rnd.choice(_ODD)
    return body


async def test_mutated_bodies_never_break_the_ccf(world: World) -> None:
    """Random one-member mutations of good bodies: every answer a documented refusal or success (the CCF runs with
    validate_responses, so a non-conforming answer is a 500 and fails here too)."""
    import random

    rnd = random.Random(18)
    p = await register_provider(world)
    service = await publish(world, p.apf, p.aef)
    url = f"{_apis(p)}/{service['apiId']}"
    statuses: set[int] = set()
    for n in range(60):
        good = service_description(p.aef, interface_description(1000 + n))
        post = await world.call(p.apf, "POST", _apis(p), _mutate(good, rnd))
        put = await world.call(p.apf, "PUT", url, _mutate(service, rnd))
        for answer in (post, put):
            assert answer.status in (200, 201, 400, 403, 404), answer.body
            statuses.add(answer.status)
        if put.status == 200:
            service = put.json()
        patch = await world.call(p.amf, "PATCH", f"{PROVIDERS}/{p.domain}",
                                 _mutate({"apiProvFuncs": p.answer["apiProvFuncs"], "apiProvDomInfo": "x"}, rnd))
        assert patch.status in (200, 400, 403), patch.body
        if patch.status == 200:  # the AMF may have re-keyed or dropped a function: start again from a fresh one
            p = await register_provider(world)
            service = await publish(world, p.apf, p.aef)
            url = f"{_apis(p)}/{service['apiId']}"
    assert {400, 201} <= statuses


async def test_holds_survive_a_release_racing_a_publication(world: World, monkeypatch: Any) -> None:
    """D125 under concurrency (two requests interleaved by hand): a release whose scan missed a service API stored
    meanwhile takes the hold again; a publication that finds its hold gone to another AEF undoes itself."""
    from m2msec.capif.ccf import publish as module
    from m2msec.capif.kdf import interface_information_of
    from m2msec.errors import CAPIFError

    ccf = world.ccf.ccf
    a = await register_provider(world)
    b = await register_provider(world)
    iface = interface_description(77)
    p0 = interface_information_of(iface)
    await publish(world, a.apf, a.aef, iface)
    real = module.services
    calls = 0

    async def stale_first(c: Any) -> Any:
        nonlocal calls
        calls += 1
        return [] if calls == 1 else await real(c)

    monkeypatch.setattr(module, "services", stale_first)
    await module._release(ccf, {(a.aef.identity, p0)})
    monkeypatch.setattr(module, "services", real)
    assert calls == 2
    clash = await world.call(b.apf, "POST", _apis(b), service_description(b.aef, iface))
    assert clash.status == 403  # the hold was taken again for A's AEF
    # the other order: B's AEF holds it when A's publication confirms
    undone: list[bool] = []

    async def undo() -> None:
        undone.append(True)

    try:
        await module._confirm(ccf, {(b.aef.identity, p0)}, undo)
    except CAPIFError as exc:
        assert exc.status == 403 and exc.cause == "INTERFACE_HELD_BY_ANOTHER_AEF"
    else:
        raise AssertionError("a publication kept an interface another AEF holds")
    assert undone == [True]
