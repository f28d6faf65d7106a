"""The MAF's KeID Client Registration asks the MEF again (D210), replaces only KeID-assigned KmIDs (D211) and
remembers MEF refusals (D212): a real MAF over loopback, its MEF a real TLS-PSK server (the MEF's own TLS context)
that answers ``fetchCredentials`` as each test scripts it, so the answer can change between handshake and
registration."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from m2msec.asgi import serve
from m2msec.errors import HandshakeFailed, MAFError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.maf.config import MAFConfig
from m2msec.maf.enrolment import KEID_ASSIGNED_LABEL, NEGATIVE_CACHE_TTL, RemoteKm
from m2msec.maf.server import RunningMAF, running_maf
from m2msec.mef.config import MEFConfig
from m2msec.mef.server import mef_context
from m2msec.store import KeyStore, open_store
from m2msec.store import MAFClient as ProvisionedClient

from .test_mef_maf import psk_file
from .world import ENROLEE_ID, MAF, MEF_FQDN, NOW, SP, TARGET_PSKS, Clock

KEY = SecretKey(bytes(range(60, 92)))
KEID = f"{'5a' * 16}@{MEF_FQDN}"


def granted(key: SecretKey = KEY, enrolee: str = ENROLEE_ID) -> tuple[int, dict[str, object]]:
    return 200, {"status": True, "credential": base64.b64encode(key.reveal()).decode(), "enroleeID": enrolee,
                 "lifetime": time.strftime("%Y%m%dT%H%M%S", time.gmtime(int(NOW + 3600)))}


def refused(status: int, name: str) -> tuple[int, dict[str, object]]:
    return status, {"type": f"urn:m2msec:mef:{name}", "title": "refused", "status": status}


@dataclass
class ScriptedMEF:
    answer: tuple[int, dict[str, object]] = field(default_factory=granted)
    asked: list[str] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.asked.append(scope["path"])
        status, obj = self.answer
        body = json.dumps(obj).encode()
        kind = b"application/json" if status == 200 else b"application/problem+json"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Setup:
    mef: ScriptedMEF
    maf: RunningMAF
    store: KeyStore
    clock: Clock

    @property
    def remote(self) -> RemoteKm:
        assert self.maf.maf.remote is not None
        return self.maf.maf.remote

    def client(self, identity: str = KEID, key: SecretKey = KEY) -> MAFClient:
        creds = MAFCredentials(MAF, kmid=identity, km=key, mef_fqdn=MEF_FQDN)
        return MAFClient("127.0.0.1", self.maf.port, creds, clock=self.clock)

    def clients(self) -> list[str]:
        return self.store.ids("maf-client")


async def _maf_target(identity: str) -> PSKEntry | None:
    return PSKEntry(identity, TARGET_PSKS[MAF], entity=None) if identity == MAF else None


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    scripted, clock = ScriptedMEF(), Clock()
    mef_config = MEFConfig(listen="127.0.0.1:0", mef_fqdn=MEF_FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/unused.db")
    server = await serve(scripted, mef_context(mef_config), "127.0.0.1", 0, psk_resolver=_maf_target, lifespan="off")
    config = MAFConfig(listen="127.0.0.1:0", maf_fqdn=MAF, sp_id=SP, store=f"sqlite://{tmp_path}/maf.db",
                       mef=f"127.0.0.1:{server.port}", mef_fqdn=MEF_FQDN,
                       mef_psk_file=psk_file(tmp_path / "maf.psk", TARGET_PSKS[MAF]))
    store = open_store(config.store)
    try:
        async with running_maf(config, store=store, clock=clock) as maf:
            yield Setup(scripted, maf, store, clock)
    finally:
        store.close()
        server.close()
        await server.wait_closed()


async def _register_after(setup: Setup, answer: tuple[int, dict[str, object]]) -> MAFError:
    """A KeID handshake the MEF grants, then the MEF answers ``answer`` to the registration's fetch."""
    async with setup.client() as a:
        with pytest.raises(MAFError):  # runs the KeID handshake (403 kmid-required): the MEF granted Km
            await a.configuration("0")
        assert len(setup.mef.asked) == 1
        setup.mef.answer = answer
        with pytest.raises(MAFError) as err:
            await a.register()
    return err.value


