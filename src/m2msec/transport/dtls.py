"""asyncio adapter: DTLS 1.2 (PSK) over UDP, under any datagram protocol.

The server side (:class:`DTLSServerProtocol`) keeps one :class:`~m2msec.tls.engine.DTLSConnection` per
peer address, but only after the peer has returned a valid cookie (RFC 6347 §4.2.1): a ClientHello from a
spoofed source costs one HelloVerifyRequest and no memory. Peers still in their handshake are capped
(``max_handshaking``, and ``max_handshaking_per_source`` per source address, IPv6 per /64:
:mod:`m2msec.transport.limits`) and dropped after ``handshake_timeout``; established peers are capped
(``max_peers``; ``max_peers_per_source`` per source, ``max_peers_per_sa`` per credential, at most half of
``max_peers``: docs/decisions.md D47) and evicted after ``idle_timeout``. Retransmission timers follow the engine's
``timeout()`` (RFC 6347 §4.2.4).

Each authenticated peer gets its own application protocol (an ``asyncio.DatagramProtocol``) and a
:class:`DTLSPeerTransport` whose ``sendto(data)`` encrypts for that peer and whose
``get_extra_info("m2msec_session")`` tells who it is. Nothing here logs key material.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from m2msec.errors import HandshakeFailed, HandshakeTimeout, TLSError
from m2msec.idb import AnyEntity, check_peer_entity, client_idb
from m2msec.tls.engine import (
    DEFAULT_DTLS_MTU,
    ClientConfig,
    ConnectionClosed,
    DataReceived,
    DTLSConnection,
    Event,
    HandshakeCompleted,
    PSKIdentityReceived,
    SessionInfo,
    TLSContext,
)
from m2msec.transport.common import NOT_SESSION_INFO, Deadline, Deadlines, session_extra_info, start_application
from m2msec.transport.dtls_records import is_initial_client_hello, without_plaintext_alerts
from m2msec.transport.limits import (
    DEFAULT_MAX_CONNECTIONS_PER_SA,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
    ConnectionLimiter,
    Slot,
    SourceLimiter,
    source_of,
)
from m2msec.transport.psk_resolver import MISS, PendingLookups, PSKResolver, check_resolver, probe, resolve

__all__ = ["DTLSPeerTransport", "DTLSServerProtocol", "create_dtls_endpoint", "start_dtls_server"]

log = logging.getLogger("m2msec.transport.dtls")

Address = Any
AppFactory = Callable[[], asyncio.DatagramProtocol]


@dataclass(eq=False)
class _Peer:
    conn: DTLSConnection
    addr: Address
    started: float
    last_seen: float
    app: asyncio.DatagramProtocol | None = None
    transport: DTLSPeerTransport | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    slot: Slot | None = None  # what it holds in the server's limiter
    deadline: Deadline | None = field(default=None, repr=False)  # of its handshake (server side)
    lookup: asyncio.Task[None] | None = field(default=None, repr=False)  # its PSK resolution (server side)


class DTLSPeerTransport(asyncio.DatagramTransport):
    """One authenticated peer, as its application protocol sees it."""

    def __init__(self, endpoint: _Endpoint, peer: _Peer) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._peer = peer
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer.addr
        value = session_extra_info(name, self._peer.conn.session, self._peer.conn, default)
        return default if value is NOT_SESSION_INFO else value

    def sendto(self, data: bytes | bytearray | memoryview, addr: Address = None) -> None:
        if self._closing:
            return
        try:
            self._peer.conn.send(bytes(data))
        except TLSError as exc:
            log.info("send to %s failed: %s", self._peer.addr, exc)
            self._endpoint._drop(self._peer)
            return
        self._endpoint._flush(self._peer)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._peer.conn.close()  # close_notify
            self._endpoint._flush(self._peer)
            self._endpoint._drop(self._peer)

    def abort(self) -> None:
        self._closing = True
        self._endpoint._drop(self._peer)

    def get_write_buffer_size(self) -> int:
        return 0


class _Endpoint(asyncio.DatagramProtocol):
    """Shared per-peer machinery of the server and client endpoints."""

    def __init__(self, context: TLSContext, app_factory: AppFactory, *, mtu: int) -> None:
        self.context = context
        self.app_factory = app_factory
        self.mtu = mtu
        self.transport: asyncio.DatagramTransport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's UDPTransport is not a subclass

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)  # ICMP unreachable and the like: the peer timers deal with it

    def _send(self, datagrams: list[bytes], addr: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            for datagram in datagrams:
                self.transport.sendto(datagram, addr)

    def _flush(self, peer: _Peer) -> None:
        self._send(peer.conn.datagrams_to_send(), peer.addr)

    def _schedule(self, peer: _Peer) -> None:
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        delay = peer.conn.timeout()
        if delay is not None:
            peer.timer = self.loop.call_later(max(delay, 0.001), self._on_timer, peer)

    def _on_timer(self, peer: _Peer) -> None:
        peer.timer = None
        try:
            peer.conn.handle_timeout()
        except HandshakeTimeout as exc:
            log.info("DTLS handshake with %s failed: %s", peer.addr, exc)
            self._fail(peer, exc)
            return
        self._flush(peer)
        self._schedule(peer)

    def _process(self, peer: _Peer, datagram: bytes) -> None:
        peer.last_seen = self.loop.time()
        self._step(peer, lambda: peer.conn.receive_datagram(datagram))

    def _step(self, peer: _Peer, step: Callable[[], list[Event]]) -> None:
        try:
            events = step()
        except TLSError as exc:
            log.info("DTLS with %s failed (identity %r): %s", peer.addr, peer.conn.offered_identity, exc)
            self._flush(peer)  # the alert
            self._fail(peer, exc)
            return
        self._flush(peer)
        self._schedule(peer)
        self._dispatch(peer, events)

    def _dispatch(self, peer: _Peer, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, HandshakeCompleted):
                if not self._admit(peer, event.session):
                    return
                peer.transport = DTLSPeerTransport(self, peer)
                peer.app = start_application(self.app_factory, peer.transport)
                self._established(peer, event.session)
            elif isinstance(event, DataReceived) and peer.app is not None:
                peer.app.datagram_received(event.data, peer.addr)
            elif isinstance(event, ConnectionClosed):
                self._drop(peer)
            elif isinstance(event, PSKIdentityReceived):
                self._ask(peer, event.identity)

    def _ask(self, peer: _Peer, identity: str) -> None:
        """Hook (server, ``async_psk``): resolve ``identity``, then ``peer.conn.supply_psk``."""

    def _admit(self, peer: _Peer, session: SessionInfo) -> bool:
        """Hook: may ``peer``, whose handshake just completed, be served? (False: it has been dropped)"""
        return True

    def _established(self, peer: _Peer, session: SessionInfo) -> None:
        """Hook: the handshake with ``peer`` completed."""

    def _fail(self, peer: _Peer, exc: TLSError) -> None:
        self._drop(peer)

    def _drop(self, peer: _Peer) -> None:
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        if peer.app is not None:
            app, peer.app = peer.app, None
            app.connection_lost(None)


class DTLSServerProtocol(_Endpoint):
    """DTLS 1.2 server on one UDP socket; see the module docstring for the limits."""

    def __init__(
        self,
        context: TLSContext,
        app_factory: AppFactory,
        *,
        mtu: int = DEFAULT_DTLS_MTU,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        max_peers: int = 10000,
        max_handshaking: int = 1000,
        max_handshaking_per_source: int = DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
        max_peers_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        max_peers_per_sa: int = DEFAULT_MAX_CONNECTIONS_PER_SA,
        psk_resolver: PSKResolver | None = None,
        pending_lookups: PendingLookups | None = None,
    ) -> None:
        check_resolver(context, psk_resolver)
        super().__init__(context, app_factory, mtu=mtu)
        self.psk_resolver = psk_resolver
        self.pending_lookups = pending_lookups if pending_lookups is not None else PendingLookups()
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_peers = max_peers
        self.max_handshaking = max_handshaking
        #: the caps, as on the TLS side (:class:`~m2msec.transport.limits.ConnectionLimiter`)
        self.limiter = ConnectionLimiter(max_peers, per_source_handshakes=max_handshaking_per_source,
                                         per_source_connections=max_peers_per_source, per_sa=max_peers_per_sa,
                                         max_handshaking=max_handshaking)
        self.peers: dict[Address, _Peer] = {}
        self.deadlines = Deadlines(handshake_timeout)  # the handshake timeout, one timer for all peers
        self.dropped = 0  # datagrams refused because a cap was reached
        self.ignored = 0  # datagrams from unknown peers that are no ClientHello: dropped unparsed
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def sources(self) -> SourceLimiter:
        """Handshakes in progress per source."""
        assert self.limiter.sources is not None
        return self.limiter.sources

    @property
    def peer_sources(self) -> SourceLimiter:
        """Peers (handshaking or not) per source."""
        assert self.limiter.open_per_source is not None
        return self.limiter.open_per_source

    @property
    def peer_sas(self) -> SourceLimiter:
        """Established peers per credential."""
        assert self.limiter.per_sa is not None
        return self.limiter.per_sa

    @property
    def handshaking(self) -> int:
        return self.limiter.handshaking

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._sweep()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for peer in list(self.peers.values()):
            self._drop(peer)
        self.deadlines.close()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        peer = self.peers.get(addr)
        # A peer mid-handshake gets everything, retransmitted ClientHellos included: restarting it there would
        # race our own retransmitted flight and strand the client. Only an established peer may start over.
        if peer is not None and (peer.conn.session is None or not is_initial_client_hello(data)):
            if peer.conn.session is None:  # mid-handshake: a spoofed epoch-0 alert must not end it (D232)
                data = without_plaintext_alerts(data)
                if not data:
                    self.ignored += 1
                    return
            self._process(peer, data)
            return
        # a new peer, or an established one starting over (RFC 6347 §4.2.8): stateless until the cookie is back.
        # Only a ClientHello can start a handshake: anything else from an unknown peer (a random-datagram flood) is
        # dropped before an engine connection is built for it (issue 21 part 3: that cost starved real peers)
        if not is_initial_client_hello(data):
            self.ignored += 1
            return
        conn = self.context.dtls_connection(addr, mtu=self.mtu)
        try:
            events = conn.receive_datagram(data)
        except HandshakeFailed as exc:
            log.debug("ClientHello from %s refused: %s", addr, exc)
            self._send(conn.datagrams_to_send(), addr)
            return
        if conn.awaiting_cookie:
            self._send(conn.datagrams_to_send(), addr)
            return  # HelloVerifyRequest sent (or junk ignored), nothing kept
        # the peer proved it receives at its address: now the caps on kept state apply, its source's first
        if peer is not None:  # starting over: refused while its source's or all handshake slots are taken
            source = source_of(addr)
            if self.sources.held.get(source, 0) >= self.sources.limit:
                self.sources.refused += 1
                self.dropped += 1
                return
            if self.handshaking >= self.max_handshaking:
                self.dropped += 1
                return
            self._drop(peer)  # its slot goes, and is taken again just below
        slot = self.limiter.admit(addr)
        if slot is None:
            self.dropped += 1
            return
        slot.counts = True  # it sent a ClientHello with a cookie: unfinished, it is a failure (D231)
        self._send(conn.datagrams_to_send(), addr)
        now = self.loop.time()
        peer = _Peer(conn, addr, now, now, slot=slot)
        peer.deadline = self.deadlines.add(lambda: self._handshake_timed_out(peer))
        self.peers[addr] = peer
        self._schedule(peer)
        self._dispatch(peer, events)

    def _ask(self, peer: _Peer, identity: str) -> None:
        if self.psk_resolver is not None:
            entry = probe(self.psk_resolver, identity, peer.addr)
            if entry is not MISS:  # answered at once: no task, nothing held
                self._step(peer, lambda: peer.conn.supply_psk(entry))
                return
        source = self.pending_lookups.acquire(peer.addr) if self.psk_resolver is not None else None
        if source is None:
            log.info("PSK resolution for %s refused: too many pending lookups", peer.addr)
            self._step(peer, lambda: peer.conn.supply_psk(None))
            return
        assert self.psk_resolver is not None
        peer.lookup = self.loop.create_task(self._resolve(peer, self.psk_resolver, identity))
        # released when the task ends, however: a task cancelled before it ran never enters its finally
        peer.lookup.add_done_callback(lambda _: self.pending_lookups.release(source))

    async def _resolve(self, peer: _Peer, resolver: PSKResolver, identity: str) -> None:
        entry = await resolve(resolver, identity, peer.addr)
        peer.lookup = None
        if self.peers.get(peer.addr) is peer:
            self._step(peer, lambda: peer.conn.supply_psk(entry))

    def _admit(self, peer: _Peer, session: SessionInfo) -> bool:
        if peer.slot is None or peer.slot.established(session, peer.addr):
            return True
        self.dropped += 1
        self._drop(peer)
        return False

    def _handshake_timed_out(self, peer: _Peer) -> None:
        peer.deadline = None
        if peer.conn.session is None and self.peers.get(peer.addr) is peer:
            # an unknown identity is answered as a wrong key is (RFC 4279 §2): silence, so it ends here
            log.info("DTLS handshake from %s timed out (identity %r): %s", peer.addr, peer.conn.offered_identity,
                     peer.conn.psk_failure or "no answer")
            self._drop(peer)

    def _established(self, peer: _Peer, session: SessionInfo) -> None:
        if peer.deadline is not None:
            peer.deadline.cancel()
            peer.deadline = None
        log.info("DTLS SA with %s: psk_identity=%r %s", peer.addr, session.psk_identity, session.cipher)

    def _drop(self, peer: _Peer) -> None:
        if self.peers.get(peer.addr) is peer:
            del self.peers[peer.addr]
        if peer.slot is not None:
            peer.slot.release()
            peer.slot = None
        if peer.deadline is not None:
            peer.deadline.cancel()
            peer.deadline = None
        if peer.lookup is not None:
            peer.lookup.cancel()  # a resolution outlasting its peer is dropped
            peer.lookup = None
        super()._drop(peer)

    def _sweep(self) -> None:
        now = self.loop.time()
        for peer in list(self.peers.values()):
            if peer.conn.session is not None and now - peer.last_seen > self.idle_timeout:
                if peer.transport is not None:
                    peer.transport.close()
                else:
                    self._drop(peer)
        interval = max(self.idle_timeout / 4, 0.05)  # handshakes have their own deadlines
        self._sweeper = self.loop.call_later(interval, self._sweep)


class _ClientProtocol(_Endpoint):
    def __init__(self, context: TLSContext, app_factory: AppFactory, *, mtu: int, remote: Address) -> None:
        super().__init__(context, app_factory, mtu=mtu)
        now = self.loop.time()
        self.peer = _Peer(context.dtls_connection(remote, mtu=mtu), remote, now, now)
        self.handshake: asyncio.Future[SessionInfo] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._flush(self.peer)  # ClientHello
        self._schedule(self.peer)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._process(self.peer, data)

    def _established(self, peer: _Peer, session: SessionInfo) -> None:
        if not self.handshake.done():
            self.handshake.set_result(session)

    def _fail(self, peer: _Peer, exc: TLSError) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        super()._fail(peer, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        super()._drop(self.peer)

    def _drop(self, peer: _Peer) -> None:
        super()._drop(peer)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # one peer per client endpoint: its socket goes with it


async def start_dtls_server(
    app_factory: AppFactory, host: str, port: int, context: TLSContext, *, sock: socket.socket | None = None,
    **limits: Any,
) -> tuple[asyncio.DatagramTransport, DTLSServerProtocol]:
    """Serve DTLS on ``host:port`` (UDP), or on ``sock``, a bound UDP socket (then ``host``/``port`` are ignored).
    ``limits`` are :class:`DTLSServerProtocol`'s keyword arguments."""
    loop = asyncio.get_running_loop()
    where: dict[str, Any] = {"sock": sock} if sock is not None else {"local_addr": (host, port)}
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: DTLSServerProtocol(context, app_factory, **limits), **where
    )
    return transport, protocol


