"""The AEF's TLS-PSK key resolution (TS 33.122 §6.5.2.1, CAPIF-2e Method 1): psk_identity = API invoker ID →
AEFPSK from the CCF, through the engine's asynchronous PSK path (:mod:`m2msec.transport.psk_resolver`).

An invoker connects to the AEF listener with its API invoker ID as psk_identity and the AEFPSK it derived for that
listener's interface (P0, D115). :class:`AEFPSKResolver` answers the server's PSK lookup:

* a cached answer at once (:meth:`AEFPSKResolver.lookup_now`, no task): a key for :data:`PSK_CACHE_TTL` seconds, a
  refusal (no security context for this AEF, no PSK entry for this interface) for :data:`NEGATIVE_CACHE_TTL`; at
  most :data:`PSK_CACHE_SIZE` invokers, the least recently used dropped first (D163);
* else one ``GET trustedInvokers/{id}`` (:class:`~m2msec.capif.aef.ccf_link.CCFLink`) while the loop serves the
  other clients; handshakes offering an identity already being fetched wait for that one fetch (single-flight); at
  most :data:`PSK_FETCHES_IN_FLIGHT` fetches run at once, a handshake needing another one is refused at once;
* the key is that of the PSK entry for this listener (:meth:`~m2msec.capif.aef.ccf_link.TrustedInvoker.psk_entries`,
  D162); none, or entries with different keys: refused;
* the CCF unreachable, slow or answering nonsense: that client is refused (one log line, no key), nothing is
  cached, the other clients (cached or not) are served as usual;
* :meth:`AEFPSKResolver.invalidate` forgets an invoker (revocation, offboarding): its cached key goes and a fetch
  in flight is not cached nor handed to the handshakes waiting for it.

What the CCF granted (:meth:`AEFPSKResolver.trusted`) stays cached with the key, for the authorization checks of the
API calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from m2msec.capif.aef.ccf_link import CCFLinkError, TrustedInvoker, is_invoker_id
from m2msec.keys.table import PSKEntry
from m2msec.transport.psk_resolver import MISS, ProbeAnswer

__all__ = ["NEGATIVE_CACHE_TTL", "PSK_CACHE_SIZE", "PSK_CACHE_TTL", "PSK_FETCHES_IN_FLIGHT", "AEFPSKResolver",
           "TrustedInvokerSource"]

log = logging.getLogger("m2msec.capif.aef")

#: seconds an AEFPSK fetched from the CCF is used without asking again (revocation is pushed: invalidate()) (D163)
PSK_CACHE_TTL: Final = 300.0
#: seconds a refusal (no context for this AEF, no PSK entry for this interface) is remembered (D163)
NEGATIVE_CACHE_TTL: Final = 5.0
#: invokers whose answer is cached; beyond it the least recently used is dropped (D163)
PSK_CACHE_SIZE: Final = 4096
#: fetches from the CCF running at once; a handshake needing one more is refused at once (D163)
PSK_FETCHES_IN_FLIGHT: Final = 64


class TrustedInvokerSource(Protocol):
    """What the resolver needs from the CCF (:class:`~m2msec.capif.aef.ccf_link.CCFLink`)."""

    async def trusted_invoker(self, invoker_id: str) -> TrustedInvoker | None: ...


@dataclass
class _Flight:
    task: asyncio.Task[PSKEntry | None] | None = None
    revoked: bool = False


@dataclass(frozen=True)
class _Cached:
    expires: float
    entry: PSKEntry | None = field(repr=False)
    trusted: TrustedInvoker | None = field(repr=False)


class AEFPSKResolver:
    """The ``psk_resolver`` of an AEF listener (see the module docstring). ``interface``: the listener's P0
    (:func:`m2msec.capif.kdf.interface_information`); ``api_ids``: the service API IDs served on it (for the entries
    that name ``aefId`` + ``apiId``, D162); ``clock``: monotonic seconds."""

    def __init__(self, link: TrustedInvokerSource, interface: str, *, api_ids: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.monotonic, ttl: float = PSK_CACHE_TTL,
                 negative_ttl: float = NEGATIVE_CACHE_TTL, max_entries: int = PSK_CACHE_SIZE,
                 max_inflight: int = PSK_FETCHES_IN_FLIGHT) -> None:
        if max_entries < 1 or max_inflight < 1:
            raise ValueError("the cache holds at least one invoker and at least one fetch may run")
        self.link, self.interface, self.api_ids, self.clock = link, interface, api_ids, clock
        self.ttl, self.negative_ttl = ttl, negative_ttl
        self.max_entries, self.max_inflight = max_entries, max_inflight
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._inflight: dict[str, _Flight] = {}
        #: fetches started (each one GET to the CCF)
        self.fetches = 0
        #: handshakes refused because max_inflight fetches were running
        self.refused_busy = 0
        #: fetches that failed (CCF unreachable, refusing, answering nonsense)
        self.failures = 0

    def __repr__(self) -> str:
        return f"<AEFPSKResolver {self.interface} {len(self._cache)} cached, {len(self._inflight)} fetching>"

    def _hit(self, identity: str) -> _Cached | None:
        hit = self._cache.get(identity)
        if hit is None:
            return None
        if self.clock() >= hit.expires:
            del self._cache[identity]
            return None
        self._cache.move_to_end(identity)
        return hit

    def trusted(self, invoker_id: str) -> TrustedInvoker | None:
        """What the CCF told of ``invoker_id`` (cached, unexpired, with a key for this listener), else None."""
        hit = self._hit(invoker_id)
        return hit.trusted if hit is not None and hit.entry is not None else None

    def lookup_now(self, identity: str) -> ProbeAnswer:
        """The transports' synchronous probe: a cached key or refusal; None for what is no invoker ID (D161);
        :data:`MISS` when the CCF must be asked."""
        if not is_invoker_id(identity):
            return None
        hit = self._hit(identity)
        return MISS if hit is None else hit.entry

    def invalidate(self, invoker_id: str) -> None:
        """Forget ``invoker_id`` (its authorization was revoked, it was offboarded): the next handshake asks the
        CCF; a fetch in flight is neither cached nor handed to the handshakes waiting for it."""
        self._cache.pop(invoker_id, None)
        flight = self._inflight.pop(invoker_id, None)
        if flight is not None:
            flight.revoked = True

    async def __call__(self, identity: str) -> PSKEntry | None:
        now = self.lookup_now(identity)
        if now is not MISS:
            return now
        flight = self._inflight.get(identity)
        if flight is None:
            if len(self._inflight) >= self.max_inflight:
                self.refused_busy += 1
                log.warning("AEFPSK of %r not fetched: %d fetches from the CCF are running (D163); handshake refused",
                            identity, len(self._inflight))
                return None
            flight = _Flight()
            self._inflight[identity] = flight
            flight.task = asyncio.get_running_loop().create_task(self._fetch(identity, flight))
            flight.task.add_done_callback(lambda _: self._landed(identity, flight))
        assert flight.task is not None
        # a waiter cancelled (its handshake timed out) does not cancel the fetch the others wait for
        entry = await asyncio.shield(flight.task)
        return None if flight.revoked else entry

    def _landed(self, identity: str, flight: _Flight) -> None:
        if self._inflight.get(identity) is flight:
            del self._inflight[identity]

    async def _fetch(self, identity: str, flight: _Flight) -> PSKEntry | None:
        self.fetches += 1
        try:
            trusted = await self.link.trusted_invoker(identity)
        except CCFLinkError as exc:
            self.failures += 1
            log.warning("AEFPSK of API invoker %r not obtained from the CCF: %s; handshake refused", identity, exc)
            return None
        except Exception as exc:  # a defect must not leak a traceback into the handshake, nor a key into the log
            self.failures += 1
            log.error("AEFPSK of API invoker %r not obtained: %s; handshake refused", identity, type(exc).__name__)
            return None
        entry = self._entry(identity, trusted)
        if not flight.revoked:
            self._store(identity, _Cached(self.clock() + (self.ttl if entry is not None else self.negative_ttl),
                                          entry, trusted))
        return entry

    def _entry(self, identity: str, trusted: TrustedInvoker | None) -> PSKEntry | None:
        if trusted is None:
            log.info("API invoker %r has no security context for this AEF; handshake refused", identity)
            return None
        entries = trusted.psk_entries(self.interface, self.api_ids)
        if not entries:
            log.info("API invoker %r has no PSK entry for %s; handshake refused", identity, self.interface)
            return None
        key = entries[0].aefpsk
        assert key is not None
        if any(e.aefpsk != key for e in entries[1:]):
            log.warning("API invoker %r has PSK entries with different AEFPSKs for %s; handshake refused", identity,
                        self.interface)
            return None
        return PSKEntry(identity, key, entity=identity, description="AEFPSK from the CCF")

    def _store(self, identity: str, cached: _Cached) -> None:
        self._cache[identity] = cached
        self._cache.move_to_end(identity)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
