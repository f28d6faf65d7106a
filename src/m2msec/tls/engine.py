"""The TLS engine: the only module of m2msec that touches OpenSSL.

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

PSK support comes from a small shim over the PSK bindings that ``cryptography`` ships but pyOpenSSL
does not expose (pyca/pyopenssl#704 declined a public API; pyca/cryptography#4084 added the bindings
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

import enum
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL import crypto as _crypto

from m2msec.errors import ConfigurationError, HandshakeFailed, HandshakeTimeout, TLSProtocolError
from m2msec.keys.secret import MAX_PSK_LENGTH, SecretKey
from m2msec.keys.table import PSKEntry
from m2msec.tls.cookies import CookieJar
from m2msec.tls.profiles import ECDHE_PSK, ONEM2M_PSK, CipherProfile
from m2msec.tls.psk_hiding import decoy_psk

__all__ = [
    "DEFAULT_CLIENT_PROFILES",
    "DEFAULT_DTLS_MTU",
    "DEFAULT_SERVER_PROFILES",
    "PRIVATE_BINDINGS",
    "ClientConfig",
    "ConnectionClosed",
    "ConnectionState",
    "DTLSConnection",
    "DataReceived",
    "Event",
    "HandshakeCompleted",
    "PSKLookup",
    "ServerConfig",
    "SessionInfo",
    "TLSConnection",
    "TLSContext",
    "check_bindings",
    "openssl_version",
]

log = logging.getLogger("m2msec.tls")

#: Private names the PSK shim depends on (docs/tls-stack.md gotcha 5). The contract test asserts them.
PRIVATE_BINDINGS: tuple[str, ...] = (
    "OpenSSL._util.lib.SSL_CTX_set_psk_server_callback",
    "OpenSSL._util.lib.SSL_CTX_set_psk_client_callback",
    "OpenSSL._util.lib.SSL_CTX_use_psk_identity_hint",
    "OpenSSL._util.lib.SSL_CTX_set_ciphersuites",
    "OpenSSL._util.lib.SSL_CTX_set_tmp_dh",
    "OpenSSL._util.lib.PEM_read_bio_DHparams",
    "OpenSSL._util.lib.BIO_new_mem_buf",
    "OpenSSL._util.lib.i2d_SSL_SESSION",
    "OpenSSL._util.lib.X509_STORE_new",  # CRL reload: a fresh trust store per CRL update
    "OpenSSL._util.lib.X509_STORE_free",
    "OpenSSL._util.lib.SSL_CTX_set_cert_store",
    "OpenSSL._util.lib.SSL_get_session",
    "OpenSSL._util.lib.SSL_session_reused",  # TLS 1.3: did the server accept our external PSK? (D38)
    "OpenSSL._util.ffi.callback",
    "OpenSSL.SSL.Context._context",
    "OpenSSL.SSL.Connection._ssl",
    "OpenSSL.SSL.Connection._reverse_mapping",
    "OpenSSL.SSL.Connection._from_ssl",
    "OpenSSL.SSL.Connection._raise_ssl_error",
    "OpenSSL._util.lib.BIO_read",
    "OpenSSL._util.lib.SSL_do_handshake",
    "OpenSSL._util.lib.SSL_read",
    "OpenSSL._util.lib.SSL_get_error",
    "OpenSSL._util.lib.SSL_ERROR_WANT_READ",
    "OpenSSL._util.lib.SSL_ERROR_ZERO_RETURN",
    "OpenSSL._util.lib.X509_verify_cert_error_string",
)

#: TS-0003 §10.2.1 says TLS 1.2 "shall be used": the default server offers the §10.2.2 suites (mandatory one
#: first) and forward-secret ECDHE_PSK, TLS 1.2 only. TLS 1.3 (TLS13_PSK) is opt-in (docs/decisions.md D3).
DEFAULT_SERVER_PROFILES: tuple[CipherProfile, ...] = (ONEM2M_PSK, ECDHE_PSK)
#: A oneM2M Entity A offers the §10.2.2 suites over TLS 1.2 (TS-0003 §10.2.1 mandates TLS 1.2).
DEFAULT_CLIENT_PROFILES: tuple[CipherProfile, ...] = (ONEM2M_PSK,)

#: RFC 7919 Appendix A.1 ffdhe2048 group, for DHE_PSK (public parameters, not a secret).
_FFDHE2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""

#: docs/decisions.md D38: why a client without trust anchors refuses a server that did not authenticate with the
#: PSK (TLS 1.3 lets a server ignore the offered PSK and authenticate with a certificate instead)
PSK_NOT_ACCEPTED = ("the server did not authenticate with the PSK (it sent a certificate instead); a PSK client "
                    "without trust anchors accepts only PSK-authenticated servers")

#: RFC 5705 §4: labels that collide with TLS's own PRF uses and must not be used for export.
_RESERVED_EXPORT_LABELS = frozenset({"client finished", "server finished", "master secret", "key expansion"})
#: OpenSSL PSK_MAX_IDENTITY_LEN
_MAX_IDENTITY = 256
#: DTLS1_2_VERSION (RFC 6347 §4.1: {254, 253}); pyOpenSSL names no constant for it
DTLS1_2_VERSION = 0xFEFD
#: datagram payload size used for DTLS records: fits IPv6's 1280-byte minimum MTU with UDP/IP headers
DEFAULT_DTLS_MTU = 1200
_DTLS_HEADER = 13  # RFC 6347 §4.1: type, version, epoch, sequence_number (6), length
_READ_CHUNK = 65536

PSKLookup = Callable[[str], PSKEntry | None]


def _private(path: str) -> Any:
    import importlib

    parts = path.split(".")
    obj: Any = importlib.import_module(".".join(parts[:2]))
    for part in parts[2:]:
        obj = getattr(obj, part)
    return obj


def check_bindings() -> None:
    """Raise :class:`ConfigurationError` naming every private binding the PSK shim needs but cannot find."""
    missing: list[str] = []
    for path in PRIVATE_BINDINGS:
        owner, _, attr = path.rpartition(".")
        try:
            holder = _private(owner)
        except (ImportError, AttributeError):
            missing.append(path)
            continue
        if attr in {"_context", "_ssl", "_from_ssl"}:
            # instance attributes: check on a throw-away object
            ctx = SSL.Context(SSL.TLS_METHOD)
            probe: Any = ctx if attr == "_context" else SSL.Connection(ctx, None)
            if not hasattr(probe, attr):
                missing.append(path)
        elif not hasattr(holder, attr):
            missing.append(path)
    if missing:
        raise ConfigurationError(
            "the installed pyOpenSSL/cryptography lack the PSK bindings m2msec needs: " + ", ".join(missing)
        )


check_bindings()
from OpenSSL._util import ffi as _ffi  # noqa: E402  (private: see PRIVATE_BINDINGS)
from OpenSSL._util import lib as _lib  # noqa: E402


def openssl_version() -> str:
    """Version string of the OpenSSL the engine runs on (the one bundled in the cryptography wheel)."""
    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class CertificateConfig:
    """An entity's own certificate credential and what it trusts (TS-0003 §8.1.2.3, §8.1.2.4).

    Args:
        chain_pem: the entity's certificate first, then any intermediates (PEM).
        private_key_pem: its private key (PEM, unencrypted).
        trust_anchors_pem: CA certificates that verify the *peer's* chain (RFC 5280 path validation,
            name constraints included). Required wherever the peer authenticates with a certificate.
        crl_pem: CRLs of the issuers; with them, a revoked peer certificate is refused (§8.1.2.2).
    """

    chain_pem: bytes
    private_key_pem: bytes = field(repr=False)
    trust_anchors_pem: bytes | None = None
    crl_pem: bytes | None = None


@dataclass(frozen=True)
class ServerConfig:
    """Configuration of a TLS server (Entity B): PSK, certificates, or both on one port.

    Args:
        psk_lookup: maps a ``psk_identity`` to its :class:`PSKEntry`, or ``None`` when unknown. Called
            inside the handshake on the event-loop thread: must be fast and must not do network I/O.
            ``None`` disables PSK.
        profiles: cipher profiles in order of preference (server preference is enforced).
        identity_hint: RFC 4279 §5.1 PSK identity hint sent in ServerKeyExchange (TLS 1.2).
        certificate: the server's certificate credential; needed by the ``rsa-psk`` profile (an RSA key)
            and by ``ecdhe-ecdsa`` (a P-256 key, plus trust anchors for the clients' certificates).
        reveal_unknown_psk_identity: tell a client that its identity is unknown (``unknown_psk_identity``)
            instead of failing as for a wrong key (RFC 4279 §2 hiding, the default); for debugging.
    """

    psk_lookup: PSKLookup | None
    profiles: tuple[CipherProfile, ...] = DEFAULT_SERVER_PROFILES
    identity_hint: str | None = None
    certificate: CertificateConfig | None = None
    reveal_unknown_psk_identity: bool = False


@dataclass(frozen=True)
class ClientConfig:
    """Configuration of a TLS client (Entity A, TS-0003 §8.2.2.1 / §8.2.2.2).

    Args:
        psk_identity / psk: the ``psk_identity`` (KpsaID, Key Identifier, KeID, ...) and key (Kpsa, Kc, ...);
            ``None`` for a certificate-only client.
        peer_entity: IdB, the identity of Entity B; the security context is associated with it after a
            successful handshake (TS-0003 §8.2.2.1 "Entity A associates the security context with IdB").
        server_name: host name sent as SNI (TS-0003 §10.2.1); IP literals are never sent.
        certificate: the client's certificate credential and the trust anchors for the server's chain.
            With PSK suites only ``trust_anchors_pem`` matters (RSA_PSK server certificate); without it the
            server is authenticated by the PSK alone, as with every other PSK family, and a server that did
            not use the PSK (TLS 1.3: sent a certificate instead) is refused (docs/decisions.md D38).
    """

    psk_identity: str | None
    psk: SecretKey | None = None
    profiles: tuple[CipherProfile, ...] = DEFAULT_CLIENT_PROFILES
    peer_entity: str | None = None
    server_name: str | None = None
    certificate: CertificateConfig | None = None


# --------------------------------------------------------------------------------------------------
# events and session


@dataclass(frozen=True)
class SessionInfo:
    """What the handshake established. Holds no key material.

    ``psk_identity`` is the identity the client used. ``entity`` is the identity the security context
    is associated with: on a server, the AE-ID/CSE-ID bound to the identity in the PSK table (or
    ``None``); on a client, the configured IdB (the client transports check it before returning the session).
    ``session_id`` is empty for TLS 1.3.
    """

    is_server: bool
    version: str
    cipher: str
    psk_identity: str | None
    entity: str | None
    server_name: str | None
    identity_hint: str | None
    session_id: bytes
    #: the peer's verified end-entity certificate (certificate suites, and RSA_PSK seen from a client)
    peer_certificate: x509.Certificate | None = field(default=None, repr=False, compare=False)
    #: the chain OpenSSL verified, leaf first, trust anchor last (empty without a verified peer certificate)
    peer_chain: tuple[x509.Certificate, ...] = field(default=(), repr=False, compare=False)

    @property
    def authentication(self) -> str:
        """``"psk"`` or ``"certificate"``: how the peer authenticated."""
        return "psk" if self.psk_identity is not None else "certificate"


@dataclass(frozen=True)
class HandshakeCompleted:
    session: SessionInfo


@dataclass(frozen=True)
class DataReceived:
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed the TLS session (``clean`` is True when it sent close_notify)."""

    clean: bool = True


Event = HandshakeCompleted | DataReceived | ConnectionClosed


class ConnectionState(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"
    FAILED = "failed"


# --------------------------------------------------------------------------------------------------
# context


def _cipher_settings(profiles: tuple[CipherProfile, ...]) -> tuple[str, str]:
    if not profiles:
        raise ConfigurationError("at least one cipher profile is required")
    tls12 = ":".join(p.tls12_ciphers for p in profiles if p.tls12_ciphers)
    tls13 = ":".join(p.tls13_suites for p in profiles if p.tls13_suites)
    return tls12, tls13


class TLSContext:
    """A configured OpenSSL context for TLS (or DTLS 1.2); build once, then make connections from it."""

    def __init__(self, config: ServerConfig | ClientConfig, *, dtls: bool = False,
                 cookie_secret: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.is_server = isinstance(config, ServerConfig)
        self.dtls = dtls
        tls12, tls13 = _cipher_settings(config.profiles)
        if dtls:
            # TS-0003 §10.2.1: DTLS 1.2 (RFC 6347) over UDP; there is no TLS 1.3 profile for DTLS here
            if tls13 or not tls12:
                raise ConfigurationError("DTLS takes TLS 1.2-style profiles only (e.g. onem2m-dtls), not tls13")
            ctx = SSL.Context(SSL.DTLS_SERVER_METHOD if self.is_server else SSL.DTLS_CLIENT_METHOD)
            ctx.set_min_proto_version(DTLS1_2_VERSION)
            ctx.set_max_proto_version(DTLS1_2_VERSION)
            if "CCM8" in tls12:
                # OpenSSL >= 3.2 rates the 64-bit CCM_8 tag below security level 1, yet RFC 7252 and TS-0003
                # §10.2.2 mandate TLS_PSK_WITH_AES_128_CCM_8 (docs/tls-stack.md gotcha 6)
                tls12 += ":@SECLEVEL=0"
        else:
            ctx = SSL.Context(SSL.TLS_SERVER_METHOD if self.is_server else SSL.TLS_CLIENT_METHOD)
            # TS-0003 §10.2.1: TLS 1.2 at least; TLS 1.3 only when a TLS 1.3 profile is enabled.
            ctx.set_min_proto_version(SSL.TLS1_2_VERSION if tls12 else SSL.TLS1_3_VERSION)
            ctx.set_max_proto_version(SSL.TLS1_3_VERSION if tls13 else SSL.TLS1_2_VERSION)
        if tls12:
            try:
                ctx.set_cipher_list(tls12.encode())
            except SSL.Error as exc:
                raise ConfigurationError(f"cipher list rejected by OpenSSL: {tls12}") from exc
        if tls13 and _lib.SSL_CTX_set_ciphersuites(ctx._context, tls13.encode()) != 1:
            raise ConfigurationError(f"TLS 1.3 suites rejected by OpenSSL: {tls13}")
        ctx.set_options(
            SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
        )
        self._keepalive: list[object] = []
        if isinstance(config, ServerConfig):
            self._configure_server(ctx, config)
        else:
            self._configure_client(ctx, config)
        if dtls:
            ctx.set_options(SSL.OP_NO_QUERY_MTU)  # the adapter sets the MTU per connection
            if self.is_server:
                self._cookies = CookieJar(cookie_secret or os.urandom(32), clock=clock)
                ctx.set_cookie_generate_callback(self._make_cookie)
                ctx.set_cookie_verify_callback(self._check_cookie)
        self._ctx = ctx
        # one read buffer per context: a context and its connections belong to one thread (the event loop)
        self._buffer = _ffi.new("char[]", _READ_CHUNK)

    @classmethod
    def server(cls, config: ServerConfig) -> TLSContext:
        return cls(config)

    @classmethod
    def client(cls, config: ClientConfig) -> TLSContext:
        return cls(config)

    @classmethod
    def dtls_server(cls, config: ServerConfig, *, cookie_secret: bytes | None = None,
                    clock: Callable[[], float] = time.time) -> TLSContext:
        """A DTLS 1.2 server context. ``cookie_secret`` keys the stateless HelloVerifyRequest cookies (RFC 6347
        §4.2.1); share it between instances behind one address, else a random one is made. Cookies expire
        after :data:`~m2msec.tls.cookies.COOKIE_LIFETIME` seconds of ``clock`` (wall time by default)."""
        return cls(config, dtls=True, cookie_secret=cookie_secret, clock=clock)

    @classmethod
    def dtls_client(cls, config: ClientConfig) -> TLSContext:
        return cls(config, dtls=True)

    # -- DTLS cookies (RFC 6347 §4.2.1): HMAC over the client's transport address and the time, nothing stored
    @staticmethod
    def _cookie_peer(conn: SSL.Connection) -> bytes:
        return repr(getattr(conn.get_app_data(), "peer", None)).encode()

    def _make_cookie(self, conn: SSL.Connection) -> bytes:
        return self._cookies.make(self._cookie_peer(conn))

    def _check_cookie(self, conn: SSL.Connection, cookie: bytes) -> bool:
        return self._cookies.check(cookie, self._cookie_peer(conn))

    # -- server
    def _configure_server(self, ctx: SSL.Context, config: ServerConfig) -> None:
        # Session IDs are generated (CAPIF AEFPSK needs them, TS 33.122 §6.5.2.1) but never stored, so no
        # session can be resumed around the PSK lookup: every connection is a full PSK handshake.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER | SSL.SESS_CACHE_NO_INTERNAL_STORE)
        # OpenSSL refuses client-certificate handshakes with server caching unless a session ID context is set
        ctx.set_session_id(b"m2msec")
        if any(p.needs_dh_params for p in config.profiles):
            self._load_dh(ctx)
        if any(p.needs_certificate for p in config.profiles):
            if config.certificate is None:
                names = ", ".join(p.name for p in config.profiles if p.needs_certificate)
                raise ConfigurationError(f"the {names} profile needs a server certificate and private key")
        if config.certificate is not None:
            self._use_credential(ctx, config.certificate, "server")
        if any(p.mutual_certificates for p in config.profiles):
            if config.certificate is None or config.certificate.trust_anchors_pem is None:
                raise ConfigurationError("certificate clients need trust anchors (client CA certificates)")
            # Only certificate suites send a CertificateRequest: PSK clients on the same port are unaffected.
            self._trust(ctx, config.certificate, SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        if config.psk_lookup is None:
            if not any(p.mutual_certificates for p in config.profiles):
                raise ConfigurationError("a server without a PSK table needs a certificate profile")
            return
        if config.identity_hint is not None:
            hint = config.identity_hint.encode()
            if len(hint) > _MAX_IDENTITY or b"\0" in hint:
                raise ConfigurationError("identity hint must be at most 256 bytes without NUL")
            _lib.SSL_CTX_use_psk_identity_hint(ctx._context, hint)
        lookup: PSKLookup = config.psk_lookup
        hide = not config.reveal_unknown_psk_identity
        decoy_secret = os.urandom(32)

        @_ffi.callback("unsigned int(SSL *, char *, unsigned char *, unsigned int)", error=0)  # type: ignore[untyped-decorator]
        def _server_cb(ssl: Any, identity: Any, out: Any, max_len: int) -> int:
            conn = SSL.Connection._reverse_mapping.get(ssl)
            owner: TLSConnection | None = conn.get_app_data() if conn is not None else None
            if owner is None or identity == _ffi.NULL:
                return 0
            raw = _ffi.string(identity)
            key = decoy_psk(decoy_secret, raw)  # for every identity: known and unknown cost the same
            entry: PSKEntry | None = None
            try:
                ident = raw.decode("utf-8")
            except UnicodeDecodeError:
                owner._psk_failure = "psk identity is not valid UTF-8"
            else:
                owner._offered_identity = ident
                try:
                    entry = lookup(ident)
                except Exception as exc:  # any lookup failure rejects the handshake, never a traceback
                    log.error("PSK lookup raised %s for identity %r; handshake rejected", type(exc).__name__, ident)
                    owner._psk_failure = "psk lookup failed"
                else:
                    if entry is None:
                        owner._psk_failure = "unknown psk identity"
            if entry is None:
                if not hide:
                    return 0
                owner._psk_decoy = True  # RFC 4279 §2: go on as if the identity existed with another key
            else:
                key = entry.key.reveal()
            if len(key) > max_len:
                owner._psk_failure = "psk too long for OpenSSL"
                return 0
            _ffi.memmove(out, key, len(key))
            owner._psk_entry = entry
            return len(key)

        self._keepalive.append(_server_cb)
        _lib.SSL_CTX_set_psk_server_callback(ctx._context, _server_cb)

    @staticmethod
    def _load_dh(ctx: SSL.Context) -> None:
        bio = _lib.BIO_new_mem_buf(_FFDHE2048_PEM, len(_FFDHE2048_PEM))
        try:
            dh = _lib.PEM_read_bio_DHparams(bio, _ffi.NULL, _ffi.NULL, _ffi.NULL)
            if dh == _ffi.NULL:
                raise ConfigurationError("could not load the ffdhe2048 DH parameters")
            try:
                if _lib.SSL_CTX_set_tmp_dh(ctx._context, dh) != 1:
                    raise ConfigurationError("OpenSSL refused the ffdhe2048 DH parameters")
            finally:
                _lib.DH_free(dh)
        finally:
            _lib.BIO_free(bio)

    # -- client
    def _configure_client(self, ctx: SSL.Context, config: ClientConfig) -> None:
        cred = config.certificate
        if cred is not None and cred.trust_anchors_pem is not None:
            self._trust(ctx, cred, SSL.VERIFY_PEER)
        else:
            # D38: nothing to verify a certificate with, so only the PSK may authenticate the server. VERIFY_PEER
            # over the context's empty store makes OpenSSL call _verify_peer for any server Certificate: it lets
            # an RSA_PSK one through (the PSK authenticates, RFC 4279 §4) and refuses every other one, e.g. a
            # TLS 1.3 server that ignored the offered PSK.
            ctx.set_verify(SSL.VERIFY_PEER, _verify_peer)
        if any(p.mutual_certificates for p in config.profiles):
            if cred is None or cred.trust_anchors_pem is None:
                raise ConfigurationError("a certificate client needs its certificate, key and trust anchors")
            self._use_credential(ctx, cred, "client")
        if config.psk_identity is None or config.psk is None:
            if config.psk_identity is not None or config.psk is not None:
                raise ConfigurationError("give both the psk identity and the psk, or neither")
            if not any(p.mutual_certificates for p in config.profiles):
                raise ConfigurationError("a client without a PSK needs a certificate profile")
            return
        ident = config.psk_identity.encode("utf-8")
        if not ident or len(ident) > _MAX_IDENTITY or b"\0" in ident:
            raise ConfigurationError("psk identity must be 1..256 bytes of UTF-8 without NUL")
        if len(config.psk) > MAX_PSK_LENGTH:
            raise ConfigurationError(f"psk must be at most {MAX_PSK_LENGTH} bytes")
        key = config.psk

        @_ffi.callback(
            "unsigned int(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)", error=0
        )  # type: ignore[untyped-decorator]
        def _client_cb(ssl: Any, hint: Any, id_out: Any, max_id: int, psk_out: Any, max_psk: int) -> int:
            conn = SSL.Connection._reverse_mapping.get(ssl)
            owner: TLSConnection | None = conn.get_app_data() if conn is not None else None
            raw = key.reveal()
            if len(ident) + 1 > max_id or len(raw) > max_psk:
                return 0
            if owner is not None and hint != _ffi.NULL:
                owner._identity_hint = _ffi.string(hint).decode("utf-8", "replace")
            _ffi.memmove(id_out, ident + b"\0", len(ident) + 1)
            _ffi.memmove(psk_out, raw, len(raw))
            return len(raw)

        self._keepalive.append(_client_cb)
        _lib.SSL_CTX_set_psk_client_callback(ctx._context, _client_cb)

    @staticmethod
    def _use_credential(ctx: SSL.Context, cred: CertificateConfig, role: str) -> None:
        """Load our own chain (leaf first) and private key."""
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            chain = x509.load_pem_x509_certificates(cred.chain_pem)
            ctx.use_certificate(chain[0])
            for extra in chain[1:]:
                ctx.add_extra_chain_cert(extra)
            ctx.use_privatekey(_as_pkey_key(load_pem_private_key(cred.private_key_pem, password=None)))
            ctx.check_privatekey()
        except (ValueError, TypeError, IndexError, SSL.Error, _crypto.Error) as exc:
            raise ConfigurationError(f"{role} certificate chain or private key is invalid or do not match") from exc

    def _trust(self, ctx: SSL.Context, cred: CertificateConfig, mode: int) -> None:
        """Trust anchors (and CRLs) for the peer's chain; verification failures are recorded per connection."""
        from m2msec.crl import load_crls

        assert cred.trust_anchors_pem is not None
        try:
            self._anchors = tuple(x509.load_pem_x509_certificates(cred.trust_anchors_pem))
        except ValueError as exc:
            raise ConfigurationError("trust anchors are not valid PEM") from exc
        # PEM or DER, one or several; data without a CRL is refused rather than silently checking nothing
        crls = load_crls(cred.crl_pem, "CRLs") if cred.crl_pem is not None else None
        self._install_trust_store(ctx, crls)
        ctx.set_verify(mode, _verify_peer)

    def _install_trust_store(self, ctx: SSL.Context, crls: Sequence[x509.CertificateRevocationList] | None) -> None:
        raw = _lib.X509_STORE_new()
        if raw == _ffi.NULL:
            raise MemoryError("X509_STORE_new")
        store = _crypto.X509Store.__new__(_crypto.X509Store)
        store._store = raw  # owned by the SSL_CTX once set below
        try:
            for cert in self._anchors:
                store.add_cert(_crypto.X509.from_cryptography(cert))
            if crls is not None:
                for crl in crls:
                    store.add_crl(crl)
                # TS-0003 §8.1.2.2: a revoked certificate is refused (the end-entity's issuer must supply a CRL)
                store.set_flags(_crypto.X509StoreFlags.CRL_CHECK)
        except Exception:
            _lib.X509_STORE_free(raw)
            raise
        _lib.SSL_CTX_set_cert_store(ctx._context, raw)  # frees the previous store

    def update_crls(self, crls: Sequence[x509.CertificateRevocationList]) -> bool:
        """Replace the CRLs that verify peer certificates; handshakes started from now on use them (live
        connections are not touched: :mod:`m2msec.gateway.revocation` ends those whose certificate is revoked).
        Returns False (and does nothing) when this context verifies no peer certificates."""
        if not hasattr(self, "_anchors"):
            return False
        self._install_trust_store(self._ctx, crls)
        return True

    @property
    def verifies_certificates(self) -> bool:
        """Whether this context has trust anchors to verify a peer's certificate chain with."""
        return hasattr(self, "_anchors")

    def connection(self) -> TLSConnection:
        """A new sans-I/O connection. A client connection has its ClientHello ready in data_to_send()."""
        if self.dtls:
            raise ConfigurationError("a DTLS context makes connections with dtls_connection(peer)")
        return TLSConnection(self)

    def dtls_connection(self, peer: object, *, mtu: int = DEFAULT_DTLS_MTU) -> DTLSConnection:
        """A new sans-I/O DTLS connection with the peer at ``peer`` (its transport address)."""
        if not self.dtls:
            raise ConfigurationError("dtls_connection() needs a DTLS context")
        return DTLSConnection(self, peer, mtu=mtu)


#: X509_V_ERR_* -> the alert OpenSSL sends for it (ssl_verify_alarm_type in OpenSSL's ssl/statem)
_VERIFY_ALERTS = {
    2: "unknown_ca", 18: "unknown_ca", 19: "unknown_ca", 20: "unknown_ca", 21: "unknown_ca", 22: "unknown_ca",
    24: "unknown_ca", 25: "unknown_ca",
    9: "bad_certificate", 11: "bad_certificate", 27: "bad_certificate", 28: "bad_certificate",
    10: "certificate_expired", 12: "certificate_expired",
    23: "certificate_revoked",
}


def _verify_peer(conn: SSL.Connection, cert: _crypto.X509, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's chain verdict, plus the TS-0003 §10.1.1.1 key profile on the end-entity certificate."""
    owner: TLSConnection | None = conn.get_app_data()
    if owner is not None and not owner._context.is_server and not owner._context.verifies_certificates:
        return owner._psk_only_server_certificate(conn)
    if not ok:
        if owner is not None and owner._verify_failure is None:
            reason = _ffi.string(_lib.X509_verify_cert_error_string(errno)).decode("ascii", "replace")
            owner._verify_failure = f"peer certificate rejected at depth {depth}: {reason}"
            owner._verify_alert = _VERIFY_ALERTS.get(errno, "certificate_unknown")
        return False
    if depth == 0:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        key = cert.to_cryptography().public_key()
        profile_ok = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        # an RSA_PSK server certificate is RSA by definition (RFC 4279 §4); everything else is P-256
        if isinstance(key, rsa.RSAPublicKey) and owner is not None and not owner._context.is_server:
            profile_ok = True
        if not profile_ok:
            if owner is not None:
                owner._verify_failure = "peer certificate key is not EC P-256 (TS-0003 §10.1.1.1)"
                # pyOpenSSL's callback cannot set a verify error code, so OpenSSL sends internal_error
                owner._verify_alert = "internal_error"
            return False
    return True


def _as_pkey_key(key: object) -> Any:
    # load_pem_private_key may return key types pyOpenSSL cannot wrap (ML-DSA); from_cryptography_key checks.
    return key


def _server_name_for_sni(name: str | None) -> bytes | None:
    if not name:
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return None  # RFC 6066 §3: literal IPv4/IPv6 addresses are not permitted in HostName
    try:
        return name.encode("idna")
    except UnicodeError as exc:
        raise ConfigurationError(f"server name {name!r} is not a valid host name") from exc


def _parse_session_der(der: bytes) -> bytes:
    """Session ID from a DER SSL_SESSION (OpenSSL's SSL_SESSION_ASN1: version, ssl_version, cipher, id)."""

    def read_tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
        tag = buf[pos]
        length = buf[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(buf[pos : pos + n], "big")
            pos += n
        return tag, pos, length

    tag, pos, _ = read_tlv(der, 0)
    if tag != 0x30:
        raise ValueError("not a SEQUENCE")
    for expected in (0x02, 0x02, 0x04):  # version, ssl_version, cipher
        tag, pos, length = read_tlv(der, pos)
        if tag != expected:
            raise ValueError("unexpected SSL_SESSION layout")
        pos += length
    tag, pos, length = read_tlv(der, pos)
    if tag != 0x04:
        raise ValueError("unexpected SSL_SESSION layout")
    return der[pos : pos + length]


# --------------------------------------------------------------------------------------------------
# connection


class TLSConnection:
    """One TLS connection over memory BIOs (sans-I/O).

    Use: ``events = conn.receive_data(bytes_from_peer)``; send ``conn.data_to_send()`` to the peer after
    every call. ``receive_data(b"")`` signals EOF from the transport.

    Raises:
        HandshakeFailed: from :meth:`receive_data` when the handshake fails; an alert for the peer may
            still be waiting in :meth:`data_to_send`.
        TLSProtocolError: on a TLS failure after the handshake, or misuse.
    """

    def __init__(self, context: TLSContext) -> None:
        self._context = context
        self._ssl = SSL.Connection(context._ctx, None)
        self._ssl.set_app_data(self)
        self._configure_ssl()
        self.state = ConnectionState.HANDSHAKING
        self.session: SessionInfo | None = None
        self._psk_entry: PSKEntry | None = None
        self._psk_failure: str | None = None
        self._psk_decoy = False
        self._offered_identity: str | None = None
        self._identity_hint: str | None = None
        self._verify_failure: str | None = None
        self._verify_alert: str | None = None
        if context.is_server:
            self._ssl.set_accept_state()
        else:
            assert isinstance(context.config, ClientConfig)
            sni = _server_name_for_sni(context.config.server_name)
            if sni is not None:
                self._ssl.set_tlsext_host_name(sni)
            self._ssl.set_connect_state()
            self._advance_handshake()

    def _configure_ssl(self) -> None:
        """Per-connection settings needed before the first handshake step (DTLS: the MTU)."""

    def __repr__(self) -> str:
        role = "server" if self._context.is_server else "client"
        return f"<TLSConnection {role} {self.state.value}>"

    @property
    def offered_identity(self) -> str | None:
        """The psk_identity a client offered (server side), even when the handshake was then refused."""
        return self._offered_identity

    @property
    def psk_failure(self) -> str | None:
        """Server side: why the offered PSK identity was refused (``"unknown psk identity"``, ...), also when
        the client was not told (RFC 4279 §2 hiding: it sees a wrong-key failure, or, over DTLS, silence)."""
        return self._psk_failure

    @property
    def psk_entry(self) -> PSKEntry | None:
        """Server side: the PSK table entry the client authenticated with."""
        return self._psk_entry

    # -- I/O
    def data_to_send(self) -> bytes:
        """Bytes that must be written to the peer, in order. Empty when there is nothing to send."""
        # BIO_read straight into the context's buffer: pyOpenSSL's bio_read raises WantReadError on an empty
        # BIO, and an exception per call is a measurable share of a PSK handshake's cost.
        bio, buf = self._ssl._from_ssl, self._context._buffer
        chunks: list[bytes] = []
        while (n := _lib.BIO_read(bio, buf, _READ_CHUNK)) > 0:
            chunks.append(_ffi.buffer(buf, n)[:])
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes received from the peer (``b""`` = transport EOF); return what happened."""
        if self.state in (ConnectionState.CLOSED, ConnectionState.FAILED):
            return []
        if data:
            self._ssl.bio_write(data)
        elif self.state is ConnectionState.HANDSHAKING:
            self.state = ConnectionState.FAILED
            raise HandshakeFailed("connection closed by peer during the handshake")
        else:
            self.state = ConnectionState.CLOSED
            return [ConnectionClosed(clean=False)]
        return self._progress()

    def _progress(self) -> list[Event]:
        """After input: advance the handshake if it runs, then read whatever application data is ready."""
        events: list[Event] = []
        if self.state is ConnectionState.HANDSHAKING:
            if not self._advance_handshake():
                return events
            assert self.session is not None
            events.append(HandshakeCompleted(self.session))
        events.extend(self._read_application_data())
        return events

    def _advance_handshake(self) -> bool:
        ssl = self._ssl._ssl
        rc = _lib.SSL_do_handshake(ssl)
        if rc <= 0:
            if _lib.SSL_get_error(ssl, rc) == _lib.SSL_ERROR_WANT_READ:
                return False
            try:
                self._ssl._raise_ssl_error(ssl, rc)  # turns OpenSSL's error queue into an SSL.Error
            except SSL.Error as exc:
                self.state = ConnectionState.FAILED
                raise self._handshake_error(exc) from None
            self.state = ConnectionState.FAILED
            raise HandshakeFailed("handshake failed without an OpenSSL error")
        if not self._context.is_server and not self._context.verifies_certificates and not self._psk_authenticated():
            # D38, second line of defence behind _verify_peer: never report a session the PSK did not authenticate
            self.state = ConnectionState.FAILED
            raise HandshakeFailed(PSK_NOT_ACCEPTED, alert=None)
        self.state = ConnectionState.ESTABLISHED
        self.session = self._build_session()
        return True

    def _psk_authenticated(self) -> bool:
        """Client side, after the handshake: did the server authenticate with our PSK? TLS 1.2: a PSK suite was
        negotiated (every one mixes the PSK into the master secret). TLS 1.3: the server accepted the external
        PSK (OpenSSL reports it as a reused session; tickets are off, so nothing else is ever resumed)."""
        if self._ssl.get_protocol_version_name() in ("TLSv1.3", "DTLSv1.3"):
            return bool(_lib.SSL_session_reused(self._ssl._ssl) == 1)
        return "PSK" in (self._ssl.get_cipher_name() or "")

    def _psk_only_server_certificate(self, conn: SSL.Connection) -> bool:
        """A client without trust anchors got a server Certificate: accept it (unverified, never reported) only
        within a (D)TLS 1.2 handshake, where such a client offers PSK suites only (certificate suites need anchors)
        and so the certificate is RSA_PSK's, the PSK authenticates the server (RFC 4279 §4; _psk_authenticated
        checks the suite once it is known). In TLS 1.3 a Certificate means the server refused the PSK."""
        if conn.get_protocol_version_name() not in ("TLSv1.3", "DTLSv1.3"):
            return True
        if self._verify_failure is None:
            self._verify_failure = PSK_NOT_ACCEPTED
            self._verify_alert = "unknown_ca"  # OpenSSL's alert for the unverifiable chain (empty trust store)
        return False

    def _read_application_data(self) -> list[Event]:
        events: list[Event] = []
        ssl, buf = self._ssl._ssl, self._context._buffer
        while True:
            n = _lib.SSL_read(ssl, buf, _READ_CHUNK)
            if n > 0:
                events.append(DataReceived(_ffi.buffer(buf, n)[:]))
                continue
            error = _lib.SSL_get_error(ssl, n)
            if error == _lib.SSL_ERROR_WANT_READ:
                break
            if error == _lib.SSL_ERROR_ZERO_RETURN:
                self.state = ConnectionState.CLOSED
                events.append(ConnectionClosed(clean=True))
                break
            try:
                self._ssl._raise_ssl_error(ssl, n)
            except SSL.ZeroReturnError:
                self.state = ConnectionState.CLOSED
                events.append(ConnectionClosed(clean=True))
                break
            except SSL.WantReadError:
                break
            except SSL.Error as exc:
                self.state = ConnectionState.FAILED
                raise TLSProtocolError(f"TLS record error: {_reason(exc)}") from None
            break
        return events

    def send(self, data: bytes) -> None:
        """Encrypt application data; the records appear in :meth:`data_to_send`."""
        if self.state is not ConnectionState.ESTABLISHED:
            raise TLSProtocolError(f"cannot send application data in state {self.state.value}")
        view = memoryview(data)
        while view:
            try:
                sent = self._ssl.send(view[:16384])
            except SSL.Error as exc:
                self.state = ConnectionState.FAILED
                raise TLSProtocolError(f"TLS send failed: {_reason(exc)}") from None
            view = view[sent:]

    def close(self) -> None:
        """Queue a close_notify alert (if the session is up); the connection is closed afterwards."""
        if self.state is ConnectionState.ESTABLISHED:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
        if self.state is not ConnectionState.FAILED:
            self.state = ConnectionState.CLOSED

    # -- session facts
    def _build_session(self) -> SessionInfo:
        version = self._ssl.get_protocol_version_name()
        cipher = self._ssl.get_cipher_name() or ""
        server_name_raw = self._ssl.get_servername()
        server_name = server_name_raw.decode("idna") if server_name_raw else None
        # only a certificate OpenSSL verified against trust anchors is reported (an RSA_PSK server certificate
        # seen by a client without anchors is not: nothing may read an identity from it)
        peer = self._ssl.get_peer_certificate(as_cryptography=True) if self._context.verifies_certificates else None
        identity: str | None
        if self._context.is_server:
            entry = self._psk_entry
            if entry is None and peer is None:  # cannot happen: one of the two authenticated the client
                raise TLSProtocolError("handshake completed without a PSK or a client certificate")
            identity, entity = (entry.identity, entry.entity) if entry is not None else (None, None)
            hint = self._context.config.identity_hint if isinstance(self._context.config, ServerConfig) else None
        else:
            assert isinstance(self._context.config, ClientConfig)
            psk_auth = self._context.config.psk_identity is not None and self._psk_authenticated()
            identity = self._context.config.psk_identity if psk_auth else None
            entity = self._context.config.peer_entity
            hint = self._identity_hint
            if server_name is None:
                server_name = self._context.config.server_name
        return SessionInfo(
            is_server=self._context.is_server,
            version=version,
            cipher=cipher,
            psk_identity=identity,
            entity=entity,
            server_name=server_name,
            identity_hint=hint,
            session_id=self._session_id() if version != "TLSv1.3" else b"",
            peer_certificate=peer,
            peer_chain=tuple(self._ssl.get_verified_chain(as_cryptography=True) or ()) if peer else (),
        )

    def _session_id(self) -> bytes:
        sess = _lib.SSL_get_session(self._ssl._ssl)
        if sess == _ffi.NULL:
            return b""
        size = _lib.i2d_SSL_SESSION(sess, _ffi.NULL)
        if size <= 0:
            return b""
        buf = _ffi.new("unsigned char[]", size)
        ptr = _ffi.new("unsigned char **", buf)
        _lib.i2d_SSL_SESSION(sess, ptr)
        der = _ffi.buffer(buf, size)[:]
        try:
            return _parse_session_der(der)
        except (ValueError, IndexError):
            return b""

    def _require_established(self) -> None:
        if self.session is None:
            raise TLSProtocolError("the handshake has not completed")

    def export_keying_material(self, label: str, length: int, context: bytes | None = None) -> SecretKey:
        """RFC 5705 keying material exporter (TS-0003 §10.3.1 uses it with no context value).

        ``context=None`` means "no context" (use_context = 0), which differs from ``b""`` in TLS 1.2.
        """
        self._require_established()
        if label.lower() in _RESERVED_EXPORT_LABELS or not label.isascii() or not label:
            raise ConfigurationError(f"exporter label {label!r} is not allowed (RFC 5705 §4)")
        if not 1 <= length <= 16384:
            raise ConfigurationError("exporter length must be 1..16384 bytes")
        try:
            out = self._ssl.export_keying_material(label.encode("ascii"), length, context)
        except SSL.Error as exc:
            raise TLSProtocolError(f"key export failed: {_reason(exc)}") from None
        return SecretKey(out)

    def master_secret(self) -> SecretKey:
        """The (D)TLS 1.2 master secret (CAPIF AEFPSK input, TS 33.122 §6.5.2.1). Not defined for TLS 1.3."""
        self._require_established()
        assert self.session is not None
        if self.session.version not in ("TLSv1.2", "DTLSv1.2"):
            raise TLSProtocolError(f"no master secret in {self.session.version}")
        raw = self._ssl.master_key()
        if not raw:
            raise TLSProtocolError("master secret unavailable")
        return SecretKey(raw)

    # -- errors
    def _handshake_error(self, exc: SSL.Error) -> HandshakeFailed:
        reason = _reason(exc)
        if self._verify_failure is not None:
            return HandshakeFailed(self._verify_failure, alert=self._verify_alert)
        if self._psk_failure is not None and not self._psk_decoy:
            # TLS 1.2 (RFC 4279 §2) answers with unknown_psk_identity; OpenSSL's TLS 1.3 server falls back to
            # certificate authentication instead, has none, and sends handshake_failure.
            tls13 = self._ssl.get_protocol_version_name() == "TLSv1.3"
            return HandshakeFailed(self._psk_failure, alert="handshake_failure" if tls13 else "unknown_psk_identity")
        alert = None
        if "alert" in reason:
            alert = reason.split("alert", 1)[1].strip().replace(" ", "_")
        elif "bad record mac" in reason or "decryption failed" in reason:
            # TLS 1.2 reports a wrong key for a known identity only as a bad MAC on Finished (gotcha 10)
            alert = "bad_record_mac"
            reason = "bad record mac (wrong key?)"
        elif "binder does not verify" in reason:
            alert = "decrypt_error"  # TLS 1.3 wrong key (RFC 8446 §4.2.11)
        if self._psk_failure is not None:  # a decoy key failed as a wrong key does; the server still says why
            return HandshakeFailed(self._psk_failure, alert=alert)
        return HandshakeFailed(reason, alert=alert)


class DTLSConnection(TLSConnection):
    """One DTLS 1.2 association with one peer, sans-I/O: one datagram in, datagrams out, timers exposed.

    Server side, the first datagrams go through ``DTLSv1_listen``: a ClientHello without a valid cookie
    is answered with a HelloVerifyRequest and *no state is kept* (:attr:`awaiting_cookie` stays True: the
    adapter drops this object). Retransmission is the adapter's job: after each call it asks
    :meth:`timeout` and calls :meth:`handle_timeout` when that much time has passed (RFC 6347 §4.2.4).
    """

    def __init__(self, context: TLSContext, peer: object, *, mtu: int = DEFAULT_DTLS_MTU) -> None:
        self.peer = peer
        self.mtu = mtu
        self.awaiting_cookie = context.is_server
        super().__init__(context)

    def _configure_ssl(self) -> None:
        self._ssl.set_ciphertext_mtu(self.mtu)

    def __repr__(self) -> str:
        role = "server" if self._context.is_server else "client"
        return f"<DTLSConnection {role} {self.peer!r} {self.state.value}>"

    def send(self, data: bytes) -> None:
        """Encrypt one application datagram into one record (and so one UDP datagram).

        Raises:
            TLSProtocolError: ``data`` does not fit the MTU (use CoAP block-wise transfer for more).
        """
        limit = self._ssl.get_cleartext_mtu()
        if len(data) > limit:
            raise TLSProtocolError(f"datagram of {len(data)} bytes exceeds the DTLS MTU ({limit} bytes of plaintext)")
        super().send(data)

    def receive_datagram(self, datagram: bytes) -> list[Event]:
        """Feed one datagram from the peer; return what happened."""
        if self.state in (ConnectionState.CLOSED, ConnectionState.FAILED) or not datagram:
            return []
        if self.awaiting_cookie:
            self._ssl.bio_write(datagram)
            try:
                self._ssl.DTLSv1_listen()
            except SSL.WantReadError:
                return []  # HelloVerifyRequest (or nothing, for junk) queued: stay stateless
            except SSL.Error as exc:
                self.state = ConnectionState.FAILED
                raise HandshakeFailed(f"bad ClientHello: {_reason(exc)}") from None
            self.awaiting_cookie = False
            return self._progress()  # the ClientHello stays buffered: OpenSSL continues from it
        return self.receive_data(datagram)

    def datagrams_to_send(self) -> list[bytes]:
        """The pending records, packed whole into datagrams of at most ``mtu`` bytes."""
        data = self.data_to_send()
        out: list[bytes] = []
        current = bytearray()
        pos = 0
        while pos + _DTLS_HEADER <= len(data):
            end = pos + _DTLS_HEADER + int.from_bytes(data[pos + 11 : pos + 13], "big")
            record = data[pos:end]
            pos = end
            if current and len(current) + len(record) > self.mtu:
                out.append(bytes(current))
                current = bytearray()
            current += record
        if current:
            out.append(bytes(current))
        return out

    def timeout(self) -> float | None:
        """Seconds until a retransmission is due (RFC 6347 §4.2.4), or None when no timer runs."""
        value = self._ssl.DTLSv1_get_timeout()
        return None if value is None else float(value)

    def handle_timeout(self) -> None:
        """Let OpenSSL retransmit its last flight (then send :meth:`datagrams_to_send`).

        Raises:
            HandshakeTimeout: OpenSSL gave up after its retransmission limit.
        """
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self.state = ConnectionState.FAILED
            raise HandshakeTimeout(f"DTLS retransmissions exhausted: {_reason(exc)}") from None


def _reason(exc: SSL.Error) -> str:
    """The OpenSSL reason strings of an error (library names and reasons only, never data)."""
    try:
        items = exc.args[0]
        reasons = [str(item[-1]) for item in items if isinstance(item, tuple) and item[-1]]
    except (IndexError, TypeError):
        reasons = []
    if isinstance(exc, SSL.SysCallError):
        return "transport error"
    return "; ".join(reasons) or type(exc).__name__
