"""Keep-alive HTTP/1.1 connections to the CSE, shared by all clients of the gateway.

A request takes an idle connection (the most recently used) or opens one (lazily: nothing is opened before the
first request); when its response has been read whole and both sides allow another exchange, the connection
goes back to the pool, which keeps at most :data:`DEFAULT_MAX_IDLE` idle ones (D56) and closes one left idle for
:data:`DEFAULT_IDLE_EXPIRY` seconds (D57: below the keep-alive timeouts of common servers, so the CSE rarely
closes a connection just as a request is written on it).

oneM2M CREATE/UPDATE/DELETE are not idempotent, so a request is never sent twice (D58): a pooled connection is
skipped (closed, and the next one tried) only when it is known to be unusable *before* any byte of the request is
written on it (the CSE closed it, or sent something unasked, while it was idle). A connection that fails once the
request is written, or whose exchange was cut short (timeout, cancellation, an oversized or invalid response), is
aborted (what was not yet written is dropped: a request given up on never reaches the CSE later, whole) and
never reused; the caller gets the error. So is one that answered a HEAD or with 204 / 304 (D68): a body
a broken CSE sends late would be read as the next request's response. Interim 1xx responses are skipped. A
connection whose response came before all of its request was written (a CSE answering early) is aborted, the rest
of the request dropped: it would otherwise reach the CSE ahead of the next client's request. A request with a
body is sent with ``Connection: close`` and its connection is not reused (D69): what a client put in a body can
never be parsed by a CSE as a request of its own on a connection the gateway keeps.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import h11

from m2msec import http1
from m2msec.gateway.limits import BodyBudget, Lease

__all__ = ["CLOSE_AFTER_BODY", "DEFAULT_IDLE_EXPIRY", "DEFAULT_MAX_IDLE", "NOT_REUSED_AFTER", "SENDS_PER_REQUEST",
           "BackendPool"]

log = logging.getLogger("m2msec.gateway.backend")

#: idle keep-alive connections kept to the CSE (docs/decisions.md D56)
DEFAULT_MAX_IDLE: Final = 32
#: seconds an idle connection to the CSE is kept (docs/decisions.md D57)
DEFAULT_IDLE_EXPIRY: Final = 4.0
#: times one request is written to the CSE: once; a failure after its first byte goes to the client, never a
#: second send (docs/decisions.md D58). Only idle connections found closed before any byte is written are skipped.
SENDS_PER_REQUEST: Final = 1
#: a request method or response status whose response ends, by rule, with its head (RFC 9110 §6.3: HEAD, 204,
#: 304): a CSE that sends a body anyway, in a later write, would have it read as the next client's response on
#: the same connection, so that connection is closed, never reused (docs/decisions.md D68)
NOT_REUSED_AFTER: Final[frozenset[str | int]] = frozenset({"HEAD", 204, 304})
#: a request with a body goes with ``Connection: close`` and its connection is never reused (docs/decisions.md
#: D69): a client chooses the body's bytes, and a CSE that answers before reading the body and keeps parsing
#: would otherwise run the rest as a next request, X-M2MSEC-* identity headers and all, that the gateway never
#: checked. With ``close`` a CSE stops after its answer (RFC 9112 §9.6), as it did before the pool.
CLOSE_AFTER_BODY: Final = True


class _Connection(asyncio.Protocol):
    """One connection to the CSE, h11 fed straight from the socket."""

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.h11 = h11.Connection(h11.CLIENT)
        self.in_use = True
        self.broken = False  # closed, at EOF, or sent something unasked: never used again
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.in_use:  # nothing was asked: whatever this is, the connection cannot be trusted any more
            self.close()
            return
        self.h11.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self._feed_eof()
        if not self.in_use:
            self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        self.transport = None
        self._feed_eof()
        self.pool._forget(self)

    def _feed_eof(self) -> None:
        if not self._eof:
            self._eof = True
            self.broken = True
            self.h11.receive_data(b"")
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next_event(self) -> object:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise http1.HTTPError(f"malformed HTTP: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def exchange(self, msg: http1.Message, *, max_body: int, budget: BodyBudget | None,
                       lease: Lease | None) -> http1.Message:
        """Send ``msg``, read the whole response (its body reserved in ``budget`` as it arrives)."""
        assert self.transport is not None
        self.transport.writelines(http1.encode_message(self.h11, msg))
        event = await self._next_event()
        while isinstance(event, h11.InformationalResponse):  # 1xx: interim, the final response follows (RFC 9110
            event = await self._next_event()                 # §15.2), even unasked: the request was received
        if isinstance(event, h11.ConnectionClosed):
            raise http1.HTTPError("connection closed before a response")
        resp = http1.message_head(event, max_body)
        body = http1.BodyCollector(max_body, budget, lease)
        try:
            while not body.feed(await self._next_event()):
                pass
        except BaseException:
            body.release()
            raise
        resp.body = body.take()
        return resp

    def reusable(self) -> bool:
        h = self.h11
        return not self.broken and h.our_state is h11.DONE and h.their_state is h11.DONE and not h.trailing_data[0]

    def unsent(self) -> bool:
        """Some of the request is still buffered here, not yet written to the CSE."""
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def park(self, expiry: float) -> None:
        self.h11.start_next_cycle()
        self.in_use = False
        self._expiry = asyncio.get_running_loop().call_later(expiry, self.close)

    def take(self) -> None:
        self.in_use = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def abort(self) -> None:
        """The exchange was cut short: what is still buffered is dropped, not written to the CSE later."""
        self.close(abort=True)

    def close(self, *, abort: bool = False) -> None:
        self.broken = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self.pool._forget(self)


class BackendPool:
    """Keep-alive connections to one CSE at ``host:port`` (see the module docstring)."""

    def __init__(self, host: str, port: int, *, max_idle: int = DEFAULT_MAX_IDLE,
                 idle_expiry: float = DEFAULT_IDLE_EXPIRY) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.idle_expiry = idle_expiry
        self._idle: list[_Connection] = []
        self.opened = 0  # connections opened so far
        self.reused = 0  # requests sent on a pooled connection

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def request(self, msg: http1.Message, *, max_body: int = http1.DEFAULT_MAX_BODY,
                      budget: BodyBudget | None = None, lease: Lease | None = None) -> http1.Message:
        """One exchange with the CSE on a pooled (or new) connection; the response body reserved in ``budget``.

        Raises:
            OSError: no connection could be made.
            http1.HTTPError: the CSE's answer is invalid, too large, does not fit ``budget``, or never came."""
        if CLOSE_AFTER_BODY and msg.body:  # D69: nothing may follow a client-chosen body on this connection
            msg = http1.Message(headers=[*msg.headers, ("connection", "close")], body=msg.body, method=msg.method,
                                target=msg.target)
        conn = self._take()  # passes over (closes) the idle ones the CSE closed: nothing was written on them
        if conn is None:
            conn = await self._open()
        else:
            self.reused += 1
        try:  # the one send of this request (SENDS_PER_REQUEST, D58)
            resp = await conn.exchange(msg, max_body=max_body, budget=budget, lease=lease)
        except BaseException:
            conn.abort()  # a byte may have reached the CSE: not sent again, not reused, and the rest dropped
            raise
        bodiless = msg.method in NOT_REUSED_AFTER or resp.status in NOT_REUSED_AFTER  # D68
        if conn.unsent():  # answered before all of the request was written: the rest would precede the next one
            conn.abort()
        elif conn.reusable() and not bodiless and len(self._idle) < self.max_idle:
            conn.park(self.idle_expiry)
            self._idle.append(conn)
        else:
            conn.close()
        return resp

    def _take(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be closed by the CSE
            if conn.broken or conn.transport is None or conn.transport.is_closing():
                conn.close()  # the CSE closed it while it was idle: nothing was written on it
                continue
            conn.take()
            return conn
        return None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        self.opened += 1
        return conn

    def _forget(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        """Close the idle connections (those in use close when their exchange ends)."""
        for conn in list(self._idle):
            conn.close()
        self._idle.clear()
