"""Provisioned Symmetric Key SAEF, Entity A side (TS-0003 §8.2.2.1; seeds 001, 002, 004).

Credential Configuration gives Entity A (KpsaID, Kpsa); Association Configuration gives it IdB;
the Association Security Handshake is a TLS-PSK handshake with ``psk_identity`` = KpsaID and
``psk`` = Kpsa using the §10.2.2 suites; afterwards Entity A associates the security context with
IdB. :func:`establish_sa` does exactly that and returns an :class:`EstablishedSA` that carries
oneM2M HTTP requests (TS-0009) and exposes the RFC 5705 exporter (TS-0003 §10.3.1).

IdB is required (:mod:`m2msec.idb`, docs/decisions.md D23): without one, :func:`establish_sa` refuses
before connecting, unless ``peer_entity=ANY_ENTITY`` says explicitly that any Entity B will do.

MAF-based SAEF (§8.2.2.3): :func:`establish_maf_sa` registers Kc at the MAF over Entity A's MAF Handshake
(:class:`m2msec.maf.client.MAFClient`: SUID 32, targetIDs = [IdB]), then runs TLS-PSK with Entity B with
``psk_identity = <RelativeKeyID>@<MAF-FQDN>`` and ``psk = Kc``.

Entity B's side is :mod:`m2msec.gateway` (``--maf``: :mod:`m2msec.gateway.maf_resolver`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import h11

from m2msec import http1
from m2msec.errors import ConfigurationError, TransportError
from m2msec.idb import ANY_ENTITY, AnyEntity, check_peer_entity, require_idb
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import (
    DEFAULT_CLIENT_PROFILES,
    CertificateConfig,
    ClientConfig,
    SessionInfo,
    TLSConnection,
    TLSContext,
)
from m2msec.tls.profiles import ECDHE_ECDSA, CipherProfile
from m2msec.transport.tls import open_connection

if TYPE_CHECKING:
    from m2msec.maf.client import MAFClient, RegisteredKey

__all__ = [
    "ANY_ENTITY",
    "DEFAULT_KC_LIFETIME",
    "EXPORTER_CONNECTION_LABEL",
    "CertificateCredentials",
    "EstablishedSA",
    "PSKCredentials",
    "check_peer_entity",
    "establish_maf_sa",
    "establish_sa",
]

#: TS-0003 §10.3.1: M2M Secure Connection Key export label (48 bytes: KcID = first 16, Kc = last 32)
EXPORTER_CONNECTION_LABEL = "EXPORTER-oneM2M-Connection"
#: seconds of validity Entity A asks for a Kc it registers at the MAF (MAF-based SAEF); docs/decisions.md D91
DEFAULT_KC_LIFETIME: Final = 3600.0


@dataclass(frozen=True)
class PSKCredentials:
    """What Credential and Association Configuration give Entity A."""

    kpsa_id: str
    kpsa: SecretKey = field(repr=False)
    #: IdB, Entity B's CSE-ID (e.g. "mn-cse-123456" in TR-0038 §7.1.2): required, or ANY_ENTITY (D23)
    peer_entity: str | AnyEntity | None = None
    profiles: tuple[CipherProfile, ...] = DEFAULT_CLIENT_PROFILES

    def client_config(self, server_name: str | None = None) -> ClientConfig:
        return ClientConfig(
            psk_identity=self.kpsa_id,
            psk=self.kpsa,
            profiles=self.profiles,
            peer_entity=self.peer_entity if isinstance(self.peer_entity, str) else None,
            server_name=server_name,
        )


@dataclass(frozen=True)
class CertificateCredentials:
    """Certificate-Based SAEF, Entity A (TS-0003 §8.2.2.2): own chain and key, B's trust anchors, IdB."""

    chain_pem: bytes
    private_key_pem: bytes = field(repr=False)
    trust_anchors_pem: bytes = b""
    #: IdB, required (or ANY_ENTITY, D23): B's certificate must be a CSE-ID certificate for it
    peer_entity: str | AnyEntity | None = None
    crl_pem: bytes | None = None
    profiles: tuple[CipherProfile, ...] = (ECDHE_ECDSA,)

    def client_config(self, server_name: str | None = None) -> ClientConfig:
        cert = CertificateConfig(self.chain_pem, self.private_key_pem, self.trust_anchors_pem or None, self.crl_pem)
        peer = self.peer_entity if isinstance(self.peer_entity, str) else None
        return ClientConfig(None, None, profiles=self.profiles, peer_entity=peer,
                            server_name=server_name, certificate=cert)


