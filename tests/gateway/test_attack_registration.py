"""attack17: hostile review of registration upon SAE at the gateway (issue 17), against real ACME.

Each test shows one finding: it failed on ``reg17`` (commit 9e8611f) and passes since the fixes of commit 3276ead.
The gateways (HTTP over TLS-PSK, coaps over DTLS-PSK) run in-process on loopback in front of a real ACME
(tests/e2e/acme_cse.py); the harm is read back from ACME directly (the victim's AE deleted, the App-ID registered).

1. A CSE's SA relays ``From: Sx`` (D102), but an S-type AE-ID is registered with the CSE behind the gateway like
   any other: a registree CSE's credential deregisters an AE bound to another credential (HTTP and coaps).
2. Without ``--sp-id`` (``//sp/<cse>/Cx``) or ``--cse-id`` (``/<cse>/Cx``) the relay rule cannot tell the CSE's own
   AEs and relays them; ACME reduces both to ``Cx`` — also on a gateway without ``--app-rules``.
3. ACME strips "comments" from JSON with a regex that misreads a string ending in ``\\``: a strict JSON body in
   which the gateway checks ``api`` Nlight registers ``api`` Nevil, which the rules refuse (HTTP and coaps).
4. A bindings file others can write is used as is: a row another local user writes is an identity.
5. A CREATE <AE> on a CSE's SA skips the rules: any App-ID, and its stem (ACME's ``ri``) squats an AE-ID the rules
   give a light, whose own registration then fails.
6. A rule shared by two credentials makes its explicit ``aae`` an identity of both (D99), also once one of them
   registered and was bound that AE-ID (D104).
7. A CSE's SA relays ``/<other-cse>/C...``: it acts as the AEs of another registree CSE.
8. D103's cap counts bound AE-IDs only: registrations answered without resource (``rcn=0``, assigned stem) are
   never counted.
9. A binding outlives its AE: once deregistered and registered anew by another credential with an answer the
   gateway binds nothing from (``rcn=3``), the former credential still acts as the AE-ID.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from acme_cse import CSE_ID, CSE_RN, needs_acme
from attack_registration_env import (
    EVIL_CSE_ID,
    EVIL_IDENTITY,
    EVIL_KEY,
    acme_http_fixture,
    acme_ports_fixture,
    call,
    coaps,
    coaps_gateway,
    gateway,
    rules_file,
    sa,
    table,
)
from registration_front import SP_ID, acme_rsc, ae_body, psk_table, unique

from conftest import LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY
from m2msec.errors import ConfigurationError
from m2msec.gateway import coap
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.registrar import BindingStore, Registrar
from m2msec.gateway.subscription import RuleTable
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry

pytestmark = needs_acme

#: the module's ACME (fixtures of attack_registration_env)
acme_ports, acme_http = acme_ports_fixture, acme_http_fixture

LIGHT1_CRED = f"12-{LIGHT1_ID}"


def _register_directly(acme_http: int, rn: str, ae_id: str) -> None:
    """An AE registered at ACME by another path (another gateway, a local AE): it exists, with AE-ID ``ae_id``."""
    req = urllib.request.Request(f"http://127.0.0.1:{acme_http}/{CSE_RN}", data=ae_body(rn, "Nlight"), headers={
        "X-M2M-Origin": ae_id, "X-M2M-RI": unique("direct"), "X-M2M-RVI": "3", "Accept": "application/json",
        "Content-Type": "application/json;ty=2"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["X-M2M-RSC"] == "2001"


# --- finding 1: a CSE's SA acts as an S-type AE registered through the gateway by another credential
S_RULES = f"""
[[app_rule]]
apci = ["{LIGHT1_CRED}"]
aai = ["Nlight"]
aae = ["S*"]
"""


async def test_cse_sa_cannot_act_as_an_s_type_ae_registered_here(acme_http: int, tmp_path: Path) -> None:
    rn, ae_id = unique("svict"), unique("Slight-victim-")
    async for gw in gateway(acme_http, tmp_path, f"//{SP_ID}/{EVIL_CSE_ID}", cse_id=CSE_ID, sp_id=SP_ID,
                             rules=S_RULES):
        light = await sa(gw, LIGHT1_ID, LIGHT1_KEY)
        try:  # the victim registers its S-type AE-ID through the gateway: it is bound to its Credential-ID
            status, rsc, body = await call(light, "POST", f"/{CSE_RN}", ae_id, ae_body(rn, "Nlight"),
                                            "application/json;ty=2")
            assert (status, rsc) == (201, 2001), body[:300]
            assert json.loads(body)["m2m:ae"]["aei"] == ae_id
            assert gw.registrar is not None and ae_id in gw.registrar.bindings.ae_ids(LIGHT1_CRED)
        finally:
            await light.close()
        evil = await sa(gw, EVIL_IDENTITY, EVIL_KEY)
        try:  # the registree CSE claims the victim's AE-ID: the gateway relays it, ACME deregisters the victim
            status, rsc, body = await call(evil, "DELETE", f"/{CSE_RN}/{rn}", ae_id)
        finally:
            await evil.close()
        assert acme_rsc(acme_http, f"/{CSE_RN}/{rn}") == 2000, "the victim's AE was deleted through a CSE's SA"
        assert (status, rsc) == (403, 4106), body[:300]


# --- finding 2: without --sp-id / --cse-id the relay rule lets a CSE's SA act as any AE of the CSE
@pytest.mark.parametrize("missing", ["sp-id", "cse-id"])
async def test_cse_sa_cannot_act_as_an_ae_of_the_cse_without_sp_or_cse_id(acme_http: int, tmp_path: Path,
                                                                         missing: str) -> None:
    rn, ae_id = unique("cvict"), unique("Cvictim-")
    _register_directly(acme_http, rn, ae_id)
    cse_id, sp_id = (CSE_ID, None) if missing == "sp-id" else (None, SP_ID)
    # the spelling the gateway cannot recognise as "hosted here"; ACME reduces both to the stem ae_id
    origin = f"//{SP_ID}/{CSE_ID}/{ae_id}" if missing == "sp-id" else f"/{CSE_ID}/{ae_id}"
    async for gw in gateway(acme_http, tmp_path, f"/{EVIL_CSE_ID}", cse_id=cse_id, sp_id=sp_id, rules=None):
        evil = await sa(gw, EVIL_IDENTITY, EVIL_KEY)
        try:
            status, rsc, body = await call(evil, "DELETE", f"/{CSE_RN}/{rn}", origin)
        finally:
            await evil.close()
    assert acme_rsc(acme_http, f"/{CSE_RN}/{rn}") == 2000, "the AE was deleted through a CSE's SA"
    assert (status, rsc) == (403, 4106), body[:300]


# --- finding 3: ACME strips "comments" from JSON with a regex that misreads a string ending in a backslash
def _acme_resource(acme_http: int, path: str) -> dict[str, object] | None:
    """RETRIEVE ``path`` directly at ACME as its admin: the resource, None when there is none."""
    req = urllib.request.Request(f"http://127.0.0.1:{acme_http}{path}", headers={
        "X-M2M-Origin": "CAdmin", "X-M2M-RI": unique("direct"), "X-M2M-RVI": "3", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError:
        return None
    assert isinstance(doc, dict)
    return dict(doc["m2m:ae"])


C_RULES = f"""
[[app_rule]]
apci = ["{LIGHT1_CRED}"]
aai = ["Nlight"]
aae = ["Clight-e2e-*"]
"""


def _smuggling_body(rn: str, checked_api: str, real_api: str) -> bytes:
    """Strict JSON (one ``api``, ``checked_api``, at the top of ``m2m:ae``; no repeated member) that ACME reads with
    ``api`` ``real_api``: ACME's ``removeCommentsFromJSON`` takes ``"x\\\\"`` for a string still open, so the
    ``/*`` and ``*/`` inside the strings that follow are comments to it; what they cut out lifts the nested
    ``api`` into ``m2m:ae``, after the checked one (Python's ``json`` keeps the last)."""
    template = ('{"m2m:ae": {"api": "CHECKED", "rn": "RN", "rr": false, "srv": ["3"], "lbl": ["x\\\\"], '
                '"apn": "/*", "nest": {"k": "*/", "api": "REAL", "apn": "/*"}, "k3": "*/"}}')
    return template.replace("CHECKED", checked_api).replace("RN", rn).replace("REAL", real_api).encode()


async def test_ae_registers_with_an_app_id_the_rules_refuse_through_acme_comment_stripping(
        acme_http: int, tmp_path: Path) -> None:
    rn, ae_id = unique("appid"), unique("Clight-e2e-")
    async for gw in gateway(acme_http, tmp_path, f"/{EVIL_CSE_ID}", cse_id=CSE_ID, sp_id=SP_ID, rules=C_RULES):
        light = await sa(gw, LIGHT1_ID, LIGHT1_KEY)
        try:  # the rules refuse the App-ID Nevil when it is spelt plainly ...
            status, rsc, _ = await call(light, "POST", f"/{CSE_RN}", ae_id, ae_body(rn, "Nevil"),
                                         "application/json;ty=2")
            assert (status, rsc) == (403, 4126)
            # ... but the gateway checks Nlight in this body, and ACME registers Nevil
            status, rsc, _ = await call(light, "POST", f"/{CSE_RN}", ae_id,
                                         _smuggling_body(rn, "Nlight", "Nevil"), "application/json;ty=2")
        finally:
            await light.close()
    registered = _acme_resource(acme_http, f"/{CSE_RN}/{rn}")
    assert registered is None or registered.get("api") == "Nlight", (
        f"ACME registered App-ID {registered.get('api')!r}, refused by the rules (gateway answered {status}/{rsc})")


# --- finding 4: the bindings file is trusted whatever its mode: whoever can write it binds any AE-ID to a credential
async def test_a_bindings_file_others_can_write_is_refused(acme_http: int, tmp_path: Path) -> None:
    rn, victim = unique("wvict"), unique("Cvictim-")
    _register_directly(acme_http, rn, victim)
    path = tmp_path / "registrations.sqlite3"
    path.touch(mode=0o666)
    path.chmod(0o666)  # a careless operator (or umask 000): any local user may write it
    try:
        store = BindingStore(path)
    except ConfigurationError:
        return  # refused, as a PSK table with these permissions is (check_file_permissions)
    try:  # another local user binds the victim's AE-ID to a credential it holds (LIGHT2, no rule at all)
        with sqlite3.connect(path) as other:
            other.execute("INSERT INTO ae_binding VALUES (?, ?, 0)", (f"12-{LIGHT2_ID}", victim))
        registrar = Registrar(RuleTable.from_file(rules_file(tmp_path, C_RULES)), store, cse_id=CSE_ID, sp_id=SP_ID)
        gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", acme_http), port=0, cse_id=CSE_ID, sp_id=SP_ID),
                     psk_table(), registrar=registrar)
        await gw.start()
        try:
            light2 = await sa(gw, LIGHT2_ID, LIGHT2_KEY)
            try:
                status, rsc, _ = await call(light2, "DELETE", f"/{CSE_RN}/{rn}", victim)
            finally:
                await light2.close()
        finally:
            await gw.close()
    finally:
        store.close()
    pytest.fail(f"a bindings file mode 0666 was accepted; a row written by another user let LIGHT2 act as {victim}: "
                f"DELETE answered {status}/{rsc}, the AE now answers {acme_rsc(acme_http, f'/{CSE_RN}/{rn}')}")


