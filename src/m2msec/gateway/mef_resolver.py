"""The gateway as an Enrolment Target of a MEF (TS-0003 §8.3.1.2, §8.3.2.1 "Use of Remotely Provisioned
Credential"): its asynchronous PSK resolver for remotely provisioned Kpsa (``--mef``), and the chain that lets
``--maf`` and ``--mef`` serve side by side.

An Enrolee enrols at the MEF (``m2msec mef enrol``, :func:`m2msec.mef.client.enrol`), derives Kpsa = §10.3.7's
usage-constrained key for SUID 22 and the gateway's Enrolment-Target-ID, and connects with ``psk_identity = KeID``
(``<RelativeKeID>@<MEF-FQDN>``, §10.3.4). For a KeID of our MEF-FQDN, :class:`MEFKeyResolver` asks the MEF
(:class:`m2msec.mef.client.MEFFetcher`, the gateway's own MEF Handshake, one kept connection) for the credential
of (KeID, SUID 22) while the event loop serves the other handshakes, as :class:`~m2msec.gateway.maf_resolver.
MAFKeyResolver` does for MAF keys:

* single flight per KeID (its canonical, lowercase spelling); at most :data:`MEF_FETCHES_IN_FLIGHT` fetches run at
  once, a handshake needing another one is refused at once (D200);
* Kpsa is cached until the expiry the MEF answers (never after Ke's, §10.7), at most :data:`MEF_KEY_CACHE_SIZE`
  keys, the oldest dropped first (D201); after that a handshake fetches again (the MEF then answers ``ke-expired``)
  and a live SA ends at its next request (:meth:`MEFKeyResolver.lookup` is what the revocation guard reads);
* the SA is bound to the EnroleeID the MEF returns, an absolute AE-ID / CSE-ID (D196, as a MAF source, D94): the
  gateway's oneM2M identity checks then apply as for any bound PSK;
* a MEF that refuses (``not-the-target``, ``suid-not-allowed``, ``ke-expired``, ...), is down or slow fails that
  client only: one log line (the KeID and the reason, never a key), the handshake refused as for an unknown identity.

Every other identity goes on: to the next resolver of a :class:`ChainResolver` (MAF identities by their FQDN, D189),
else to the PSK table.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from m2msec.errors import IdentifierError, MEFError
from m2msec.gateway.remote_keys import Fetched, RemoteKeyCache
from m2msec.identifiers import SUID, KeID
from m2msec.keys.table import PSKEntry, PSKTable
from m2msec.mef.client import FetchedCredential, MEFFetcher
from m2msec.transport.psk_resolver import ProbeAnswer

__all__ = ["BOUND_ENROLEE_PREFIX", "MEF_FETCHES_IN_FLIGHT", "MEF_KEY_CACHE_SIZE", "MEF_RECHECK_INTERVAL",
           "MEF_REFUSAL_CACHE_TTL", "SUID_KPSA", "ChainResolver",
           "MEFKeyResolver", "RemoteKeyResolver", "entry_for"]

log = logging.getLogger("m2msec.gateway.mef")

#: TS-0004 Table 6.3.4.2.39-1: the SUID of a remotely provisioned key for the PSK SAEF (Kpsa, TS-0003 §8.2.2.1):
#: the only one the gateway asks the MEF for
SUID_KPSA: Final = int(SUID.RSPF_SYMMETRIC_SAEF)

#: fetches started and not yet answered (they run one after the other on the gateway's MEF connection); a handshake
#: offering a KeID not cached while that many run is refused at once, without a fetch: any client can offer made-up
#: KeIDs, each one a request to the MEF (as D59 for MAF Key Retrievals). D200.
MEF_FETCHES_IN_FLIGHT: Final = 64

#: Kpsa entries the gateway keeps between their fetch and the expiry the MEF answers; beyond it the oldest is
#: dropped (a live SA with a dropped key ends at its next request, a new handshake fetches it again). As D92. D201.
MEF_KEY_CACHE_SIZE: Final = 4096

#: D202: seconds a fetched Kpsa serves new handshakes before the MEF is asked again (an enrolee revoked at the MEF
#: is refused after at most this long, not at Ke's expiry); a live SA keeps its key meanwhile, and its key is checked
#: again in the background (ended at its next request when the MEF refuses it)
MEF_RECHECK_INTERVAL: Final = 60.0

#: D203: seconds a KeID the MEF refused (a definitive answer: unknown, not this target, expired, revoked) is refused
#: without asking again: made-up KeIDs do not make the gateway hammer the MEF; at most MEF_KEY_CACHE_SIZE remembered
MEF_REFUSAL_CACHE_TTL: Final = 5.0

#: an EnroleeID starting so is an absolute AE-ID / CSE-ID: the SA is bound to it (D196); anything else is refused
BOUND_ENROLEE_PREFIX: Final = "//"


def entry_for(identity: str, fetched: FetchedCredential, now: float) -> PSKEntry | None:
    """The PSK entry of a fetched Kpsa, bound to its EnroleeID (D196), or None with the reason logged: the
    credential must be unexpired at ``now`` and the EnroleeID an absolute AE-ID / CSE-ID."""
    if fetched.expires <= now:
        log.warning("MEF credential of %r refused: expired", identity)
        return None
    enrolee = fetched.enrolee_id
    if not enrolee.startswith(BOUND_ENROLEE_PREFIX):
        log.warning("MEF credential of %r refused: its EnroleeID %r is not an absolute AE-ID/CSE-ID", identity,
                    enrolee[:80])
        return None
    try:
        return PSKEntry(identity, fetched.credential, entity=enrolee, description="MEF-provisioned Kpsa")
    except (IdentifierError, ValueError):
        log.warning("MEF credential of %r refused: its EnroleeID %r cannot be bound", identity, enrolee[:80])
        return None


@functools.lru_cache(maxsize=65536)
def _keid(identity: str) -> KeID | None:
    # one parse per identity, not per handshake (as maf_resolver does for MAF Key Identifiers)
    if "@" not in identity:
        return None
    try:
        return KeID.parse(identity)
    except (IdentifierError, ValueError):
        return None


class MEFKeyResolver(RemoteKeyCache):
    """The ``psk_resolver`` of a gateway side with ``--mef`` (see the module docstring). ``clock``: Unix seconds,
    the time the MEF's expiry is compared with. The shared mechanics (single flight, cache, recheck, refusals):
    :class:`~m2msec.gateway.remote_keys.RemoteKeyCache`."""

    request_name = "MEF fetch"
    refusal_error = MEFError
    busy_message = "MEF fetch of %r refused: %d fetches are running already (D200)"
    cache_size_message = "the MEF key cache holds at least one key"
    inflight_message = "at least one fetch must be allowed to run"

    def __init__(self, fetcher: MEFFetcher, table: PSKTable | None = None, *, clock: Callable[[], float] = time.time,
                 max_cache: int = MEF_KEY_CACHE_SIZE, max_inflight: int = MEF_FETCHES_IN_FLIGHT,
                 recheck: float = MEF_RECHECK_INTERVAL, refusal_ttl: float = MEF_REFUSAL_CACHE_TTL) -> None:
        super().__init__(fetcher.mef_fqdn, table, clock=clock, max_cache=max_cache, max_inflight=max_inflight, log=log,
                         recheck=recheck, refusal_ttl=refusal_ttl)
        self.fetcher = fetcher
        self.mef_fqdn = fetcher.mef_fqdn
        #: fetchCredentials requests started
        self.fetches = 0

    def __repr__(self) -> str:
        return f"<MEFKeyResolver {self.mef_fqdn} {len(self._cache)} cached>"

    def _canonical(self, identity: str) -> str | None:
        """The cache and single-flight key of a KeID of our MEF (its canonical spelling), None for any other."""
        keid = _keid(identity)
        return str(keid) if keid is not None and keid.mef_fqdn == self.mef_fqdn else None

    async def _ask(self, key: str) -> Fetched:
        self.fetches += 1
        fetched = await self.fetcher.fetch(key, SUID_KPSA)
        now = self.clock()
        return Fetched(entry_for(key, fetched, now), fetched.expires, now)

    async def _close_remote(self) -> None:
        await self.fetcher.close()


class _Resolver(Protocol):
    """What :class:`ChainResolver` needs of each resolver it chains (MAF, MEF)."""

    def ours(self, identity: str) -> bool: ...
    def lookup(self, identity: str) -> PSKEntry | None: ...
    def lookup_now(self, identity: str) -> ProbeAnswer: ...
    async def __call__(self, identity: str) -> PSKEntry | None: ...
    async def close(self) -> None: ...


class RemoteKeyResolver(Protocol):
    """What a gateway side takes as its asynchronous resolver (``--maf``, ``--mef``, or :class:`ChainResolver`)."""

    @property
    def table(self) -> PSKTable | None: ...
    def lookup(self, identity: str) -> PSKEntry | None: ...
    def lookup_now(self, identity: str) -> ProbeAnswer: ...
    async def __call__(self, identity: str) -> PSKEntry | None: ...
    async def close(self) -> None: ...


class ChainResolver:
    """Several remote-key resolvers (each built with no table) in front of one PSK table: an identity goes to the
    resolver whose FQDN it names (a MAF Key Identifier to the MAF, a KeID to the MEF; their FQDNs differ, D189),
    any other identity to ``table``."""

    def __init__(self, resolvers: Sequence[_Resolver], table: PSKTable | None = None) -> None:
        self.resolvers = tuple(resolvers)
        self.table = table

    def __repr__(self) -> str:
        return f"<ChainResolver {', '.join(map(repr, self.resolvers))}>"

    def _pick(self, identity: str) -> _Resolver | None:
        for resolver in self.resolvers:
            if resolver.ours(identity):
                return resolver
        return None

    def lookup(self, identity: str) -> PSKEntry | None:
        resolver = self._pick(identity)
        if resolver is not None:
            return resolver.lookup(identity)
        return self.table.lookup(identity) if self.table is not None else None

    def lookup_now(self, identity: str) -> ProbeAnswer:
        resolver = self._pick(identity)
        if resolver is not None:
            return resolver.lookup_now(identity)
        return self.table.lookup(identity) if self.table is not None else None

    async def __call__(self, identity: str) -> PSKEntry | None:
        resolver = self._pick(identity)
        if resolver is not None:
            return await resolver(identity)
        return self.table.lookup(identity) if self.table is not None else None

    async def close(self) -> None:
        for resolver in self.resolvers:
            await resolver.close()
