"""Lifetimes (§10.7), an unreachable or silent MEF, and the target's kept connection across a MEF restart."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from m2msec.errors import ConfigurationError, TransportError
from m2msec.mef.client import MEFCredentials, MEFFetcher, check_distinct_fqdns, enrol, keid_of
from m2msec.mef.config import MEFConfig
from m2msec.mef.procedures import MEF
from m2msec.mef.server import running_mef
from m2msec.mef.wire import EnrolmentRequest
from m2msec.store import AsyncKeyStore, open_store

from .world import GW, KPM, KPMID, MEF_FQDN, SP, TARGET_PSKS, Clock, provision


async def test_a_fetched_credential_never_outlives_ke_nor_the_cap(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(f"sqlite://{tmp_path}/mef.db", clock=clock)
    provision(store)  # the enrolee's Enrolment Expiry is 3600 s
    try:
        mef = MEF(AsyncKeyStore(store), MEF_FQDN, max_credential_lifetime=600, clock=clock)
        from m2msec.keys.secret import SecretKey

        out = SecretKey(bytes(range(48)))
        answer = await mef.enrol(KPMID, "psk", EnrolmentRequest(), lambda: out)
        assert answer.keID == bytes(range(16)).hex() + "@" + MEF_FQDN
        keid = answer.keID
        first = await mef.fetch(GW, "psk", keid, "22")
        assert first.expires == clock.now + 600  # the cap
        clock.now += 3300
        late = await mef.fetch(GW, "psk", keid, "22")
        assert late.expires == clock.now + 300  # the Ke's expiry, sooner than the cap
        assert late.credential == first.credential
    finally:
        store.close()


async def test_no_mef_and_a_silent_mef_fail_within_the_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(TransportError):
        await enrol(f"127.0.0.1:{closed_port}", MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN, timeout=1)

    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accepts, reads the ClientHello, never answers
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        async with MEFFetcher(f"127.0.0.1:{port}", MEFCredentials(GW, TARGET_PSKS[GW]), mef_fqdn=MEF_FQDN,
                              timeout=0.5) as fetcher:
            with pytest.raises(TransportError):
                await fetcher.fetch(f"{'00' * 16}@{MEF_FQDN}", 22)
        assert time.monotonic() - started < 5
    finally:
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_the_fetcher_survives_a_mef_restart(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = MEFConfig(listen=f"127.0.0.1:{port}", mef_fqdn=MEF_FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/mef.db")
    store = open_store(config.store)
    provision(store)
    fetcher = MEFFetcher(f"127.0.0.1:{port}", MEFCredentials(GW, TARGET_PSKS[GW]), mef_fqdn=MEF_FQDN)
    try:
        async with running_mef(config, store=store):
            got = await enrol(f"127.0.0.1:{port}", MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN)
            first = await fetcher.fetch(got.keid, 22)
        async with running_mef(config, store=store):  # the kept connection died with the first MEF
            again = await fetcher.fetch(got.keid, 22)
        assert again.credential == first.credential
    finally:
        await fetcher.close()
        store.close()


def test_keid_of_recognises_only_this_mef_s_keids() -> None:
    relative = bytes(range(16))
    assert keid_of(relative.hex().upper() + "@" + MEF_FQDN, MEF_FQDN) is not None
    assert keid_of(relative.hex() + "@maf.sp.example.com", MEF_FQDN) is None
    assert keid_of("Light-1@in.provider.com", MEF_FQDN) is None
    assert keid_of("", MEF_FQDN) is None


def test_a_mef_fqdn_must_not_be_a_maf_fqdn() -> None:
    check_distinct_fqdns(MEF_FQDN, ["maf.sp.example.com"])
    with pytest.raises(ConfigurationError):
        check_distinct_fqdns(MEF_FQDN, ["maf.sp.example.com", MEF_FQDN.upper() + "."])


def test_config_is_checked() -> None:
    assert MEFConfig().listen == "127.0.0.1:8446" and MEFConfig().mef_fqdn == "mef.m2msec.localhost"
    for bad in ({"mef_fqdn": "not a host"}, {"handshake_timeout": 0}, {"certificate": "x.pem"},
                {"client_crl": "c.pem"}):
        with pytest.raises(ConfigurationError):
            MEFConfig(**bad)  # type: ignore[arg-type]
