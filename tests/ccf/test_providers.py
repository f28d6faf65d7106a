"""API Provider Management over real TLS: registration with an onboarding credential and one CSR per function, the
certificates naming each function's role and ID; updates (add, re-key, remove) and deregistration only by the
domain's own AMF; a re-keyed or removed function's old certificate refused."""

from __future__ import annotations

import copy
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from m2msec.capif.ccf.providers import REG_SEC_ANSWER

from .ccf_env import (
    INVOKERS,
    PROVIDERS,
    PUBLISHED,
    World,
    discover_path,
    identities,
    key_pem,
    new_key,
    onboard,
    provider_function,
    publish,
    register_provider,
    world,
)

__all__ = ["world"]


def _subject(pem: bytes) -> tuple[str, str]:
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    return str(cn), str(ou)


async def test_registration_certifies_each_function_in_its_role(world: World) -> None:
    p = await register_provider(world)
    assert _subject(p.amf.certificate_pem) == (p.amf.identity, "amf")
    assert _subject(p.apf.certificate_pem) == (p.apf.identity, "apf")
    assert _subject(p.aef.certificate_pem) == (p.aef.identity, "aef")
    assert p.amf.identity.startswith("AMF") and p.apf.identity.startswith("APF") and p.aef.identity.startswith("AEF")
    assert p.domain.startswith("DOM")
    assert len({p.amf.identity, p.apf.identity, p.aef.identity, p.domain}) == 4
    # each certificate is over the key of its own CSR
    for ident in (p.amf, p.apf, p.aef):
        cert = x509.load_pem_x509_certificate(ident.certificate_pem)
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(ident.private_key_pem, None)
        assert cert.public_key() == key.public_key()
    # the regSec sent is not echoed
    assert p.answer["regSec"] == REG_SEC_ANSWER != "provider-secret"
    assert p.answer["apiProvDomInfo"] == "test provider"


async def test_location_and_credential_single_use(world: World) -> None:
    token = world.credential(purpose="provider")
    body = {"regSec": "x", "apiProvFuncs": [provider_function("AMF", new_key())]}
    first = await world.call(None, "POST", PROVIDERS, body, headers={"authorization": f"Bearer {token}"})
    assert first.status == 201
    domain = first.json()["apiProvDomId"]
    assert first.header("location") == f"https://ccf.test.example:{world.ccf.port}{PROVIDERS}/{domain}"
    again = await world.call(None, "POST", PROVIDERS, body, headers={"authorization": f"Bearer {token}"})
    assert again.status == 401 and again.json()["cause"] == "INVALID_ONBOARDING_CREDENTIAL"
    # a provider's credential never onboards an invoker (D147), spent or not
    from .ccf_env import enrolment

    inv = await world.call(None, "POST", INVOKERS, enrolment(new_key()), headers={"authorization": f"Bearer {token}"})
    assert inv.status == 403 and inv.json()["cause"] == "INVALID_ONBOARDING_CREDENTIAL"


async def test_registration_refusals(world: World) -> None:
    def auth() -> dict[str, str]:
        return {"authorization": f"Bearer {world.credential(purpose='provider')}"}

    none = await world.call(None, "POST", PROVIDERS, {"regSec": "x", "apiProvFuncs": [
        provider_function("AMF", new_key())]})
    assert none.status == 401
    schema = await world.call(None, "POST", PROVIDERS, {"apiProvFuncs": [provider_function("AMF", new_key())]},
                              headers=auth())  # regSec is required
    assert schema.status == 400 and schema.json()["cause"] == "INVALID_MSG_FORMAT"
    no_amf = await world.call(None, "POST", PROVIDERS, {"regSec": "x", "apiProvFuncs": [
        provider_function("APF", new_key())]}, headers=auth())
    assert no_amf.status == 400 and "AMF" in no_amf.json()["detail"]
    odd_role = await world.call(None, "POST", PROVIDERS, {"regSec": "x", "apiProvFuncs": [
        provider_function("AMF", new_key()), provider_function("CCF", new_key())]}, headers=auth())
    assert odd_role.status == 400
    bad_csr = await world.call(None, "POST", PROVIDERS, {"regSec": "x", "apiProvFuncs": [
        {"apiProvFuncRole": "AMF", "regInfo": {"apiProvPubKey": "not a CSR"}}]}, headers=auth())
    assert bad_csr.status == 400 and bad_csr.json()["cause"] == "INVALID_CERTIFICATE_SIGNING_REQUEST"
    with_id = await world.call(None, "POST", PROVIDERS, {"regSec": "x", "apiProvFuncs": [
        dict(provider_function("AMF", new_key()), apiProvFuncId="AMFmine")]}, headers=auth())
    assert with_id.status == 400
    # an invoker's certificate is no registration credential
    inv = await onboard(world)
    as_inv = await world.call(inv, "POST", PROVIDERS, {"regSec": "x", "apiProvFuncs": [
        provider_function("AMF", new_key())]})
    assert as_inv.status == 401


