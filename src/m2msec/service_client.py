"""The client side shared by the MAF's and the MEF's clients: one kept TLS connection to a service (the MAF
Handshake, TS-0003 §8.8.2.2, or the MEF Handshake, §8.3.2.1) and HTTP/1.1 exchanges over it, one after the other.

- :func:`psk_or_certificate_config`: the :class:`~m2msec.tls.engine.ClientConfig` of a PSK or certificate credential.
- :func:`check_fqdn_peer`: the service authenticated by the PSK, or by a verified FQDN certificate for its FQDN.
- :class:`ServiceConnection`: one handshake (bounded by ``timeout``) and its exchanges.
- :class:`KeptConnection`: one kept :class:`ServiceConnection`; a reused one the service had closed is replaced by
  one new handshake; every request is bounded by ``timeout``; transport failures are TransportError.

``service`` ("MAF", "MEF") names the service in error texts, which never carry key material.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import h11

from m2msec import http1
from m2msec.errors import HandshakeFailed, IdentifierError, TransportError
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import DEFAULT_CLIENT_PROFILES, CertificateConfig, ClientConfig, SessionInfo, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, CipherProfile
from m2msec.transport.tls import TLSAdapter

__all__ = ["KeptConnection", "ServiceConnection", "check_fqdn_peer", "psk_or_certificate_config"]

R = TypeVar("R")


def psk_or_certificate_config(server_name: str, *, psk_identity: str | None, psk: SecretKey | None,
                              chain_pem: bytes | None, private_key_pem: bytes | None,
                              trust_anchors_pem: bytes | None,
                              profiles: tuple[CipherProfile, ...] | None) -> ClientConfig:
    """TLS-PSK with (``psk_identity``, ``psk``) when an identity is given, else mutual certificates (ECDHE-ECDSA
    unless ``profiles`` says otherwise); ``server_name`` is sent as SNI."""
    if psk_identity is not None:
        return ClientConfig(psk_identity=psk_identity, psk=psk, profiles=profiles or DEFAULT_CLIENT_PROFILES,
                            server_name=server_name)
    assert chain_pem is not None and private_key_pem is not None
    cert = CertificateConfig(chain_pem, private_key_pem, trust_anchors_pem)
    return ClientConfig(None, None, profiles=profiles or (ECDHE_ECDSA,), server_name=server_name, certificate=cert)


def check_fqdn_peer(session: SessionInfo, fqdn: str, *, service: str, psk_name: str) -> None:
    """The ``service`` authenticated by the PSK (``psk_name``: "Km", "PSK"), or by a verified FQDN certificate for
    ``fqdn`` (TS-0003 §10.1.3). Raises HandshakeFailed: anything else."""
    if session.psk_identity is not None:
        return
    if session.peer_certificate is None:
        raise HandshakeFailed(f"the {service} was authenticated neither by the {psk_name} nor by a verified "
                              "certificate")
    from m2msec.pki import CertificateFlavour, identity_from_certificate

    try:
        ident = identity_from_certificate(session.peer_certificate)
    except IdentifierError as exc:
        raise HandshakeFailed(f"the {service}'s certificate names no FQDN ({exc})") from None
    if ident.flavour is not CertificateFlavour.FQDN or ident.value.lower() != fqdn:
        raise HandshakeFailed(f"the {service}'s certificate is a {ident.flavour.value} certificate for "
                              f"{ident.value[:80]!r}, not for the {service}-FQDN {fqdn!r} (an FQDN "
                              "certificate for it is required)")


class _Stream(asyncio.StreamReaderProtocol):
    """A stream protocol that keeps the TLS transport it was given (for the writer)."""

    transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        super().connection_made(transport)


class ServiceConnection:
    """One handshake with the ``service`` and the HTTP/1.1 exchanges over it (answers up to ``max_body``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: SessionInfo, *,
                 service: str, max_body: int) -> None:
        self.reader, self.writer, self.session = reader, writer, session
        self.service, self.max_body = service, max_body
        self.http = h11.Connection(h11.CLIENT)
        self.used = False
        self.exported_key_used = False  # the MAF takes one exporter-derived key per handshake

    @classmethod
    async def open(cls, host: str, port: int, context: TLSContext, *, service: str, timeout: float,
                   check_peer: Callable[[SessionInfo], None], max_body: int) -> ServiceConnection:
        """Connect and run the handshake within ``timeout``, then ``check_peer`` (HandshakeFailed closes it).

        Raises: TransportError (no connection or no handshake in time), HandshakeFailed."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        protocol = _Stream(reader, loop=loop)
        try:
            async with asyncio.timeout(timeout):
                _, adapter = await loop.create_connection(
                    lambda: TLSAdapter(context, lambda: protocol, handshake_timeout=timeout), host, port)
                try:
                    session = await adapter.handshake
                except BaseException:
                    if adapter.raw_transport is not None:
                        adapter.raw_transport.close()
                    raise
        except TimeoutError:
            raise TransportError(f"no {service} Handshake with {host}:{port} within {timeout:g} s") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to the {service} at {host}:{port}: "
                                 f"{exc.strerror or exc}") from None
        assert protocol.transport is not None
        writer = asyncio.StreamWriter(protocol.transport, protocol, reader, loop)  # type: ignore[arg-type]
        try:
            check_peer(session)
        except HandshakeFailed:
            writer.close()
            raise
        return cls(reader, writer, session, service=service, max_body=max_body)

    @property
    def reusable(self) -> bool:
        if self.writer.is_closing() or self.reader.at_eof():
            return False
        return (self.http.our_state, self.http.their_state) in ((h11.IDLE, h11.IDLE), (h11.DONE, h11.DONE))

    def export(self, label: str, length: int) -> SecretKey:
        """The TLS exporter (RFC 8446 §7.5) of this handshake, with no context."""
        key: SecretKey = self.writer.get_extra_info("tls_connection").export_keying_material(label, length, None)
        return key

    async def exchange(self, msg: http1.Message) -> http1.Message:
        if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE:
            self.http.start_next_cycle()
        self.used = True
        await http1.send_message(self.http, self.writer, msg)
        resp = await http1.read_message(self.http, self.reader, max_body=self.max_body)
        if resp is None:
            raise http1.HTTPError(f"the {self.service} closed the connection before answering")
        return resp

    def close(self) -> None:
        self.writer.close()


class KeptConnection:
    """One kept connection to the ``service`` at ``host:port`` (see the module docstring). ``context`` may be
    replaced between requests (the next handshake uses it)."""

    def __init__(self, host: str, port: int, context: TLSContext, *, service: str, timeout: float,
                 check_peer: Callable[[SessionInfo], None], max_body: int) -> None:
        self.host, self.port, self.context = host, port, context
        self.service, self.timeout, self.max_body = service, timeout, max_body
        self.check_peer = check_peer
        self.connection: ServiceConnection | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        conn, self.connection = self.connection, None
        if conn is not None:
            conn.close()
            try:
                await conn.writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _current(self, fresh: Callable[[ServiceConnection], bool] | None) -> ServiceConnection:
        conn = self.connection
        if conn is not None and ((fresh is not None and fresh(conn)) or not conn.reusable):
            self.connection = None
            conn.close()
            conn = None
        if conn is None:
            conn = self.connection = await ServiceConnection.open(
                self.host, self.port, self.context, service=self.service, timeout=self.timeout,
                check_peer=self.check_peer, max_body=self.max_body)
        return conn

    async def request(self, msg: http1.Message, *, fresh: Callable[[ServiceConnection], bool] | None = None,
                      on_answer: Callable[[ServiceConnection], R] | None = None) -> tuple[http1.Message, R | None]:
        """Send ``msg`` and read the answer (any status) within ``timeout``; with ``fresh``, a kept connection it
        holds true for is replaced first; ``on_answer`` runs on the connection that carried the answer (its result
        is returned). A reused connection the service had closed is replaced once.

        Raises: TransportError, HandshakeFailed."""
        async with self._lock:
            for attempt in (0, 1):
                conn = await self._current(fresh)
                reused = conn.used
                try:
                    async with asyncio.timeout(self.timeout):
                        resp = await conn.exchange(msg)
                except (http1.HTTPError, ConnectionError, TimeoutError) as exc:
                    self.connection = None
                    conn.close()
                    if reused and attempt == 0 and not isinstance(exc, TimeoutError):
                        continue  # the service closed an idle connection: one new handshake
                    what = "no answer in time" if isinstance(exc, TimeoutError) else "no valid answer"
                    raise TransportError(f"{what} from the {self.service} at {self.host}:{self.port}") from None
                result = on_answer(conn) if on_answer is not None else None
                if resp.header("connection") == "close":
                    self.connection = None
                    conn.close()
                return resp, result
        raise AssertionError("unreachable")  # pragma: no cover
