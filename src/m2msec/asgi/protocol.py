"""One HTTP/1.1 connection inside TLS: h11 parses it, each request runs the ASGI application as a task.

h11 handles one request at a time: while a request is in flight, reading is paused as soon as the client sends
more (pipelining), and resumes when the response is complete. The request body is buffered up to
:data:`HIGH_WATER` bytes, then reading pauses until the application calls ``receive()`` (flow control).

Refusals the server makes itself (400/431 malformed, 408 too slow, 413 too large, 500 the application failed)
carry ``connection: close`` and close the connection: what follows on the wire is not trusted any more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

import h11

from m2msec.asgi.limits import Limits
from m2msec.asgi.scope import TLSExtension, address, ambiguous, build_scope, declared_length, head_size
from m2msec.tls.engine import SessionInfo, TLSConnection

__all__ = ["COALESCE", "HIGH_WATER", "ASGIApp", "Cycle", "ErrorBody", "HTTPProtocol", "ServerState", "plain_error"]

log = logging.getLogger("m2msec.asgi")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

#: bytes of request body buffered before reading pauses until the application takes them
HIGH_WATER = 64 * 1024
#: response bytes joined into one write (one TLS record) rather than handed over part by part
COALESCE = 16 * 1024

_DISCONNECT: dict[str, Any] = {"type": "http.disconnect"}
_IDLE, _REQUEST = "idle", "request"
#: a timer firing this close to its (moved) deadline counts as expired (the loop fires timers up to its clock
#: resolution early)
_TIMER_SLACK = 0.001


#: what a server's own refusals carry: (content type, body) for a status; :func:`plain_error` by default, a
#: service gives its own (problem+json) with ``serve(error_body=...)``
ErrorBody = Callable[[int], tuple[str, bytes]]


def plain_error(status: int) -> tuple[str, bytes]:
    return "text/plain; charset=utf-8", f"{status} {HTTPStatus(status).phrase}\n".encode("ascii")


class ServerState:
    """What a server's connections share: its limits, the live connections and tasks, whether it is stopping."""

    def __init__(self, app: ASGIApp, limits: Limits, error_body: ErrorBody = plain_error) -> None:
        self.app = app
        self.limits = limits
        self.error_body = error_body
        self.lifespan_state: dict[str, Any] | None = None
        self.connections: set[HTTPProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _error_response(status: int, error_body: ErrorBody = plain_error) -> bytes:
    """A complete response the server sends on its own, before closing the connection."""
    phrase = HTTPStatus(status).phrase
    media, body = error_body(status)
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: {media}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii") + body


class Cycle:
    """One request and its response: what ``receive`` and ``send`` of that request see."""

    def __init__(self, protocol: HTTPProtocol, scope: dict[str, Any], expects_continue: bool) -> None:
        self.protocol = protocol
        self.scope = scope
        self.head_only = scope["method"] == "HEAD"
        self.expects_continue = expects_continue
        self.body: list[bytes] = []
        self.buffered = 0
        self.received = 0
        self.more_body = True
        self.end_delivered = False
        self.disconnected = False  # the client is gone, or the server answered and closes
        self.response_started = False
        self.response_complete = False
        self.receiving = False
        self.task: asyncio.Task[None] | None = None
        self.head = b""  # the encoded response head, until the first body message
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    def _ready(self) -> bool:
        return (self.disconnected or self.response_complete or bool(self.body)
                or (not self.more_body and not self.end_delivered))

    async def receive(self) -> Message:
        protocol = self.protocol
        if self.expects_continue and not self.response_started and not self.disconnected:
            self.expects_continue = False
            protocol.send_continue()
        self.receiving = True
        try:
            while not self._ready():
                protocol.resume_body()
                self._event.clear()
                await self._event.wait()
        finally:
            self.receiving = False
        if self.disconnected or self.response_complete:
            return dict(_DISCONNECT)
        body = b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if not self.more_body:
            self.end_delivered = True
        else:
            protocol.resume_body()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if self.disconnected:
            return  # the client is gone (or the server answered for the application): nothing to send
        protocol = self.protocol
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {kind!r}")
            headers = list(message.get("headers", ()))
            if protocol.state.stopping or protocol.closing or protocol.conn.they_are_waiting_for_100_continue:
                # stopping or closing (TLSExtension.close): this is the connection's last response; a client still
                # waiting for 100 Continue may
                # or may not send its body now, so the connection cannot carry another request
                headers.append((b"connection", b"close"))
            status = int(message["status"])
            # built first: a bad status or header raises here, before anything is sent (the server answers 500)
            response = h11.Response(status_code=status, headers=headers, reason=_phrase(status).encode("ascii"))
            self.response_started = True
            self.head = protocol.encode(response)  # sent with the first body message: one TLS record, one write
            return
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(f"expected 'http.response.body', got {kind!r}")
            parts = [self.head] if self.head else []
            self.head = b""
            body = message.get("body", b"")
            if body and not self.head_only:
                parts.append(protocol.encode(h11.Data(data=body)))
            done = not message.get("more_body", False)
            if done:
                self.response_complete = True
                parts.append(protocol.encode(h11.EndOfMessage()))
            protocol.write(parts)
            if done:
                self.wake()
                protocol.response_done(self)
        else:
            raise RuntimeError(f"{kind!r} after the response is complete")
        await protocol.drain()


class HTTPProtocol(asyncio.Protocol):
    """The application protocol of one TLS connection (:func:`m2msec.transport.tls.start_server` runs it)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.limits = state.limits
        self.transport: asyncio.Transport | None = None
        self.cycle: Cycle | None = None
        self.extension: TLSExtension | None = None
        self.peer: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        self._loop = asyncio.get_running_loop()
        # one timer per connection, re-armed lazily: the idle (keep-alive) or the request deadline
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind: str | None = None  # _IDLE, _REQUEST or None (no deadline)
        self._timer_at = 0.0
        self._paused = False
        #: the application asked for the connection to end (TLSExtension.close): it closes after this response
        self.closing = False
        self._writable = asyncio.Event()
        self._writable.set()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        session: SessionInfo = transport.get_extra_info("m2msec_session")
        connection: TLSConnection = transport.get_extra_info("tls_connection")
        self.extension = TLSExtension(session, connection, self.close_soon)
        self.peer = address(transport.get_extra_info("peername"))
        self.local = address(transport.get_extra_info("sockname"))
        if self.state.stopping:
            transport.close()
            return
        self.state.connections.add(self)
        self._arm(_IDLE, self.limits.keep_alive_timeout)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self.conn.their_state is h11.ERROR:
            return
        if self.cycle is None and self._timer_kind is not _REQUEST:
            self._start_request_timer()  # replaces the idle deadline
        elif self._timer_kind is _IDLE:
            self._timer_kind = None
        self.conn.receive_data(data)
        self.process()

    def eof_received(self) -> bool | None:
        return None  # the client closed: so do we (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.state.connections.discard(self)
        self.transport = None
        self._writable.set()  # a send() waiting to drain returns
        if self.extension is not None:
            self.extension._forget()
        cycle = self.cycle
        if cycle is not None and not cycle.disconnected:
            cycle.disconnected = True
            cycle.wake()
            task = cycle.task
            if task is not None and not task.done() and not cycle.response_complete and not cycle.receiving:
                task.cancel()  # nobody will read its answer; one waiting in receive() gets http.disconnect

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- reading
    def process(self) -> None:
        """Handle what h11 has parsed, up to the end of a request (or a pause)."""
        while self.transport is not None and not self.transport.is_closing():
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                log.info("malformed HTTP from %s: refused with %d", self.peer, exc.error_status_hint)
                self.refuse(exc.error_status_hint)
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                self._pause()
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_data(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._on_end()
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    def _on_request(self, request: h11.Request) -> None:
        assert self.extension is not None
        scope = build_scope(request, client=self.peer, server=self.local, extension=self.extension,
                            state=self.state.lifespan_state)
        cycle = self.cycle = Cycle(self, scope, self.conn.they_are_waiting_for_100_continue)
        if head_size(request) > self.limits.max_head:  # h11 caps only a head still incomplete
            log.info("request head from %s refused (limit %d bytes)", self.peer, self.limits.max_head)
            self.refuse(431)
            return
        if ambiguous(request):  # RFC 9112 §3.2, §6.1, §6.3: request-smuggling patterns, refused
            log.info("request from %s refused: ambiguous framing or Host", self.peer)
            self.refuse(400)
            return
        length = declared_length(request)
        if length is not None and length > self.limits.max_body:
            log.info("request body of %d bytes from %s refused (limit %d)", length, self.peer, self.limits.max_body)
            self.refuse(413)
            return
        task = cycle.task = self._loop.create_task(self._run(cycle))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    def _on_data(self, data: bytes) -> None:
        cycle = self.cycle
        assert cycle is not None
        cycle.received += len(data)
        if cycle.received > self.limits.max_body:
            log.info("request body from %s cut at the %d-byte limit", self.peer, self.limits.max_body)
            self.refuse(413)
            return
        if cycle.response_complete or cycle.disconnected:
            return  # the rest of a body the application did not read: dropped
        cycle.body.append(data)
        cycle.buffered += len(data)
        if cycle.buffered > HIGH_WATER:
            self._pause()
        cycle.wake()

    def _on_end(self) -> None:
        cycle = self.cycle
        assert cycle is not None
        self._cancel_request_timer()
        cycle.more_body = False
        cycle.wake()
        if cycle.response_complete:
            self._next_cycle()

    def resume_body(self) -> None:
        """The application wants more of the body: read on (unless a pipelined request is waiting)."""
        if self._paused and self.conn.their_state is h11.SEND_BODY:
            self._resume()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    # -- writing
    def encode(self, event: h11.Event) -> bytes:
        """The bytes of ``event``; a LocalProtocolError (bad header, too much body) goes to the application."""
        return self.conn.send(event) or b""

    def write(self, parts: list[bytes]) -> None:
        """Small parts joined (one TLS record), large ones handed over as they are (no copy)."""
        if self.transport is None:
            return
        if sum(len(part) for part in parts) <= COALESCE:
            self.transport.write(b"".join(parts))
        else:
            self.transport.writelines(parts)

    def send_continue(self) -> None:
        if self.conn.they_are_waiting_for_100_continue and self.transport is not None:
            self.write([self.encode(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))])

    async def drain(self) -> None:
        if self._writable.is_set():
            return
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await self._writable.wait()
        except TimeoutError:
            log.info("client %s did not read the response within %.1f s", self.peer, self.limits.write_timeout)
            self.abort()

    def response_done(self, cycle: Cycle) -> None:
        if self.conn.our_state is h11.MUST_CLOSE or self.state.stopping or self.closing:
            self.close()
        elif self.conn.their_state is h11.DONE:
            self._next_cycle()
        # else: the rest of the request body is read and dropped, then _on_end starts the next cycle

    def _next_cycle(self) -> None:
        self.conn.start_next_cycle()
        self.cycle = None
        if self.state.stopping:
            self.close()
            return
        self._resume()
        if self.conn.trailing_data[0]:
            self._start_request_timer()  # a pipelined request, at least its beginning
            self._loop.call_soon(self.process)
        else:
            self._arm(_IDLE, self.limits.keep_alive_timeout)

    def refuse(self, status: int) -> None:
        """Answer ``status`` on the application's behalf (if its response has not started) and close."""
        cycle = self.cycle
        if cycle is not None:
            started = cycle.response_started
            cycle.disconnected = True
            cycle.wake()
            if started:
                self.close()
                return
        if self.transport is not None:
            self.transport.write(_error_response(status, self.state.error_body))
        self.close()

    def close(self) -> None:
        self._stop_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def stop(self) -> None:
        """The server is stopping: an idle connection closes now, a busy one after its response."""
        if self.cycle is None:
            self.close()

    def close_soon(self) -> None:
        """The application ends this connection (:meth:`TLSExtension.close`): now when idle (or its response is
        already sent), else after the response in flight."""
        self.closing = True
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.close()

    # -- timers: one TimerHandle per connection. Setting a later deadline than the armed one only moves
    # ``_timer_at`` (the handle re-arms itself when it fires early); clearing one only forgets its kind. A
    # keep-alive connection thus schedules about one timer per keep-alive period, not two per request.
    def _arm(self, kind: str, delay: float) -> None:
        at = self._loop.time() + delay
        self._timer_kind = kind
        self._timer_at = at
        timer = self._timer
        if timer is None or timer.when() > at:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(at, self._timer_fired)

    def _stop_timer(self) -> None:
        self._timer_kind = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if kind is None:
            return
        if self._timer_at > self._loop.time() + _TIMER_SLACK:  # the deadline moved on since: wait for it
            self._timer = self._loop.call_at(self._timer_at, self._timer_fired)
            return
        self._timer_kind = None
        if kind is _IDLE:
            self._idle_expired()
        else:
            self._request_expired()

    def _idle_expired(self) -> None:
        if self.cycle is None:
            self.close()

    def _start_request_timer(self) -> None:
        self._arm(_REQUEST, self.limits.request_timeout)

    def _cancel_request_timer(self) -> None:
        if self._timer_kind is _REQUEST:
            self._timer_kind = None

    def _request_expired(self) -> None:
        log.info("request from %s did not arrive within %.1f s", self.peer, self.limits.request_timeout)
        self.refuse(408)

    # -- the application
    async def _run(self, cycle: Cycle) -> None:
        scope = cycle.scope
        try:
            await self.state.app(scope, cycle.receive, cycle.send)
        except Exception:
            # once, with the method and path only: neither the query, the headers nor the body
            # the path as a repr: its decoded %0A, %0D or escapes would otherwise forge log lines
            log.exception("ASGI application failed on %s %r from %s", scope["method"], scope["path"], self.peer)
            self._failed(cycle)
            return
        if not cycle.disconnected and not cycle.response_complete:
            log.error("ASGI application returned without a complete response on %s %r", scope["method"],
                      scope["path"])
            self._failed(cycle)

    def _failed(self, cycle: Cycle) -> None:
        if cycle.disconnected or cycle.response_complete or cycle is not self.cycle:
            return
        if cycle.response_started:
            self.close()  # a response cut short: closing tells the client it is incomplete
        else:
            self.refuse(500)