async def test_only_the_domains_own_amf_manages_it(world: World) -> None:
    a = await register_provider(world)
    b = await register_provider(world)
    url = f"{PROVIDERS}/{a.domain}"
    body = copy.deepcopy(a.answer)
    for who in (b.amf, a.apf, a.aef, await onboard(world)):
        assert (await world.call(who, "PUT", url, body)).status == 403
        assert (await world.call(who, "PATCH", url, {"apiProvDomInfo": "x"})).status == 403
        assert (await world.call(who, "DELETE", url)).status == 403
    assert (await world.call(None, "DELETE", url)).status == 401
    ok = await world.call(a.amf, "PATCH", url, {"apiProvDomInfo": "renamed"})
    assert ok.status == 200 and ok.json()["apiProvDomInfo"] == "renamed"
    assert [f["apiProvFuncId"] for f in ok.json()["apiProvFuncs"]] == [a.amf.identity, a.apf.identity,
                                                                       a.aef.identity]
    # unchanged keys keep their certificates
    assert ok.json()["apiProvFuncs"][1]["regInfo"]["apiProvCert"] == a.apf.certificate_pem.decode()


async def test_rekey_makes_the_old_certificate_stale(world: World) -> None:
    p = await register_provider(world)
    url = f"{PROVIDERS}/{p.domain}"
    body: dict[str, Any] = copy.deepcopy(p.answer)
    fresh = new_key()
    body["apiProvFuncs"][1]["regInfo"] = {"apiProvPubKey": provider_function("APF", fresh)["regInfo"][
        "apiProvPubKey"]}
    answer = await world.call(p.amf, "PUT", url, body)
    assert answer.status == 200, answer.body
    funcs = answer.json()["apiProvFuncs"]
    assert funcs[1]["apiProvFuncId"] == p.apf.identity
    new_pem = funcs[1]["regInfo"]["apiProvCert"].encode()
    assert new_pem != p.apf.certificate_pem
    assert _subject(new_pem) == (p.apf.identity, "apf")
    listing = f"{PUBLISHED}/{p.apf.identity}/service-apis"
    stale = await world.call(p.apf, "GET", listing)
    assert stale.status == 403
    from .ccf_env import Identity

    renewed = Identity(p.apf.identity, new_pem, key_pem(fresh))
    assert (await world.call(renewed, "GET", listing)).status == 200


async def test_update_adds_and_removes_functions(world: World) -> None:
    p = await register_provider(world)
    url = f"{PROVIDERS}/{p.domain}"
    service = await publish(world, p.apf, p.aef)
    extra_key = new_key()
    # remove the AEF, add a second APF
    funcs = [f for f in p.answer["apiProvFuncs"] if f["apiProvFuncId"] != p.aef.identity]
    answer = await world.call(p.amf, "PATCH", url, {"apiProvFuncs": [*funcs, provider_function("APF", extra_key)]})
    assert answer.status == 200, answer.body
    got = answer.json()["apiProvFuncs"]
    assert [f["apiProvFuncId"] for f in got[:2]] == [p.amf.identity, p.apf.identity]
    added = identities({"apiProvFuncs": got[2:]}, [extra_key])[0]
    assert added.identity.startswith("APF") and _subject(added.certificate_pem) == (added.identity, "apf")
    assert (await world.call(added, "GET", f"{PUBLISHED}/{added.identity}/service-apis")).status == 200
    # the removed AEF's certificate is refused, and the service API it exposed is gone
    removed = await world.call(p.aef, "GET", f"{PUBLISHED}/{p.aef.identity}/service-apis")
    assert removed.status == 403
    gone = await world.call(p.apf, "GET", f"{PUBLISHED}/{p.apf.identity}/service-apis/{service['apiId']}")
    assert gone.status == 404
    # an update may not drop every AMF, nor name a function of another domain, nor change a role
    no_amf = [f for f in got if f["apiProvFuncRole"] != "AMF"]
    assert (await world.call(p.amf, "PATCH", url, {"apiProvFuncs": no_amf})).status == 400
    other = await register_provider(world)
    foreign = [*got, other.answer["apiProvFuncs"][2]]
    assert (await world.call(p.amf, "PATCH", url, {"apiProvFuncs": foreign})).status == 400
    recast = copy.deepcopy(got)
    recast[1]["apiProvFuncRole"] = "AEF"
    assert (await world.call(p.amf, "PATCH", url, {"apiProvFuncs": recast})).status == 400
    twice = [*got, got[1]]
    assert (await world.call(p.amf, "PATCH", url, {"apiProvFuncs": twice})).status == 400
    wrong_dom = dict(copy.deepcopy(p.answer), apiProvDomId=other.domain)
    assert (await world.call(p.amf, "PUT", url, wrong_dom)).status == 400


async def test_deregistration_removes_functions_and_their_services(world: World) -> None:
    p = await register_provider(world)
    other = await register_provider(world)
    mine = await publish(world, p.apf, p.aef)
    theirs = await publish(world, other.apf, other.aef)
    inv = await onboard(world)
    before = await world.call(inv, "GET", discover_path(inv.identity))
    assert {s["apiId"] for s in before.json()["serviceAPIDescriptions"]} == {mine["apiId"], theirs["apiId"]}
    assert (await world.call(p.amf, "DELETE", f"{PROVIDERS}/{p.domain}")).status == 204
    for who in (p.amf, p.apf, p.aef):
        assert (await world.call(who, "GET", f"{PUBLISHED}/{p.apf.identity}/service-apis")).status == 403
    after = await world.call(inv, "GET", discover_path(inv.identity))
    assert [s["apiId"] for s in after.json()["serviceAPIDescriptions"]] == [theirs["apiId"]]
    # the interface mine held is free again, for another provider's AEF
    iface = mine["aefProfiles"][0]["interfaceDescriptions"][0]
    await publish(world, other.apf, other.aef, iface)
