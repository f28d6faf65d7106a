"""The AEF front's connections to the API provider's backend (plain HTTP/1.1): a bounded keep-alive pool
(httpcore's :class:`~httpcore.AsyncConnectionPool` over h11, D177).

A connection goes back to the pool only after a complete, well-framed answer that lets it live (no
``connection: close``, not HTTP/1.0 without keep-alive: h11 decides); a framing error, an answer past
``max_answer`` bytes or a timeout (the caller's ``asyncio.timeout``) closes it. An idle connection the backend has
closed is noticed by httpcore before reuse (the socket is readable) and dropped; a request on a reused connection
that still fails before the answer's head (the backend closed it meanwhile) is sent once more on a new connection
when its method is idempotent (RFC 9110 §9.2.2), else the call fails (D178).
"""

from __future__ import annotations

from typing import Any, Final

import httpcore

__all__ = [
    "BACKEND_IDLE_EXPIRY",
    "BACKEND_MAX_CONNECTIONS",
    "BACKEND_MAX_IDLE",
    "RETRIED_METHODS",
    "BackendAnswer",
    "BackendFailed",
    "BackendPool",
]

#: D177: connections to the backend open at once (more calls wait for one, within the call's backend timeout)
BACKEND_MAX_CONNECTIONS: Final = 64
#: D177: idle keep-alive connections kept (more are closed once their answer is read)
BACKEND_MAX_IDLE: Final = 16
#: D177: seconds an idle keep-alive connection is kept before it is closed
BACKEND_IDLE_EXPIRY: Final = 5.0
#: D178: the idempotent methods (RFC 9110 §9.2.2) sent again on a new connection when a reused one failed before
#: the answer's head
RETRIED_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

BackendAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]

#: what the pool raises when the backend fails (refused, reset, closed, malformed, too slow)
_FAILURES: Final = (httpcore.ProtocolError, httpcore.NetworkError, httpcore.TimeoutException,
                    httpcore.UnsupportedProtocol, OSError)
#: the failures of a reused connection the backend closed while it was idle
_STALE: Final = (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError)


class BackendFailed(Exception):
    """The backend gave no usable answer; ``reason`` names what went wrong (no header, no body)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TooLarge(Exception):
    pass


class BackendPool:
    """Keep-alive HTTP/1.1 connections to ``host:port`` (bounds: D177)."""

    def __init__(self, host: str, port: int, *, max_answer: int, max_connections: int = BACKEND_MAX_CONNECTIONS,
                 max_idle: int = BACKEND_MAX_IDLE, idle_expiry: float = BACKEND_IDLE_EXPIRY) -> None:
        self.host, self.port, self.max_answer = host, port, max_answer
        self._pool = httpcore.AsyncConnectionPool(max_connections=max_connections, max_keepalive_connections=max_idle,
                                                  keepalive_expiry=idle_expiry, http1=True, http2=False, retries=0)
        #: D178: requests sent again after a reused connection failed
        self.retried = 0

    def __repr__(self) -> str:
        return f"<BackendPool {self.host}:{self.port} {len(self._pool.connections)} connections>"

    @property
    def connections(self) -> int:
        """Connections open now (idle or busy)."""
        return len(self._pool.connections)

    async def request(self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
                      ) -> BackendAnswer:
        """One exchange: (status, headers, body). No timeout of its own: the caller bounds it.

        Raises:
            BackendFailed: no connection, a reset, a malformed or oversized answer."""
        url = httpcore.URL(scheme=b"http", host=self.host.encode("ascii"), port=self.port,
                           target=target.encode("latin-1"))
        retry = method in RETRIED_METHODS
        while True:
            fresh = False

            async def trace(event: str, info: dict[str, Any]) -> None:
                nonlocal fresh
                if event.startswith("connection.connect_tcp"):
                    fresh = True  # this attempt opened its own connection

            try:
                return await self._exchange(method, url, headers, body, trace)
            except _STALE as exc:
                if fresh or not retry:
                    raise BackendFailed(type(exc).__name__) from None
                retry = False  # once
                self.retried += 1
            except _TooLarge:
                raise BackendFailed(f"answer larger than {self.max_answer} bytes") from None
            except _FAILURES as exc:
                raise BackendFailed(type(exc).__name__) from None

    async def _exchange(self, method: str, url: httpcore.URL, headers: list[tuple[bytes, bytes]], body: bytes,
                        trace: Any) -> BackendAnswer:
        async with self._pool.stream(method.encode("ascii"), url, headers=headers, content=body or None,
                                     extensions={"trace": trace}) as response:
            parts: list[bytes] = []
            size = 0
            try:
                async for chunk in response.aiter_stream():
                    size += len(chunk)
                    if size > self.max_answer:
                        raise _TooLarge  # leaving the stream unread closes that connection
                    parts.append(chunk)
            except _STALE as exc:  # the answer had begun: never sent again
                raise httpcore.NetworkError(str(exc)) from None
            return response.status, list(response.headers), b"".join(parts)

    async def aclose(self) -> None:
        """Close every connection (the front stops)."""
        await self._pool.aclose()
