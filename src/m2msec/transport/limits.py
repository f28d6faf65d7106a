"""Per-source caps: one client host must not take all the handshake slots of a server.

The TLS connection cap (:class:`m2msec.transport.tls.ConnectionLimiter`) and the DTLS handshake cap
(``max_handshaking`` of :class:`m2msec.transport.dtls.DTLSServerProtocol`) are global: a single host opening
stalled handshakes from many source ports would otherwise fill them and lock every other client out. A
:class:`SourceLimiter` counts the handshakes in progress per *source* and refuses one over its cap, before
the global cap is consulted.

A source is an IPv4 address, or an IPv6 /64 (:data:`IPV6_SOURCE_PREFIX`, docs/decisions.md D31): an IPv6
host usually owns a whole /64 and can pick a new address in it for every connection, so counting per
/128 would cap nothing. IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``, a dual-stack socket) count as the
IPv4 address.

Established connections are capped too (docs/decisions.md D47): per source
(:data:`DEFAULT_MAX_CONNECTIONS_PER_SOURCE`, generous: many clients may share one NAT address), and per
authenticated client, the SA's credential (:func:`sa_key`: PSK identity or certificate fingerprint): at most
:data:`DEFAULT_MAX_CONNECTIONS_PER_SA`, and
never more than :func:`sa_share` of the connection cap, so one credential cannot hold every slot even where its
clients share their address with everyone else. A connection over its SA's cap is closed right after the
handshake (the slot is free again before the next connection is accepted).

Failed handshakes are rate-limited per source (docs/decisions.md D220, D229-D231): a connection (a DTLS peer whose
cookie came back) that sent something and goes before its handshake completes (a wrong key, garbage, a timeout, a
close mid-handshake) counts as one failure of its source; a silent connect-and-close (a health check, a port probe)
does not (D231). Failures fill a leaky bucket per source (:class:`FailureRate`: at most
:data:`DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE` at once, draining at that many per :data:`FAILED_HANDSHAKE_WINDOW`);
a handshake in progress holds a failure's weight until it completes (D230); a source whose bucket is full is refused
at once. The address is one the peer proved it receives at (the TCP handshake, the DTLS cookie), so a spoofed source
cannot fill another's bucket, and an unauthenticated epoch-0 DTLS record can neither end another's handshake by an
alert nor count against its source (D232).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes

if TYPE_CHECKING:
    from m2msec.tls.engine import SessionInfo

__all__ = [
    "DEFAULT_MAX_CONNECTIONS_PER_SA",
    "DEFAULT_MAX_CONNECTIONS_PER_SOURCE",
    "DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE",
    "DEFAULT_MAX_HANDSHAKES_PER_SOURCE",
    "FAILED_HANDSHAKE_WINDOW",
    "IPV6_SOURCE_PREFIX",
    "SA_SHARE_DIVISOR",
    "ConnectionLimiter",
    "FailureRate",
    "Slot",
    "SourceLimiter",
    "limit_failures",
    "sa_key",
    "sa_share",
    "source_of",
]

log = logging.getLogger("m2msec.transport")

#: handshakes one source may have in progress at once, TLS and DTLS (docs/decisions.md D31). Handshakes
#: finish in milliseconds, so even many clients behind one NAT address rarely hold more at a time.
DEFAULT_MAX_HANDSHAKES_PER_SOURCE = 32
#: IPv6 sources are aggregated per this prefix length (docs/decisions.md D31)
IPV6_SOURCE_PREFIX = 64
#: open TLS connections (established or not), and DTLS peers, one source may hold at once (D47). Generous: a
#: NAT address can stand for many devices; the per-SA cap is what stops one client.
DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 1000
#: established TLS connections, and DTLS peers, one SA credential may hold at once (D47)
DEFAULT_MAX_CONNECTIONS_PER_SA = 64
#: failed handshakes (and handshakes in progress) one source may have in its bucket, draining at this many per
#: FAILED_HANDSHAKE_WINDOW, before its connections are refused (D220, D229, D230). Generous: 5 a second on average,
#: far above a misconfigured device retrying or a NAT's few broken clients, far below what a wrong-key or garbage
#: flood sends (thousands/s).
DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE = 300
#: seconds in which a full bucket of failures drains (D229)
FAILED_HANDSHAKE_WINDOW = 60.0
#: sources whose failures are counted at once (D220): beyond, expired windows are pruned, then all counts start over
FAILED_HANDSHAKE_SOURCES = 65536
#: ... and never more than 1/SA_SHARE_DIVISOR of the server's connection (or peer) cap (D47)
SA_SHARE_DIVISOR = 2


def sa_share(wanted: int, total: int) -> int:
    """The per-SA cap in force: ``wanted``, at most ``total // SA_SHARE_DIVISOR`` (at least 1)."""
    return max(1, min(wanted, total // SA_SHARE_DIVISOR))


#: what a client without a PSK or certificate is counted as (a server with an optional client certificate); its
#: connections count per source address (the CCF's onboarding clients: one host cannot hold them all)
ANONYMOUS = "anonymous"


def sa_key(session: SessionInfo) -> str:
    """What one authenticated client is counted as: its PSK identity, else its certificate's SHA-256 fingerprint.

    Not (issuer DN, serial): two trusted CAs may share a DN (a CA key rollover, a co-tenant's CA or a sub-CA
    picking any name) and serials, and their clients would count against one another's caps (D47, D46, D48).
    """
    if session.psk_identity is not None:
        return "psk:" + session.psk_identity
    cert = session.peer_certificate
    if cert is not None:
        return "cert:" + cert.fingerprint(hashes.SHA256()).hex()
    return ANONYMOUS


def source_of(peer: Any) -> str:
    """The source a transport address (``peername``: ``(host, port, ...)``) counts against."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    return _source_of_host(str(host))


@functools.lru_cache(maxsize=65536)
def _source_of_host(host: str) -> str:
    # one ipaddress parse per host, not per connection (it was ~40 us of every handshake); LRU-bounded, so a
    # client churning IPv6 addresses costs itself a parse each, nothing more
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return host  # not an IP address (a Unix socket, a test double): itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_SOURCE_PREFIX), strict=False))
    return str(ip)


class SourceLimiter:
    """Counts what each source (or SA) holds (handshakes in progress, connections) and refuses one over ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the per-source limit must be at least 1")
        self.limit = limit
        self.held: dict[str, int] = {}
        self.refused = 0

    def acquire(self, source: str) -> bool:
        count = self.held.get(source, 0)
        if count >= self.limit:
            self.refused += 1
            return False
        self.held[source] = count + 1
        return True

    def release(self, source: str) -> None:
        count = self.held.get(source, 0) - 1
        if count > 0:
            self.held[source] = count
        else:
            self.held.pop(source, None)


class FailureRate:
    """Failed handshakes per source, as a leaky bucket (GCRA, D229): each failure weighs ``window / limit`` seconds of
    debt, which drains at one second per second; the source is :meth:`blocked` while its bucket holds ``limit``
    failures. No burst above ``limit``, and ``limit`` per ``window`` sustained; one float per source.

    A handshake is charged (:meth:`charge`) when it is admitted and refunded (:meth:`refund`) when it completes or
    goes without counting (D230, D231), so handshakes in progress use the bucket too: a source cannot open its whole
    per-source handshake cap each time its bucket drains by one failure (issue 21 second review, R4).

    Memory is bounded (:data:`FAILED_HANDSHAKE_SOURCES` sources): when full, drained sources go, then the least
    indebted half of the unblocked ones; a blocked source is never forgotten to make room (L3). While (nearly) every
    tracked source is blocked, a new one is not tracked (:attr:`untracked`) and the table is not walked again until
    the first of them can be unblocked (R7)."""

    def __init__(self, limit: int, window: float = FAILED_HANDSHAKE_WINDOW,
                 clock: Callable[[], float] = time.monotonic, max_sources: int = FAILED_HANDSHAKE_SOURCES) -> None:
        if limit < 1:
            raise ValueError("the failed-handshake limit must be at least 1")
        if not window > 0:
            raise ValueError("the failed-handshake window must be positive")
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_sources = max_sources
        self.interval = window / limit  # what one failure weighs, in seconds of debt
        # blocked while the debt exceeds the room for limit - 1 failures (GCRA's burst tolerance), with a tolerance
        # far below one failure's weight so that float rounding never blocks at limit - 1
        self._full = window - self.interval + self.interval * 1e-6
        self.debt: dict[str, float] = {}  # source -> when its bucket is empty again (GCRA's theoretical arrival time)
        self.refused = 0
        self.untracked = 0
        self._no_room_until = float("-inf")

    def count(self, source: str) -> float:
        """The failures (and handshakes in progress) ``source`` has in its bucket now; fractional, it drains."""
        empty_at = self.debt.get(source)
        return 0.0 if empty_at is None else max(0.0, empty_at - self.clock()) / self.interval

    def blocked(self, source: str) -> bool:
        """True if ``source`` holds ``limit`` failures (the caller counts the refusal in :attr:`refused`)."""
        empty_at = self.debt.get(source)
        if empty_at is None:
            return False
        debt = empty_at - self.clock()
        if debt <= 0:
            del self.debt[source]
            return False
        return debt > self._full

    def charge(self, source: str) -> bool:
        """One failure's weight on ``source`` (a handshake admitted, or failed); False if it could not be tracked."""
        now = self.clock()
        debt = self.debt
        empty_at = debt.get(source)
        if empty_at is None and len(debt) >= self.max_sources and not self._make_room(now):
            self.untracked += 1
            return False
        debt[source] = (now if empty_at is None or empty_at < now else empty_at) + self.interval
        return True

    def failed(self, source: str) -> None:
        """One failure of ``source`` outside a slot (a tool, a test): a charge that stays."""
        self.charge(source)

    def refund(self, source: str) -> None:
        """Take back one :meth:`charge` (the handshake completed, or went without counting)."""
        empty_at = self.debt.get(source)
        if empty_at is not None:
            empty_at -= self.interval
            if empty_at <= self.clock():
                del self.debt[source]
            else:
                self.debt[source] = empty_at

    def _make_room(self, now: float) -> bool:
        """Forget drained sources, else the least indebted half of the unblocked ones; False if (nearly) all are
        blocked, and then the table is not walked again until the first of them can be unblocked."""
        if now < self._no_room_until:
            return False
        debt = self.debt
        drained: list[str] = []
        open_sources: list[tuple[float, str]] = []
        next_change = float("inf")
        for key, empty_at in debt.items():  # one walk
            if empty_at <= now:
                drained.append(key)
            elif empty_at - now <= self._full:
                open_sources.append((empty_at, key))
                next_change = min(next_change, empty_at)  # when it has drained
            else:
                next_change = min(next_change, empty_at - self._full)  # when it is no longer blocked
        for key in drained:
            del debt[key]
        if len(debt) < self.max_sources:
            return True
        if not open_sources or len(open_sources) < self.max_sources // 8:  # (nearly) all blocked: no new walk
            # before the next change
            self._no_room_until = next_change
            return False
        open_sources.sort()
        for _, key in open_sources[: max(1, len(open_sources) // 2)]:
            del debt[key]
        return True


class ConnectionLimiter:
    """Caps the connections (TLS) or peers (DTLS) a server keeps open, handshaking or not; one over a cap is refused
    at once. The one cap mechanism of both transports: :meth:`admit` when a connection (a DTLS peer whose cookie came
    back) is to be kept, :meth:`Slot.established` after its handshake, :meth:`Slot.release` when it goes.

    With ``per_source_handshakes``, each source (IPv4 address, IPv6 /64: :func:`source_of`) may also have at most
    that many connections *in their handshake* (:attr:`sources`), so one host cannot take every slot with stalled
    handshakes; with ``max_handshaking``, all sources together at most that many (:attr:`handshaking`).

    With ``per_source_connections``, each source may have at most that many connections open (:attr:`open_per_source`,
    checked before the handshake); with ``per_sa``, each authenticated client (its credential, :func:`sa_key`) at most
    ``sa_share(per_sa, limit)`` established ones (:attr:`per_sa`): one more is closed right after its handshake
    (docs/decisions.md D47).

    With ``failed_per_source`` (on by default, None turns it off), a source with that many failed handshakes (and
    handshakes in progress) in its bucket, which drains in ``failure_window`` seconds, is refused until one failure
    has drained (:attr:`failures`, D220, D229, D230)."""

    def __init__(self, limit: int, *, per_source_handshakes: int | None = None,
                 per_source_connections: int | None = None, per_sa: int | None = None,
                 max_handshaking: int | None = None,
                 failed_per_source: int | None = DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE,
                 failure_window: float = FAILED_HANDSHAKE_WINDOW) -> None:
        if limit < 1:
            raise ValueError("the connection limit must be at least 1")
        self.limit = limit
        self.open = 0
        self.refused = 0
        self.handshaking = 0
        self.max_handshaking = max_handshaking
        self.sources = SourceLimiter(per_source_handshakes) if per_source_handshakes is not None else None
        self.open_per_source = (SourceLimiter(per_source_connections) if per_source_connections is not None
                                else None)
        self.per_sa = SourceLimiter(sa_share(per_sa, limit)) if per_sa is not None else None
        self.failures = FailureRate(failed_per_source, failure_window) if failed_per_source is not None else None
        self._refusals = RefusalLog()

    def acquire(self) -> bool:
        if self.open >= self.limit:
            self.refused += 1
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    def admit(self, peer: Any) -> Slot | None:
        """A slot for a new connection from ``peer`` (a transport address), or None (logged) if a cap is reached:
        its source's failed handshakes first, then its source's handshakes (a connection refused there must not take
        a global slot either), then all handshakes, then its source's connections, then all connections."""
        source = source_of(peer)
        failures = self.failures
        sources = self.sources
        if failures is not None and failures.blocked(source):
            failures.refused += 1
            self._refusals.warn(source, "connection from %s refused: %d failed handshakes from %s within %.0f s",
                                peer, failures.limit, source, failures.window)
            return None
        if sources is not None and not sources.acquire(source):
            self._refusals.warn(source, "connection from %s refused: %d handshakes from %s in progress", peer,
                                sources.limit, source)
            return None
        if self.max_handshaking is not None and self.handshaking >= self.max_handshaking:
            self._refusals.warn(source, "connection from %s refused: %d handshakes in progress", peer,
                                self.handshaking)
            self._unhold(sources, source)
            return None
        per_source = self.open_per_source
        if per_source is not None and not per_source.acquire(source):
            self._refusals.warn(source, "connection from %s refused: %d connections from %s open", peer,
                                per_source.limit, source)
            self._unhold(sources, source)
            return None
        if not self.acquire():
            self._refusals.warn(source, "connection from %s refused: %d connections open", peer, self.limit)
            self._unhold(sources, source)
            self._unhold(per_source, source)
            return None
        self.handshaking += 1
        slot = Slot(self, source)
        # its handshake takes a failure's weight now, given back if it completes or goes silent (D230)
        slot.charged = failures is not None and failures.charge(source)
        return slot

    @staticmethod
    def _unhold(limiter: SourceLimiter | None, source: str) -> None:
        if limiter is not None:
            limiter.release(source)


def limit_failures(limiter: ConnectionLimiter, per_source: int) -> None:
    """``--max-failed-handshakes-per-source`` on a limiter (0: none; D220); a changed limit starts counting over."""
    current = limiter.failures.limit if limiter.failures is not None else 0
    if current != per_source:
        limiter.failures = FailureRate(per_source) if per_source > 0 else None


#: D154: refused connections logged per source address and window; the rest of the window is counted, then summed up
REFUSAL_LOG_BURST = 5
REFUSAL_LOG_WINDOW = 60.0
#: sources whose refusals are counted at once (beyond, the counts start over: memory stays bounded)
REFUSAL_LOG_SOURCES = 1024


class RefusalLog:
    """Rate-limited WARNING lines for refused connections (D154): one host cannot flood the log by being refused."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.windows: dict[str, tuple[float, int]] = {}  # source -> (window start, refusals in it)

    def warn(self, source: str, message: str, *args: object) -> None:
        now = self.clock()
        start, count = self.windows.get(source, (now, 0))
        if now - start >= REFUSAL_LOG_WINDOW:
            if count > REFUSAL_LOG_BURST:
                log.warning("%d more connections from %s refused in %.0f s (not logged one by one)",
                            count - REFUSAL_LOG_BURST, source, now - start, extra={"event": "connections_refused"})
            start, count = now, 0
        if len(self.windows) >= REFUSAL_LOG_SOURCES and source not in self.windows:
            self.windows.clear()
        self.windows[source] = (start, count + 1)
        extra = {"event": "connection_refused", "peer": args[0] if args else None}
        if count < REFUSAL_LOG_BURST:
            log.warning(message, *args, extra=extra)
        elif count == REFUSAL_LOG_BURST:
            log.warning(message + " (further refusals of this source are counted for %.0f s)", *args,
                        REFUSAL_LOG_WINDOW, extra=extra)


class Slot:
    """What one connection holds in its :class:`ConnectionLimiter`."""

    __slots__ = ("charged", "counts", "handshaking", "limiter", "sa", "source")

    def __init__(self, limiter: ConnectionLimiter, source: str) -> None:
        self.limiter: ConnectionLimiter | None = limiter
        self.source = source
        self.handshaking = True
        self.sa: str | None = None
        #: set once the peer has sent something (or timed out): only then does an unfinished handshake count as a
        #: failure of its source (D231: a connect-and-close health check or port probe is none)
        self.counts = False
        self.charged = False  # a failure's weight in its source's bucket while the handshake is in progress (D230)

    def _end_handshake(self, limiter: ConnectionLimiter) -> None:
        if self.handshaking:
            self.handshaking = False
            limiter.handshaking -= 1
            ConnectionLimiter._unhold(limiter.sources, self.source)

    def _refund(self, limiter: ConnectionLimiter) -> None:
        if self.charged:
            self.charged = False
            if limiter.failures is not None:
                limiter.failures.refund(self.source)

    def established(self, session: SessionInfo, peer: Any) -> bool:
        """The handshake completed: its handshake slot is free again, and the SA's connection is counted.
        False (logged) if its credential holds its share already (D47): the caller closes it."""
        limiter = self.limiter
        if limiter is None:
            return True
        self._end_handshake(limiter)
        self._refund(limiter)
        if limiter.per_sa is None:
            return True
        key = sa_key(session)
        if key == ANONYMOUS:  # no credential to count by (CAPIF onboarding): each source address is its own
            key = f"{ANONYMOUS}:{self.source}"
        if not limiter.per_sa.acquire(key):
            log.warning("connection from %s closed: its credential (%s) holds %d connections already",
                        peer, session.authentication, limiter.per_sa.limit)
            return False
        self.sa = key
        return True

    def release(self) -> None:
        """The connection is gone (idempotent)."""
        limiter, self.limiter = self.limiter, None
        if limiter is None:
            return
        if not (self.handshaking and self.counts):  # else gone before its handshake completed: the charge stays
            self._refund(limiter)
        self._end_handshake(limiter)
        ConnectionLimiter._unhold(limiter.open_per_source, self.source)
        if self.sa is not None and limiter.per_sa is not None:
            limiter.per_sa.release(self.sa)
        self.sa = None
        limiter.release()