# --- finding 5: a CREATE <AE> on a CSE's SA skips the service subscription rules (relayed as any request)
async def test_cse_sa_cannot_register_an_ae_past_the_rules_and_squat_an_ae_id(acme_http: int, tmp_path: Path) -> None:
    rn, stem = unique("squat"), unique("Clight-e2e-")
    async for gw in gateway(acme_http, tmp_path, f"//{SP_ID}/{EVIL_CSE_ID}", cse_id=CSE_ID, sp_id=SP_ID,
                             rules=C_RULES):
        evil = await sa(gw, EVIL_IDENTITY, EVIL_KEY)
        try:  # no rule applies to the CSE's credential, the App-ID is one no rule admits: ACME registers it anyway
            squat = await call(evil, "POST", f"/{CSE_RN}", f"/{EVIL_CSE_ID}/{stem}", ae_body(rn, "Nevil"),
                                "application/json;ty=2")
        finally:
            await evil.close()
        light = await sa(gw, LIGHT1_ID, LIGHT1_KEY)
        try:  # the light the rules admit with that AE-ID-Stem cannot register any more (ACME's ri is the stem)
            own = await call(light, "POST", f"/{CSE_RN}", stem, ae_body(unique("own"), "Nlight"),
                              "application/json;ty=2")
        finally:
            await light.close()
    assert own[:2] == (201, 2001), f"the light's registration failed ({own[0]}/{own[1]}) after the CSE's {squat[:2]}"
    assert squat[1] in (4106, 4126, 4128), squat[2][:300]