class EstablishedSA:
    """An established security association, Entity A side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: SessionInfo) -> None:
        self.reader = reader
        self.writer = writer
        self.session = session
        self._http = h11.Connection(h11.CLIENT)
        #: MAF-based SAEF: the Key Registration the SA uses (RelativeKeyID, expiry, targetIDs; Kc redacted)
        self.maf_key: RegisteredKey | None = None

    def __repr__(self) -> str:
        return f"<EstablishedSA {self.session.psk_identity!r} -> {self.session.entity!r} {self.session.cipher}>"

    @property
    def tls(self) -> TLSConnection:
        conn: TLSConnection = self.writer.get_extra_info("tls_connection")
        return conn

    def export_keying_material(self, label: str, length: int, context: bytes | None = None) -> SecretKey:
        return self.tls.export_keying_material(label, length, context)

    async def request(self, msg: http1.Message, *, timeout: float = 30.0) -> http1.Message:
        """Send one HTTP request inside the SA and return the response (keep-alive is honoured)."""
        async with asyncio.timeout(timeout):
            if self._http.our_state is h11.DONE and self._http.their_state is h11.DONE:
                self._http.start_next_cycle()
            await http1.send_message(self._http, self.writer, msg)
            resp = await http1.read_message(self._http, self.reader)
        if resp is None:
            raise http1.HTTPError("connection closed before a response")
        return resp

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def establish_sa(
    host: str,
    port: int,
    credentials: PSKCredentials | CertificateCredentials,
    *,
    server_name: str | None = None,
    timeout: float = 10.0,
) -> EstablishedSA:
    """Run the Association Security Handshake with Entity B at ``host:port``.

    Raises:
        ConfigurationError: no IdB in ``credentials.peer_entity`` (and not ANY_ENTITY); nothing is sent.
        HandshakeFailed: Entity B refused the identity or the key (or we refused B: not IdB).
        HandshakeTimeout: no handshake within ``timeout`` seconds.
        TransportError: no TCP connection.
    """
    require_idb(credentials.peer_entity)
    context = TLSContext.client(credentials.client_config(server_name))
    try:
        # the transport checks IdB (pinned to our own SP when SP-relative, D39) before returning the session
        reader, writer, session = await open_connection(host, port, context, handshake_timeout=timeout,
                                                        peer_entity=credentials.peer_entity)
    except OSError as exc:
        raise TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    return EstablishedSA(reader, writer, session)


async def establish_maf_sa(
    host: str,
    port: int,
    *,
    maf: MAFClient,
    peer_entity: str,
    lifetime: float = DEFAULT_KC_LIFETIME,
    profiles: tuple[CipherProfile, ...] = DEFAULT_CLIENT_PROFILES,
    server_name: str | None = None,
    timeout: float = 10.0,
) -> EstablishedSA:
    """MAF-based SAEF, Entity A (TS-0003 §8.2.2.3): Key Registration at ``maf`` (registering the client first if
    needed; SUID 32, targetIDs = [IdB], ``lifetime`` seconds), then TLS-PSK with Entity B at ``host:port``
    with ``psk_identity = <RelativeKeyID>@<MAF-FQDN>`` and ``psk = Kc``.

    Raises:
        ConfigurationError: no IdB (``peer_entity``); nothing is sent.
        MAFError: the MAF refused the registration (e.g. B is not a valid target), or answered off contract.
        TransportError: the MAF or Entity B cannot be reached, or the MAF did not answer in time.
        HandshakeFailed, HandshakeTimeout: the MAF Handshake or the handshake with Entity B failed.
    """
    from m2msec.maf.client_wire import SUID_SAEF

    idb = require_idb(peer_entity)
    if idb is None:
        raise ConfigurationError("the MAF-based SAEF needs IdB: the Kc is registered for it")
    registered = await maf.register_key(suid=SUID_SAEF, target_ids=[idb], lifetime=lifetime)
    assert registered.kc is not None
    credentials = PSKCredentials(f"{registered.relative_key_id}@{maf.maf_fqdn}", registered.kc, peer_entity=idb,
                                 profiles=profiles)
    sa = await establish_sa(host, port, credentials, server_name=server_name, timeout=timeout)
    sa.maf_key = registered
    return sa
