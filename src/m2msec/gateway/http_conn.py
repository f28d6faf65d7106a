"""One client connection of the HTTP gateway: a callback :class:`asyncio.Protocol` fed straight by the TLS adapter.

No stream reader/writer pair and no task per connection: the engine's plaintext goes into an h11 parser, and a
task runs only while a request is being forwarded to the CSE (:meth:`Gateway._process`). What the connection
does, in one request cycle:

* reading the request, under the idle timeout (from the end of the previous response, or the handshake, until the
  whole request is read); its body reserved in the gateway's :class:`~m2msec.gateway.limits.BodyBudget` as it
  arrives (D33, D46), 413 over ``max_body``, 400 for bad HTTP, 503 / 5000 when the memory is spent, each then
  closing the connection;
* the revocation guard, then the forward (reading stops meanwhile: nothing is parsed ahead);
* writing the response: its body stays counted until the client has read it (the transport drained below its
  high-water mark), within ``write_timeout``, else the connection is aborted; then the next cycle.

A connection being closed (idle timeout, refusal, end of the exchange) whose peer does not read what is still
buffered is aborted ``write_timeout`` later: closing waits for the buffer, and would otherwise hold the
connection (and its slots in the connection limiter) for good.

When another client needs this connection's body memory (D46, :meth:`_evicted`), a request being read is answered
503 / 5000 and the connection closed; a response being written is dropped with the connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import h11

from m2msec import http1
from m2msec.errors import BadRequest
from m2msec.gateway.headers import MAX_REQUEST_HEAD, check_request_framing
from m2msec.gateway.limits import Lease
from m2msec.gateway.revocation import SAGuard
from m2msec.gateway.rules import SecurityAssociation, associate
from m2msec.transport.limits import sa_key

if TYPE_CHECKING:
    from m2msec.gateway.http_gateway import Gateway

__all__ = ["ClientConnection"]

log = logging.getLogger("m2msec.gateway")

#: largest request head h11 buffers (bytes); a whole head that arrives at once is counted by check_request_framing
MAX_HEAD = MAX_REQUEST_HEAD


class ClientConnection(asyncio.Protocol):
    """One TLS client of :class:`~m2msec.gateway.http_gateway.Gateway` (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.peer: Any = None
        self.sa: SecurityAssociation | None = None
        self.guard: SAGuard | None = None
        self.lease: Lease | None = None
        self.request: http1.Message | None = None  # being read
        self._body = http1.BodyCollector(gateway.config.max_body, gateway.body_budget)  # its body, reserved
        self.task: asyncio.Task[None] | None = None  # forwarding
        self._timer: asyncio.TimerHandle | None = None  # idle (reading) or write timeout
        self._write_paused = False
        self._draining = False  # a response (or a last refusal) waits for the client to read it
        self._close_after = False
        self._lost = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        gw = self.gateway
        session = transport.get_extra_info("m2msec_session")
        self.peer = transport.get_extra_info("peername")
        tls = transport.get_extra_info("tls_connection")
        entry = getattr(tls, "psk_entry", None)  # a MAF-distributed Kc carries its source's Credential-ID
        self.sa = associate(session, gw.resolver, gw.config.cse_id, gw.config.sp_id,
                            entry.credential_id if entry is not None else None)
        self.guard = gw.revocation.open(session, tls)
        log.info("SA established with %s: %s associated=%r cipher=%s %s",
                 self.peer, self.sa.credential, self.sa.identity, session.cipher, session.version,
                 extra={"event": "sa_established", "peer": self.peer, "sa": self.sa.psk_identity or self.sa.credential,
                        "credential_id": self.sa.credential_id})
        self.lease = gw.body_budget.lease(sa_key(session), self._evicted)
        self._body.lease = self.lease
        gw._clients.add(self)
        self._arm(gw.config.idle_timeout, self._idle)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        if not self._busy():
            self._pump()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        if not self._busy():
            self._pump()
        return True  # the end of the exchange is decided by h11

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._draining:
            self._drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timer()
        self._release_request()
        if self.task is None:  # a forward in flight finishes first (the CSE may be executing it)
            self._end()
        self.transport = None

    # -- reading
    def _busy(self) -> bool:
        return self.task is not None or self._draining or self._close_after or self._lost

    def _pump(self) -> None:
        """Parse what h11 holds until it needs more data, or a whole request is read."""
        while True:
            try:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    return
                if self.request is None:
                    if isinstance(event, h11.ConnectionClosed):
                        self._close()
                        return
                    self.request = http1.message_head(event, self.gateway.config.max_body)
                    if isinstance(event, h11.Request):
                        _check_framing(event, self.request)
                elif self._body.feed(event):
                    break
            except h11.RemoteProtocolError as exc:
                self._bad_request(http1.HTTPError(f"malformed HTTP: {exc}"))
                return
            except http1.HTTPError as exc:
                self._bad_request(exc)
                return
        req, self.request = self.request, None
        req.body = self._body.take()
        self._cancel_timer()
        assert self.transport is not None
        self.transport.pause_reading()  # nothing is parsed ahead while this request is answered
        self.task = asyncio.get_running_loop().create_task(self._answer(req))

    def _release_request(self) -> None:
        """What a request being read has reserved goes back."""
        self._body.release()
        self.request = None

    def _bad_request(self, exc: http1.HTTPError) -> None:
        log.info("bad request from %s (%s): %s", self.peer, self.sa.credential if self.sa else None, exc,
                 extra={"event": "bad_request", "peer": self.peer, "sa": self.sa.psk_identity if self.sa else None})
        self._release_request()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            resp = self.gateway._refusal(exc)
            self._count(resp)
            self._send(resp, close=True)
        else:
            self._close()

    def _idle(self) -> None:
        self._timer = None
        self._release_request()
        self._close()

    # -- answering
    async def _answer(self, req: http1.Message) -> None:
        gw = self.gateway
        assert self.guard is not None and self.sa is not None
        try:
            try:
                refused = self.guard.refuse_http(req, self.peer)
                if refused is not None:
                    self._count(refused)
                resp = refused or await gw._process(req, self.sa, self.peer, self.lease, self._rebind)
            finally:
                gw.body_budget.release(len(req.body), self.lease)
        except asyncio.CancelledError:
            self.task = None
            if self._lost:
                self._end()
            raise
        except Exception:  # a bug: this connection ends, the gateway goes on
            log.exception("answering %s (%s) failed", self.peer, self.sa.credential)
            self.task = None
            self._abort()
            return
        self.task = None
        if gw.observer is not None:
            gw.observer.request("http", self.sa.psk_identity or self.sa.credential)
        if self._lost:
            self._end()
            return
        self._send(resp)

    def _count(self, resp: http1.Message) -> None:
        """A refusal made here (not by :meth:`Gateway._process`), for the metrics."""
        rsc = resp.header("x-m2m-rsc")
        if self.gateway.observer is not None and rsc is not None:
            self.gateway.observer.refused("http", int(rsc))

    def _rebind(self, sa: SecurityAssociation) -> None:
        """A registration (or a re-read of the registrations) changed what this SA may be used for."""
        self.sa = sa

    def _send(self, resp: http1.Message, *, close: bool = False) -> None:
        """Write ``resp``; its body stays counted in the lease until the client has read it (D46)."""
        assert self.transport is not None
        try:
            parts = http1.encode_message(self.conn, resp)
        except http1.HTTPError as exc:
            log.debug("connection with %s ended: %s", self.peer, exc)
            self._close()
            return
        resp.body = b""  # the plaintext does not stay beside the bytes waiting for the client
        self.transport.writelines(parts)
        self._close_after = close
        self._draining = True
        if self._write_paused:
            self._arm(self.gateway.config.write_timeout, self._write_timed_out)
        else:
            self._drained()

    def _drained(self) -> None:
        self._draining = False
        self._cancel_timer()
        if self.lease is not None:
            self.gateway.body_budget.release(self.lease.size, self.lease)
        conn = self.conn
        if self._close_after or conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            self._close()
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            self._close()
            return
        self._arm(self.gateway.config.idle_timeout, self._idle)
        if self.transport is not None:
            self.transport.resume_reading()
        self._pump()

    def _write_timed_out(self) -> None:
        self._timer = None
        log.debug("connection with %s ended: the peer did not read its response within %s s", self.peer,
                  self.gateway.config.write_timeout)
        self._abort()

    def _evicted(self) -> None:
        """Another client needed this connection's body memory (D46): a response being written goes with the
        connection; otherwise the client is told 503 / 5000 (retry) and the connection closed."""
        if self._lost:
            return
        log.warning("connection of %s (%s) ended: its body memory went to another client", self.peer,
                    self.sa.credential if self.sa else None)
        if self._draining:
            self._abort()
            return
        if self.task is not None:  # answering, not yet at the CSE (a forwarded lease is never evicted)
            self.task.cancel()
            self.task = None
        self._release_request()
        if self.conn.our_state is h11.IDLE or self.conn.our_state is h11.SEND_RESPONSE:
            self._send(self.gateway._refusal(http1.HTTPError("evicted", busy=True)), close=True)
        else:
            self._abort()

    # -- ending
    def cancel(self) -> None:
        """The gateway is closing: the connection goes now (a forward in flight is cancelled)."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._close()

    def _close(self, *, abort: bool = False) -> None:
        """End the connection: close (what is written still goes out) or abort (buffered bytes dropped)."""
        self._cancel_timer()
        self._close_after = True
        if self.transport is None:
            self._end()
        elif abort:
            self.transport.abort()
        else:
            self.transport.close()
            if not self._lost:  # close() waits for the buffered bytes: a peer that never reads them is aborted
                self._arm(self.gateway.config.write_timeout, self._abort)

    def _abort(self) -> None:
        self._close(abort=True)

    def _end(self) -> None:
        if self.lease is not None:
            self.gateway.body_budget.close(self.lease)
        self.gateway._clients.discard(self)

    def _arm(self, delay: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _check_framing(event: h11.Request, head: http1.Message) -> None:
    """:func:`check_request_framing` of a parsed head, as the HTTPError that refuses it (400, closed)."""
    try:
        check_request_framing(event.http_version.decode("ascii"), head.method, head.target, head.headers)
    except BadRequest as exc:
        raise http1.HTTPError(exc.detail) from None