# --- finding 6: the rules' explicit aae entries are identities of every credential the rule applies to (D99), even
# once the AE-ID is registered through, and bound to, another credential (D104: one registration at a time)
async def test_a_shared_rule_does_not_let_one_light_act_as_the_ae_another_registered(acme_http: int,
                                                                                    tmp_path: Path) -> None:
    rn, first, second = unique("shared"), unique("Clight-e2e-a"), unique("Clight-e2e-b")
    shared = f"""
[[app_rule]]                    # two lights, two AE-IDs: each registers with one of them
apci = ["{LIGHT1_CRED}", "12-{LIGHT2_ID}"]
aai = ["Nlight"]
aae = ["{first}", "{second}"]
"""
    async for gw in gateway(acme_http, tmp_path, f"/{EVIL_CSE_ID}", cse_id=CSE_ID, sp_id=SP_ID, rules=shared):
        light1 = await sa(gw, LIGHT1_ID, LIGHT1_KEY)
        try:
            status, rsc, body = await call(light1, "POST", f"/{CSE_RN}", first, ae_body(rn, "Nlight"),
                                            "application/json;ty=2")
            assert (status, rsc) == (201, 2001), body[:300]
            assert gw.registrar is not None and gw.registrar.bindings.ae_ids(LIGHT1_CRED) == (first,)
        finally:
            await light1.close()
        light2 = await sa(gw, LIGHT2_ID, LIGHT2_KEY)
        try:  # LIGHT2 never registered `first`: the AE is LIGHT1's registration
            status, rsc, body = await call(light2, "DELETE", f"/{CSE_RN}/{rn}", first)
        finally:
            await light2.close()
    assert acme_rsc(acme_http, f"/{CSE_RN}/{rn}") == 2000, "LIGHT2 deleted the AE registered through LIGHT1"
    assert (status, rsc) == (403, 4106), body[:300]