async def create_dtls_endpoint(
    app_factory: AppFactory, host: str, port: int, context: TLSContext, *,
    handshake_timeout: float = 10.0, mtu: int = DEFAULT_DTLS_MTU, peer_entity: str | AnyEntity | None = None,
) -> tuple[DTLSPeerTransport, asyncio.DatagramProtocol, SessionInfo]:
    """Connect to a DTLS server; returns the peer transport, the app protocol and the session.

    ``peer_entity`` is IdB (default: the context's ``ClientConfig.peer_entity``; a different one, ANY_ENTITY
    included, is refused); one is required, or ``m2msec.idb.ANY_ENTITY`` to accept any server (docs/decisions.md
    D23). A certificate server must present IdB's CSE-ID certificate (:func:`m2msec.idb.check_peer_entity`, D39).

    Raises:
        ConfigurationError: no IdB, a malformed one, or a contradiction; nothing is sent.
        HandshakeFailed, HandshakeTimeout: authentication failed (or the server is not IdB), or no answer in
            ``handshake_timeout``.
    """
    if not isinstance(context.config, ClientConfig):
        from m2msec.errors import ConfigurationError

        raise ConfigurationError("create_dtls_endpoint needs a client context")
    idb, own_chain = client_idb(context.config, peer_entity)
    loop = asyncio.get_running_loop()
    udp, proto = await loop.create_datagram_endpoint(
        lambda: _ClientProtocol(context, app_factory, mtu=mtu, remote=(host, port)), remote_addr=(host, port)
    )
    try:
        async with asyncio.timeout(handshake_timeout):
            session = await proto.handshake
    except TimeoutError:
        udp.close()
        raise HandshakeTimeout(f"DTLS handshake did not complete within {handshake_timeout} s") from None
    except BaseException:
        udp.close()
        raise
    try:
        check_peer_entity(session, idb, own_chain_pem=own_chain)
    except HandshakeFailed:
        if proto.peer.transport is not None:
            proto.peer.transport.close()  # close_notify: not IdB
        udp.close()
        raise
    assert proto.peer.transport is not None and proto.peer.app is not None
    return proto.peer.transport, proto.peer.app, session
