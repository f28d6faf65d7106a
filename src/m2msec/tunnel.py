"""``m2msec tunnel``: the client-side TLS front for a CSE's outgoing requests (what stunnel's client mode does).

A oneM2M CSE such as ACME sends its requests (CREATE ``<remoteCSE>`` at its registrar, retargeting to another
CSE's point of access) in plain HTTP and cannot present a client certificate or a PSK. :class:`Tunnel` listens on
a plain TCP port on loopback; every connection it accepts is carried inside its own TLS connection to the peer's
``m2msec gateway``, made by m2msec's engine (:func:`m2msec.transport.tls.open_connection`) as Entity A with the
credentials given (:class:`~m2msec.saef.PSKCredentials` or :class:`~m2msec.saef.CertificateCredentials`, IdB
required as for :func:`m2msec.saef.establish_sa`). The CSE is then configured with ``http://127.0.0.1:<port>``.

The plain side is not authenticated: whoever can connect to it speaks with the tunnel's credentials. So it
listens on loopback only, unless ``allow_remote`` (docs/decisions.md D107).

Per connection: the TLS connection is made when the plain one is accepted (within ``connect_timeout``); a
refused handshake or an unreachable target resets the plain connection at once and logs one line (no key
material). Then bytes are copied both ways with backpressure (a direction reads only once its writer has
drained). TLS has no half-close in this engine (a close_notify ends the session), so:

- the TLS side ends (the gateway closed): what it sent is delivered, then the plain connection is closed;
- the plain side sends EOF right after sending (a client that half-closes after its request): the TLS side
  stays open so the answer is still delivered; both close when the gateway closes, or after ``idle_timeout``
  without traffic;
- the plain side sends EOF after the last bytes came from the TLS side, or before sending anything (a client
  closing its connection): both are closed at once;
- any error, or ``idle_timeout`` seconds without a byte in either direction: both are closed.

At most ``max_connections`` are open at once; one more is reset at once; at most ``MAX_HANDSHAKES`` handshakes
run at once, the others wait for one to end (D108).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from m2msec.errors import ConfigurationError, M2MSecError
from m2msec.idb import require_idb
from m2msec.saef import CertificateCredentials, PSKCredentials
from m2msec.tls.engine import TLSContext
from m2msec.transport.limits import DEFAULT_MAX_CONNECTIONS_PER_SA, DEFAULT_MAX_HANDSHAKES_PER_SOURCE
from m2msec.transport.tls import open_connection

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LISTEN_HOST",
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_HANDSHAKES",
    "Tunnel",
    "TunnelConfig",
    "is_loopback",
    "should_close",
]

log = logging.getLogger("m2msec.tunnel")

#: where the unauthenticated plain side listens by default; any non-loopback address is refused unless
#: ``allow_remote`` (``--allow-remote``): docs/decisions.md D107
DEFAULT_LISTEN_HOST: Final = "127.0.0.1"
#: connections open at once; one more is reset at once (docs/decisions.md D108): the gateway's default cap on the
#: connections of one credential (D47), which all the tunnel's connections share
DEFAULT_MAX_CONNECTIONS: Final = DEFAULT_MAX_CONNECTIONS_PER_SA
#: handshakes with the target at once; more wait (within the connect timeout): the gateway's default cap on the
#: handshakes in progress from one source (D31), which a burst of connections from the tunnel would exceed (D108)
MAX_HANDSHAKES: Final = DEFAULT_MAX_HANDSHAKES_PER_SOURCE
#: seconds for the TCP connection and the handshake with the target together
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: seconds without a byte in either direction before a tunnelled connection is closed (the gateway's idle timeout)
DEFAULT_IDLE_TIMEOUT: Final = 60.0
#: bytes read at once from either side
CHUNK: Final = 64 * 1024


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IPv4/IPv6 address (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TunnelConfig:
    """Where to listen (plain), where to connect (TLS) and as whom."""

    target_host: str
    target_port: int
    #: Entity A's credentials; their ``peer_entity`` is IdB (required, or ANY_ENTITY: D23) and ``profiles`` the
    #: cipher profiles offered
    credentials: PSKCredentials | CertificateCredentials
    listen_host: str = DEFAULT_LISTEN_HOST
    listen_port: int = 0
    #: SNI (TS-0003 §10.2.1)
    server_name: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: None: no idle limit
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: listen on a non-loopback address (the plain side is unauthenticated: D107)
    allow_remote: bool = False

    def check(self) -> None:
        """Raises ConfigurationError for a config the tunnel must not run with."""
        if not self.allow_remote and not is_loopback(self.listen_host):
            raise ConfigurationError(f"refusing to listen on {self.listen_host}: the plain side of the tunnel is "
                                     "unauthenticated; listen on loopback, or give --allow-remote")
        require_idb(self.credentials.peer_entity)
        if not 0 <= self.listen_port <= 65535 or not 0 < self.target_port <= 65535:
            raise ConfigurationError("port out of range")
        if not self.connect_timeout > 0:
            raise ConfigurationError("the connect timeout must be positive")
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise ConfigurationError("the idle timeout must be positive")
        if self.max_connections < 1:
            raise ConfigurationError("max connections must be at least 1")


class _Activity:
    """When a byte last went through (the loop's clock), and in which direction."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.last = clock()
        #: True: the last bytes went plain -> TLS (a request may await its answer); False: TLS -> plain; None: none
        self.upstream: bool | None = None

    def touch(self, upstream: bool) -> None:
        self.last = self.clock()
        self.upstream = upstream


def should_close(*, tls_ended: bool, plain_ended: bool, failed: bool, last_upstream: bool | None) -> bool:
    """Whether a tunnelled connection ends now (both sides closed), after one direction stopped.

    ``tls_ended``: the TLS side reached EOF (what it sent is delivered); ``plain_ended``: the plain side sent EOF;
    ``failed``: a read or write failed; ``last_upstream``: the direction of the last bytes (True plain -> TLS,
    False TLS -> plain, None none yet). The TLS side has no half-close, so its end ends the connection. The plain
    side's EOF ends it unless the last bytes went upstream: a client that half-closes right after its request still
    gets the answer; one that closes after the last answer, or before sending anything, is gone."""
    if tls_ended or failed:
        return True
    if plain_ended:
        return last_upstream is not True
    return False


class Tunnel:
    """A plain TCP listener whose connections are carried in TLS connections to ``config.target_*``."""

    def __init__(self, config: TunnelConfig) -> None:
        config.check()
        self.config = config
        # one client context for every connection (the credentials are loaded once)
        self._context = TLSContext.client(config.credentials.client_config(config.server_name))
        self._handshakes = asyncio.Semaphore(MAX_HANDSHAKES)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        #: counters: connections accepted, refused (over the cap), failed (no TLS connection), open now
        self.accepted = 0
        self.refused = 0
        self.failed = 0
        self.active = 0

    async def start(self) -> None:
        cfg = self.config
        self._server = await asyncio.start_server(self._accept, cfg.listen_host, cfg.listen_port, limit=CHUNK)

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the first socket's)."""
        assert self._server is not None, "not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    async def close(self) -> None:
        """Stop listening and close every tunnelled connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Tunnel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- per connection
    async def _accept(self, plain_r: asyncio.StreamReader, plain_w: asyncio.StreamWriter) -> None:
        cfg = self.config
        peer = plain_w.get_extra_info("peername")
        self.accepted += 1
        if self.active >= cfg.max_connections:
            self.refused += 1
            log.warning("connection from %s refused: %d connections open (the maximum)", peer, self.active)
            plain_w.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.active += 1
        try:
            await self._serve(peer, plain_r, plain_w)
        except asyncio.CancelledError:
            pass  # close(): end quietly (Python 3.11's start_server reports a cancelled handler as an error)
        finally:
            self.active -= 1
            self._handlers.discard(task)

    async def _serve(self, peer: object, plain_r: asyncio.StreamReader, plain_w: asyncio.StreamWriter) -> None:
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.connect_timeout), self._handshakes:
                tls_r, tls_w, session = await open_connection(
                    cfg.target_host, cfg.target_port, self._context, handshake_timeout=cfg.connect_timeout,
                    limit=CHUNK, peer_entity=cfg.credentials.peer_entity)
        except asyncio.CancelledError:
            plain_w.transport.abort()
            raise
        except (OSError, TimeoutError, M2MSecError) as exc:
            self.failed += 1
            log.warning("connection from %s to %s:%d failed: %s", peer, cfg.target_host, cfg.target_port,
                        _reason(exc, cfg.connect_timeout))
            plain_w.transport.abort()  # the CSE sees a reset at once, never a hang
            return
        log.info("connection from %s: SA with %s (%s authentication, %s %s)", peer,
                 session.entity or f"{cfg.target_host}:{cfg.target_port}", session.authentication, session.version,
                 session.cipher)
        try:
            await self._pipe(plain_r, plain_w, tls_r, tls_w)
        finally:
            tls_w.close()  # close_notify
            plain_w.close()

    def _idle_limit(self, activity: _Activity) -> float | None:
        """Seconds without traffic before the connection ends: the idle timeout, but only ``connect_timeout`` until
        the first byte (D108): a local client that opens connections and sends nothing cannot hold every slot, and
        as many of the gateway's connections, for the whole idle timeout."""
        cfg = self.config
        if activity.upstream is None:
            return _first_byte_limit(cfg.idle_timeout, cfg.connect_timeout)
        return cfg.idle_timeout

    async def _pipe(self, plain_r: asyncio.StreamReader, plain_w: asyncio.StreamWriter,
                    tls_r: asyncio.StreamReader, tls_w: asyncio.StreamWriter) -> None:
        """Copy both ways until the TLS side ends, an error, or the idle timeout."""
        loop = asyncio.get_running_loop()
        activity = _Activity(loop.time)
        up = asyncio.create_task(_copy(plain_r, tls_w, activity, upstream=True))
        down = asyncio.create_task(_copy(tls_r, plain_w, activity, upstream=False))
        pending: set[asyncio.Task[None]] = {up, down}
        try:
            while pending:
                idle = self._idle_limit(activity)
                wait = None if idle is None else max(0.0, activity.last + idle - loop.time())
                done, pending = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if idle is not None and loop.time() - activity.last >= idle:
                        return  # idle (or silent from the start)
                    continue
                failed = any(t.exception() is not None for t in done)
                if should_close(tls_ended=down in done, plain_ended=up.done(), failed=failed,
                                last_upstream=activity.upstream):
                    return
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)


def _first_byte_limit(idle: float | None, connect_timeout: float) -> float:
    return connect_timeout if idle is None else min(idle, connect_timeout)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: _Activity, *,
                upstream: bool) -> None:
    while True:
        data = await reader.read(CHUNK)
        if not data:
            return
        activity.touch(upstream)
        writer.write(data)
        await writer.drain()  # backpressure: read no more until the other side took it


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no TLS connection within {timeout:g} s"
    if isinstance(exc, OSError) and not isinstance(exc, M2MSecError):
        return f"cannot connect: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__
