"""What running the MAF and running the MEF share (:mod:`m2msec.maf.server`, :mod:`m2msec.mef.server`): the caps on
their connections, the server TLS context of their handshakes, their store and its purge loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from m2msec.errors import ConfigurationError, StorageError
from m2msec.keys.table import check_file_permissions
from m2msec.service_config import ServiceConfig
from m2msec.store import AsyncKeyStore, KeyStore, open_store
from m2msec.tls.engine import CertificateConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, parse_profiles
from m2msec.transport.limits import (
    DEFAULT_MAX_CONNECTIONS_PER_SA,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
    ConnectionLimiter,
)

__all__ = ["MAX_CONNECTIONS", "connection_limiter", "open_service_store", "purge_every", "read_file",
           "server_context"]

#: Connections (in their handshake or established) the MAF (or the MEF) keeps open at once; one more is refused at
#: once. Under it, the gateway's per-source caps (D31, D47): handshakes in progress and connections per source
#: address, established connections per client credential. D60.
MAX_CONNECTIONS = 4096


def connection_limiter() -> ConnectionLimiter:
    """The caps on a service's connections (:data:`MAX_CONNECTIONS` and the gateway's per-source defaults)."""
    return ConnectionLimiter(MAX_CONNECTIONS, per_source_handshakes=DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
                             per_source_connections=DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
                             per_sa=DEFAULT_MAX_CONNECTIONS_PER_SA)


def read_file(path: str, what: str) -> bytes:
    """The bytes of a configured file. Raises ConfigurationError naming the file and ``what`` it holds."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def server_context(config: ServiceConfig) -> TLSContext:
    """PSK handshakes (async identity lookup) and, with a certificate configured, mutual certificate ones."""
    profiles = parse_profiles(config.profiles)
    if any(p.mutual_certificates for p in profiles):
        raise ConfigurationError("profiles lists PSK profiles only; certificates are enabled by certificate, "
                                 "private_key and client_trust_anchors (TS-0003 §10.2.3 suites, D84)")
    certificate = None
    if config.certificate:
        # the service's private key gets the checks of every other secret file (`m2msec gateway --key`, D13 rules)
        check_file_permissions(Path(config.private_key))
        certificate = CertificateConfig(read_file(config.certificate, "certificate"),
                                        read_file(config.private_key, "private key"),
                                        read_file(config.client_trust_anchors, "client trust anchors"),
                                        read_file(config.client_crl, "client CRLs") if config.client_crl else None)
        profiles = (*profiles, ECDHE_ECDSA)
    return TLSContext.server(ServerConfig(psk_lookup=None, profiles=profiles, certificate=certificate,
                                          async_psk=True))


def open_service_store(config: ServiceConfig, **options: object) -> KeyStore:
    """The store of ``config.store_url`` with its master key file, if one is configured."""
    key_file = config.master_key_file or None
    return open_store(config.store_url, master_key_file=key_file, **options)  # type: ignore[arg-type]


async def purge_every(store: AsyncKeyStore, interval: float, log: logging.Logger, what: str) -> None:
    """Purge expired records every ``interval`` seconds until cancelled; ``what`` names them in the log."""
    while True:
        await asyncio.sleep(interval)
        try:
            count = await store.purge_expired()
        except StorageError:
            log.error("key store error while purging expired records")
            continue
        if count:
            log.info("purged %d %s", count, what)
