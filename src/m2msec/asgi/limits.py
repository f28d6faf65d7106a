"""The limits of the ASGI server (docs/asgi.md, docs/decisions.md D96, D97): one named constant each, gathered in
:class:`Limits`, which :func:`m2msec.asgi.serve` builds from its keyword arguments."""

from __future__ import annotations

from dataclasses import dataclass

from m2msec.errors import ConfigurationError

__all__ = [
    "DEFAULT_KEEP_ALIVE_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEAD",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "Limits",
]

#: D96: bytes of a request head (request line and header fields); a larger one is refused with 431 and closed
DEFAULT_MAX_HEAD = 16 * 1024
#: D96: bytes of a request body: a larger Content-Length is refused with 413 before the body is read, a chunked
#: body is cut at the cap with 413 (the server's ``max_body=`` sets it per server)
DEFAULT_MAX_BODY = 1024 * 1024
#: D97: seconds a connection may stay idle between requests (and before its first one) before it is closed
DEFAULT_KEEP_ALIVE_TIMEOUT = 60.0
#: D97: seconds a whole request (head and body) has to arrive, from its first byte; then 408 and closed
DEFAULT_REQUEST_TIMEOUT = 30.0
#: D97: seconds a response write may wait for the client to read before the connection is aborted
DEFAULT_WRITE_TIMEOUT = 30.0
#: seconds a graceful stop lets the requests in flight finish before cancelling them
DEFAULT_SHUTDOWN_TIMEOUT = 10.0


@dataclass(frozen=True)
class Limits:
    """What one server allows its clients; every field defaults to its named constant."""

    max_head: int = DEFAULT_MAX_HEAD
    max_body: int = DEFAULT_MAX_BODY
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_head < 256:
            raise ConfigurationError("max_head must be at least 256 bytes")
        if self.max_body < 0:
            raise ConfigurationError("max_body must not be negative")
        for name in ("keep_alive_timeout", "request_timeout", "write_timeout", "shutdown_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
