"""KmID retrieval with a remotely provisioned Km (TS-0003 §8.3.2.1 "Use of Remotely Provisioned Credential",
§8.8.2.3 ``assignedSymmKeyID``; docs/maf.md "Enrolees of a MEF").

An Enrolee that enrolled at the MEF with this MAF as an Enrolment Target holds (KeID, Km) with Km = §10.3.7
KDF(Ke, SUID 21, MAF-FQDN). It runs a MAF Handshake with ``psk_identity`` = its KeID; the MAF's PSK resolver
recognises ``@<MEF-FQDN>`` (:func:`m2msec.mef.client.keid_of`) and asks the MEF for Km
(``fetchCredentials/<KeID>/21``, the MAF authenticated as its own Enrolment Target). On such a session only Client
Registration is allowed: it creates a MAF client with a new KmID (16 random bytes in hex @ MAF-FQDN, as D71), the
fetched Km, identity = the EnroleeID, expiry no later than Ke's (§10.7), and answers ``assignedSymmKeyID`` = that
KmID (D194). Later MAF Handshakes use (KmID, Km).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from m2msec.errors import HandshakeFailed, MEFError, TransportError
from m2msec.identifiers import SUID, KeID
from m2msec.mef.client import FetchedCredential, MEFFetcher, keid_of
from m2msec.store import AsyncKeyStore, MAFClient
from m2msec.store.records import KIND_MAF_CLIENT

__all__ = ["ASSIGNED_KMID_FIELD", "KEID_SESSION_PROBLEM", "MEF_FETCHES_IN_FLIGHT", "MEF_KEY_CACHE_SIZE",
           "KmIDAssigner", "RemoteKm", "new_kmid"]

log = logging.getLogger("m2msec.maf.enrolment")

#: D194: the KmID is returned in the Client Registration answer's ``assignedSymmKeyID`` (TS-0003 V3.18
#: §8.8.2.3), not by seed 004's separate "MAF KmId Retrieval URI"
ASSIGNED_KMID_FIELD: Final = "assignedSymmKeyID"
#: D205: every procedure but Client Registration over a KeID session is refused 403 with this problem name
KEID_SESSION_PROBLEM: Final = "kmid-required"
#: D206: fetched Km kept at most this many KeIDs (each until its MEF lifetime ends), and at most this many
#: handshakes waiting on the MEF at once (one more fails at once); as D59/D92 for MAF keys
MEF_KEY_CACHE_SIZE: Final = 1024
MEF_FETCHES_IN_FLIGHT: Final = 64
#: D71's size: a KmID the MAF assigns is the hex of this many random bytes @ MAF-FQDN
KMID_RANDOM_BYTES: Final = 16


def new_kmid(maf_fqdn: str) -> str:
    """A fresh KmID of this MAF (D71's form: 16 random bytes in lowercase hex)."""
    return f"{secrets.token_hex(KMID_RANDOM_BYTES)}@{maf_fqdn}"


class RemoteKm:
    """Km of KeID sessions, fetched from the MEF: single flight per KeID, bounded, cached until the MEF's lifetime."""

    def __init__(self, fetcher: MEFFetcher, mef_fqdn: str, *, clock: Callable[[], float] = time.time,
                 cache_size: int = MEF_KEY_CACHE_SIZE, in_flight: int = MEF_FETCHES_IN_FLIGHT) -> None:
        self.fetcher = fetcher
        self.mef_fqdn = mef_fqdn
        self.clock = clock
        self.cache_size = cache_size
        self.in_flight = in_flight
        self._cache: OrderedDict[str, FetchedCredential] = OrderedDict()
        self._pending: dict[str, asyncio.Task[FetchedCredential | None]] = {}
        #: how many fetchCredentials requests were sent (for tests and logs)
        self.fetches = 0

    def __repr__(self) -> str:
        return f"<RemoteKm via {self.fetcher!r}>"

    async def close(self) -> None:
        """Cancel the fetches in flight and close the MEF connection."""
        for task in list(self._pending.values()):
            task.cancel()
        await asyncio.gather(*self._pending.values(), return_exceptions=True)
        await self.fetcher.close()

    def keid(self, identity: str) -> KeID | None:
        """The KeID ``identity`` names when it is one of the configured MEF's, else None."""
        return keid_of(identity, self.mef_fqdn)

    def cached(self, keid: KeID) -> FetchedCredential | None:
        key = str(keid)
        got = self._cache.get(key)
        if got is not None and got.expires <= self.clock():
            del self._cache[key]
            got = None
        return got

    def forget(self, keid: KeID) -> None:
        self._cache.pop(str(keid), None)

    async def get(self, keid: KeID) -> FetchedCredential | None:
        """Km and the EnroleeID for ``keid`` (SUID 21), or None when the MEF refuses or cannot be asked."""
        got = self.cached(keid)
        if got is not None:
            return got
        key = str(keid)
        task = self._pending.get(key)
        if task is None:
            if len(self._pending) >= self.in_flight:
                log.warning("KeID %s: %d MEF fetches in flight already; handshake refused", key, self.in_flight)
                return None
            # its own task: a handshake that gives up (timeout, cancellation) never cancels the others' fetch
            task = self._pending[key] = asyncio.create_task(self._fetch(keid))
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: str, task: asyncio.Task[FetchedCredential | None]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("KeID %s: the MEF fetch failed: %s", key, type(task.exception()).__name__)

    async def _fetch(self, keid: KeID) -> FetchedCredential | None:
        self.fetches += 1
        try:
            got = await self.fetcher.fetch(keid, SUID.RSPF_SYMMETRIC_MAF)
        except MEFError as exc:
            log.warning("KeID %s: the MEF refused Km (%s); handshake refused", keid, exc)
            return None
        except (TransportError, HandshakeFailed) as exc:
            log.warning("KeID %s: cannot ask the MEF (%s); handshake refused", keid, exc)
            return None
        if got.expires <= self.clock():
            return None
        self._cache[str(keid)] = got
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return got


class KmIDAssigner:
    """Creates the MAF client of an Enrolee that registers over a KeID session (replacing its previous one)."""

    def __init__(self, store: AsyncKeyStore, maf_fqdn: str, *,
                 new_id: Callable[[str], str] = new_kmid) -> None:
        self.store = store
        self.maf_fqdn = maf_fqdn
        self._new_id = new_id

    async def _clients_of(self, identity: str) -> list[MAFClient]:
        """The active clients of ``identity`` (a scan of the MAF clients: an enrolment is rare, D207)."""
        def scan() -> list[MAFClient]:
            found = []
            for kmid in self.store.store.ids(KIND_MAF_CLIENT):
                client = self.store.store.get_client(kmid)
                if client is not None and client.identity == identity and client.status == "active":
                    found.append(client)
            return found
        return await asyncio.to_thread(scan)

    async def assign(self, fetched: FetchedCredential, identity: str, expires: float) -> tuple[str, list[str]]:
        """Store a new client (KmID, Km, ``identity``, ``expires`` ≤ Ke's); the KmIDs it replaced (now revoked)."""
        old = await self._clients_of(identity)
        kmid = self._new_id(self.maf_fqdn)
        await self.store.register_client(MAFClient(kmid, fetched.credential, identity,
                                                   min(expires, fetched.expires)))
        replaced = []
        for client in old:
            await self.store.update_client(MAFClient(client.kmid, client.km, client.identity, client.expires,
                                                     client.labels, client.admin_fqdn, "revoked", client.reg_id))
            replaced.append(client.kmid)
        log.info("assigned a KmID to the Enrolee %s over a KeID session (%d previous KmIDs revoked)", identity,
                 len(replaced))
        return kmid, replaced
