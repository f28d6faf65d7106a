"""Running the CCF: the store, its CA and token key, the TLS context of CAPIF-1e/3/4/5, the ASGI app.

One TLS port serves every CAPIF API (TS 33.122 §6.2 to §6.5): TLS 1.2 with ECDHE-ECDSA (the engine's ``ecdhe-ecdsa``
profile: a full handshake with a session ID each time, so AEFPSK has its inputs), the CCF's server certificate issued
by its own CA, and a client certificate asked for but optional: onboarding comes without one (with an onboarding
credential instead); every other operation needs the certificate the CCF issued (checked per operation).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from m2msec.capif.ca import load_or_create_ca
from m2msec.capif.ccf.config import CCFConfig
from m2msec.capif.ccf.context import CCF, CCFPolicy, load_or_create_token_key
from m2msec.capif.ccf.http import create_app
from m2msec.capif.ccf.outbox import relay_outbox
from m2msec.cli.common import parse_hostport
from m2msec.pki import issue
from m2msec.pki.profile import CertificateFlavour, Issued
from m2msec.store import AsyncKeyStore, KeyStore, open_store
from m2msec.tls.engine import CertificateConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA
from m2msec.transport.limits import (
    DEFAULT_MAX_CONNECTIONS_PER_SA,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
    ConnectionLimiter,
)

__all__ = ["MAX_CONNECTIONS", "RunningCCF", "open_ccf_store", "running_ccf", "server_context"]

log = logging.getLogger("m2msec.ccf")

#: connections the CCF keeps open at once (as the MAF, D60)
MAX_CONNECTIONS = 4096


def open_ccf_store(config: CCFConfig, **options: object) -> KeyStore:
    key_file = config.master_key_file or None
    return open_store(config.store_url, master_key_file=key_file, **options)  # type: ignore[arg-type]


def server_certificate(ca: Issued, host: str, now: datetime) -> Issued:
    """The CCF's TLS server certificate for ``host``, from its own CA (made at each start, never stored)."""
    return issue(ca, CertificateFlavour.FQDN, host, now=now, days=30)


def server_context(ca: Issued, server: Issued) -> TLSContext:
    chain = server.certificate_pem()
    key = server.private_key_pem()
    return TLSContext.server(ServerConfig(
        psk_lookup=None, profiles=(ECDHE_ECDSA,), certificate=CertificateConfig(chain, key, ca.certificate_pem()),
        optional_client_certificate=True, capif_client_keys=True))  # D164: the keys D119 certifies


@dataclass
class RunningCCF:
    ccf: CCF
    host: str
    port: int
    server: Any

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate invokers and providers trust the CCF with (``m2msec ccf ca-certificate``)."""
        return self.ccf.ca.certificate_pem()


def open_ccf(store: KeyStore, policy: CCFPolicy, *, clock: Callable[[], float] = time.time,
             new_id: Callable[[], str] | None = None) -> CCF:
    """The CCF over ``store``: its CA and token key are created at the first start and shared by instances."""
    now = datetime.fromtimestamp(clock(), UTC)
    ca = load_or_create_ca(store, policy.ccf_host, now=now)
    token_key = load_or_create_token_key(store)
    extra: dict[str, Any] = {} if new_id is None else {"new_id": new_id}
    return CCF(AsyncKeyStore(store), policy, ca, token_key, clock=clock, **extra)


@contextlib.asynccontextmanager
async def running_ccf(config: CCFConfig, *, store: KeyStore | None = None, clock: Callable[[], float] = time.time,
                      new_id: Callable[[], str] | None = None,
                      validate_responses: bool = False) -> AsyncIterator[RunningCCF]:
    """Start the CCF for ``config`` (the store opened from it unless given); stop it on exit."""
    from m2msec.asgi import serve
    from m2msec.capif.ccf.events import DeliveryPolicy, start_notifier

    host, port = parse_hostport(config.listen)
    own_store = store is None
    store = store if store is not None else open_ccf_store(config, clock=clock)
    try:
        provisional = CCFPolicy(config.ccf_host, config.api_root or f"https://{config.ccf_host}:{port}",
                                access_token_lifetime=config.access_token_lifetime,
                                certificate_days=config.certificate_days,
                                onboarding_audience=config.onboarding_audience or None)
        ccf = open_ccf(store, provisional, clock=clock, new_id=new_id)
        cert = server_certificate(ccf.ca, config.ccf_host, ccf.now())
        limiter = ConnectionLimiter(MAX_CONNECTIONS, per_source_handshakes=DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
                                    per_source_connections=DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
                                    per_sa=DEFAULT_MAX_CONNECTIONS_PER_SA)
        delivery = DeliveryPolicy(invoker_private_destinations=config.invoker_private_destinations)
        async with start_notifier(ccf, delivery) as notifier:
            ccf.events = notifier
            server = await serve(create_app(ccf, validate_responses=validate_responses),
                                 server_context(ccf.ca, cert), host, port,
                                 handshake_timeout=config.handshake_timeout, limiter=limiter)
            if not config.api_root and port == 0:  # announce the port the system chose
                ccf.policy = dataclasses.replace(provisional, api_root=f"https://{config.ccf_host}:{server.port}")
            relay = asyncio.create_task(relay_outbox(ccf), name="ccf-outbox")
            try:
                yield RunningCCF(ccf, host, server.port, server)
            finally:
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)
                server.close()
                await server.wait_closed()
    finally:
        if own_store:
            store.close()
