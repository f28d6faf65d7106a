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
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes

if TYPE_CHECKING:
    from m2msec.tls.engine import SessionInfo

__all__ = [
    "DEFAULT_MAX_CONNECTIONS_PER_SA",
    "DEFAULT_MAX_CONNECTIONS_PER_SOURCE",
    "DEFAULT_MAX_HANDSHAKES_PER_SOURCE",
    "IPV6_SOURCE_PREFIX",
    "SA_SHARE_DIVISOR",
    "SourceLimiter",
    "sa_key",
    "sa_share",
    "source_of",
]

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
#: ... and never more than 1/SA_SHARE_DIVISOR of the server's connection (or peer) cap (D47)
SA_SHARE_DIVISOR = 2


def sa_share(wanted: int, total: int) -> int:
    """The per-SA cap in force: ``wanted``, at most ``total // SA_SHARE_DIVISOR`` (at least 1)."""
    return max(1, min(wanted, total // SA_SHARE_DIVISOR))


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
    return "anonymous"


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