# --- finding 7: a CSE's SA relays the C-type AE-IDs of another CSE ("/<other-cse>/C..."): it acts as the AEs of
# every other registree CSE (D102 allows any From but CSE-IDs and the gateway's own AEs)
GOOD_CSE_ID, GOOD_KEY = "mn-cse-good", "ffeeddccbbaa99887766554433221100"
GOOD_IDENTITY = "CSE000000000777-Good@in.provider.com"


async def test_cse_sa_cannot_act_as_an_ae_of_another_cse(acme_http: int, tmp_path: Path) -> None:
    rn, good_ae = unique("other"), f"/{GOOD_CSE_ID}/{unique('Cgood-')}"
    psks = MemoryPSKTable([*table(f"/{EVIL_CSE_ID}").entries(),
                           PSKEntry(GOOD_IDENTITY, SecretKey.from_hex(GOOD_KEY), entity=f"/{GOOD_CSE_ID}")])
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", acme_http), port=0, cse_id=CSE_ID, sp_id=SP_ID), psks)
    await gw.start()
    try:
        good = await sa(gw, GOOD_IDENTITY, GOOD_KEY)
        try:  # an AE of mn-cse-good, carried by mn-cse-good's own SA
            status, rsc, body = await call(good, "POST", f"/{CSE_RN}", good_ae, ae_body(rn, "Nlight"),
                                            "application/json;ty=2")
            assert (status, rsc) == (201, 2001), body[:300]
        finally:
            await good.close()
        evil = await sa(gw, EVIL_IDENTITY, EVIL_KEY)
        try:  # mn-cse-evil claims that AE of mn-cse-good
            status, rsc, body = await call(evil, "DELETE", f"/{CSE_RN}/{rn}", good_ae)
        finally:
            await evil.close()
    finally:
        await gw.close()
    assert acme_rsc(acme_http, f"/{CSE_RN}/{rn}") == 2000, "mn-cse-evil deleted an AE of mn-cse-good"
    assert (status, rsc) == (403, 4106), body[:300]


