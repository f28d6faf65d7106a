"""attack17b: second hostile review of registration upon SAE (issue 17): the fixes since attack17.

Each test shows one finding; it failed on main at commit e538f11 and passes since the fixes that follow the merge.

1. The bindings file's owner/mode check (``registrar._check_owner``, attack17 finding 4) covers the main SQLite
   file only. The store runs in WAL mode, and SQLite opens the side files ``<file>-wal`` / ``<file>-shm`` that
   already exist as they are. Whoever can create files in the directory (a shared ``/tmp``, a group-writable
   directory) plants them before the gateway starts and keeps a read-write descriptor: every binding (an
   identity) is written through a file the attacker can read and rewrite, whatever the main file's mode.
3. D104/D106 bind the ``aei`` of a JSON 201 answer, and refuse ``rcn``/``rt`` values whose answer holds none; but the
   client also chooses the answer's serialization: with ``Accept: application/cbor`` (or XML) ACME answers the
   CREATE <AE> in CBOR, the gateway's strict JSON read finds no ``aei`` and binds nothing (one WARNING). That
   reopens attack17 findings 9 and 8: (a) a deregistered AE-ID registered anew by another credential stays bound
   to its former credential, which then acts as the new AE (deletes it: impersonation); (b) registrations with a
   registrar-assigned stem are never counted against D103's cap.
4. The same for an explicit AE-ID the rules admit (``C*``) but the gateway will not bind (longer than
   ``MAX_AE_ID_LENGTH``, or with a character ``_plausible_ae_id`` refuses): ACME registers it, the gateway binds
   nothing, and D103's cap never counts it: one credential fills the CSE with AEs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from acme_cse import CSE_ID, CSE_RN, needs_acme
from attack_registration_env import (
    acme_http_fixture,
    acme_ports_fixture,
    call,
    coaps,
    coaps_gateway,
    gateway,
    sa,
)
from registration_front import SP_ID, acme_rsc, ae_body, unique

from conftest import LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY
from m2msec.errors import ConfigurationError
from m2msec.gateway import coap
from m2msec.gateway.http_gateway import Gateway
from m2msec.gateway.registrar import BindingStore

LIGHT1_CRED = f"12-{LIGHT1_ID}"
CBOR = "application/cbor"
OVERLAPPING = f"""
[[app_rule]]                    # LIGHT2: any C-type stem
apci = ["12-{LIGHT2_ID}"]
aai = ["Nauto"]
aae = ["C*"]

