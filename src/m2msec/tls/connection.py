"""The sans-I/O TLS connection: the handshake and record state machine over memory BIOs, its events and
the :class:`SessionInfo` a handshake establishes (see :mod:`m2msec.tls.engine` for the theory of operation).
"""

from __future__ import annotations

import enum
import ipaddress
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from OpenSSL import SSL

from m2msec.errors import ConfigurationError, HandshakeFailed, TLSProtocolError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry
from m2msec.tls import _shim
from m2msec.tls.async_psk import AsyncPSK, AsyncPSKConnection, PSKIdentityReceived
from m2msec.tls.config import ClientConfig, ServerConfig
from m2msec.tls.failures import failure_kind

if TYPE_CHECKING:
    from m2msec.tls.context import TLSContext

__all__ = [
    "PSK_NOT_ACCEPTED",
    "ConnectionClosed",
    "ConnectionState",
    "DataReceived",
    "Event",
    "HandshakeCompleted",
    "PSKIdentityReceived",
    "SessionInfo",
    "TLSConnection",
    "owner_of",
]

#: docs/decisions.md D38: why a client without trust anchors refuses a server that did not authenticate with the
#: PSK (TLS 1.3 lets a server ignore the offered PSK and authenticate with a certificate instead)
PSK_NOT_ACCEPTED = ("the server did not authenticate with the PSK (it sent a certificate instead); a PSK client "
                    "without trust anchors accepts only PSK-authenticated servers")