# --- findings 1 and 3 over coaps (the same pure checks decide there)
async def test_coaps_cse_sa_cannot_act_as_an_s_type_ae_registered_here(acme_ports: tuple[int, int],
                                                                        tmp_path: Path) -> None:
    rn, ae_id = unique("csvict"), unique("Slight-victim-")
    async with coaps_gateway(acme_ports, tmp_path, S_RULES, f"//{SP_ID}/{EVIL_CSE_ID}") as gw:
        async with coaps(gw, LIGHT1_ID, LIGHT1_KEY) as light:
            code, rsc, body = await light.call(coap.POST, f"/{CSE_RN}", ae_id, ae_body(rn, "Nlight"), ty=2)
            assert (code, rsc) == ("2.01", 2001), body[:300]
        async with coaps(gw, EVIL_IDENTITY, EVIL_KEY) as evil:
            code, rsc, body = await evil.call(coap.DELETE, f"/{CSE_RN}/{rn}", ae_id)
    assert acme_rsc(acme_ports[0], f"/{CSE_RN}/{rn}") == 2000, "the victim's AE was deleted through a CSE's SA"
    assert (code, rsc) == ("4.03", 4106), body[:300]


async def test_coaps_ae_registers_with_an_app_id_the_rules_refuse(acme_ports: tuple[int, int],
                                                                   tmp_path: Path) -> None:
    rn, ae_id = unique("cappid"), unique("Clight-e2e-")
    async with coaps_gateway(acme_ports, tmp_path, C_RULES, f"//{SP_ID}/{EVIL_CSE_ID}") as gw, \
            coaps(gw, LIGHT1_ID, LIGHT1_KEY) as light:
        code, rsc, _ = await light.call(coap.POST, f"/{CSE_RN}", ae_id, ae_body(rn, "Nevil"), ty=2)
        assert (code, rsc) == ("4.03", 4126)
        code, rsc, _ = await light.call(coap.POST, f"/{CSE_RN}", ae_id, _smuggling_body(rn, "Nlight", "Nevil"), ty=2)
    registered = _acme_resource(acme_ports[0], f"/{CSE_RN}/{rn}")
    assert registered is None or registered.get("api") == "Nlight", (
        f"ACME registered App-ID {registered.get('api')!r}, refused by the rules (gateway answered {code}/{rsc})")


