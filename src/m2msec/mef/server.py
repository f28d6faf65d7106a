"""Running the MEF: the store, the MEF Handshake's TLS context, the ASGI app over :mod:`m2msec.asgi`.

PSK MEF Handshakes (TS-0003 §8.3.2.1 PPSK RSPF, §10.2.2 suites) resolve the identity through the engine's
asynchronous PSK path: an active enrolee's KpmID gives its Kpm, a PSK Enrolment Target's ID its PSK; anything else
(unknown, revoked) fails the handshake as an unknown identity. Certificate MEF Handshakes (§10.2.3 ECDHE-ECDSA)
need the MEF's FQDN certificate and the client trust anchors (as the MAF's, D84).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from m2msec.cli.common import parse_hostport
from m2msec.errors import StorageError
from m2msec.keys.table import PSKEntry
from m2msec.mef.app import create_app, server_problem
from m2msec.mef.config import MEFConfig
from m2msec.mef.procedures import MEF
from m2msec.service_server import connection_limiter, open_service_store, purge_every, server_context
from m2msec.store import AsyncKeyStore, KeyStore
from m2msec.tls.engine import TLSContext
from m2msec.transport.psk_resolver import PSKResolver

__all__ = ["RunningMEF", "mef_context", "open_mef_store", "psk_resolver", "running_mef"]

log = logging.getLogger("m2msec.mef")


def open_mef_store(config: MEFConfig, **options: object) -> KeyStore:
    return open_service_store(config, **options)


class _Resolver:
    """The MEF Handshake's ``psk_resolver``: an active PSK enrolee's KpmID -> Kpm, a PSK target's ID -> its PSK."""

    def __init__(self, mef: MEF) -> None:
        self.mef = mef

    async def __call__(self, identity: str) -> PSKEntry | None:
        try:
            enrolee = await self.mef.enrolee(identity)
            if enrolee is not None:
                if enrolee.status != "active" or enrolee.kpm is None:
                    log.info("MEF Handshake refused: enrolee %s is %s", identity, enrolee.status)
                    return None
                return PSKEntry(identity, enrolee.kpm, description="MEF enrolee (Kpm)")
            target = await self.mef.target(identity)
        except StorageError:
            log.error("key store error looking up a MEF Handshake identity; handshake refused")
            return None
        if target is None or target.psk is None:
            return None
        return PSKEntry(identity, target.psk, description="MEF Enrolment Target")


def psk_resolver(mef: MEF) -> PSKResolver:
    return _Resolver(mef)


def mef_context(config: MEFConfig) -> TLSContext:
    """PSK MEF Handshakes and, with a certificate configured, mutual certificate ones (the MAF's rules)."""
    return server_context(config)


@dataclass
class RunningMEF:
    mef: MEF
    host: str
    port: int
    server: object


@contextlib.asynccontextmanager
async def running_mef(config: MEFConfig, *, store: KeyStore | None = None,
                      clock: Callable[[], float] = time.time) -> AsyncIterator[RunningMEF]:
    """Start the MEF for ``config`` (the store opened from it unless given); stop it on exit."""
    from m2msec.asgi import serve

    host, port = parse_hostport(config.listen)
    own_store = store is None
    store = store if store is not None else open_mef_store(config, clock=clock)
    try:
        mef = MEF(AsyncKeyStore(store), config.mef_fqdn, max_credential_lifetime=config.max_credential_lifetime,
                  remote_management_uri=config.remote_management_uri, clock=clock)
        server = await serve(create_app(mef, sp_id=config.sp_id), mef_context(config), host, port,
                             psk_resolver=psk_resolver(mef), handshake_timeout=config.handshake_timeout,
                             limiter=connection_limiter(), error_body=server_problem)
        purge = asyncio.create_task(purge_every(mef.store, config.purge_interval, log, "expired Enrolment Keys"))
        try:
            yield RunningMEF(mef, host, server.port, server)
        finally:
            purge.cancel()
            server.close()
            await server.wait_closed()
    finally:
        if own_store:
            store.close()