async def test_registration_asks_the_mef_again_and_assigns_a_marked_kmid(setup: Setup) -> None:
    async with setup.client() as a:
        kmid = (await a.register()).assigned_symm_key_id
    assert kmid is not None and len(setup.mef.asked) == 2  # the handshake's fetch and the registration's
    assert setup.remote.fetches == 1 and setup.remote.rechecks == 1
    record = setup.store.get_client(kmid)
    assert record is not None and record.labels == (KEID_ASSIGNED_LABEL,) and record.status == "active"


@pytest.mark.parametrize("answer", [granted(SecretKey(bytes(range(1, 33)))),  # another Km
                                    granted(enrolee="//sp.example.com/in-cse/CAE2"),  # another EnroleeID
                                    refused(403, "enrolee-revoked"), refused(404, "unknown-keid"),
                                    refused(410, "ke-expired")])
async def test_a_changed_or_refused_answer_at_registration_creates_nothing(
        setup: Setup, answer: tuple[int, dict[str, object]]) -> None:
    err = await _register_after(setup, answer)
    assert (err.status, err.problem) == (403, "enrolee-refused")
    assert setup.clients() == []


async def test_a_mef_outage_at_registration_is_503_and_not_remembered(setup: Setup) -> None:
    err = await _register_after(setup, refused(503, "storage-unavailable"))
    assert (err.status, err.problem) == (503, "mef-unavailable") and setup.clients() == []
    setup.mef.answer = granted()
    async with setup.client() as a:
        assert (await a.register()).assigned_symm_key_id is not None


async def test_a_refusal_is_remembered_for_the_negative_cache_ttl_only(setup: Setup) -> None:
    made_up = f"{secrets.token_hex(16)}@{MEF_FQDN}"
    setup.mef.answer = refused(404, "unknown-keid")
    for _ in range(3):
        with pytest.raises(HandshakeFailed):
            async with setup.client(made_up) as a:
                await a.register()
    assert len(setup.mef.asked) == 1
    setup.clock.now += NEGATIVE_CACHE_TTL
    with pytest.raises(HandshakeFailed):
        async with setup.client(made_up) as a:
            await a.register()
    assert len(setup.mef.asked) == 2


async def test_a_refusal_at_registration_also_fails_the_next_handshake_without_a_fetch(setup: Setup) -> None:
    await _register_after(setup, refused(403, "enrolee-revoked"))
    asked = len(setup.mef.asked)
    with pytest.raises(HandshakeFailed):  # the cached Km was dropped and the refusal is remembered
        async with setup.client() as a:
            await a.register()
    assert len(setup.mef.asked) == asked


@pytest.mark.parametrize("spelling", ["/in-cse/CAE1", "//SP.Example.com/in-cse/CAE1", ENROLEE_ID])
async def test_an_enrolee_id_of_a_provisioned_client_is_refused_in_any_spelling(setup: Setup, spelling: str) -> None:
    provisioned = f"{'cd' * 16}@{MAF}"
    setup.store.register_client(ProvisionedClient(provisioned, SecretKey(bytes(range(9, 41))), spelling))
    err = await _register_after(setup, granted())
    assert (err.status, err.problem) == (403, "enrolee-id-provisioned")
    record = setup.store.get_client(provisioned)
    assert record is not None and record.status == "active" and setup.clients() == [provisioned]


async def test_a_revoked_provisioned_client_neither_blocks_nor_is_replaced(setup: Setup) -> None:
    provisioned = f"{'ef' * 16}@{MAF}"
    setup.store.register_client(ProvisionedClient(provisioned, SecretKey(bytes(range(9, 41))), "/in-cse/CAE1",
                                                  status="revoked"))
    async with setup.client() as a:
        kmid = (await a.register()).assigned_symm_key_id
    async with setup.client() as b:
        again = (await b.register()).assigned_symm_key_id
    assert kmid and again and sorted(setup.clients()) == sorted([provisioned, again])
