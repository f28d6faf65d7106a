"""Hostile review of what is built on the MEF (issue 20): the gateway's MEF resolver (``--mef``) and the MAF's
KeID path, over real sockets (the real MEF of tests/mef/world.py, the real gateway and MAF, clocks injected).

Strict xfails are confirmed problems (U<n>, see the reason); plain tests are attacks refused and kept."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from leaks import assert_no_secret
from m2msec import http1
from m2msec.asgi import serve
from m2msec.errors import HandshakeFailed, MAFError
from m2msec.gateway.mef_resolver import MEFKeyResolver
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry
from m2msec.maf.server import running_maf
from m2msec.mef.config import MEFConfig
from m2msec.mef.procedures import revoke_enrolee
from m2msec.mef.server import mef_context
from m2msec.saef import PSKCredentials, establish_sa
from m2msec.store import MAFClient as ProvisionedClient
from m2msec.store import open_store

from .test_mef_gateway import IDB, Gw, enrolled, kpsa, mef_resolver, request, start_gateway
from .test_mef_maf import GW_KM, GW_KMID, Both, km_of, maf_config
from .test_mef_maf import IDB as MAF_IDB
from .world import ENROLEE_ID, GW, KPM, KPMID, MAF, MEF_FQDN, NOW, SP, TARGET_PSKS, Clock, World

VICTIM = f"//{SP}/in-cse/CVictim"
#: well inside the enrolee's Ke lifetime (3600 s in world.py): what a revocation may reasonably take to reach
#: the targets (a fix may keep a short revalidation interval, not Ke's whole lifetime)
REVOCATION_DELAY = 600.0


@pytest.fixture
async def gw(world: World) -> AsyncIterator[Gw]:
    """The gateway of test_mef_gateway.py: --mef as Enrolment Target GW, a PSK table, a recording CSE."""
    g = await start_gateway(lambda table: mef_resolver(world.address, world.clock, table=table))
    yield g
    await g.close()


@pytest.fixture
async def both(world: World, tmp_path: Path) -> AsyncIterator[Both]:
    """The MAF of test_mef_maf.py: the MEF's target MAF, with the gateway's own MAF client GW_KMID."""
    config = maf_config(tmp_path, world)
    store = open_store(config.store)
    store.register_client(ProvisionedClient(GW_KMID, GW_KM, MAF_IDB))
    try:
        async with running_maf(config, store=store, clock=world.clock) as maf:
            yield Both(world, maf, store)
    finally:
        store.close()


# -- confirmed problems -------------------------------------------------------------------------------------------

async def test_u1_gateway_serves_a_revoked_enrolee_from_its_cache(world: World, gw: Gw) -> None:
    e = await enrolled(world)
    creds = PSKCredentials(str(e.keid), kpsa(e), peer_entity=IDB)
    sa = await establish_sa("127.0.0.1", gw.port, creds)
    assert (await sa.request(request(ENROLEE_ID))).status == 200
    await sa.close()
    revoke_enrolee(world.store, KPMID)  # docs/mef.md: "its KeIDs are refused (enrolee-revoked)"
    world.clock.now += REVOCATION_DELAY
    with pytest.raises(HandshakeFailed):
        late = await establish_sa("127.0.0.1", gw.port, creds)
        await late.close()


async def test_u2_maf_assigns_a_kmid_to_a_revoked_enrolee(both: Both) -> None:
    enrolment = await both.enrol()
    km = enrolment.credential(21, MAF)
    async with both.client(str(enrolment.keid), km) as a:
        first = (await a.register()).assigned_symm_key_id
    assert first is not None
    revoke_enrolee(both.mef.store, KPMID)
    both.mef.clock.now += REVOCATION_DELAY
    try:
        async with both.client(str(enrolment.keid), km) as b:
            again = (await b.register()).assigned_symm_key_id
    except (HandshakeFailed, MAFError):
        again = None
    assert again is None, "a revoked enrolee was assigned a new KmID"
    # and the KmID it held before the revocation no longer runs a MAF Handshake
    record = both.store.get_client(first)
    assert record is not None and record.status != "active"


async def test_u3_refused_keid_is_fetched_at_every_handshake(world: World, gw: Gw) -> None:
    made_up, key = f"{secrets.token_hex(16)}@{MEF_FQDN}", kpsa(await enrolled(world))
    for _ in range(3):  # the same made-up KeID (the MEF answers unknown-keid), one handshake after the other
        with pytest.raises(HandshakeFailed):
            await establish_sa("127.0.0.1", gw.port, PSKCredentials(made_up, key, peer_entity=IDB))
    assert isinstance(gw.resolver, MEFKeyResolver)
    assert gw.resolver.fetches <= 1, f"{gw.resolver.fetches} fetches for one refused KeID"


async def test_u3_refused_keid_is_fetched_at_every_maf_handshake(both: Both) -> None:
    enrolment = await both.enrol()
    made_up = f"{secrets.token_hex(16)}@{MEF_FQDN}"
    for _ in range(3):
        with pytest.raises(HandshakeFailed):
            async with both.client(made_up, enrolment.credential(21, MAF)) as a:
                await a.register()
    assert both.remote_fetches <= 1, f"{both.remote_fetches} fetches for one refused KeID"


# -- attacks refused, kept ----------------------------------------------------------------------------------------

async def test_repeated_origin_on_a_mef_sa_never_reaches_the_cse_as_another(world: World, gw: Gw) -> None:
    e = await enrolled(world)
    sa = await establish_sa("127.0.0.1", gw.port, PSKCredentials(str(e.keid), kpsa(e), peer_entity=IDB))
    for first, second in ((ENROLEE_ID, VICTIM), (VICTIM, ENROLEE_ID), (ENROLEE_ID, ENROLEE_ID)):
        msg = http1.Message(headers=[("host", "in-cse"), ("x-m2m-origin", first), ("x-m2m-origin", second),
                                     ("x-m2m-ri", "r1"), ("x-m2m-rvi", "3")], method="GET", target="/in-cse")
        resp = await sa.request(msg)
        assert resp.status != 200
    resp = await sa.request(request(VICTIM, "r2"))
    assert resp.status == 403 and resp.header("x-m2m-rsc") == "4106"
    await sa.close()
    for seen in gw.cse.requests:
        assert [v for k, v in seen.headers if k.lower() == "x-m2m-origin"] == [ENROLEE_ID]


async def test_keid_spellings_share_one_fetch_and_one_binding(world: World, gw: Gw) -> None:
    e = await enrolled(world)
    key = kpsa(e)
    hexpart = e.keid.relative_ke_id.hex()
    spellings = [str(e.keid), f"{hexpart.upper()}@{MEF_FQDN.upper()}", f"{hexpart}@{MEF_FQDN.title()}"]
    for ident in spellings:
        sa = await establish_sa("127.0.0.1", gw.port, PSKCredentials(ident, key, peer_entity=IDB))
        assert (await sa.request(request(VICTIM))).header("x-m2m-rsc") == "4106"  # bound whatever the spelling
        assert (await sa.request(request(ENROLEE_ID, "r2"))).status == 200
        await sa.close()
    assert isinstance(gw.resolver, MEFKeyResolver) and gw.resolver.fetches == 1


async def test_keids_of_other_mef_fqdns_never_reach_the_mef(world: World, gw: Gw) -> None:
    e = await enrolled(world)
    key = kpsa(e)
    hexpart = e.keid.relative_ke_id.hex()
    for ident in (f"{hexpart}@mef2.sp.example.com", f"{hexpart}@{MAF}", f"{hexpart}@xn--mf-9ia.sp.example.com",
                  f"{hexpart}@{MEF_FQDN}.evil.example", f"{hexpart}@{MEF_FQDN}..", f"{hexpart}@@{MEF_FQDN}"):
        with pytest.raises(HandshakeFailed):
            await establish_sa("127.0.0.1", gw.port, PSKCredentials(ident, key, peer_entity=IDB))
    assert isinstance(gw.resolver, MEFKeyResolver) and gw.resolver.fetches == 0 and not gw.cse.requests


async def test_wrong_key_for_a_valid_keid_is_refused_and_binds_nothing(world: World, gw: Gw) -> None:
    e = await enrolled(world)
    for wrong in (kpsa(e, suid=b"21"), kpsa(e, MAF), km_of(e.ke, "22", MEF_FQDN)):
        with pytest.raises(HandshakeFailed):
            await establish_sa("127.0.0.1", gw.port, PSKCredentials(str(e.keid), wrong, peer_entity=IDB))
    assert not gw.cse.requests


async def test_keid_session_at_the_maf_runs_no_key_procedure_and_leaks_nothing(
        both: Both, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    enrolment = await both.enrol()
    km = enrolment.credential(21, MAF)
    async with both.client(str(enrolment.keid), km) as a:
        for call in (a.configuration("0123"), a.deregister("0123")):
            with pytest.raises(MAFError) as err:
                await call
            assert (err.value.status, err.value.problem) == (403, "kmid-required")
        reg = await a.register()
    assert reg.maf_client_id == ENROLEE_ID  # the requester is the MEF's EnroleeID, never something the client says
    gateway_client = both.store.get_client(GW_KMID)
    assert gateway_client is not None and gateway_client.status == "active"  # another client's KmID untouched
    assert_no_secret(caplog.text, [enrolment.ke.reveal(), km.reveal(), KPM.reveal()], where="MAF/MEF log")


async def test_u4_registrations_on_one_keid_session_grow_the_maf_store(both: Both) -> None:
    enrolment = await both.enrol()
    for _ in range(20):  # one KeID handshake each (the Km stays cached at the MAF: no MEF fetch)
        async with both.client(str(enrolment.keid), enrolment.credential(21, MAF)) as a:
            await a.register()
    assert both.remote_fetches == 1
    records = both.store.ids("maf-client")
    active = [k for k in records if (c := both.store.get_client(k)) is not None and c.status == "active"]
    assert len(active) == 2  # the gateway's client and the Enrolee's latest KmID
    assert len(records) <= 3, f"{len(records)} MAF client records after 20 registrations of one Enrolee"


# -- a lying MEF: a real TLS-PSK server (the MEF's own TLS context) answering fetchCredentials as told ------------

@dataclass
class LyingMEF:
    answer: dict[str, object]
    port: int = 0
    asked: list[str] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.asked.append(scope["path"])
        body = json.dumps(self.answer).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})


async def _target_psk(identity: str) -> PSKEntry | None:
    return PSKEntry(identity, TARGET_PSKS[GW], entity=None) if identity == GW else None


@pytest.fixture
async def liar(tmp_path: Path) -> AsyncIterator[LyingMEF]:
    lying = LyingMEF({})
    config = MEFConfig(listen="127.0.0.1:0", mef_fqdn=MEF_FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/unused.db")
    server = await serve(lying, mef_context(config), "127.0.0.1", 0, psk_resolver=_target_psk, lifespan="off")
    lying.port = server.port
    try:
        yield lying
    finally:
        server.close()
        await server.wait_closed()


def _answer(key: bytes, enrolee: str, lifetime: float) -> dict[str, object]:
    return {"status": True, "credential": base64.b64encode(key).decode(), "enroleeID": enrolee,
            "lifetime": time.strftime("%Y%m%dT%H%M%S", time.gmtime(int(lifetime)))}


async def test_a_lying_mef_s_malformed_answers_are_refused(liar: LyingMEF) -> None:
    clock = Clock()
    g = await start_gateway(lambda table: mef_resolver(f"127.0.0.1:{liar.port}", clock, table=table))
    try:
        key32, key16 = secrets.token_bytes(32), secrets.token_bytes(16)
        bad = [_answer(key16, ENROLEE_ID, NOW + 3600),            # a credential of the wrong length
               _answer(key32, "CAE1", NOW + 3600),                # an EnroleeID that is not absolute
               _answer(key32, "11-someone@maf.sp.example.com", NOW + 3600),  # a Credential-ID, not an entity
               _answer(key32, ENROLEE_ID, NOW - 1),                # already expired
               {**_answer(key32, ENROLEE_ID, NOW + 3600), "status": "true"}]  # status not the JSON true
        for n, answer in enumerate(bad):
            liar.answer = answer
            keid = f"{n:032x}@{MEF_FQDN}"
            psk = SecretKey(key16 if answer["credential"] == base64.b64encode(key16).decode() else key32)
            with pytest.raises(HandshakeFailed):
                await establish_sa("127.0.0.1", g.port, PSKCredentials(keid, psk, peer_entity=IDB))
        assert len(liar.asked) == len(bad) and not g.cse.requests
        liar.answer = _answer(key32, ENROLEE_ID, NOW + 3600)  # the control: a well-formed answer is served
        sa = await establish_sa("127.0.0.1", g.port, PSKCredentials(f"{99:032x}@{MEF_FQDN}", SecretKey(key32),
                                                                    peer_entity=IDB))
        assert (await sa.request(request(ENROLEE_ID))).status == 200
        await sa.close()
    finally:
        await g.close()


async def test_u5_keid_registration_revokes_a_provisioned_client_of_the_same_identity(both: Both) -> None:
    provisioned_id, provisioned_km = f"{'ab' * 16}@{MAF}", SecretKey(bytes(range(7, 39)))
    both.store.register_client(ProvisionedClient(provisioned_id, provisioned_km, ENROLEE_ID))  # as maf clients add
    enrolment = await both.enrol()  # the MEF enrolee KPMID has the EnroleeID ENROLEE_ID too
    try:
        async with both.client(str(enrolment.keid), enrolment.credential(21, MAF)) as a:
            await a.register()
    except (HandshakeFailed, MAFError):
        pass  # refusing the colliding registration is a fix too
    record = both.store.get_client(provisioned_id)
    assert record is not None and record.status == "active", "the provisioned client was revoked by an Enrolee"
