"""The MAF on its two stores: two instances sharing one PostgreSQL, and `kill -9` during a burst of Key
Registrations losing no acknowledged key (SQLite and PostgreSQL), with `m2msec maf serve` as a real process."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import sys
from pathlib import Path

import pytest

from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import MASTER_KEY_ENV
from m2msec.maf.config import MAFConfig
from m2msec.maf.server import running_maf
from m2msec.saef import ANY_ENTITY, EstablishedSA, PSKCredentials, establish_sa
from m2msec.store import MAFClient, open_store

from .raw_wire import FQDN, call, later

SP = "sp.example.com"
KM_A, KM_B = SecretKey(bytes(range(32))), SecretKey(bytes(range(1, 33)))
KMID_A, KMID_B = f"cae1@{FQDN}", f"mn-gw@{FQDN}"


async def connect(port: int, kmid: str, km: SecretKey) -> EstablishedSA:
    sa = await establish_sa("127.0.0.1", port, PSKCredentials(kmid, km, peer_entity=ANY_ENTITY))
    status, _, body = await call(sa, "POST", "/maf/v1/registrations",
                              {"mafFQDN": FQDN, "expirationTime": later(), "adminFQDN": FQDN})
    assert status == 201, body
    return sa


def provision(url: str, master: SecretKey) -> None:
    with open_store(url, master) as store:
        store.register_client(MAFClient(KMID_A, KM_A, "/mn-cse-123456/CAE1"))
        store.register_client(MAFClient(KMID_B, KM_B, "/mn-cse-123456"))


async def test_two_maf_instances_share_one_postgresql(postgres_url: str, tmp_path: Path) -> None:
    master = SecretKey.generate(32)
    key_file = tmp_path / "master.key"
    key_file.write_text(master.reveal().hex())
    key_file.chmod(0o600)
    provision(postgres_url, master)
    base = dict(maf_fqdn=FQDN, sp_id=SP, store=postgres_url, master_key_file=str(key_file))
    async with running_maf(MAFConfig(listen="127.0.0.1:0", **base)) as one, \
            running_maf(MAFConfig(listen="127.0.0.1:0", **base)) as two:
        a = await connect(one.port, KMID_A, KM_A)
        b = await connect(two.port, KMID_B, KM_B)  # B registered at the other instance
        try:
            ids = []
            for _ in range(20):  # supplied keys: ids drawn by either instance never collide (D71)
                kc = secrets.token_bytes(32)
                status, _, body = await call(a, "POST", "/maf/v1/keys", {
                    "mafFQDN": FQDN, "expirationTime": later(600), "adminFQDN": FQDN, "SUID": 32,
                    "targetIDs": ["/mn-cse-123456"], "keyValue": base64.b64encode(kc).decode()})
                assert status == 201 and isinstance(body, dict), body
                ids.append((body["relativeKeyID"], kc))
            for rkid, kc in ids:
                status, _, got = await call(b, "GET", f"/maf/v1/keys/{rkid}")
                assert status == 200 and isinstance(got, dict) and base64.b64decode(got["keyValue"]) == kc
            assert len({rkid for rkid, _ in ids}) == len(ids)
        finally:
            await a.close()
            await b.close()


BURST = 400


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_kill_9_during_a_burst_of_registrations_loses_no_acknowledged_key(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    master = SecretKey.generate(32)
    url = f"sqlite://{tmp_path}/maf.db" if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    provision(url, master)
    config = tmp_path / "maf.toml"
    config.write_text(f'listen = "127.0.0.1:0"\nmaf_fqdn = "{FQDN}"\nsp_id = "{SP}"\nstore = "{url}"\n')
    env = dict(os.environ, **{MASTER_KEY_ENV: master.reveal().hex()})
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "m2msec.cli.main", "maf", "--config",
                                                str(config), "serve", env=env, stderr=asyncio.subprocess.PIPE)
    acknowledged: list[tuple[str, bytes]] = []
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        sa = await connect(port, KMID_A, KM_A)

        async def burst() -> None:
            for _ in range(BURST):
                kc = secrets.token_bytes(32)
                status, _, body = await call(sa, "POST", "/maf/v1/keys", {
                    "mafFQDN": FQDN, "expirationTime": later(600), "adminFQDN": FQDN, "SUID": 32,
                    "targetIDs": ["/mn-cse-123456"], "keyValue": base64.b64encode(kc).decode()})
                assert status == 201 and isinstance(body, dict)
                acknowledged.append((body["relativeKeyID"], kc))

        task = asyncio.create_task(burst())
        while len(acknowledged) < 50 and not task.done():
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        with pytest.raises(Exception):  # noqa: B017 - the connection dies mid-request in any of several ways
            await asyncio.wait_for(task, 30)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert 50 <= len(acknowledged) < BURST
    with open_store(url, master) as store:
        for rkid, kc in acknowledged:
            key = store.get_key(rkid)
            assert key is not None and key.kc == SecretKey(kc), rkid
