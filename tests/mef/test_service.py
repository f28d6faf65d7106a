"""The MEF over real TLS on loopback and a real SQLite store: enrolment, the exporter, fetchCredentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets

import pytest

from leaks import assert_no_secret
from m2msec.errors import HandshakeFailed, MEFError
from m2msec.keys.secret import SecretKey
from m2msec.mef.client import Enrolment, MEFCredentials, MEFFetcher, MEFRefused, enrol
from m2msec.mef.procedures import revoke_enrolee
from m2msec.saef import ANY_ENTITY, PSKCredentials, establish_sa

from .world import (
    ENROLEE_ID,
    GW,
    KPM,
    KPMID,
    MAF,
    MEF_FQDN,
    OTHER,
    TARGET_PSKS,
    World,
    call,
)

LABEL = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"


def derived(ke: bytes, suid: int, target: str) -> bytes:
    return hmac.new(ke, LABEL + str(suid).encode() + target.encode(), hashlib.sha256).digest()


def stored_ke(world: World, keid_hex: str) -> bytes:
    doc = world.store.get_document("mef-ke", keid_hex)
    assert doc is not None and doc.key is not None
    return doc.key.reveal()


async def _enrol(world: World) -> Enrolment:
    return await enrol(world.address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN)


async def test_enrolment_over_psk_shares_ke_with_the_mef(world: World) -> None:
    got = await enrol(world.address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN, maf_enrolment=True,
                      remote_management=True)
    assert got.keid.mef_fqdn == MEF_FQDN
    assert stored_ke(world, got.keid.relative_ke_id.hex()) == got.ke.reveal()
    assert got.enrolee_id == ENROLEE_ID
    assert got.expires == world.clock.now + 3600  # the enrolee's Enrolment Expiry
    kinds = [(i["instructionType"], i.get("targetID") or i.get("mafFQDN") or i.get("uri")) for i in got.instructions]
    assert kinds == [("enrolmentTarget", GW), ("enrolmentTarget", MAF), ("mafEnrolment", MAF),
                     ("remoteManagement", "https://dm.sp.example.com/lwm2m")]
    again = await _enrol(world)  # a new MEF Handshake: a new Ke and KeID
    assert again.keid != got.keid and again.ke != got.ke


async def test_both_ends_export_the_same_bootstrap_material(world: World) -> None:
    # the Enrolee's side is driven by hand: our own export, split here (out[0:16] / out[16:48])
    sa = await establish_sa("127.0.0.1", world.running.port, PSKCredentials(KPMID, KPM, peer_entity=ANY_ENTITY),
                            server_name=MEF_FQDN)
    try:
        out = sa.export_keying_material("EXPORTER-oneM2M-Bootstrap", 48).reveal()
        status, body, _ = await call(sa, "POST", "/mef/v1/enrolment", {})
        assert status == 201, body
        status, _, resp = await call(sa, "POST", "/mef/v1/enrolment/done", {})
        assert status == 204 and resp.header("connection") == "close"
    finally:
        await sa.close()
    assert body["keID"] == out[0:16].hex() + "@" + MEF_FQDN
    assert stored_ke(world, out[0:16].hex()) == out[16:48]


async def test_openssl_s_client_exports_what_the_mef_stores(world: World) -> None:
    import asyncio
    import re
    import shutil

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not on PATH")
    request = (b"POST /mef/v1/enrolment HTTP/1.1\r\nHost: " + MEF_FQDN.encode() + b"\r\nContent-Type: "
               b"application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    proc = await asyncio.create_subprocess_exec(
        openssl, "s_client", "-connect", f"127.0.0.1:{world.running.port}", "-tls1_2", "-cipher",
        "PSK-AES128-CBC-SHA256", "-psk", KPM.reveal().hex(), "-psk_identity", KPMID, "-nocommands", "-ign_eof",
        "-keymatexport", "EXPORTER-oneM2M-Bootstrap", "-keymatexportlen", "48",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(request), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    printed = re.search(rb"Keying material: ([0-9A-F]{96})", output)
    answered = re.search(rb'"keID":"([0-9a-f]{32})@([^"]+)"', output)
    assert printed and answered, output.decode(errors="replace")
    out = bytes.fromhex(printed.group(1).decode())
    assert answered.group(1).decode() == out[0:16].hex() and answered.group(2).decode() == MEF_FQDN
    assert stored_ke(world, out[0:16].hex()) == out[16:48]


async def test_targets_fetch_the_key_the_enrolee_derives(world: World) -> None:
    got = await _enrol(world)
    ke = stored_ke(world, got.keid.relative_ke_id.hex())
    async with MEFFetcher(world.address, world.target(GW), mef_fqdn=MEF_FQDN) as gw:
        kpsa = await gw.fetch(got.keid, 22)
        again = await gw.fetch(str(got.keid).upper().replace("@" + MEF_FQDN.upper(), "@" + MEF_FQDN), 22)
    assert kpsa.credential.reveal() == derived(ke, 22, GW) == got.credential(22, GW).reveal()
    assert again.credential == kpsa.credential  # the kept connection served the second fetch
    assert kpsa.enrolee_id == ENROLEE_ID and kpsa.expires == got.expires
    async with MEFFetcher(world.address, world.target(MAF), mef_fqdn=MEF_FQDN) as maf:
        km = await maf.fetch(got.keid, 21)
    assert km.credential.reveal() == derived(ke, 21, MAF) == got.credential(21, MAF).reveal()
    assert km.credential != kpsa.credential


async def _refusal(world: World, target: str, keid: str, suid: int) -> MEFRefused:
    async with MEFFetcher(world.address, world.target(target), mef_fqdn=MEF_FQDN) as fetcher:
        with pytest.raises(MEFRefused) as caught:
            await fetcher.fetch(keid, suid)
    return caught.value


async def test_every_refusal_has_its_status_and_reason(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    got = await _enrol(world)
    keid = str(got.keid)
    cases = [
        (GW, f"{secrets.token_hex(16)}@{MEF_FQDN}", 22, 404, "unknown-keid"),
        (GW, f"{got.keid.relative_ke_id.hex()}@maf.sp.example.com", 22, 404, "unknown-keid"),
        (OTHER, keid, 22, 403, "not-the-target"),
        (GW, keid, 21, 403, "suid-not-allowed"),  # a CSE target may not fetch a MAF's Km
        (MAF, keid, 22, 403, "suid-not-allowed"),
        (GW, keid, 23, 403, "suid-not-allowed"),  # ESPrim: no consumer yet (D192)
        (GW, keid, 12, 403, "suid-not-allowed"),  # pre-provisioned: never derived by a MEF
        (GW, keid, 31, 400, "bad-suid"),  # does not exist in TS-0004
    ]
    for target, which, suid, status, name in cases:
        refused = await _refusal(world, target, which, suid)
        assert (refused.status, refused.problem) == (status, name), (target, which, suid)
    world.clock.now = got.expires
    assert (await _refusal(world, GW, keid, 22)).problem == "ke-expired"
    assert (await _refusal(world, GW, keid, 22)).status == 410
    world.clock.now = got.expires - 1
    revoke_enrolee(world.store, KPMID)
    refused = await _refusal(world, GW, keid, 22)
    assert (refused.status, refused.problem) == (403, "enrolee-revoked")
    with pytest.raises(HandshakeFailed):  # a revoked enrolee cannot enrol again
        await _enrol(world)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "not-the-target" in logged and keid in logged
    secrets_ = [KPM.reveal(), got.ke.reveal(), *(k.reveal() for k in TARGET_PSKS.values()),
                derived(got.ke.reveal(), 22, GW), derived(got.ke.reveal(), 21, MAF)]
    assert_no_secret(logged, secrets_, where="log")
    assert_no_secret(repr(got) + repr(refused) + str(refused), secrets_, where="reprs")


async def test_refusal_bodies_are_problems_without_keys(world: World) -> None:
    got = await _enrol(world)
    sa = await establish_sa("127.0.0.1", world.running.port, PSKCredentials(GW, TARGET_PSKS[GW],
                            peer_entity=ANY_ENTITY), server_name=MEF_FQDN)
    try:
        bodies = []
        for path, status, name in [(f"/mef/v1/fetchCredentials/{got.keid}/x", 400, "bad-suid"),
                                   (f"/mef/v1/fetchCredentials/{got.keid}/21", 403, "suid-not-allowed"),
                                   ("/mef/v1/fetchCredentials/nonsense/22", 404, "unknown-keid"),
                                   ("/mef/v1/enrolment", 405, "method-not-allowed")]:
            code, body, resp = await call(sa, "GET", path)
            assert (code, body["type"], body["errorString"], body["status"]) == \
                (status, f"urn:m2msec:mef:{name}", name, status), body
            assert resp.header("content-type") == "application/problem+json"
            bodies.append(resp.body)
        code, body, _ = await call(sa, "GET", f"/mef/v1/fetchCredentials/{got.keid}/22",
                                   headers=[("X-M2M-Origin", OTHER)])
        assert (code, body["errorString"]) == (403, "originator-mismatch")
        code, body, resp = await call(sa, "GET", f"/mef/v1/fetchCredentials/{got.keid}/22",
                                      headers=[("X-M2M-Origin", GW)])
        assert code == 200 and resp.header("cache-control") == "no-store"
        assert base64.b64decode(body["credential"]) == derived(got.ke.reveal(), 22, GW)
        code, body, resp = await call(sa, "POST", "/mef/v1/enrolment", {})  # a target is no enrolee
        assert (code, body["errorString"]) == (403, "not-an-enrolee")
        bodies.append(resp.body)
        code, body, _ = await call(sa, "POST", "/mef/v1/enrolment", {"mafEnrolment": "yes"})
        assert (code, body["errorString"]) == (400, "bad-request")
        code, body, _ = await call(sa, "POST", "/mef/v1/enrolment", {"extra": 1})
        assert (code, body["errorString"]) == (400, "bad-request")
        code, body, resp = await call(sa, "POST", "/mef/v1/enrolment", {"x": "y" * 70000})
        assert (code, body["errorString"]) == (413, "body-too-large")
        bodies.append(resp.body)
    finally:
        await sa.close()
    assert_no_secret(b"\n".join(bodies), [got.ke.reveal(), derived(got.ke.reveal(), 22, GW), KPM.reveal()],
                     where="problem bodies")


async def test_an_enrolee_cannot_fetch_and_unknown_credentials_cannot_connect(world: World) -> None:
    got = await _enrol(world)
    async with MEFFetcher(world.address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN) as as_enrolee:
        with pytest.raises(MEFRefused) as caught:
            await as_enrolee.fetch(got.keid, 22)
    assert caught.value.problem == "not-the-target"
    with pytest.raises(HandshakeFailed):
        await enrol(world.address, MEFCredentials(KPMID, SecretKey(bytes(32))), mef_fqdn=MEF_FQDN)
    with pytest.raises(HandshakeFailed):
        await enrol(world.address, MEFCredentials("nobody", KPM), mef_fqdn=MEF_FQDN)
    assert isinstance(caught.value, MEFError)
    fetcher = MEFFetcher(world.address, world.target(GW), mef_fqdn=MEF_FQDN)
    assert_no_secret(repr(fetcher) + repr(world.target(GW)) + repr(MEFCredentials(KPMID, KPM)),
                     [KPM.reveal(), TARGET_PSKS[GW].reveal()], where="reprs")
    await fetcher.close()
