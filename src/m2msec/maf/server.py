"""Running the MAF: the store, the MAF Handshake's TLS context, the ASGI app over :mod:`m2msec.asgi`.

PSK MAF Handshakes resolve the KmID through the engine's asynchronous PSK path (the store may be a PostgreSQL
server on the network): a revoked, expired or unknown KmID, or a KmID of another MAF-FQDN, fails the handshake
as an unknown identity. Certificate handshakes need the MAF's FQDN certificate and the client CAs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from m2msec.cli.common import parse_hostport, read_key
from m2msec.errors import IdentifierError, StorageError
from m2msec.keys.table import PSKEntry
from m2msec.maf.app import create_app
from m2msec.maf.config import MAFConfig
from m2msec.maf.enrolment import RemoteKm
from m2msec.maf.procedures import MAF, MAFPolicy, canonical_kmid
from m2msec.mef.client import MEFCredentials, MEFFetcher, check_distinct_fqdns
from m2msec.service_server import (  # MAX_CONNECTIONS, connection_limiter, server_context: re-exported
    MAX_CONNECTIONS,
    connection_limiter,
    open_service_store,
    purge_every,
    read_file,
    server_context,
)
from m2msec.store import AsyncKeyStore, KeyStore, MAFClient
from m2msec.transport.psk_resolver import MISS, ProbeAnswer, PSKResolver

__all__ = ["MAX_CONNECTIONS", "RunningMAF", "connection_limiter", "kmid_resolver", "mef_fetcher", "open_maf_store",
           "running_maf", "server_context"]

log = logging.getLogger("m2msec.maf")

def open_maf_store(config: MAFConfig, **options: object) -> KeyStore:
    return open_service_store(config, **options)


class _KmIDResolver:
    """The MAF Handshake's ``psk_resolver``: KmID → Km of an active client of this MAF-FQDN. A client record the
    MAF holds in its cache answers at once (``lookup_now``, no task); otherwise the store is read."""

    def __init__(self, maf: MAF) -> None:
        self.maf = maf
        self.clock = maf.clock  # the MAF's injected clock decides expiry for handshakes and requests alike

    def _kmid(self, identity: str) -> str | None:
        try:
            kmid = canonical_kmid(identity)
        except IdentifierError:
            return None
        return kmid if kmid.rpartition("@")[2] == self.maf.policy.maf_fqdn else None

    def _entry(self, identity: str, client: MAFClient | None) -> PSKEntry | None:
        if client is None or client.status != "active" or client.expired(self.clock()):
            return None
        return PSKEntry(identity, client.km, entity=None)

    def lookup_now(self, identity: str) -> ProbeAnswer:
        remote = self.maf.remote
        keid = remote.keid(identity) if remote is not None else None
        if remote is not None and keid is not None:  # a KeID session: Km from the MEF (docs/maf.md, D194)
            fetched = remote.cached(keid)
            return MISS if fetched is None else PSKEntry(identity, fetched.credential, entity=None)
        kmid = self._kmid(identity)
        if kmid is None:
            return None
        hit, client = self.maf.cached_client(kmid)
        return self._entry(identity, client) if hit else MISS

    async def __call__(self, identity: str) -> PSKEntry | None:
        remote = self.maf.remote
        keid = remote.keid(identity) if remote is not None else None
        if remote is not None and keid is not None:
            fetched = await remote.get(keid)
            return None if fetched is None else PSKEntry(identity, fetched.credential, entity=None)
        kmid = self._kmid(identity)
        if kmid is None:
            return None
        try:
            client = await self.maf.client(kmid)
        except StorageError:
            log.error("key store error looking up a MAF client; handshake refused")
            return None
        return self._entry(identity, client)


def kmid_resolver(maf: MAF) -> PSKResolver:
    """The MAF Handshake's ``psk_resolver`` (:class:`_KmIDResolver`)."""
    return _KmIDResolver(maf)


def mef_fetcher(config: MAFConfig, clock: Callable[[], float]) -> MEFFetcher | None:
    """The MAF's client of its MEF (docs/maf.md "Enrolees of a MEF"), None without ``mef``: the MAF authenticates
    as the Enrolment Target ``mef_psk_identity`` (default: its MAF-FQDN) with ``mef_psk_file``, or with its own
    FQDN certificate and ``mef_trust_anchors``. D189: the MEF-FQDN must not be the MAF-FQDN."""
    if not config.mef:
        return None
    check_distinct_fqdns(config.mef_fqdn, [config.maf_fqdn])
    if config.mef_psk_file:
        credentials = MEFCredentials(config.mef_psk_identity or config.maf_fqdn,
                                     read_key(config.mef_psk_file, None))
    else:
        credentials = MEFCredentials(chain_pem=read_file(config.certificate, "certificate"),
                                     private_key_pem=read_file(config.private_key, "private key"),
                                     trust_anchors_pem=read_file(config.mef_trust_anchors, "MEF trust anchors"))
    return MEFFetcher(config.mef, credentials, mef_fqdn=config.mef_fqdn, timeout=config.mef_timeout, clock=clock)


@dataclass
class RunningMAF:
    maf: MAF
    host: str
    port: int
    server: object


@contextlib.asynccontextmanager
async def running_maf(config: MAFConfig, *, store: KeyStore | None = None,
                      clock: Callable[[], float] = time.time) -> AsyncIterator[RunningMAF]:
    """Start the MAF for ``config`` (the store opened from it unless given); stop it on exit."""
    from m2msec.asgi import serve

    host, port = parse_hostport(config.listen)
    own_store = store is None
    store = store if store is not None else open_maf_store(config, clock=clock)
    try:
        policy = MAFPolicy(config.maf_fqdn, config.sp_id, admin_fqdn=config.admin_fqdn or None,
                           http_port=port or None,
                           max_key_lifetime=config.max_key_lifetime,
                           max_registration_lifetime=config.max_registration_lifetime)
        fetcher = mef_fetcher(config, clock)
        remote = None if fetcher is None else RemoteKm(fetcher, config.mef_fqdn, clock=clock)
        maf = MAF(AsyncKeyStore(store), policy, clock=clock, remote=remote)
        context = server_context(config)
        server = await serve(create_app(maf), context, host, port, psk_resolver=kmid_resolver(maf),
                             handshake_timeout=config.handshake_timeout, limiter=connection_limiter())
        if policy.http_port is None:  # listening on port 0: announce the port the system chose
            maf.policy = dataclasses.replace(policy, http_port=server.port)
        purge = asyncio.create_task(purge_every(maf.store, config.purge_interval, log, "expired MAF records"))
        try:
            yield RunningMAF(maf, host, server.port, server)
        finally:
            purge.cancel()
            server.close()
            await server.wait_closed()
            if remote is not None:
                await remote.close()
    finally:
        if own_store:
            store.close()