#: RFC 5705 §4: labels that collide with TLS's own PRF uses and must not be used for export.
_RESERVED_EXPORT_LABELS = frozenset({"client finished", "server finished", "master secret", "key expansion"})
@dataclass(frozen=True)
class SessionInfo:
    """What the handshake established. Holds no key material in the open: ``psk_key`` (server side) is the
    :class:`~m2msec.keys.secret.SecretKey` the session was authenticated with, never in repr or comparisons.

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
    #: server side: the key of the PSK entry the client authenticated with (D175: an application that may see the
    #: key of an identity change, the AEF, checks that a session still runs on the current one)
    psk_key: SecretKey | None = field(default=None, repr=False, compare=False)

    @property
    def authentication(self) -> str:
        """``"psk"`` or ``"certificate"``: how the peer authenticated; ``"none"`` for a client that sent no
        certificate to a server where it is optional (``ServerConfig.optional_client_certificate``)."""
        if self.psk_identity is not None:
            return "psk"
        return "none" if self.is_server and self.peer_certificate is None else "certificate"


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


Event = HandshakeCompleted | DataReceived | ConnectionClosed | PSKIdentityReceived


class ConnectionState(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"
    FAILED = "failed"


# --------------------------------------------------------------------------------------------------
# connection


class TLSConnection(AsyncPSKConnection):
    """One TLS connection over memory BIOs (sans-I/O).

    Use: ``events = conn.receive_data(bytes_from_peer)``; send ``conn.data_to_send()`` to the peer after
    every call. ``receive_data(b"")`` signals EOF from the transport.

    Raises:
        HandshakeFailed: from :meth:`receive_data` when the handshake fails; an alert for the peer may
            still be waiting in :meth:`data_to_send`.
        TLSProtocolError: on a TLS failure after the handshake, or misuse.
    """

    #: OpenSSL takes a whole datagram from the BIO at once (DTLS): records after the peer's Finished wait in its
    #: record buffer, seen neither in the BIO nor by SSL_pending, so SSL_read always runs after the handshake
    _WHOLE_DATAGRAMS = False

    def __init__(self, context: TLSContext) -> None:
        self._context = context
        self._ssl = SSL.Connection(context._ctx, None)
        # the callbacks of the OpenSSL context this connection was made from, kept alive with it even after
        # TLSContext.adopt() moved the context on to a new configuration (a reload)
        self._callbacks = context._keepalive
        # a weak reference back: a strong one would make a reference cycle (this -> SSL.Connection -> this), and
        # every dropped connection, OpenSSL's SSL object with it, would wait for the cyclic garbage collector
        self._ssl.set_app_data(weakref.ref(self))
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
        self._failure_kind: str | None = None
        self._async: AsyncPSK | None = None
        config = context.config
        if isinstance(config, ServerConfig) and config.async_psk:
            self._async = AsyncPSK(
                dtls=context.dtls, tls13=any(p.tls13_suites for p in config.profiles),
                certificates=any(p.mutual_certificates for p in config.profiles),
                reveal=config.reveal_unknown_psk_identity, max_client_hello=config.max_client_hello)
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
    def failure_kind(self) -> str:
        """Server side, after a failed handshake: why, in one word (:mod:`m2msec.tls.failures`)."""
        return self._failure_kind or "protocol"

    @property
    def psk_entry(self) -> PSKEntry | None:
        """Server side: the PSK table entry the client authenticated with."""
        return self._psk_entry

    def _feed(self, data: bytes) -> list[Event]:
        if self.state in (ConnectionState.CLOSED, ConnectionState.FAILED):
            return []
        _shim.feed(self._ssl, data)
        return self._progress()

    def _handshaking(self) -> bool:
        return self.state is ConnectionState.HANDSHAKING

    def _fail(self) -> None:
        self.state = ConnectionState.FAILED

    # -- I/O
    def data_to_send(self) -> bytes:
        """Bytes that must be written to the peer, in order. Empty when there is nothing to send."""
        out = _shim.drain_bio(self._ssl, self._context._buffer)
        if self._async is not None:
            self._async.saw_output(out)
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes received from the peer (``b""`` = transport EOF); return what happened."""
        if self.state in (ConnectionState.CLOSED, ConnectionState.FAILED):
            return []
        if data:
            if self._async is not None and self.state is ConnectionState.HANDSHAKING:
                return self._async_input(data)
            _shim.feed(self._ssl, data)
        elif self.state is ConnectionState.HANDSHAKING:
            self.state = ConnectionState.FAILED
            self._failure_kind = "closed"
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
            if not self._WHOLE_DATAGRAMS and not _shim.input_pending(self._ssl):  # the peer's flight ended the input
                return events
        events.extend(self._read_application_data())
        return events

    def _advance_handshake(self) -> bool:
        try:
            done = _shim.do_handshake(self._ssl)
        except SSL.Error as exc:
            self.state = ConnectionState.FAILED
            raise self._handshake_error(exc) from None
        if done is False:
            return False
        if done is None:
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
            return _shim.session_reused(self._ssl)
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
        conn, buf = self._ssl, self._context._buffer
        while True:
            try:
                result = _shim.read_once(conn, buf)
            except SSL.ZeroReturnError:
                self.state = ConnectionState.CLOSED
                events.append(ConnectionClosed(clean=True))
                break
            except SSL.WantReadError:
                break
            except SSL.Error as exc:
                self.state = ConnectionState.FAILED
                raise TLSProtocolError(f"TLS record error: {_reason(exc)}") from None
            if isinstance(result, bytes):
                events.append(DataReceived(result))
                continue
            if result == _shim.READ_CLOSED:
                self.state = ConnectionState.CLOSED
                events.append(ConnectionClosed(clean=True))
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
        # each fact read once, straight from OpenSSL (version, cipher, SNI in one shim call)
        version, cipher, server_name_raw = _shim.session_facts(self._ssl)
        server_name = server_name_raw.decode("idna") if server_name_raw else None
        context = self._context
        # only a certificate OpenSSL verified against trust anchors is reported (an RSA_PSK server certificate
        # seen by a client without anchors is not: nothing may read an identity from it)
        peer = self._ssl.get_peer_certificate(as_cryptography=True) if context.verifies_certificates else None
        identity: str | None
        if context.is_server:
            entry = self._psk_entry
            optional = isinstance(context.config, ServerConfig) and context.config.optional_client_certificate
            if entry is None and peer is None and not optional:  # one of the two must have authenticated the client
                raise TLSProtocolError("handshake completed without a PSK or a client certificate")
            identity, entity = (entry.identity, entry.entity) if entry is not None else (None, None)
            hint = context.config.identity_hint if isinstance(context.config, ServerConfig) else None
        else:
            assert isinstance(context.config, ClientConfig)
            psk_auth = context.config.psk_identity is not None and self._psk_authenticated()
            identity = context.config.psk_identity if psk_auth else None
            entity = context.config.peer_entity
            hint = self._identity_hint
            if server_name is None:
                server_name = context.config.server_name
        return SessionInfo(
            is_server=context.is_server,
            version=version,
            cipher=cipher,
            psk_identity=identity,
            entity=entity,
            server_name=server_name,
            identity_hint=hint,
            session_id=self._session_id() if version != "TLSv1.3" else b"",
            peer_certificate=peer,
            peer_chain=tuple(self._ssl.get_verified_chain(as_cryptography=True) or ()) if peer else (),
            psk_key=self._psk_entry.key if context.is_server and self._psk_entry is not None else None,
        )

    def _session_id(self) -> bytes:
        der = _shim.session_der(self._ssl)
        if der is None:
            return b""
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
        failed = self._classify(exc)
        self._failure_kind = failure_kind(failed, verify_failure=self._verify_failure is not None,
                                          psk_failure=self._psk_failure, known_identity=self._psk_entry is not None)
        return failed

    def _classify(self, exc: SSL.Error) -> HandshakeFailed:
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


def owner_of(conn: SSL.Connection) -> TLSConnection | None:
    """The :class:`TLSConnection` an OpenSSL callback's connection belongs to (None once it is gone)."""
    ref: weakref.ref[TLSConnection] | None = conn.get_app_data()
    return ref() if ref is not None else None


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


#: DER tags of SSL_SESSION_ASN1's start: SEQUENCE { version, ssl_version, cipher, session_id, ...
_SESSION_DER_TAGS = (0x30, 0x02, 0x02, 0x04, 0x04)


def _parse_session_der(der: bytes) -> bytes:
    """Session ID from a DER SSL_SESSION (OpenSSL's SSL_SESSION_ASN1: version, ssl_version, cipher, id)."""
    pos = 0
    for index, tag in enumerate(_SESSION_DER_TAGS):
        if der[pos] != tag:
            raise ValueError("unexpected SSL_SESSION layout")
        length = der[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(der[pos : pos + n], "big")
            pos += n
        if index == 4:
            return der[pos : pos + length]
        if index:  # step over version, ssl_version and cipher; step into the SEQUENCE
            pos += length
    raise ValueError("unexpected SSL_SESSION layout")
