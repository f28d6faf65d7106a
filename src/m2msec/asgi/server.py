"""Serve an ASGI application over m2msec's TLS engine (docs/asgi.md, docs/decisions.md D95).

:func:`serve` runs the application's lifespan startup, then listens with
:func:`m2msec.transport.tls.start_server`: every authenticated connection gets an :class:`HTTPProtocol`, and every
request's scope carries the ``m2msec.tls`` extension (:class:`~m2msec.asgi.scope.TLSExtension`). The returned
:class:`Server` stops gracefully: it stops listening, closes idle connections, lets the requests in flight finish
up to ``shutdown_timeout`` seconds, cancels the rest, then runs the lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import TracebackType
from typing import Any

from m2msec.asgi.lifespan import Lifespan, LifespanMode
from m2msec.asgi.limits import (
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_HEAD,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Limits,
)
from m2msec.asgi.protocol import ASGIApp, ErrorBody, HTTPProtocol, ServerState, plain_error
from m2msec.tls.engine import TLSContext
from m2msec.transport.limits import ConnectionLimiter
from m2msec.transport.psk_resolver import PSKResolver
from m2msec.transport.tls import DEFAULT_HANDSHAKE_TIMEOUT, start_server

__all__ = ["Server", "serve"]

log = logging.getLogger("m2msec.asgi")


class Server:
    """A running ASGI server: ``sockets``, ``port``, :meth:`close` then :meth:`wait_closed` (or ``async with``)."""

    def __init__(self, listener: asyncio.Server, state: ServerState, lifespan: Lifespan) -> None:
        self._listener = listener
        self._state = state
        self._lifespan = lifespan
        self._stopped: asyncio.Task[None] | None = None
        self._port: int = listener.sockets[0].getsockname()[1] if listener.sockets else 0

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._listener.sockets)

    @property
    def port(self) -> int:
        """The port of the first listening socket (still known once the server is closed)."""
        return self._port

    @property
    def limits(self) -> Limits:
        return self._state.limits

    def is_serving(self) -> bool:
        return self._listener.is_serving() and not self._state.stopping

    def close(self) -> None:
        """Start a graceful stop: no new connections; idle ones close now, busy ones after their response."""
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_task(self._stop())

    async def wait_closed(self) -> None:
        """Wait for the stop :meth:`close` started (in-flight requests finished or cancelled, lifespan shut down)."""
        self.close()
        assert self._stopped is not None
        await asyncio.shield(self._stopped)

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until cancelled, then stop gracefully."""
        try:
            await asyncio.Future()
        finally:
            await self.aclose()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _stop(self) -> None:
        state, limits = self._state, self._state.limits
        state.stopping = True
        self._listener.close()
        for connection in list(state.connections):
            connection.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.shutdown_timeout
        while (state.connections or state.tasks) and loop.time() < deadline:
            if state.tasks:
                await asyncio.wait(set(state.tasks), timeout=max(0.0, deadline - loop.time()))
            else:
                await asyncio.sleep(0.01)
            for connection in list(state.connections):
                connection.stop()  # those whose response has just completed
        if state.tasks or state.connections:
            log.info("stopping: cancelling %d request(s) still in flight after %.1f s", len(state.tasks),
                     limits.shutdown_timeout)
        for task in list(state.tasks):
            task.cancel()
        for connection in list(state.connections):
            connection.abort()
        if state.tasks:
            await asyncio.wait(set(state.tasks), timeout=1.0)
        await self._lifespan.shutdown(limits.shutdown_timeout)


async def serve(
    app: ASGIApp,
    context: TLSContext,
    host: str | None = "127.0.0.1",
    port: int | None = 0,
    *,
    sock: socket.socket | None = None,
    psk_resolver: PSKResolver | None = None,
    limiter: ConnectionLimiter | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_body: int = DEFAULT_MAX_BODY,
    max_head: int = DEFAULT_MAX_HEAD,
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    lifespan: LifespanMode = "auto",
    error_body: ErrorBody = plain_error,
    **server_kwargs: Any,
) -> Server:
    """Run ``app``'s lifespan startup, then serve it over TLS (``context``: a server :class:`TLSContext`) on
    ``host:port`` or on the listening socket ``sock``.

    ``error_body``: the (content type, body) of the refusals the server makes itself (400, 408, 413, 431...;
    plain text by default), so that a service answers them in its own error format.
    ``psk_resolver``, ``limiter`` and ``handshake_timeout`` go to :func:`m2msec.transport.tls.start_server`; the
    limits are described in docs/asgi.md; other keyword arguments go to ``loop.create_server`` (``backlog``,
    ``reuse_port``...).

    Raises:
        LifespanFailed: the application refused to start; nothing listens.
        ConfigurationError: a limit out of range, a client context, a resolver without ``async_psk``.
        OSError: the address cannot be bound."""
    limits = Limits(max_head=max_head, max_body=max_body, keep_alive_timeout=keep_alive_timeout,
                    request_timeout=request_timeout, write_timeout=write_timeout, shutdown_timeout=shutdown_timeout)
    if not context.is_server:
        from m2msec.errors import ConfigurationError

        raise ConfigurationError("serve needs a server context")
    state = ServerState(app, limits, error_body)
    runner = Lifespan(app, lifespan)
    await runner.startup()
    if runner.supported:
        state.lifespan_state = runner.state
    if sock is not None:
        host = port = None
        server_kwargs["sock"] = sock
    try:
        listener = await start_server(lambda: HTTPProtocol(state), host, port, context,
                                      handshake_timeout=handshake_timeout, limiter=limiter,
                                      psk_resolver=psk_resolver, **server_kwargs)
    except BaseException:
        await runner.shutdown(shutdown_timeout)
        raise
    return Server(listener, state, runner)