# --- finding 8: D103's cap counts bound AE-IDs only: a registration whose answer binds nothing (rcn=0 with a
# registrar-assigned stem) is never counted, so a credential allowed C* registers AEs at the CSE without end
async def test_the_per_credential_cap_also_holds_for_registrations_answered_without_resource(
        acme_http: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from m2msec.gateway import registrar as registrar_module

    monkeypatch.setattr(registrar_module, "MAX_AE_IDS_PER_CREDENTIAL", 2)  # D103's 64, made small for the test
    auto = f"""
[[app_rule]]
apci = ["12-{LIGHT2_ID}"]
aai = ["Nauto"]
aae = ["C*"]
"""
    answers = []
    async for gw in gateway(acme_http, tmp_path, f"/{EVIL_CSE_ID}", cse_id=CSE_ID, sp_id=SP_ID, rules=auto):
        light2 = await sa(gw, LIGHT2_ID, LIGHT2_KEY)
        try:
            for _ in range(4):
                answers.append(await call(light2, "POST", f"/{CSE_RN}?rcn=0", "C",
                                           ae_body(unique("many"), "Nauto"), "application/json;ty=2"))
        finally:
            await light2.close()
    created = [a[:2] for a in answers if a[:2] == (201, 2001)]
    assert len(created) <= 2, f"{len(created)} AEs registered at the CSE through one credential capped at 2"


# --- finding 9: a binding outlives the AE: deregistered, its AE-ID registered anew by another credential with an
# answer the gateway binds nothing from (rcn=3: the resource inside m2m:rce), the former credential still acts as it
async def test_a_deregistered_ae_id_registered_again_is_not_left_to_its_former_credential(acme_http: int,
                                                                                          tmp_path: Path) -> None:
    first_rn, second_rn, ae_id = unique("old"), unique("new"), unique("Ckitchen-")
    overlapping = f"""
[[app_rule]]                    # LIGHT2: any C-type stem
apci = ["12-{LIGHT2_ID}"]
aai = ["Nauto"]
aae = ["C*"]

[[app_rule]]                    # LIGHT1: the kitchen lights
apci = ["{LIGHT1_CRED}"]
aai = ["Nlight"]
aae = ["Ckitchen-*"]
"""
    async for gw in gateway(acme_http, tmp_path, f"/{EVIL_CSE_ID}", cse_id=CSE_ID, sp_id=SP_ID, rules=overlapping):
        light2 = await sa(gw, LIGHT2_ID, LIGHT2_KEY)
        try:  # LIGHT2 registers the AE-ID, then deregisters: the AE is gone, the binding stays
            assert (await call(light2, "POST", f"/{CSE_RN}", ae_id, ae_body(first_rn, "Nauto"),
                                "application/json;ty=2"))[:2] == (201, 2001)
            assert (await call(light2, "DELETE", f"/{CSE_RN}/{first_rn}", ae_id))[:2] == (200, 2002)
        finally:
            await light2.close()
        light1 = await sa(gw, LIGHT1_ID, LIGHT1_KEY)
        try:  # the kitchen light registers with that AE-ID (its rules admit it); rcn=3 is refused (D106), so the
            # answer holds the aei and the binding moves to LIGHT1
            status, rsc, body = await call(light1, "POST", f"/{CSE_RN}?rcn=3", ae_id, ae_body(second_rn, "Nlight"),
                                            "application/json;ty=2")
            assert (status, rsc) == (400, 4000), body[:300]
            status, rsc, body = await call(light1, "POST", f"/{CSE_RN}", ae_id, ae_body(second_rn, "Nlight"),
                                            "application/json;ty=2")
            assert (status, rsc) == (201, 2001), body[:300]
        finally:
            await light1.close()
        light2 = await sa(gw, LIGHT2_ID, LIGHT2_KEY)
        try:
            status, rsc, body = await call(light2, "DELETE", f"/{CSE_RN}/{second_rn}", ae_id)
        finally:
            await light2.close()
    assert acme_rsc(acme_http, f"/{CSE_RN}/{second_rn}") == 2000, "LIGHT2 deleted the AE LIGHT1 registered"
    assert (status, rsc) == (403, 4106), body[:300]
