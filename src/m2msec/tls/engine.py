"""The TLS engine: the public face of :mod:`m2msec.tls`, the only package of m2msec that touches OpenSSL.

This module re-exports the engine's API from the modules that hold it (docs/engine.md has the map):
:mod:`~m2msec.tls._shim` (the raw OpenSSL bindings: the only module that touches them),
:mod:`~m2msec.tls.config`, :mod:`~m2msec.tls.context`, :mod:`~m2msec.tls.connection`,
:mod:`~m2msec.tls.verify` and :mod:`~m2msec.tls.dtls`.

Theory of operation
-------------------
:class:`TLSContext` holds one configured ``SSL_CTX`` (built once from a :class:`ServerConfig` or
:class:`ClientConfig`). :meth:`TLSContext.connection` makes a sans-I/O :class:`TLSConnection` over a
pair of memory BIOs: the caller feeds received bytes with :meth:`TLSConnection.receive_data`, which
returns events (:class:`HandshakeCompleted`, :class:`DataReceived`, :class:`ConnectionClosed`), and
collects bytes to put on the wire with :meth:`TLSConnection.data_to_send`. No sockets, no clock, no
asyncio: adapters (``m2msec.transport``) move the bytes and own the timers.

The same contexts do DTLS 1.2 (:meth:`TLSContext.dtls_server`, :class:`DTLSConnection`: one datagram in,
whole-record datagrams out, stateless cookies, retransmission timers exposed) and certificates
(:class:`CertificateConfig`: own chain and key, trust anchors and CRLs for the peer, TS-0003 §8.2.2.2),
alone or beside PSK on one server.

PSK support comes from a small shim (:mod:`m2msec.tls._shim`) over the PSK bindings that ``cryptography``
ships but pyOpenSSL does not expose (pyca/pyopenssl#704 declined a public API; pyca/cryptography#4084 added the bindings
"to allow for SSL.Context patching"). The shim touches private names, listed in
:data:`PRIVATE_BINDINGS`; :func:`check_bindings` fails loudly when any of them disappears and the
contract test runs it. Versions are pinned in ``pyproject.toml``.

Server side, the PSK callback runs synchronously inside the handshake (OpenSSL has no asynchronous
PSK callback): the lookup must be an in-memory or local-store read. An unknown identity gets a decoy
key (:mod:`m2msec.tls.psk_hiding`, RFC 4279 §2), so the client sees the failure a wrong key causes and
cannot enumerate identities; ``ServerConfig.reveal_unknown_psk_identity`` makes the callback return 0
instead, which OpenSSL turns into an ``unknown_psk_identity`` alert. An exception raised by the lookup is
logged (type only) and treated the same way, so it never escapes as a traceback.

Key material never appears in ``repr``, logs or exception messages: keys are :class:`SecretKey`.
"""

from __future__ import annotations

from m2msec.tls._shim import PRIVATE_BINDINGS, check_bindings, openssl_version
from m2msec.tls.config import (
    DEFAULT_CLIENT_PROFILES,
    DEFAULT_SERVER_PROFILES,
    CertificateConfig,
    ClientConfig,
    PSKLookup,
    ServerConfig,
)
from m2msec.tls.connection import (
    PSK_NOT_ACCEPTED,
    ConnectionClosed,
    ConnectionState,
    DataReceived,
    Event,
    HandshakeCompleted,
    PSKIdentityReceived,
    SessionInfo,
    TLSConnection,
)
from m2msec.tls.context import _FFDHE2048_PEM, TLSContext
from m2msec.tls.dtls import DEFAULT_DTLS_MTU, DTLS1_2_VERSION, DTLSConnection

__all__ = [
    "DEFAULT_CLIENT_PROFILES",
    "DEFAULT_DTLS_MTU",
    "DEFAULT_SERVER_PROFILES",
    "DTLS1_2_VERSION",
    "PRIVATE_BINDINGS",
    "PSK_NOT_ACCEPTED",
    "_FFDHE2048_PEM",
    "CertificateConfig",
    "ClientConfig",
    "ConnectionClosed",
    "ConnectionState",
    "DTLSConnection",
    "DataReceived",
    "Event",
    "HandshakeCompleted",
    "PSKIdentityReceived",
    "PSKLookup",
    "ServerConfig",
    "SessionInfo",
    "TLSConnection",
    "TLSContext",
    "check_bindings",
    "openssl_version",
]
