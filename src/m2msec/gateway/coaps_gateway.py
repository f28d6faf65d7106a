"""The gateway's ``coaps://`` side: DTLS 1.2 (PSK and/or certificates) in front of a CSE's CoAP binding
(TS-0008, TS-0003 §10.2).

Each authenticated DTLS peer gets a :class:`_PeerRelay`: it decodes every CoAP message, applies the
same association and originator rules as the HTTP side (:func:`m2msec.gateway.coap.decide`: 4106 for a
``oneM2M-FR`` that does not match the SA, never forwarded), and relays the rest to the CSE's plain CoAP
port over a UDP socket of its own (so the CSE's answers, including separate responses and
notifications on that path, come back to the right peer). Identity options the CSE sends back are
stripped. Bodies that do not fit one DTLS datagram go block-wise (RFC 7959) between the gateway and
the client (:mod:`m2msec.gateway.coap_blockwise`, whole on the loopback hop to the CSE). Otherwise
retransmission and deduplication stay end to end between the client and the CSE.

Until the CSE-side socket is open, requests wait in a bounded queue (:data:`MAX_PENDING`,
:data:`MAX_PENDING_BYTES`); when it cannot be opened, queued and new Confirmable requests are answered
5.03 / oneM2M 5103 (decision D26) and opening is retried on a later message after
``CoapsConfig.backend_retry`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from m2msec.crl import CRLFile
from m2msec.errors import BadRequest, TargetNotReachable
from m2msec.gateway import coap
from m2msec.gateway.coap_blockwise import (
    MAX_BLOCK1_BODY,
    MAX_MESSAGE,
    MAX_UDP_PAYLOAD,
    Action,
    BlockwiseLimits,
    ByteBudget,
    PeerBlockwise,
    ToClient,
)
from m2msec.gateway.maf_resolver import revocation_table
from m2msec.gateway.mef_resolver import RemoteKeyResolver
from m2msec.gateway.registrar import Registrar
from m2msec.gateway.registration import AECreate
from m2msec.gateway.reload import side_reloader
from m2msec.gateway.revocation import Revocation, SAGuard
from m2msec.gateway.rules import CredentialResolver, SecurityAssociation, associate
from m2msec.gateway.side import SidePolicy
from m2msec.keys.table import PSKTable
from m2msec.tls.engine import TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK, CipherProfile
from m2msec.transport.dtls import DTLSServerProtocol, start_dtls_server
from m2msec.transport.limits import (
    DEFAULT_MAX_CONNECTIONS_PER_SA,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
    limit_failures,
    sa_key,
)

__all__ = ["CoapsConfig", "CoapsGateway"]

if TYPE_CHECKING:
    from m2msec.metrics import GatewayMetrics

log = logging.getLogger("m2msec.gateway.coaps")

#: requests (and their bytes) one peer may queue while its CSE-side socket is being opened
MAX_PENDING, MAX_PENDING_BYTES = 32, 64 * 1024
#: CREATE <AE> answers one peer may be awaited for at once (the oldest is forgotten: its AE-ID is then not bound)
MAX_REGISTERING = 8


@dataclass(frozen=True)
class CoapsConfig(SidePolicy):
    """The coaps side; the settings it shares with the HTTP side are :class:`~m2msec.gateway.side.SidePolicy`'s
    (``certificate``: for the ecdhe-ecdsa-dtls profile, TS-0003 §10.2.3)."""

    backend_host: str
    backend_port: int = 5683
    host: str = "127.0.0.1"
    port: int = 5684
    profiles: tuple[CipherProfile, ...] = (ONEM2M_DTLS_PSK,)
    idle_timeout: float = 300.0
    max_peers: int = 10000
    max_handshaking: int = 1000
    #: DTLS peers one source may hold (D47)
    max_peers_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE
    #: DTLS peers one credential may hold, at most half of max_peers (D47)
    max_peers_per_sa: int = DEFAULT_MAX_CONNECTIONS_PER_SA
    max_handshaking_per_source: int = DEFAULT_MAX_HANDSHAKES_PER_SOURCE
    #: seconds before a failed CSE-side socket is tried again
    backend_retry: float = 2.0
    #: bounds of the block-wise (RFC 7959) state, decision D24
    blockwise: BlockwiseLimits = field(default_factory=BlockwiseLimits)


class _Backend(asyncio.DatagramProtocol):
    def __init__(self, relay: _PeerRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.from_cse(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("CSE side of %s: %s", self.relay.peer, exc)
        sending, self.relay.sending = self.relay.sending, None
        if sending is not None:  # sendto itself failed (asyncio reports it here, at once): answer, not silence
            log.warning("sending to the CSE for %s failed: %s", self.relay.peer, exc)
            self.relay.unreachable(sending)


class _PeerRelay(asyncio.DatagramProtocol):
    """One authenticated DTLS peer <-> its own UDP socket towards the CSE."""

    def __init__(self, gateway: CoapsGateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.DatagramTransport | None = None
        self.backend: asyncio.DatagramTransport | None = None
        self.pending: list[tuple[bytes, coap.Message | None]] = []
        self.pending_bytes = 0
        self.sending: coap.Message | None = None  # the request being handed to the CSE socket (D49)
        self.peer: Any = None
        self.sa: SecurityAssociation | None = None
        self.guard: SAGuard | None = None
        self._mids = itertools.count(random.randrange(0x10000))
        self._task: asyncio.Task[None] | None = None
        self._retry_at = 0.0  # loop time before which the CSE counts as unreachable
        self.blocks = PeerBlockwise(gateway.config.blockwise, gateway.budget, self._next_mid)
        #: CREATE <AE> requests forwarded, by token, until the CSE answers (its 2.01 binds the AE-ID)
        self.registering: dict[bytes, tuple[AECreate, int]] = {}  # token -> (request, its Message ID)

    def _next_mid(self) -> int:
        return next(self._mids) & 0xFFFF

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        session = transport.get_extra_info("m2msec_session")
        tls = transport.get_extra_info("tls_connection")
        entry = getattr(tls, "psk_entry", None)  # a MAF-distributed Kc carries its source's Credential-ID
        self.sa = associate(session, self.gateway.resolver, self.gateway.config.cse_id, self.gateway.config.sp_id,
                            entry.credential_id if entry is not None else None)
        self.guard = self.gateway.revocation.open(session, tls)
        self.blocks.owner = sa_key(session)  # block-wise memory is shared per client, not per session (D48, D47's key)
        log.info("coaps SA with %s: %s associated=%r %s", self.peer, self.sa.credential, self.sa.identity,
                 session.cipher)

    def _to_cse(self, datagram: bytes, msg: coap.Message | None = None) -> None:
        """Send to the CSE; ``msg``: the request as the client sent it, answered 5.03 if the CSE is unreachable."""
        if len(datagram) > MAX_UDP_PAYLOAD:  # sendto would fail (EMSGSIZE) and the client never hear back (D49)
            log.warning("CoAP message of %d bytes from %s does not fit one datagram to the CSE", len(datagram),
                        self.peer)
            if msg is not None and coap.is_request(msg.code):
                self._act(self.blocks.too_large_answer(msg))
            return
        if self.backend is not None:
            self._sendto(self.backend, datagram, msg)
            return
        loop = asyncio.get_running_loop()
        if self._task is None and loop.time() < self._retry_at:
            self._unreachable(msg)
            return
        if len(self.pending) >= MAX_PENDING or (  # one message always fits (a reassembled Block1 request can be
                self.pending and self.pending_bytes + len(datagram) > MAX_PENDING_BYTES):  # a peer's first)
            self._unreachable(msg)
            return
        self.pending.append((datagram, msg))
        self.pending_bytes += len(datagram)
        if self._task is None:  # the CSE-side socket is opened on the first message, not per handshake
            self._task = loop.create_task(self._open_backend())

    def _sendto(self, backend: asyncio.DatagramTransport, datagram: bytes, msg: coap.Message | None) -> None:
        self.sending = msg
        try:
            backend.sendto(datagram)  # asyncio reports a failure to error_received at once; other loops may raise
        except OSError as exc:
            log.warning("sending to the CSE for %s failed: %s", self.peer, exc)
            self.unreachable(msg)
        finally:
            self.sending = None

    def unreachable(self, msg: coap.Message | None) -> None:
        """Answer a CON request the CSE cannot be sent (5.03 with Max-Age): the client stops retransmitting."""
        self._unreachable(msg)

    def _unreachable(self, msg: coap.Message | None) -> None:
        if msg is None or msg.type is not coap.MessageType.CON or self.transport is None:
            return  # NON requests and other messages are dropped (RFC 7252 §4.3: no reliability promised)
        retry = max(1, math.ceil(self.gateway.config.backend_retry))
        reply = coap.refusal(msg, TargetNotReachable("the CSE cannot be reached"), code=coap.UNREACHABLE_CODE,
                             max_age=retry)
        if reply is not None:
            self._send(reply)

    async def _open_backend(self) -> None:
        cfg = self.gateway.config
        try:
            backend, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Backend(self), remote_addr=(cfg.backend_host, cfg.backend_port)
            )
        except OSError as exc:
            log.error("cannot reach the CSE at %s:%d: %s", cfg.backend_host, cfg.backend_port, exc,
                      extra={"event": "backend_error", "peer": self.peer})
            if self.gateway.observer is not None:
                self.gateway.observer.backend_failed("unreachable")
            self._retry_at = asyncio.get_running_loop().time() + cfg.backend_retry
            self._task = None  # tried again on a message after backend_retry seconds
            queued, self.pending, self.pending_bytes = self.pending, [], 0
            for _, msg in queued:
                self._unreachable(msg)
            return
        if self.transport is None:  # the peer went away meanwhile
            backend.close()
            return
        self.backend = backend
        for datagram, msg in self.pending:
            self._sendto(backend, datagram, msg)
        self.pending.clear()
        self.pending_bytes = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.sa is not None
        try:
            msg = coap.Message.decode(data)
        except coap.CoAPFormatError as exc:
            log.info("malformed CoAP from %s: %s", self.peer, exc)
            rst = coap.reset(data)
            if rst is not None and self.transport is not None:
                self.transport.sendto(rst)
            return
        if self.gateway.observer is not None and coap.is_request(msg.code):
            self.gateway.observer.request("coap", self.sa.psk_identity or self.sa.credential)
        if self.guard is not None and self.guard.refuse_coap(msg, self.transport, self._mids):
            return
        gw, cfg = self.gateway, self.gateway.config
        decision = coap.decide(msg, self.sa, cfg.unbound_policy, next(self._mids) & 0xFFFF, registrar=gw.registrar,
                               cse_id=cfg.cse_id, sp_id=cfg.sp_id)
        if isinstance(decision, coap.Refuse):
            log.warning("refused CoAP %s from %s: rsc=%d %s", coap.format_code(msg.code), self.peer,
                        decision.error.rsc, decision.error.detail,
                        extra={"event": "request_refused", "peer": self.peer, "sa": self.sa.psk_identity or
                               self.sa.credential, "credential_id": self.sa.credential_id, "rsc": decision.error.rsc})
            if gw.observer is not None:
                gw.observer.refused("coap", decision.error.rsc)
            if decision.datagram is not None:
                self._send(decision.datagram)
            return
        if isinstance(decision, coap.Pass) or decision.message is None:
            self._to_cse(decision.datagram)
            return
        if decision.sa is not None:  # the registrations were re-read: this SA may now use another AE-ID
            self.sa = decision.sa
        pending = self.registering.get(msg.token)
        if pending is not None and pending[1] != msg.message_id:  # not a retransmission of the CREATE <AE>: its
            error = BadRequest("the token of a CREATE <AE> awaiting its answer is reused")  # answer could be
            reply = coap.refusal(msg, error, next(self._mids) & 0xFFFF)  # taken for the registration's
            log.warning("refused CoAP %s from %s: rsc=%d %s", coap.format_code(msg.code), self.peer, error.rsc,
                        error.detail)
            if reply is not None:
                self._send(reply)
            return
        if decision.create is not None and pending is None:
            if len(self.registering) >= MAX_REGISTERING:
                self.registering.pop(next(iter(self.registering)))
            self.registering[msg.token] = (decision.create, msg.message_id)
        self._act(self.blocks.from_client(decision.message, asyncio.get_running_loop().time()))

    def _act(self, actions: list[Action]) -> None:
        """Carry out what the block-wise layer decided; requests to the CSE get the SA's identity options."""
        assert self.sa is not None
        for action in actions:
            if isinstance(action, ToClient):
                self._to_client(action.message)
            elif coap.is_request(action.message.code):
                self._to_cse(coap.prepare_forward(action.message, self.sa), action.message)
            else:
                self._to_cse(action.message.encode())

    def _to_client(self, msg: coap.Message) -> None:
        if self.registering and msg.token in self.registering and not coap.is_request(msg.code) \
                and not coap.is_empty(msg.code):
            create, _ = self.registering.pop(msg.token)
            registrar = self.gateway.registrar
            if registrar is not None and self.sa is not None:
                self.sa = registrar.registered(self.sa, create, coap.created_aei(msg), msg.payload)
        if self.transport is None:
            return
        self._send(msg.without_options(coap.IDENTITY_OPTIONS).encode())  # CSE copies never reach the client

    def _send(self, datagram: bytes) -> None:
        """To the client, if it fits one DTLS record (else the DTLS transport would drop the peer): only a
        CSE-initiated message, or a refusal echoing a huge RQI, can be larger."""
        if self.transport is None:
            return
        if len(datagram) > MAX_MESSAGE:
            log.warning("CoAP message of %d bytes for %s does not fit a DTLS record: dropped", len(datagram),
                        self.peer)
            return
        self.transport.sendto(datagram)

    def from_cse(self, data: bytes) -> None:
        if self.transport is None or (self.guard is not None and self.guard.close_if_ended(self.transport)):
            return
        try:
            msg = coap.Message.decode(data)
        except coap.CoAPFormatError as exc:
            log.info("malformed CoAP from the CSE for %s dropped: %s", self.peer, exc)
            return
        self._act(self.blocks.from_cse(msg, asyncio.get_running_loop().time()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.gateway.observer is not None:  # the established peer ends (counted open by the DTLS server)
            self.gateway.observer.closed("dtls")
        self.blocks.close()
        self.pending.clear()
        self.pending_bytes = 0
        if self.backend is not None:
            self.backend.close()
            self.backend = None


class CoapsGateway:
    """Serve ``coaps://`` (DTLS 1.2 PSK) on ``config.host:config.port`` in front of a CSE's CoAP port."""

    def __init__(self, config: CoapsConfig, table: PSKTable | None, *, resolver: CredentialResolver | None = None,
                 cookie_secret: bytes | None = None, crls: CRLFile | None = None,
                 maf: RemoteKeyResolver | None = None, registrar: Registrar | None = None) -> None:
        self.config = config
        self.table = table  # read per handshake; a reload (SIGHUP) builds its new context over it
        #: service subscription rules and registration bindings (``--app-rules``), also the default resolver
        self.registrar = registrar
        self.resolver = resolver if resolver is not None else registrar
        self.maf = maf  # remote keys (--maf, --mef): as on the HTTP side
        self.budget = ByteBudget(config.blockwise.max_total_bytes)  # block-wise bytes of all peers together
        self.context = TLSContext.dtls_server(config.server_config(table, config.profiles, async_psk=maf is not None),
                                              cookie_secret=cookie_secret)
        self.revocation = Revocation(revocation_table(maf) if maf is not None else table, crls,
                                     max_lifetime=config.max_sa_lifetime)
        self._reloader = side_reloader(table, crls, self.context, config.reload_interval)
        self._udp: asyncio.DatagramTransport | None = None
        self.protocol: DTLSServerProtocol | None = None
        self.table = table
        #: ``--metrics`` (m2msec.metrics), set before :meth:`start`; None: off
        self.observer: GatewayMetrics | None = None

    @property
    def port(self) -> int:
        assert self._udp is not None, "coaps gateway not started"
        return int(self._udp.get_extra_info("sockname")[1])

    @property
    def serving(self) -> bool:
        """Is its UDP socket open (the metrics listener's /healthz, O6)?"""
        return self._udp is not None and not self._udp.is_closing()

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Listen on ``config.host:config.port``, or on ``sock`` (a bound UDP socket, e.g. a worker's share)."""
        cfg = self.config
        try:
            self._udp, self.protocol = await start_dtls_server(
                lambda: _PeerRelay(self), cfg.host, cfg.port, self.context, sock=sock,
                handshake_timeout=cfg.handshake_timeout, idle_timeout=cfg.idle_timeout,
                max_peers=cfg.max_peers, max_handshaking=cfg.max_handshaking,
                max_handshaking_per_source=cfg.max_handshaking_per_source,
                max_peers_per_source=cfg.max_peers_per_source, max_peers_per_sa=cfg.max_peers_per_sa,
                psk_resolver=self.maf,
            )
        except OSError as exc:
            from m2msec.errors import ConfigurationError

            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ConfigurationError(f"cannot listen on udp {cfg.host}:{cfg.port}: {reason}") from None
        self.protocol.observer = self.observer
        limit_failures(self.protocol.limiter, cfg.max_failed_handshakes_per_source)
        self._reloader.start()
        if cfg.blockwise.max_body > MAX_BLOCK1_BODY:
            log.info("coaps: Block1 request bodies are capped at %d bytes (one datagram to the CSE); "
                     "--coaps-max-body %d applies to responses", MAX_BLOCK1_BODY, cfg.blockwise.max_body)
        log.info("coaps gateway on %s:%d -> coap://%s:%d", cfg.host, self.port, cfg.backend_host, cfg.backend_port)

    def stop_receiving(self) -> None:
        """Read no more datagrams (a draining worker: they wait in the shared socket's queue); answers still go out."""
        if self._udp is not None:
            with contextlib.suppress(NotImplementedError, AttributeError, RuntimeError):
                self._udp.pause_reading()  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self._reloader.close()
        if self._udp is not None:
            self._udp.close()
            with contextlib.suppress(Exception):
                await asyncio.sleep(0)
