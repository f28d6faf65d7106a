"""A real MEF on loopback over a real SQLite store, provisioned with one PSK enrolee and three PSK targets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from m2msec import http1
from m2msec.keys.secret import SecretKey
from m2msec.mef.client import MEFCredentials
from m2msec.mef.config import MEFConfig
from m2msec.mef.procedures import EnrolmentTarget, add_enrolee, add_target
from m2msec.mef.server import RunningMEF, running_mef
from m2msec.saef import EstablishedSA
from m2msec.store import KeyStore, open_store

SP = "sp.example.com"
MEF_FQDN = "mef.sp.example.com"
GW, MAF, OTHER = "in-cse.sp.example.com", "maf.sp.example.com", "other-cse.sp.example.com"
KPMID, KPM = "kpm-cae1", SecretKey(bytes(range(100, 132)))
ENROLEE_ID = "//sp.example.com/in-cse/CAE1"
TARGET_PSKS = {GW: SecretKey(bytes(range(40, 72))), MAF: SecretKey(bytes(range(140, 172))),
               OTHER: SecretKey(bytes(range(200, 232)))}
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    running: RunningMEF
    store: KeyStore
    clock: Clock

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def target(self, target_id: str) -> MEFCredentials:
        return MEFCredentials(target_id, TARGET_PSKS[target_id])


def provision(store: KeyStore) -> None:
    add_enrolee(store, KPMID, enrolee_id=ENROLEE_ID, kpm=KPM, lifetime=3600,
                targets=[EnrolmentTarget(GW, (22,)), EnrolmentTarget(MAF, (21,))])
    add_target(store, GW, "cse", TARGET_PSKS[GW])
    add_target(store, MAF, "maf", TARGET_PSKS[MAF])
    add_target(store, OTHER, "cse", TARGET_PSKS[OTHER])


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = Clock()
    config = MEFConfig(listen="127.0.0.1:0", mef_fqdn=MEF_FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/mef.db",
                       remote_management_uri="https://dm.sp.example.com/lwm2m")
    store = open_store(config.store, clock=clock)
    provision(store)
    try:
        async with running_mef(config, store=store, clock=clock) as running:
            yield World(running, store, clock)
    finally:
        store.close()


async def call(sa: EstablishedSA, method: str, target: str, body: object = None,
               headers: list[tuple[str, str]] | None = None) -> tuple[int, Any, http1.Message]:
    data = b"" if body is None else json.dumps(body).encode()
    head = [("Host", MEF_FQDN), *(headers or [])]
    if method == "POST":
        head += [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    resp = await sa.request(http1.Message(head, data, method=method, target=target))
    return resp.status, json.loads(resp.body) if resp.body else None, resp
