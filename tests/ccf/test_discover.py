"""Discover Service over real TLS: an onboarded invoker discovers as itself only; the official file's filters select
service APIs and AEF profiles; unknown or unevaluated parameters are refused; nothing matching is 404."""

from __future__ import annotations

import copy
import json
from typing import Any

from .ccf_env import (
    DISCOVER,
    PUBLISHED,
    World,
    discover_path,
    interface_description,
    onboard,
    publish,
    register_provider,
    world,
)

__all__ = ["world"]


async def _ids(world: World, who: Any, **filters: str) -> list[str]:
    answer = await world.call(who, "GET", discover_path(who.identity, **filters))
    if answer.status == 404:
        return []
    assert answer.status == 200, answer.body
    return [s["apiId"] for s in answer.json()["serviceAPIDescriptions"]]


async def test_discovery_answers_the_published_descriptions(world: World) -> None:
    p = await register_provider(world)
    inv = await onboard(world)
    assert (await world.call(inv, "GET", discover_path(inv.identity))).status == 404
    service = await publish(world, p.apf, p.aef)
    answer = await world.call(inv, "GET", discover_path(inv.identity))
    assert answer.status == 200
    assert answer.json() == {"serviceAPIDescriptions": [service]}  # interfaces and methods included


async def test_only_an_invoker_discovers_and_only_as_itself(world: World) -> None:
    p = await register_provider(world)
    await publish(world, p.apf, p.aef)
    a = await onboard(world)
    b = await onboard(world)
    assert (await world.call(a, "GET", discover_path(b.identity))).status == 403
    assert (await world.call(a, "GET", discover_path("INVnobody"))).status == 403
    missing = await world.call(a, "GET", discover_path(None))
    assert missing.status == 400
    for who in (p.apf, p.aef, p.amf):
        assert (await world.call(who, "GET", discover_path(who.identity))).status == 403
    assert (await world.call(None, "GET", discover_path(a.identity))).status == 401
    # an offboarded invoker's certificate no longer discovers
    assert (await world.call(a, "DELETE", f"/api-invoker-management/v1/onboardedInvokers/{a.identity}")).status == 204
    assert (await world.call(a, "GET", discover_path(a.identity))).status == 403
    assert (await world.call(b, "GET", discover_path(b.identity))).status == 200


async def test_filters(world: World) -> None:
    p = await register_provider(world)
    q = await register_provider(world)
    inv = await onboard(world)
    weather = await publish(world, p.apf, p.aef, name="weather", serviceAPICategory="env")
    traffic = await publish(world, q.apf, q.aef, name="traffic", serviceAPICategory="mobility")
    # an MQTT, XML, SUBSCRIBE_NOTIFY, v2 variant of the weather API at q's AEF
    alerts = copy.deepcopy(traffic)
    del alerts["apiId"]
    profile = alerts["aefProfiles"][0]
    profile.update(protocol="MQTT", dataFormat="XML", interfaceDescriptions=[interface_description(99)])
    profile["versions"] = [{"apiVersion": "v2", "resources": [
        {"resourceName": "alerts", "commType": "SUBSCRIBE_NOTIFY", "uri": "/alerts"}]}]
    alerts.update(apiName="alerts", serviceAPICategory="warnings")
    created = await world.call(q.apf, "POST", f"{PUBLISHED}/{q.apf.identity}/service-apis", alerts)
    assert created.status == 201, created.body
    alert_id = created.json()["apiId"]
    every = sorted([weather["apiId"], traffic["apiId"], alert_id])
    assert sorted(await _ids(world, inv)) == every
    assert await _ids(world, inv, api_name="weather") == [weather["apiId"]]
    assert await _ids(world, inv, api_name="nothing") == []
    assert await _ids(world, inv, api_cat="mobility") == [traffic["apiId"]]
    assert await _ids(world, inv, aef_id=p.aef.identity) == [weather["apiId"]]
    assert sorted(await _ids(world, inv, aef_id=q.aef.identity)) == sorted([traffic["apiId"], alert_id])
    assert await _ids(world, inv, protocol="MQTT") == [alert_id]
    assert sorted(await _ids(world, inv, protocol="HTTP_1_1")) == sorted([weather["apiId"], traffic["apiId"]])
    assert await _ids(world, inv, data_format="XML") == [alert_id]
    assert await _ids(world, inv, api_version="v2") == [alert_id]
    assert await _ids(world, inv, comm_type="SUBSCRIBE_NOTIFY") == [alert_id]
    assert sorted(await _ids(world, inv, comm_type="REQUEST_RESPONSE")) == sorted([weather["apiId"],
                                                                                  traffic["apiId"]])
    # filters combine
    assert await _ids(world, inv, api_name="weather", aef_id=q.aef.identity) == []
    assert await _ids(world, inv, api_name="alerts", protocol="MQTT", api_version="v2") == [alert_id]
    # a preference is not a filter
    loc = json.dumps({"dcId": "dc-1"})
    assert sorted(await _ids(world, inv, preferred_aef_loc=loc)) == every
    assert sorted(await _ids(world, inv, supported_features="0")) == every


