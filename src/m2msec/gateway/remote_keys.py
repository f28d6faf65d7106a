"""The mechanics the gateway's asynchronous remote-key resolvers share (``--maf``: :class:`~m2msec.gateway.
maf_resolver.MAFKeyResolver`, ``--mef``: :class:`~m2msec.gateway.mef_resolver.MEFKeyResolver`).

A :class:`RemoteKeyCache` answers the identities its subclass recognises (:meth:`RemoteKeyCache._canonical`: a MAF
Key Identifier, a KeID of its FQDN) from keys fetched elsewhere (:meth:`RemoteKeyCache._ask`), every other identity
from its PSK table:

* single flight per identity (its canonical spelling), a waiter's cancellation never cancelling the fetch the
  others wait for (:func:`asyncio.shield`); at most ``max_inflight`` fetches at once, a handshake needing another one
  refused at once and counted in :attr:`RemoteKeyCache.refused_busy` (D59, D200);
* fetched keys cached until the expiry the remote answers, at most ``max_cache``, the oldest dropped first (D92,
  D201); ``recheck``: seconds a cached key serves new handshakes before the remote is asked again, a live SA keeping
  it meanwhile while a background fetch checks it (D202; ``math.inf``: never asked again before the expiry);
* ``refusal_ttl``: seconds a definitive refusal of the remote is remembered per identity (D203; 0: not remembered);
* :meth:`RemoteKeyCache.lookup_now`, the transports' synchronous probe (an entry, None, or :data:`MISS`), and
  :meth:`RemoteKeyCache.lookup`, what the revocation guard of live SAs reads (no network).
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import ClassVar

from m2msec.errors import M2MSecError, MAFError, MEFError
from m2msec.keys.table import PSKEntry, PSKTable
from m2msec.transport.psk_resolver import MISS, ProbeAnswer

__all__ = ["Fetched", "RemoteKeyCache"]


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    """The remote's answer: the entry it makes (None: unusable, the reason logged), its expiry, and when it came
    (the clock's time the entry was checked at)."""

    entry: PSKEntry | None
    expires: float
    at: float


class RemoteKeyCache(abc.ABC):
    """Single-flight fetching and caching of remote keys in front of a PSK table (see the module docstring).
    Subclasses say which identities are theirs, how a key is fetched, and the words of their log lines."""

    #: what one fetch is called in the log lines ("MAF Key Retrieval", "MEF fetch")
    request_name: ClassVar[str]
    #: the remote's definitive refusal (a problem answer); any other M2MSecError is a failure to reach it
    refusal_error: ClassVar[type[MAFError] | type[MEFError]]

    #: the log line of a handshake refused because ``max_inflight`` fetches run (``%r`` identity, ``%d`` count)
    busy_message: ClassVar[str]
    #: the ValueError texts of a ``max_cache`` / ``max_inflight`` below 1
    cache_size_message: ClassVar[str]
    inflight_message: ClassVar[str]

    def __init__(self, fqdn: str, table: PSKTable | None, *, clock: Callable[[], float], max_cache: int,
                 max_inflight: int, log: logging.Logger, recheck: float = math.inf, refusal_ttl: float = 0.0) -> None:
        if max_cache < 1:
            raise ValueError(self.cache_size_message)
        if max_inflight < 1:
            raise ValueError(self.inflight_message)
        #: the remote's FQDN: the identities of ours name it
        self.fqdn = fqdn
        self.table = table
        self.clock = clock
        self.max_cache = max_cache
        self.max_inflight = max_inflight
        self.recheck, self.refusal_ttl = recheck, refusal_ttl
        self._log = log
        #: canonical identity -> (expiry, entry, when to ask the remote again)
        self._cache: OrderedDict[str, tuple[float, PSKEntry, float]] = OrderedDict()
        #: canonical identity -> until when a refusal of the remote stands (D203)
        self._refused: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[PSKEntry | None]] = {}
        #: handshakes refused because :attr:`max_inflight` fetches were running
        self.refused_busy = 0

    @abc.abstractmethod
    def _canonical(self, identity: str) -> str | None:
        """The canonical spelling of an identity of ours (cache and single-flight key), None for any other."""

    @abc.abstractmethod
    async def _ask(self, key: str) -> Fetched:
        """Fetch the key of canonical identity ``key`` from the remote and check it (logging why an entry is None,
        never a key). Raises :attr:`refusal_error` (the remote refused) or another M2MSecError (no answer)."""

    @abc.abstractmethod
    async def _close_remote(self) -> None:
        """Close the connection to the remote."""

    def ours(self, identity: str) -> bool:
        """Is ``identity`` one this resolver fetches?"""
        return self._key(identity) is not None

    def _key(self, identity: str) -> str | None:
        if identity in self._cache:  # canonical spellings are the keys: no parse for the usual case
            return identity
        return self._canonical(identity)

    @staticmethod
    def _for(entry: PSKEntry | None, identity: str) -> PSKEntry | None:
        # the engine wants the entry of the identity offered, spelled as offered
        if entry is None or entry.identity == identity:
            return entry
        return dataclasses.replace(entry, identity=identity)

    def _table(self, identity: str) -> PSKEntry | None:
        return self.table.lookup(identity) if self.table is not None else None

    def cached(self, identity: str, *, live: bool = False) -> PSKEntry | None:
        """The cached key of an identity of ours: for a new handshake only until its recheck time (D202); for a
        ``live`` SA (the revocation guard) until its expiry, a background fetch checking it again once past the
        recheck time."""
        key = self._key(identity)
        hit = self._cache.get(key) if key is not None else None
        if key is None or hit is None:
            return None
        now = self.clock()
        if now >= hit[0]:
            del self._cache[key]  # expired: never served again
            return None
        if now >= hit[2]:
            if not live:
                return None
            self._revalidate(key)
        return self._for(hit[1], identity)

    def _revalidate(self, key: str) -> None:
        if key in self._inflight or len(self._inflight) >= self.max_inflight:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._start(loop, key)

    def _start(self, loop: asyncio.AbstractEventLoop, key: str) -> asyncio.Task[PSKEntry | None]:
        task = loop.create_task(self._fetch(key))
        self._inflight[key] = task
        task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return task

    def _refused_now(self, key: str) -> bool:
        until = self._refused.get(key)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self._refused[key]
        return False

    def lookup(self, identity: str) -> PSKEntry | None:
        """Synchronous, for the revocation guard of live SAs: the cached key of an identity of ours (no network),
        else the PSK table's entry."""
        if self.ours(identity):
            return self.cached(identity, live=True)
        return self._table(identity)

    def lookup_now(self, identity: str) -> ProbeAnswer:
        """The transports' synchronous probe: a cached key, a table identity's entry (or None), or :data:`MISS` for
        an identity of ours whose key must be fetched (then the transport awaits :meth:`__call__`)."""
        if identity in self._cache:
            entry = self.cached(identity)
            if entry is not None:
                return entry
        key = self._key(identity)
        if key is not None:
            return None if self._refused_now(key) else MISS
        return self._table(identity)

    async def __call__(self, identity: str) -> PSKEntry | None:
        key = self._key(identity)
        if key is None:
            return self._table(identity)
        entry = self.cached(identity)
        if entry is not None:
            return entry
        if self._refused_now(key):
            return None
        task = self._inflight.get(key)
        if task is None:
            if len(self._inflight) >= self.max_inflight:
                self.refused_busy += 1
                self._log.warning(self.busy_message, identity[:80], len(self._inflight))
                return None
            task = self._start(asyncio.get_running_loop(), key)
        # a waiter cancelled (its handshake timed out) does not cancel the fetch the others wait for
        return self._for(await asyncio.shield(task), identity)

    async def _fetch(self, key: str) -> PSKEntry | None:
        try:
            answer = await self._ask(key)
        except self.refusal_error as exc:
            self._log.warning("%s of %r refused by %s: %d %s", self.request_name, key, self.fqdn, exc.status,
                              exc.problem)
            self._cache.pop(key, None)  # a revoked identity's live SAs end at their next request (D202)
            if self.refusal_ttl > 0:
                self._refused[key] = self.clock() + self.refusal_ttl
                self._refused.move_to_end(key)
                while len(self._refused) > self.max_cache:
                    self._refused.popitem(last=False)
            return None
        except M2MSecError as exc:
            self._log.warning("%s of %r failed: %s", self.request_name, key, exc)
            hit = self._cache.get(key)
            if hit is not None:  # the remote unreachable: a live SA keeps its key, checked again later
                self._cache[key] = (hit[0], hit[1], self.clock() + self.recheck)
            return None
        if answer.entry is None:
            self._cache.pop(key, None)
            return None
        self._refused.pop(key, None)
        self._cache[key] = (answer.expires, answer.entry, answer.at + self.recheck)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_cache:
            self._cache.popitem(last=False)
        return answer.entry

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self._close_remote()

