"""KmID retrieval with a remotely provisioned Km (TS-0003 §8.3.2.1 "Use of Remotely Provisioned Credential",
§8.8.2.3 ``assignedSymmKeyID``; docs/maf.md "Enrolees of a MEF").

An Enrolee that enrolled at the MEF with this MAF as an Enrolment Target holds (KeID, Km) with Km = §10.3.7
KDF(Ke, SUID 21, MAF-FQDN). It runs a MAF Handshake with ``psk_identity`` = its KeID; the MAF's PSK resolver
recognises ``@<MEF-FQDN>`` (:func:`m2msec.mef.client.keid_of`) and asks the MEF for Km
(``fetchCredentials/<KeID>/21``, the MAF authenticated as its own Enrolment Target). On such a session only Client
Registration is allowed: it creates a MAF client with a new KmID (16 random bytes in hex @ MAF-FQDN, as D71), the
fetched Km, identity = the EnroleeID, expiry no later than Ke's (§10.7), and answers ``assignedSymmKeyID`` = that
KmID (D194). Later MAF Handshakes use (KmID, Km).

Before assigning, the MAF asks the MEF again (never its cache, D210): a refusal creates nothing. Only KmIDs assigned
over KeID sessions (:data:`KEID_ASSIGNED_LABEL`) are replaced, and their records deleted; an EnroleeID that is a
provisioned client's identity is refused (D211). MEF refusals are remembered :data:`NEGATIVE_CACHE_TTL` (D212).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from m2msec.errors import HandshakeFailed, MEFError, NotFound, TransportError
from m2msec.identifiers import SUID, KeID
from m2msec.maf.wire import MAFProblem, absolute_id
from m2msec.mef.client import FetchedCredential, MEFFetcher, MEFRefused, keid_of
from m2msec.store import AsyncKeyStore, MAFClient
from m2msec.store.records import KIND_MAF_CLIENT

__all__ = ["ASSIGNED_KMID_FIELD", "ENROLEE_ID_PROVISIONED_PROBLEM", "ENROLEE_REFUSED_PROBLEM", "KEID_ASSIGNED_LABEL",
           "KEID_SESSION_PROBLEM", "MEF_FETCHES_IN_FLIGHT", "MEF_KEY_CACHE_SIZE", "MEF_UNAVAILABLE_PROBLEM",
           "NEGATIVE_CACHE_TTL", "KmIDAssigner", "RemoteKm", "definitive", "new_kmid"]

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
#: D210: Client Registration over a KeID session asks the MEF again; a refusal (or a Km / EnroleeID that differs
#: from the session's) is 403 with this name and creates nothing; a MEF that cannot be asked is 503 MEF_UNAVAILABLE
ENROLEE_REFUSED_PROBLEM: Final = "enrolee-refused"
MEF_UNAVAILABLE_PROBLEM: Final = "mef-unavailable"
#: D211: the label that marks a MAF client record as a KmID assigned over a KeID session (only those are replaced)
KEID_ASSIGNED_LABEL: Final = "m2msec:keid-assigned"
#: D211: a KeID registration whose EnroleeID is the identity of a provisioned (``maf clients add``) client: 403
ENROLEE_ID_PROVISIONED_PROBLEM: Final = "enrolee-id-provisioned"
#: D212: a definitive MEF refusal of a KeID is remembered this long, seconds (as the AEF's D163)
NEGATIVE_CACHE_TTL: Final = 5.0


def definitive(exc: MEFError) -> bool:
    """A MEF answer that holds (4xx: unknown-keid, enrolee-revoked, ...), not an outage (5xx) or a broken answer."""
    return 400 <= exc.status < 500


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
        #: KeID → until when the MEF's refusal of it is remembered (D212), as bounded as the cache
        self._refused: OrderedDict[str, float] = OrderedDict()
        #: how many fetchCredentials requests the handshakes sent (for tests and logs)
        self.fetches = 0
        #: how many the Client Registrations sent (:meth:`recheck`, D210)
        self.rechecks = 0

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

    def refused(self, keid: KeID) -> bool:
        """True while a definitive refusal of ``keid`` by the MEF is remembered (D212)."""
        key = str(keid)
        until = self._refused.get(key)
        if until is not None and until <= self.clock():
            del self._refused[key]
            until = None
        return until is not None

    def _refuse(self, key: str) -> None:
        self._cache.pop(key, None)
        self._refused.pop(key, None)
        self._refused[key] = self.clock() + NEGATIVE_CACHE_TTL
        while len(self._refused) > self.cache_size:
            self._refused.popitem(last=False)

    async def recheck(self, keid: KeID) -> FetchedCredential:
        """Km and the EnroleeID for ``keid`` asked of the MEF now, never from the cache (D210); raises MEFError
        (a definitive refusal is also remembered, D212), TransportError or HandshakeFailed."""
        self.rechecks += 1
        try:
            got = await self.fetcher.fetch(keid, SUID.RSPF_SYMMETRIC_MAF)
        except MEFError as exc:
            if definitive(exc):
                self._refuse(str(keid))
            raise
        if got.expires <= self.clock():
            self.forget(keid)
            raise MEFRefused(410, "ke-expired", "the MEF's lifetime for this KeID has ended")
        return got

    async def get(self, keid: KeID) -> FetchedCredential | None:
        """Km and the EnroleeID for ``keid`` (SUID 21), or None when the MEF refuses or cannot be asked."""
        got = self.cached(keid)
        if got is not None:
            return got
        if self.refused(keid):
            return None
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
            if definitive(exc):
                self._refuse(str(keid))
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


def _canonical(identity: str, sp_id: str) -> str | None:
    """``identity`` in the one form identities are compared in (absolute, SP-ID lowercased), None if it is none."""
    try:
        return absolute_id(identity, sp_id)
    except MAFProblem:
        return None


def _same_key(a: FetchedCredential, b: FetchedCredential) -> bool:
    return hmac.compare_digest(a.credential.reveal(), b.credential.reveal())


class KmIDAssigner:
    """Creates the MAF client of an Enrolee that registers over a KeID session (replacing its previous ones)."""

    def __init__(self, store: AsyncKeyStore, maf_fqdn: str, sp_id: str, *,
                 new_id: Callable[[str], str] = new_kmid) -> None:
        self.store = store
        self.maf_fqdn = maf_fqdn
        self.sp_id = sp_id
        self._new_id = new_id
        #: one assignment at a time: two concurrent registrations of one Enrolee must not both keep a KmID
        self._lock = asyncio.Lock()

    async def _clients_of(self, identity: str) -> tuple[list[MAFClient], list[MAFClient]]:
        """(the KmIDs assigned over KeID sessions, the active provisioned clients) whose identity is ``identity``
        (absolute), compared in canonical form; a scan of the MAF clients: an enrolment is rare (D207)."""
        def scan() -> tuple[list[MAFClient], list[MAFClient]]:
            assigned, provisioned = [], []
            for kmid in self.store.store.ids(KIND_MAF_CLIENT):
                client = self.store.store.get_client(kmid)
                if client is None or not client.identity or _canonical(client.identity, self.sp_id) != identity:
                    continue
                if KEID_ASSIGNED_LABEL in client.labels:
                    assigned.append(client)
                elif client.status == "active":
                    provisioned.append(client)
            return assigned, provisioned
        return await asyncio.to_thread(scan)

    def check(self, session: FetchedCredential, fresh: FetchedCredential, identity: str) -> None:
        """D210: the MEF's fresh answer must give the session's Km (constant time) and the same EnroleeID."""
        if not _same_key(session, fresh) or _canonical(fresh.enrolee_id, self.sp_id) != identity:
            log.warning("KeID registration of %s: the MEF's answer no longer matches the session; refused", identity)
            raise MAFProblem(403, ENROLEE_REFUSED_PROBLEM, "the MEF no longer provisions this KeID as used here")

    async def revoke(self, identity: str) -> list[str]:
        """Revoke the active KmIDs assigned over KeID sessions to ``identity`` (the MEF revoked the Enrolee)."""
        assigned, _ = await self._clients_of(identity)
        revoked = []
        for client in assigned:
            if client.status == "active":
                await self.store.update_client(MAFClient(client.kmid, client.km, client.identity, client.expires,
                                                         client.labels, client.admin_fqdn, "revoked", client.reg_id))
                revoked.append(client.kmid)
        if revoked:
            log.warning("the MEF revoked the Enrolee %s: %d assigned KmIDs revoked", identity, len(revoked))
        return revoked

    async def assign(self, fetched: FetchedCredential, identity: str, expires: float) -> tuple[str, list[str]]:
        """Store a new client (KmID, Km, ``identity``, ``expires`` ≤ Ke's, marked :data:`KEID_ASSIGNED_LABEL`);
        the KmIDs it replaced (their records deleted). 403 when ``identity`` is a provisioned client's (D211)."""
        async with self._lock:
            return await self._assign(fetched, identity, expires)

    async def _assign(self, fetched: FetchedCredential, identity: str, expires: float) -> tuple[str, list[str]]:
        old, provisioned = await self._clients_of(identity)
        if provisioned:
            log.warning("KeID registration refused: the EnroleeID %s is a provisioned MAF client's identity", identity)
            raise MAFProblem(403, ENROLEE_ID_PROVISIONED_PROBLEM, "this EnroleeID is the identity of a MAF client "
                             "provisioned at this MAF")
        kmid = self._new_id(self.maf_fqdn)
        await self.store.register_client(MAFClient(kmid, fetched.credential, identity,
                                                   min(expires, fetched.expires), (KEID_ASSIGNED_LABEL,)))
        replaced = []
        for client in old:
            try:
                await self.store.delete_client(client.kmid)
            except NotFound:
                pass  # a concurrent registration of the same Enrolee deleted it already
            replaced.append(client.kmid)
        log.info("assigned a KmID to the Enrolee %s over a KeID session (%d previous KmIDs deleted)", identity,
                 len(replaced))
        return kmid, replaced
