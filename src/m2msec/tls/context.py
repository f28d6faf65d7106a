"""The TLS/DTLS context: an OpenSSL context built from a :class:`~m2msec.tls.config.ServerConfig` or
:class:`~m2msec.tls.config.ClientConfig` (suites, PSK callbacks, DH group, credentials, trust, DTLS cookies),
and the factory of connections."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from cryptography import x509
from OpenSSL import SSL

from m2msec.errors import ConfigurationError
from m2msec.keys.secret import MAX_PSK_LENGTH
from m2msec.keys.table import PSKEntry
from m2msec.tls import _shim
from m2msec.tls.config import CertificateConfig, ClientConfig, PSKLookup, ServerConfig
from m2msec.tls.connection import TLSConnection, owner_of
from m2msec.tls.cookies import CookieJar
from m2msec.tls.dtls import DEFAULT_DTLS_MTU, DTLS1_2_VERSION, DTLSConnection
from m2msec.tls.profiles import CipherProfile
from m2msec.tls.psk_hiding import DecoyKeys
from m2msec.tls.verify import _verify_peer, install_trust_store, load_trust, use_credential

__all__ = ["TLSContext"]

log = logging.getLogger("m2msec.tls")

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

#: docs/decisions.md D53: every context sets SSL_MODE_RELEASE_BUFFERS, so an idle connection holds no record
#: buffers (about 34 KiB each with OpenSSL's defaults); the next record costs a fresh allocation
RELEASE_IDLE_BUFFERS = True

#: OpenSSL PSK_MAX_IDENTITY_LEN
_MAX_IDENTITY = 256


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
        if tls13 and not _shim.set_ciphersuites(ctx, tls13):
            raise ConfigurationError(f"TLS 1.3 suites rejected by OpenSSL: {tls13}")
        ctx.set_options(
            SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
        )
        if RELEASE_IDLE_BUFFERS:  # D53: an idle connection holds no record buffers
            _shim.release_buffers(ctx)
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
        self._buffer = _shim.new_read_buffer()

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
        return repr(getattr(owner_of(conn), "peer", None)).encode()

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
            mode = SSL.VERIFY_PEER if config.optional_client_certificate else \
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            self._trust(ctx, config.certificate, mode)
        if config.psk_lookup is None and not config.async_psk:
            if not any(p.mutual_certificates for p in config.profiles):
                raise ConfigurationError("a server without a PSK table needs a certificate profile")
            return
        if config.identity_hint is not None:
            hint = config.identity_hint.encode()
            if len(hint) > _MAX_IDENTITY or b"\0" in hint:
                raise ConfigurationError("identity hint must be at most 256 bytes without NUL")
            _shim.use_psk_identity_hint(ctx, hint)
        lookup: PSKLookup | None = config.psk_lookup
        hide = not config.reveal_unknown_psk_identity
        decoy_psk = DecoyKeys(os.urandom(32))

        def _server_psk(conn: SSL.Connection, raw: bytes, max_len: int) -> bytes | None:
            owner = owner_of(conn)
            if owner is None:
                return None
            key = decoy_psk(raw)  # for every identity: known and unknown cost the same
            entry: PSKEntry | None = None
            try:
                ident = raw.decode("utf-8")
            except UnicodeDecodeError:
                owner._psk_failure = "psk identity is not valid UTF-8"
            else:
                owner._offered_identity = ident
                try:
                    if owner._async is not None:  # only what the application supplied, never a lookup here
                        entry = owner._async.entry_for(ident)[1]
                    else:
                        assert lookup is not None
                        entry = lookup(ident)
                except Exception as exc:  # any lookup failure rejects the handshake, never a traceback
                    log.error("PSK lookup raised %s for identity %r; handshake rejected", type(exc).__name__, ident)
                    owner._psk_failure = "psk lookup failed"
                else:
                    if entry is None:
                        owner._psk_failure = "unknown psk identity"
            if entry is None:
                if not hide:
                    return None
                owner._psk_decoy = True  # RFC 4279 §2: go on as if the identity existed with another key
            else:
                key = entry.key.reveal()
            if len(key) > max_len:
                owner._psk_failure = "psk too long for OpenSSL"
                return None
            owner._psk_entry = entry
            return key

        self._keepalive.append(_shim.set_psk_server_callback(ctx, _server_psk))

    @staticmethod
    def _load_dh(ctx: SSL.Context) -> None:
        _shim.load_dh(ctx, _FFDHE2048_PEM)

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
            if config.server_authentication_only:  # CAPIF onboarding: the server alone is authenticated
                if cred.chain_pem or cred.private_key_pem:
                    raise ConfigurationError("server_authentication_only takes no certificate of the client's own")
            else:
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

        def _client_psk(conn: SSL.Connection | None, hint: bytes | None, max_id: int,
                        max_psk: int) -> tuple[bytes, bytes] | None:
            owner = owner_of(conn) if conn is not None else None
            raw = key.reveal()
            if len(ident) + 1 > max_id or len(raw) > max_psk:
                return None
            if owner is not None and hint is not None:
                owner._identity_hint = hint.decode("utf-8", "replace")
            return ident, raw

        self._keepalive.append(_shim.set_psk_client_callback(ctx, _client_psk))

    @staticmethod
    def _use_credential(ctx: SSL.Context, cred: CertificateConfig, role: str) -> None:
        """Load our own chain (leaf first) and private key."""
        use_credential(ctx, cred, role)

    def _trust(self, ctx: SSL.Context, cred: CertificateConfig, mode: int) -> None:
        """Trust anchors (and CRLs) for the peer's chain; verification failures are recorded per connection."""
        self._anchors, crls = load_trust(cred)
        self._install_trust_store(ctx, crls)
        ctx.set_verify(mode, _verify_peer)

    def _install_trust_store(self, ctx: SSL.Context, crls: Sequence[x509.CertificateRevocationList] | None) -> None:
        install_trust_store(ctx, self._anchors, crls)

    def update_crls(self, crls: Sequence[x509.CertificateRevocationList]) -> bool:
        """Replace the CRLs that verify peer certificates; handshakes started from now on use them (live
        connections are not touched: :mod:`m2msec.gateway.revocation` ends those whose certificate is revoked).
        Returns False (and does nothing) when this context verifies no peer certificates."""
        if not hasattr(self, "_anchors"):
            return False
        self._install_trust_store(self._ctx, crls)
        return True

    def adopt(self, other: TLSContext) -> None:
        """Make the connections made from now on use ``other``'s configuration (certificate, key, trust anchors,
        CRLs, profiles, PSK settings): the gateway's reload (SIGHUP). Connections already made keep the OpenSSL
        context they were made from, with its callbacks, until they end. A DTLS server keeps its cookie secret,
        so that cookies sent before the reload still verify."""
        if other.dtls != self.dtls or other.is_server != self.is_server:
            raise ConfigurationError("a reloaded context must be of the same kind (TLS or DTLS, server or client)")
        if self.dtls and self.is_server:
            other._cookies = self._cookies  # other's cookie callbacks read other._cookies
        self.config = other.config
        self._ctx = other._ctx
        self._keepalive = other._keepalive
        if hasattr(other, "_anchors"):
            self._anchors = other._anchors
        elif hasattr(self, "_anchors"):
            del self._anchors

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