[[app_rule]]                    # LIGHT1: the kitchen lights
apci = ["{LIGHT1_CRED}"]
aai = ["Nlight"]
aae = ["Ckitchen-*"]
"""

#: the module's ACME (fixtures of attack_registration_env)
acme_ports, acme_http = acme_ports_fixture, acme_http_fixture



def test_planted_wal_file_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may create files, the sticky bit protects existing ones
    path = shared / "registrations.sqlite"
    # the attacker (another local user) plants the WAL and shared-memory files, world-writable, and keeps the WAL
    # open read-write: changing the file's mode or owner later does not take that descriptor away
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    for planted in (wal, shm):
        planted.touch()
        planted.chmod(0o666)
    fd = os.open(wal, os.O_RDWR)
    try:
        with pytest.raises(ConfigurationError):
            store = BindingStore(path)  # the main file is created 0600: _check_owner is satisfied
            try:
                assert store.bind("light-1@in.provider.com", "CvictimLight")
                assert os.stat(wal).st_ino == os.fstat(fd).st_ino  # SQLite writes through the planted file
                leaked = os.pread(fd, 1 << 20, 0)
                assert b"CvictimLight" in leaked and b"light-1@in.provider.com" in leaked  # read, and writable
            finally:
                store.close()
    finally:
        os.close(fd)


# --- finding 3: the answer's serialization is the client's choice; a CBOR answer binds nothing
def _gateway(acme_http: int, tmp_path: Path, rules: str) -> AsyncIterator[Gateway]:
    return gateway(acme_http, tmp_path, None, cse_id=CSE_ID, sp_id=SP_ID, rules=rules)


@needs_acme
async def test_a_cbor_answer_does_not_leave_an_ae_id_to_its_former_credential(acme_http: int,
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
    async for gw in _gateway(acme_http, tmp_path, overlapping):
        light2 = await sa(gw, LIGHT2_ID, LIGHT2_KEY)
        try:  # LIGHT2 registers the AE-ID, then deregisters: the AE is gone, the binding stays
            assert (await call(light2, "POST", f"/{CSE_RN}", ae_id, ae_body(first_rn, "Nauto"),
                                "application/json;ty=2"))[:2] == (201, 2001)
            assert (await call(light2, "DELETE", f"/{CSE_RN}/{first_rn}", ae_id))[:2] == (200, 2002)
        finally:
            await light2.close()
        light1 = await sa(gw, LIGHT1_ID, LIGHT1_KEY)
        try:  # the kitchen light registers with that AE-ID, asking for a CBOR answer: rcn/rt are plain (D106)
            status, rsc, body = await call(light1, "POST", f"/{CSE_RN}", ae_id, ae_body(second_rn, "Nlight"),
                                            "application/json;ty=2", accept=CBOR)
        finally:
            await light1.close()
        if (status, rsc) != (201, 2001):
            return  # refused before the CSE (a fix): nothing to take over
        light2 = await sa(gw, LIGHT2_ID, LIGHT2_KEY)
        try:  # the former credential still acts as the AE-ID: it deletes the kitchen light's new AE
            status, rsc, body = await call(light2, "DELETE", f"/{CSE_RN}/{second_rn}", ae_id)
        finally:
            await light2.close()
    assert acme_rsc(acme_http, f"/{CSE_RN}/{second_rn}") == 2000, "LIGHT2 deleted the AE LIGHT1 registered"
    assert (status, rsc) == (403, 4106), body[:300]


@needs_acme
async def test_the_per_credential_cap_also_holds_for_registrations_answered_in_cbor(
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
    async for gw in _gateway(acme_http, tmp_path, auto):
        light2 = await sa(gw, LIGHT2_ID, LIGHT2_KEY)
        try:
            for _ in range(4):
                answers.append(await call(light2, "POST", f"/{CSE_RN}", "C", ae_body(unique("many"), "Nauto"),
                                           "application/json;ty=2", accept=CBOR))
        finally:
            await light2.close()
    created = [a[:2] for a in answers if a[:2] == (201, 2001)]
    assert len(created) <= 2, f"{len(created)} AEs registered at the CSE through one credential capped at 2"


# --- finding 4: an AE-ID the gateway will not bind (over MAX_AE_ID_LENGTH) is still registered at the CSE
@needs_acme
async def test_the_per_credential_cap_also_holds_for_ae_ids_too_long_to_bind(
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
    async for gw in _gateway(acme_http, tmp_path, auto):
        light2 = await sa(gw, LIGHT2_ID, LIGHT2_KEY)
        try:
            for _ in range(4):  # explicit AE-IDs the rules admit, longer than MAX_AE_ID_LENGTH (256): never bound
                answers.append(await call(light2, "POST", f"/{CSE_RN}", unique("C" + "x" * 300),
                                           ae_body(unique("long"), "Nauto"), "application/json;ty=2"))
        finally:
            await light2.close()
    created = [a[:2] for a in answers if a[:2] == (201, 2001)]
    assert len(created) <= 2, f"{len(created)} AEs registered at the CSE through one credential capped at 2"


# --- finding 3 over coaps: the Accept option (60, CBOR)
@needs_acme
async def test_coaps_a_cbor_answer_does_not_leave_an_ae_id_to_its_former_credential(acme_ports: tuple[int, int],
                                                                                    tmp_path: Path) -> None:
    first_rn, second_rn, ae_id = unique("cold"), unique("cnew"), unique("Ckitchen-")
    async with coaps_gateway(acme_ports, tmp_path, OVERLAPPING) as gw:
        async with coaps(gw, LIGHT2_ID, LIGHT2_KEY) as light2:
            code, rsc, body = await light2.call(coap.POST, f"/{CSE_RN}", ae_id, ae_body(first_rn, "Nauto"), ty=2)
            assert (code, rsc) == ("2.01", 2001), body[:300]
            code, rsc, body = await light2.call(coap.DELETE, f"/{CSE_RN}/{first_rn}", ae_id)
            assert (code, rsc) == ("2.02", 2002), body[:300]
        async with coaps(gw, LIGHT1_ID, LIGHT1_KEY) as light1:  # Accept: 60 (application/cbor)
            code, rsc, _ = await light1.call(coap.POST, f"/{CSE_RN}", ae_id, ae_body(second_rn, "Nlight"), ty=2,
                                             accept=60)
        if (code, rsc) == ("2.01", 2001):
            async with coaps(gw, LIGHT2_ID, LIGHT2_KEY) as light2:
                code, rsc, body = await light2.call(coap.DELETE, f"/{CSE_RN}/{second_rn}", ae_id)
            assert acme_rsc(acme_ports[0], f"/{CSE_RN}/{second_rn}") == 2000, "LIGHT2 deleted LIGHT1's AE"
            assert (code, rsc) == ("4.03", 4106), body[:300]
