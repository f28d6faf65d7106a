"""Hostile review of the MEF (issue 20): attacks over real TLS on loopback against a real SQLite store.

Each ``xfail(strict=True)`` test is a confirmed problem (M<n> in the review report): it fails today and passes once
fixed. The plain tests are attacks the MEF refuses correctly, kept so that it goes on refusing them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import urllib.parse

import pytest

from m2msec import http1
from m2msec.errors import Conflict, HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.mef.client import MEFCredentials, MEFFetcher, MEFRefused, enrol
from m2msec.mef.procedures import EnrolmentTarget, add_enrolee, revoke_enrolee, revoke_target
from m2msec.saef import ANY_ENTITY, EstablishedSA, PSKCredentials, establish_sa

from .world import GW, KPM, KPMID, MAF, MEF_FQDN, OTHER, TARGET_PSKS, World, call

# TS-0003 §10.3.7 as docs/mef.md states it, written out here (66 ASCII bytes, no terminator)
LABEL = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"


async def _sa(world: World, identity: str, psk: SecretKey) -> EstablishedSA:
    return await establish_sa("127.0.0.1", world.running.port, PSKCredentials(identity, psk, peer_entity=ANY_ENTITY),
                              server_name=MEF_FQDN)


async def _enrol_by_hand(world: World) -> tuple[str, bytes]:
    """(KeID, Ke) from our own export of a hand-driven MEF Handshake (RelativeKeID = out[0:16], Ke = out[16:48])."""
    sa = await _sa(world, KPMID, KPM)
    try:
        out = sa.export_keying_material("EXPORTER-oneM2M-Bootstrap", 48).reveal()
        status, body, _ = await call(sa, "POST", "/mef/v1/enrolment", {})
        assert status == 201, body
    finally:
        await sa.close()
    assert body["keID"] == out[:16].hex() + "@" + MEF_FQDN
    return body["keID"], out[16:]


async def _get(world: World, who: str, path: str, headers: list[tuple[str, str]] | None = None) -> tuple[int, dict]:
    sa = await _sa(world, who, TARGET_PSKS[who])
    try:
        status, body, _ = await call(sa, "GET", path, headers=headers)
    finally:
        await sa.close()
    return status, body


# -- confirmed problems


async def test_repeated_origin_header_is_refused(world: World) -> None:
    keid, _ = await _enrol_by_hand(world)
    status, body = await _get(world, GW, f"/mef/v1/fetchCredentials/{keid}/22",
                              headers=[("X-M2M-Origin", GW), ("X-M2M-Origin", OTHER)])
    assert status == 403 and body["errorString"] == "originator-mismatch"
    assert "credential" not in body


async def test_reenrolment_on_one_handshake_does_not_extend_the_ke(world: World) -> None:
    sa = await _sa(world, KPMID, KPM)
    try:
        status, first, _ = await call(sa, "POST", "/mef/v1/enrolment", {})
        assert status == 201
        world.clock.now += 3000  # the Enrolment Expiry is 3600 s
        status, second, _ = await call(sa, "POST", "/mef/v1/enrolment", {})
    finally:
        await sa.close()
    # refused, or the same Ke with its first expiry: the Enrolment Expiry (§9.2) bounds a Ke however it is used
    assert status != 201 or second["lifetime"] == first["lifetime"]


async def test_enrolee_cannot_take_a_case_variant_of_a_target_identity(world: World) -> None:
    try:
        add_enrolee(world.store, GW.upper(), enrolee_id="//sp.example.com/in-cse/CAE9", kpm=KPM,
                    targets=[EnrolmentTarget(MAF, (21,))])
    except Conflict:
        return
    # it was accepted: the same FQDN now authenticates to the MEF both as an enrolee and as a target
    got = await enrol(world.address, MEFCredentials(GW.upper(), KPM), mef_fqdn=MEF_FQDN)
    async with MEFFetcher(world.address, world.target(MAF), mef_fqdn=MEF_FQDN) as maf:
        await maf.fetch(got.keid, 21)
    pytest.fail("one FQDN is both an enrolee (by its upper-case form) and an Enrolment Target")


async def test_unlisted_target_cannot_tell_revoked_from_live(world: World) -> None:
    keid, _ = await _enrol_by_hand(world)
    live = await _get(world, OTHER, f"/mef/v1/fetchCredentials/{keid}/22")
    revoke_enrolee(world.store, KPMID)
    revoked = await _get(world, OTHER, f"/mef/v1/fetchCredentials/{keid}/22")
    assert live[0] == 403 and live[1]["errorString"] == "not-the-target"
    assert (revoked[0], revoked[1]["errorString"]) == (live[0], live[1]["errorString"])


async def test_revoking_a_target_by_another_form_of_its_fqdn(world: World) -> None:
    async with MEFFetcher(world.address, world.target(GW), mef_fqdn=MEF_FQDN) as gw:
        keid, _ = await _enrol_by_hand(world)
        await gw.fetch(keid, 22)
        revoke_target(world.store, GW.upper() + ".")  # `m2msec mef targets revoke IN-CSE.SP.EXAMPLE.COM.`
        with pytest.raises(MEFRefused):
            await gw.fetch(keid, 22)


async def test_oversized_head_is_a_mef_problem(world: World) -> None:
    sa = await _sa(world, GW, TARGET_PSKS[GW])
    try:
        resp = await asyncio.wait_for(sa.request(http1.Message([("Host", MEF_FQDN), ("X-Pad", "a" * 20000)], b"",
                                                               method="GET", target="/mef/v1/enrolment")), 5)
    finally:
        await sa.close()
    assert resp.status == 431
    assert resp.header("content-type") == "application/problem+json"
    assert json.loads(resp.body)["type"].startswith("urn:m2msec:mef:")


# -- attacks refused correctly (kept)


async def test_fetched_keys_match_an_independent_hmac_of_our_own_export(world: World) -> None:
    keid, ke = await _enrol_by_hand(world)
    for who, suid in ((GW, 22), (MAF, 21)):
        status, body = await _get(world, who, f"/mef/v1/fetchCredentials/{keid}/{suid}")
        assert status == 200, body
        want = hmac.new(ke, LABEL + str(suid).encode("ascii") + who.encode("ascii"), hashlib.sha256).digest()
        assert base64.b64decode(body["credential"]) == want


@pytest.mark.parametrize("suid", ["+22", " 22", "22 ", "2.2e1", "22.0", "0x16", "\u0662\u0662", "\uff12\uff12",
                                  "-22", "", "2222", "22%00"])
async def test_odd_suid_encodings_are_bad_suid(world: World, suid: str) -> None:
    keid, _ = await _enrol_by_hand(world)
    status, body = await _get(world, GW, f"/mef/v1/fetchCredentials/{keid}/{urllib.parse.quote(suid)}")
    assert "credential" not in body
    want = (404, "not-found") if suid == "" else (400, "bad-suid")
    assert (status, body["errorString"]) == want, body


async def test_leading_zero_suid_gives_the_same_key_as_its_canonical_form(world: World) -> None:
    keid, ke = await _enrol_by_hand(world)
    status, body = await _get(world, GW, f"/mef/v1/fetchCredentials/{keid}/022")
    assert status == 200 or body["errorString"] == "bad-suid"
    if status == 200:
        want = hmac.new(ke, LABEL + b"22" + GW.encode(), hashlib.sha256).digest()
        assert base64.b64decode(body["credential"]) == want


@pytest.mark.parametrize("shape", ["percent-space", "trailing-dot", "other-fqdn-case", "newline",
                                   "double-at", "short", "nul"])
async def test_keid_variants_in_the_path(world: World, shape: str) -> None:
    keid, _ = await _enrol_by_hand(world)
    rel = keid.split("@")[0]
    text = {"percent-space": f"%20{keid}", "trailing-dot": f"{keid}.",
            "other-fqdn-case": f"{rel.upper()}@{MEF_FQDN.upper()}", "newline": f"{keid}%0A",
            "double-at": f"{rel}@{MEF_FQDN}@{MEF_FQDN}", "short": f"{rel[:-2]}@{MEF_FQDN}", "nul": f"{keid}%00"}[shape]
    status, body = await _get(world, GW, f"/mef/v1/fetchCredentials/{text}/22")
    if shape == "other-fqdn-case":
        assert status == 200
    else:
        assert status == 404 and body["errorString"] == "unknown-keid", (shape, body)


async def test_deeply_nested_and_oversized_json_is_a_problem(world: World) -> None:
    sa = await _sa(world, KPMID, KPM)
    try:
        for data in (b"[" * 60000, b'{"a":' * 10000 + b"1" + b"}" * 10000, b"\xff\xfe", b"{}" * 5):
            resp = await sa.request(http1.Message([("Host", MEF_FQDN), ("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(data)))], data, method="POST",
                                                  target="/mef/v1/enrolment"))
            body = json.loads(resp.body)
            assert (resp.status, body["errorString"]) in ((400, "bad-request"), (413, "body-too-large")), \
                (resp.status, body)
    finally:
        await sa.close()


@pytest.mark.parametrize("claimed", [GW.upper(), GW + ".", " " + GW, "IN-CSE.sp.example.com"])
async def test_target_identity_variants_do_not_authenticate(world: World, claimed: str) -> None:
    with pytest.raises(HandshakeFailed):
        await _sa(world, claimed, TARGET_PSKS[GW])


async def test_a_target_cannot_claim_another_target_with_its_own_psk(world: World) -> None:
    with pytest.raises(HandshakeFailed):
        await _sa(world, GW, TARGET_PSKS[OTHER])


async def test_a_mismatching_first_origin_header_is_refused(world: World) -> None:
    keid, _ = await _enrol_by_hand(world)
    status, body = await _get(world, GW, f"/mef/v1/fetchCredentials/{keid}/22",
                              headers=[("X-M2M-Origin", OTHER), ("X-M2M-Origin", GW)])
    assert (status, body["errorString"]) == (403, "originator-mismatch")


async def test_enrolee_cannot_fetch_and_target_cannot_enrol(world: World) -> None:
    keid, _ = await _enrol_by_hand(world)
    sa = await _sa(world, KPMID, KPM)
    try:
        status, body, _ = await call(sa, "GET", f"/mef/v1/fetchCredentials/{keid}/22", headers=[("X-M2M-Origin", GW)])
        assert (status, body["errorString"]) == (403, "originator-mismatch")
        status, body, _ = await call(sa, "GET", f"/mef/v1/fetchCredentials/{keid}/22")
        assert (status, body["errorString"]) == (403, "not-the-target")
    finally:
        await sa.close()
    sa = await _sa(world, GW, TARGET_PSKS[GW])
    try:
        status, body, _ = await call(sa, "POST", "/mef/v1/enrolment", {}, headers=[("X-M2M-Origin", KPMID)])
        assert (status, body["errorString"]) == (403, "originator-mismatch")
    finally:
        await sa.close()


async def test_revoked_target_is_refused_on_its_kept_connection(world: World) -> None:
    keid, _ = await _enrol_by_hand(world)
    async with MEFFetcher(world.address, world.target(GW), mef_fqdn=MEF_FQDN) as gw:
        await gw.fetch(keid, 22)
        revoke_target(world.store, GW)
        with pytest.raises(MEFRefused) as caught:
            await gw.fetch(keid, 22)
    assert caught.value.problem == "not-the-target"


async def test_parallel_enrolments_give_distinct_kes(world: World) -> None:
    got = await asyncio.gather(*(enrol(world.address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN)
                                 for _ in range(6)))
    assert len({str(g.keid) for g in got}) == 6 and len({g.ke.reveal() for g in got}) == 6


async def test_unknown_kpmids_fail_the_handshake(world: World) -> None:
    for _ in range(20):
        with pytest.raises(HandshakeFailed):
            await _sa(world, secrets.token_hex(8), KPM)
    keid, _ = await _enrol_by_hand(world)  # the MEF still serves
    assert keid.endswith("@" + MEF_FQDN)


async def test_enrolee_side_normalises_the_target_id_as_the_mef_does(world: World) -> None:
    got = await enrol(world.address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN)
    async with MEFFetcher(world.address, world.target(GW), mef_fqdn=MEF_FQDN) as gw:
        kpsa = await gw.fetch(got.keid, 22)
    for form in (GW, GW.upper() + ".", "\uff49n-cse.sp.example.com"):  # case, trailing dot, NFKC (fullwidth i)
        assert got.credential(22, form) == kpsa.credential
    assert got.credential(22, OTHER) != kpsa.credential and got.credential(21, GW) != kpsa.credential
