"""Live security associations end when their credential does (issue 14).

A TLS connection or DTLS peer authenticated once; without this module it would outlive the removal of
its PSK, a revoked certificate, or any amount of time. At each request (HTTP: ``Gateway._handle``; CoAP:
``_PeerRelay.datagram_received``) the side asks the SA's :class:`SAGuard` whether it still stands:

* the SA is younger than the maximum SA lifetime (:data:`DEFAULT_MAX_SA_LIFETIME`, ``--max-sa-lifetime``);
* PSK: the table still holds its identity, with the same key (constant-time compare) and entity binding;
* certificate: not expired, and the current CRLs (:class:`m2msec.crl.CRLSet`) neither revoke it nor are
  missing or stale for its issuer (the same rule OpenSSL applies to a new handshake).

When it does not, the request is refused without being forwarded (:class:`SecurityAssociationEnded`:
HTTP 403 / CoAP 4.03 with rsc 4106, docs/decisions.md D29) and the SA is closed. :func:`sa_status` is the
pure decision (time injected); lookups in stores that are not in memory (SQLite) are cached for
:data:`LOOKUP_CACHE_SECONDS`.

Two clocks, both injected (docs/decisions.md D45): durations (the SA's age, the cache's freshness) run on a
monotonic clock (:data:`DURATION_CLOCK`), which a wall-clock step (NTP, a restored VM snapshot, ``date -s``)
does not move; only certificate and CRL dates are compared with the wall clock.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from cryptography import x509

from m2msec import http1
from m2msec.crl import CRLFile, CRLSet
from m2msec.errors import OriginatorNotAuthenticated
from m2msec.gateway import coap
from m2msec.keys.table import MemoryPSKTable, PSKEntry, PSKTable
from m2msec.tls.engine import SessionInfo

__all__ = [
    "DEFAULT_MAX_SA_LIFETIME",
    "DURATION_CLOCK",
    "LOOKUP_CACHE_SECONDS",
    "Grant",
    "Revocation",
    "SAGuard",
    "SecurityAssociationEnded",
    "sa_status",
]

log = logging.getLogger("m2msec.gateway.revocation")

#: seconds after which an SA is closed at its next request, whatever happened to its credential: bounds what
#: no check sees (a resolver's answer, a CA's trust) at the cost of one handshake per hour (docs/decisions.md D28)
DEFAULT_MAX_SA_LIFETIME = 3600.0
#: seconds a live-SA lookup in a store that is read from disk (SQLite) is reused; in-memory tables are not cached
LOOKUP_CACHE_SECONDS = 1.0
_CACHE_LIMIT = 65536
#: the clock of every duration here (SA lifetime, lookup cache): monotonic, never the wall clock, so that a clock
#: stepped back cannot keep a removed key's SA or cached entry alive (docs/decisions.md D45)
DURATION_CLOCK: Callable[[], float] = time.monotonic


class SecurityAssociationEnded(OriginatorNotAuthenticated):
    """The SA's credential was revoked or its lifetime ended: the request is refused, not forwarded, and the
    SA is closed (HTTP 403, CoAP 4.03, rsc 4106 ORIGINATOR_NOT_AUTHENTICATED; docs/decisions.md D29)."""


@dataclass(frozen=True)
class Grant:
    """What an SA was established with. ``psk_entry`` holds the key: never logged (its repr redacts it).
    ``established`` is a reading of the duration clock (:data:`DURATION_CLOCK`)."""

    established: float
    psk_identity: str | None
    psk_entry: PSKEntry | None
    certificate: x509.Certificate | None


def sa_status(grant: Grant, now: float, *, max_lifetime: float, lookup: Callable[[str], PSKEntry | None] | None,
              crls: CRLSet | None, monotonic_now: float | None = None) -> str | None:
    """Why the SA must end at ``now`` (wall clock, Unix seconds: certificate and CRL dates), or None while it stands.

    The SA's age is ``monotonic_now - grant.established`` (both from the duration clock); without
    ``monotonic_now`` a single clock is assumed and ``now`` is used.
    """
    age = (monotonic_now if monotonic_now is not None else now) - grant.established
    if age >= max_lifetime:
        return f"maximum SA lifetime ({max_lifetime:g} s) reached"
    if grant.psk_identity is not None:
        ident = grant.psk_identity
        if lookup is None or grant.psk_entry is None:
            return f"no PSK entry for {ident!r}"
        try:
            current = lookup(ident)
        except Exception as exc:  # fail closed, as the handshake does
            return f"PSK lookup for {ident!r} failed ({type(exc).__name__})"
        if current is None:
            return f"PSK identity {ident!r} was removed"
        if current.key != grant.psk_entry.key:  # SecretKey.__eq__ is hmac.compare_digest
            return f"the PSK of {ident!r} changed"
        if current.entity != grant.psk_entry.entity:
            return f"the entity bound to {ident!r} changed"
    if grant.certificate is not None:
        cert = grant.certificate
        if cert.not_valid_after_utc <= datetime.fromtimestamp(now, UTC):
            return "the peer certificate expired"
        if crls is not None:
            reason = crls.status(cert, now)
            if reason is not None:
                return reason
    return None


class _CachedLookup:
    def __init__(self, lookup: Callable[[str], PSKEntry | None], clock: Callable[[], float]) -> None:
        self._lookup, self._clock = lookup, clock
        self._cache: dict[str, tuple[float, PSKEntry | None]] = {}

    def __call__(self, identity: str) -> PSKEntry | None:
        now = self._clock()
        hit = self._cache.get(identity)
        if hit is not None and now < hit[0]:
            return hit[1]
        entry = self._lookup(identity)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[identity] = (now + LOOKUP_CACHE_SECONDS, entry)
        return entry


class Revocation:
    """One side's revocation policy: the table and CRLs in force, the lifetime, the clocks (``clock``: wall
    clock, for certificate and CRL dates; ``monotonic``: durations, :data:`DURATION_CLOCK`)."""

    def __init__(self, table: PSKTable | None, crls: CRLFile | None = None, *,
                 max_lifetime: float = DEFAULT_MAX_SA_LIFETIME, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] | None = None) -> None:
        if not max_lifetime > 0:
            raise ValueError("the maximum SA lifetime must be positive")
        self.crls = crls
        self.max_lifetime = max_lifetime
        self.clock = clock
        self.monotonic = monotonic if monotonic is not None else DURATION_CLOCK
        self.lookup: Callable[[str], PSKEntry | None] | None = None
        if table is not None:
            self.lookup = (table.lookup if isinstance(table, MemoryPSKTable)
                           else _CachedLookup(table.lookup, self.monotonic))

    def open(self, session: SessionInfo, connection: object) -> SAGuard:
        """The guard of a just-established SA (``connection``: the engine's connection, for its PSK entry)."""
        entry: PSKEntry | None = getattr(connection, "psk_entry", None)
        return SAGuard(self, Grant(self.monotonic(), session.psk_identity, entry, session.peer_certificate))


class SAGuard:
    """Asks :func:`sa_status` for one SA; renders the refusal for HTTP and CoAP."""

    def __init__(self, policy: Revocation, grant: Grant) -> None:
        self.policy = policy
        self.grant = grant
        self.ended: SecurityAssociationEnded | None = None

    def check(self) -> SecurityAssociationEnded | None:
        if self.ended is None:
            p = self.policy
            reason = sa_status(self.grant, p.clock(), max_lifetime=p.max_lifetime, lookup=p.lookup,
                               crls=p.crls.crls if p.crls is not None else None, monotonic_now=p.monotonic())
            if reason is not None:
                self.ended = SecurityAssociationEnded(f"the security association ended: {reason}")
        return self.ended

    def _log(self, peer: object, exc: SecurityAssociationEnded, what: str = "request refused") -> None:
        who = repr(self.grant.psk_identity) if self.grant.psk_identity is not None else "certificate"
        log.warning("SA with %s (%s) closed, %s: rsc=%d %s", peer, who, what, exc.rsc, exc.detail)

    def refuse_http(self, req: http1.Message, peer: object) -> http1.Message | None:
        """None while the SA stands; else the response that refuses ``req`` and closes the connection."""
        exc = self.check()
        if exc is None:
            return None
        self._log(peer, exc)
        headers = [("content-type", "application/json"), ("x-m2m-rsc", str(exc.rsc)), ("connection", "close")]
        request_id = req.header("x-m2m-ri")
        if request_id:
            headers.append(("x-m2m-ri", request_id))
        return http1.Message(headers=headers, body=json.dumps({"m2m:dbg": exc.detail}).encode(),
                            status=exc.http_status, reason=HTTPStatus(exc.http_status).phrase)

    def refuse_coap(self, msg: coap.Message, transport: Any, message_ids: Iterator[int]) -> bool:
        """False while the SA stands; else answer a request with 4.03 / rsc 4106, close the peer, return True."""
        exc = self.check()
        if exc is None:
            return False
        if transport is not None:
            self._log(transport.get_extra_info("peername"), exc)
            answer = coap.refusal(msg, exc, next(message_ids) & 0xFFFF)
            if answer is not None:
                transport.sendto(answer)
            transport.close()
        return True

    def close_if_ended(self, transport: Any) -> bool:
        """For traffic towards the peer (CoAP notifications, separate responses): nothing is relayed to an ended
        SA; close the peer and return True."""
        exc = self.check()
        if exc is None:
            return False
        self._log(transport.get_extra_info("peername"), exc, "message from the CSE not relayed")
        transport.close()
        return True
