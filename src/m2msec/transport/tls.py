"""asyncio adapter: TLS-PSK under any asyncio protocol.

:class:`TLSAdapter` is the protocol asyncio sees on the TCP socket. It drives a sans-I/O
:class:`~m2msec.tls.engine.TLSConnection`, owns the handshake timer, and once the handshake is done
gives the application protocol a :class:`TLSTransport`: an ordinary ``asyncio.Transport`` whose
``get_extra_info("m2msec_session")`` is the authenticated :class:`~m2msec.tls.engine.SessionInfo`
(also ``"peer_identity"`` and ``"sa_entity"``). So any asyncio protocol (asyncio streams, an h11
server, ...) runs inside TLS-PSK unchanged.

A client (:func:`create_connection`, :func:`open_connection`) needs IdB, the identity of the server, and checks
it after the handshake as :func:`m2msec.transport.dtls.create_dtls_endpoint` does (:mod:`m2msec.idb`, D23,
D39): the session it returns reports only an IdB that was checked.

Handshake failures are logged at INFO with the peer address and reason, the alert is flushed, and
the socket is closed: the server keeps serving. Nothing here logs key material.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from m2msec.errors import HandshakeFailed, HandshakeTimeout, TLSError
from m2msec.idb import AnyEntity, check_peer_entity, client_idb
from m2msec.tls.engine import (
    ClientConfig,
    ConnectionClosed,
    DataReceived,
    Event,
    HandshakeCompleted,
    PSKIdentityReceived,
    SessionInfo,
    TLSConnection,
    TLSContext,
)
from m2msec.transport.common import NOT_SESSION_INFO, Deadline, Deadlines, session_extra_info, start_application
from m2msec.transport.limits import ConnectionLimiter, Slot
from m2msec.transport.psk_resolver import MISS, PendingLookups, PSKResolver, check_resolver, probe, resolve

#: D214: buffers written together (an HTTP head and its body) that fit in one record are sent as one record, so
#: a response is one TLS record, not one per buffer (RFC 8446 §5.1 allows either; peers such as tlsfuzzer and
#: small clients expect one). A joined copy of at most this many bytes costs less than a record's overhead.
COALESCE_RECORD_BYTES = 16384

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "ConnectionLimiter",
    "TLSAdapter",
    "TLSTransport",
    "create_connection",
    "open_connection",
    "start_server",
    "start_stream_server",
]

log = logging.getLogger("m2msec.transport")

#: seconds a peer has to complete the handshake before the connection is dropped
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


class TLSTransport(asyncio.Transport):
    """The transport an application protocol sees: plaintext in, records out."""

    def __init__(self, adapter: TLSAdapter) -> None:
        super().__init__()
        self._adapter = adapter
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        adapter = self._adapter
        value = session_extra_info(name, adapter.session, adapter.tls, default)
        if value is NOT_SESSION_INFO:
            raw = adapter.raw_transport
            return raw.get_extra_info(name, default) if raw is not None else default
        return value

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writelines((data,))

    def writelines(self, list_of_data: Any) -> None:
        """Buffers that together fit in ``COALESCE_RECORD_BYTES`` go to the engine joined, as one record (D214);
        larger ones as they are (no joined copy); the records leave in one write."""
        if self._closing:
            return
        parts = [data for data in list_of_data if data]
        if len(parts) > 1 and sum(len(data) for data in parts) <= COALESCE_RECORD_BYTES:
            parts = [b"".join(parts)]
        try:
            for data in parts:
                self._adapter.tls.send(data)
        except TLSError as exc:
            log.info("send failed on %s: %s", self._adapter.peer, exc)
            self.abort()
            return
        self._adapter.flush()

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        raw = self._adapter.raw_transport
        return self._closing or raw is None or raw.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._adapter.tls.close()
        self._adapter.flush()
        if self._adapter.raw_transport is not None:
            self._adapter.raw_transport.close()

    def abort(self) -> None:
        self._closing = True
        if self._adapter.raw_transport is not None:
            self._adapter.raw_transport.abort()

    def pause_reading(self) -> None:
        if self._adapter.raw_transport is not None:
            self._adapter.raw_transport.pause_reading()

    def resume_reading(self) -> None:
        if self._adapter.raw_transport is not None:
            self._adapter.raw_transport.resume_reading()

    def is_reading(self) -> bool:
        raw = self._adapter.raw_transport
        return raw is not None and raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._adapter.raw_transport is not None:
            self._adapter.raw_transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        raw = self._adapter.raw_transport
        return raw.get_write_buffer_size() if raw is not None else 0


class TLSAdapter(asyncio.Protocol):
    """The socket-side protocol: bytes <-> :class:`TLSConnection`, then hands plaintext to ``app``."""

    def __init__(
        self,
        context: TLSContext,
        app_factory: Callable[[], asyncio.BaseProtocol],
        *,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        limiter: ConnectionLimiter | None = None,
        deadlines: Deadlines | None = None,
        psk_resolver: PSKResolver | None = None,
        pending_lookups: PendingLookups | None = None,
    ) -> None:
        self.context = context
        self._resolver = psk_resolver
        self._pending = pending_lookups if pending_lookups is not None else PendingLookups()
        self._lookup: asyncio.Task[None] | None = None
        self._limiter = limiter
        self._slot: Slot | None = None  # what this connection holds in the limiter
        self._app_factory = app_factory
        self._timeout = handshake_timeout
        # the server's, shared by its connections (one timer for all); a client connection has its own
        self._deadlines = deadlines if deadlines is not None else Deadlines(handshake_timeout)
        self.tls: TLSConnection = context.connection()
        self.raw_transport: asyncio.Transport | None = None
        self.app: asyncio.BaseProtocol | None = None
        self.session: SessionInfo | None = None
        self.peer: Any = None
        self._deadline: Deadline | None = None
        self._app_transport: TLSTransport | None = None
        self.handshake: asyncio.Future[SessionInfo] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw_transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass
        self.peer = transport.get_extra_info("peername")
        if self._limiter is not None:
            self._slot = self._limiter.admit(self.peer)
            if self._slot is None:
                transport.abort()  # type: ignore[attr-defined]
                return
        self._deadline = self._deadlines.add(self._handshake_timed_out)
        self.flush()  # a client's ClientHello

    def data_received(self, data: bytes) -> None:
        if self._slot is not None:
            self._slot.counts = True  # it spoke: an unfinished handshake is now a failure of its source (D231)
        self._feed(data)

    def eof_received(self) -> bool | None:
        self._feed(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None
        self._cancel_timer()
        if self._lookup is not None:
            self._lookup.cancel()  # a resolution outlasting the connection (handshake timeout) is dropped
            self._lookup = None
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeFailed("connection lost during the handshake"))
            self.handshake.exception()  # mark retrieved: a server has nobody awaiting it
        if self.app is not None:
            self.app.connection_lost(exc)
        self.raw_transport = None

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # -- internals
    def flush(self) -> None:
        out = self.tls.data_to_send()
        if out and self.raw_transport is not None and not self.raw_transport.is_closing():
            self.raw_transport.write(out)

    def _cancel_timer(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        if self.session is None:
            if self._slot is not None:
                self._slot.counts = True  # a silent connection that held its slot to the end counts too (D231)
            log.info("handshake from %s timed out after %.1f s", self.peer, self._timeout)
            self._fail(HandshakeTimeout(f"handshake did not complete within {self._timeout} s"))

    def _fail(self, exc: TLSError) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()
        if self.raw_transport is not None:
            self.raw_transport.close()

    def _feed(self, data: bytes) -> None:
        self._handle(lambda: self.tls.receive_data(data))

    def _ask(self, identity: str) -> None:
        """Supply the resolver's immediate answer (``lookup_now``), else start the application's resolver for
        ``identity`` in a task (capped per source and in total)."""
        if self._resolver is not None:
            entry = probe(self._resolver, identity, self.peer)
            if entry is not MISS:
                self._handle(lambda: self.tls.supply_psk(entry))
                return
        source = self._pending.acquire(self.peer) if self._resolver is not None else None
        if source is None:
            log.info("PSK resolution for %s refused: too many pending lookups", self.peer)
            self._handle(lambda: self.tls.supply_psk(None))
            return
        assert self._resolver is not None
        self._lookup = asyncio.get_running_loop().create_task(self._resolve(self._resolver, identity))
        # released when the task ends, however: a task cancelled before it ran never enters its finally
        self._lookup.add_done_callback(lambda _: self._pending.release(source))

    async def _resolve(self, resolver: PSKResolver, identity: str) -> None:
        entry = await resolve(resolver, identity, self.peer)
        self._lookup = None
        if self.raw_transport is not None:
            self._handle(lambda: self.tls.supply_psk(entry))

    def _handle(self, step: Callable[[], list[Event]]) -> None:
        try:
            events = step()
        except HandshakeFailed as exc:
            identity = self.tls.offered_identity
            log.info("handshake from %s failed (identity %r): %s", self.peer, identity, exc.reason)
            self.flush()  # the alert
            self._fail(exc)
            return
        except TLSError as exc:
            log.info("TLS error on %s: %s", self.peer, exc)
            self.flush()
            self._fail(exc)
            return
        self.flush()
        for event in events:
            if isinstance(event, HandshakeCompleted):
                self._cancel_timer()
                if self._slot is not None and not self._slot.established(event.session, self.peer):
                    self._fail(HandshakeFailed("too many connections for this credential"))
                    return
                self.session = event.session
                self._app_transport = TLSTransport(self)
                self.app = start_application(self._app_factory, self._app_transport)
                if not self.handshake.done():
                    self.handshake.set_result(event.session)
            elif isinstance(event, PSKIdentityReceived):
                self._ask(event.identity)
            elif isinstance(event, DataReceived):
                if isinstance(self.app, asyncio.Protocol):
                    self.app.data_received(event.data)
            elif isinstance(event, ConnectionClosed):
                keep_open = isinstance(self.app, asyncio.Protocol) and self.app.eof_received()
                if not keep_open and self._app_transport is not None:
                    self._app_transport.close()
                elif self.raw_transport is not None and not event.clean:
                    self.raw_transport.close()


async def start_server(
    app_factory: Callable[[], asyncio.BaseProtocol],
    host: str | None,
    port: int | None,
    context: TLSContext,
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    limiter: ConnectionLimiter | None = None,
    psk_resolver: PSKResolver | None = None,
    pending_lookups: PendingLookups | None = None,
    **kwargs: Any,
) -> asyncio.Server:
    """Serve TLS on ``host:port`` (or on a listening ``sock=``, with ``host=None``); each authenticated
    connection gets an ``app_factory()`` protocol.

    ``limiter`` (a :class:`ConnectionLimiter`) caps the open connections and counts the refused ones.
    ``psk_resolver`` (with a ``ServerConfig(async_psk=True)`` context) resolves PSK identities asynchronously,
    at most ``pending_lookups`` at a time (:mod:`m2msec.transport.psk_resolver`)."""
    check_resolver(context, psk_resolver)
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(handshake_timeout)  # one handshake timer for all the server's connections
    pending = pending_lookups if pending_lookups is not None else PendingLookups()
    return await loop.create_server(
        lambda: TLSAdapter(context, app_factory, handshake_timeout=handshake_timeout, limiter=limiter,
                           deadlines=deadlines, psk_resolver=psk_resolver, pending_lookups=pending),
        host, port, **kwargs,
    )


async def start_stream_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    host: str | None,
    port: int | None,
    context: TLSContext,
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    limit: int = 2**16,
    **kwargs: Any,
) -> asyncio.Server:
    """Like ``asyncio.start_server`` over TLS-PSK; the writer's ``get_extra_info("m2msec_session")`` tells
    who is connected."""

    def factory() -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=limit)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb)

    return await start_server(factory, host, port, context, handshake_timeout=handshake_timeout, **kwargs)


async def create_connection(
    app_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    context: TLSContext,
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    peer_entity: str | AnyEntity | None = None,
) -> tuple[TLSAdapter, SessionInfo]:
    """Connect, complete the handshake and return the adapter (``adapter.app`` is the protocol).

    ``peer_entity`` is IdB (default: the context's ``ClientConfig.peer_entity``; a different one is refused);
    one is required, or ``m2msec.idb.ANY_ENTITY`` to accept any server (docs/decisions.md D23). A certificate
    server must present IdB's CSE-ID certificate (:func:`m2msec.idb.check_peer_entity`).

    Raises:
        ConfigurationError: no IdB, a malformed one, or a contradiction; nothing is sent.
        HandshakeFailed, HandshakeTimeout: authentication failed (or the server is not IdB) or took too long.
        OSError: the TCP connection could not be made.
    """
    if not isinstance(context.config, ClientConfig):
        from m2msec.errors import ConfigurationError

        raise ConfigurationError("create_connection needs a client context")
    idb, own_chain = client_idb(context.config, peer_entity)
    loop = asyncio.get_running_loop()
    _, adapter = await loop.create_connection(
        lambda: TLSAdapter(context, app_factory, handshake_timeout=handshake_timeout), host, port
    )
    try:
        session = await adapter.handshake
    except BaseException:
        if adapter.raw_transport is not None:
            adapter.raw_transport.close()
        raise
    try:
        check_peer_entity(session, idb, own_chain_pem=own_chain)
    except HandshakeFailed:
        if adapter._app_transport is not None:
            adapter._app_transport.close()  # close_notify: not IdB
        raise
    return adapter, session


async def open_connection(
    host: str,
    port: int,
    context: TLSContext,
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    limit: int = 2**16,
    peer_entity: str | AnyEntity | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, SessionInfo]:
    """Like ``asyncio.open_connection`` over TLS; also returns the established :class:`SessionInfo`.

    IdB (``peer_entity``) is required and checked as by :func:`create_connection`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    adapter, session = await create_connection(
        lambda: protocol, host, port, context, handshake_timeout=handshake_timeout, peer_entity=peer_entity
    )
    assert adapter._app_transport is not None
    writer = asyncio.StreamWriter(adapter._app_transport, protocol, reader, loop)
    return reader, writer, session