async def test_only_the_matching_profiles_are_answered(world: World) -> None:
    p = await register_provider(world)
    inv = await onboard(world)
    # one service API at two AEFs of one domain, one speaking HTTP/2
    key_funcs = p.answer["apiProvFuncs"]
    from .ccf_env import PROVIDERS, identities, new_key, provider_function

    key = new_key()
    answer = await world.call(p.amf, "PATCH", f"{PROVIDERS}/{p.domain}",
                              {"apiProvFuncs": [*key_funcs, provider_function("AEF", key)]})
    aef2 = identities({"apiProvFuncs": answer.json()["apiProvFuncs"][3:]}, [key])[0]
    from .ccf_env import service_description

    body = service_description(p.aef, interface_description(1))
    second = dict(copy.deepcopy(body["aefProfiles"][0]), aefId=aef2.identity, protocol="HTTP_2",
                  interfaceDescriptions=[interface_description(2)])
    body["aefProfiles"].append(second)
    created = await world.call(p.apf, "POST", f"{PUBLISHED}/{p.apf.identity}/service-apis", body)
    assert created.status == 201, created.body
    found = await world.call(inv, "GET", discover_path(inv.identity, protocol="HTTP_2"))
    assert found.status == 200
    [service] = found.json()["serviceAPIDescriptions"]
    assert [prof["aefId"] for prof in service["aefProfiles"]] == [aef2.identity]
    both = await world.call(inv, "GET", discover_path(inv.identity))
    assert len(both.json()["serviceAPIDescriptions"][0]["aefProfiles"]) == 2


async def test_api_supported_features_are_negotiated(world: World) -> None:
    p = await register_provider(world)
    inv = await onboard(world)
    await publish(world, p.apf, p.aef, name="weather", apiSuppFeats="0F")
    answer = await world.call(inv, "GET", discover_path(inv.identity, api_name="weather",
                                                        api_supported_features="3C"))
    assert answer.status == 200
    assert answer.json()["serviceAPIDescriptions"][0]["apiSuppFeats"] == "0C"  # 0x0F & 0x3C
    alone = await world.call(inv, "GET", discover_path(inv.identity, api_supported_features="3C"))
    assert alone.status == 400


async def test_unknown_and_unevaluated_parameters_are_refused(world: World) -> None:
    p = await register_provider(world)
    await publish(world, p.apf, p.aef)
    inv = await onboard(world)
    for filters in ({"api_nmae": "typo"}, {"ue_ip_addr": "x"}, {"service_kpis": "x"}, {"req_api_prov_name": "x"},
                    {"supported_features": "xyz"}, {"preferred_aef_loc": "not json"},
                    {"preferred_aef_loc": "[1]"}, {"preferred_aef_loc": "[" * 5000}):
        answer = await world.call(inv, "GET", discover_path(inv.identity, **filters))
        assert answer.status == 400, filters
        assert answer.json()["cause"] == "INVALID_QUERY_PARAM"
    repeated = await world.call(inv, "GET", f"{DISCOVER}?api-invoker-id={inv.identity}&api-name=a&api-name=b")
    assert repeated.status == 400


def test_decision_rows_point_at_real_constants() -> None:
    import importlib
    import re
    from pathlib import Path

    decisions = (Path(__file__).resolve().parents[2] / "docs" / "decisions.md").read_text()
    for number in ("D123", "D124", "D125", "D126", "D127"):
        row = next(line for line in decisions.splitlines() if line.startswith(f"| {number} |"))
        where = re.findall(r"`(m2msec\.[\w.]+)`", row.split("|")[-2])
        assert where, number
        for path in where:
            module, _, name = path.rpartition(".")
            assert hasattr(importlib.import_module(module), name), path
