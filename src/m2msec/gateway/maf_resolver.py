"""Entity B of the MAF-based SAEF (TS-0003 §8.2.2.3): the gateway's asynchronous PSK resolver (``--maf``).

Entity A connects with ``psk_identity = <RelativeKeyID>@<MAF-FQDN>`` (:class:`m2msec.identifiers.MAFKeyIdentifier`).
For our MAF-FQDN, :class:`MAFKeyResolver` runs Key Retrieval over the gateway's own MAF Handshake
(:class:`m2msec.maf.client.MAFClient`, one connection kept for the next lookups) while the event loop serves the
other handshakes (the engine's async PSK path, :mod:`m2msec.transport.psk_resolver`):

* single-flight: handshakes offering one identity while its retrieval runs wait for that one retrieval; at most
  :data:`MAF_RETRIEVALS_IN_FLIGHT` retrievals run at once, a handshake needing another one is refused at once;
* the answer must have SUID 32 (MAF-based SAEF) and an expirationTime in the future, else the client is refused;
* Kc is cached until its expirationTime (at most :data:`MAF_KEY_CACHE_SIZE` keys, the oldest dropped first), under
  the identifier's canonical spelling (other letter cases share the entry and the retrieval); a
  handshake after that is refused (the cache is dropped and the MAF answers ``key-expired``), and a live SA
  ends at its next request (:meth:`MAFKeyResolver.lookup` is what the revocation guard reads);
* the SA is associated with the ``sourceMAFClientID`` the MAF returns when it is an AE-ID / CSE-ID (absolute form,
  docs/decisions.md D94), else with it as a Credential-ID (``11-<KmID>``), resolved by the gateway's
  CredentialResolver as for a PSK (:func:`m2msec.gateway.rules.associate`);
* a MAF that is down, slow or refusing fails that client only: one log line, the handshake refused as for an
  unknown identity, no key; a refusal (a problem answer) stands for :data:`MAF_REFUSAL_CACHE_TTL` seconds, the
  handshakes offering that identity meanwhile refused without a retrieval (D213).

Every other identity is looked up in the PSK table as without ``--maf`` (a synchronous read). A cached Kc and a
table identity are answered at once (:meth:`MAFKeyResolver.lookup_now`, the transports' synchronous probe): no
task, only a Kc not yet (or no longer) cached goes to the MAF.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from m2msec.errors import IdentifierError, MAFError
from m2msec.gateway.remote_keys import Fetched, RemoteKeyCache
from m2msec.identifiers import CredentialID, MAFKeyIdentifier
from m2msec.keys.table import MemoryPSKTable, PSKEntry, PSKTable
from m2msec.maf.client import MAFClient
from m2msec.maf.client_wire import SUID_SAEF, RetrievedKey

__all__ = ["BOUND_SOURCE_PREFIX", "MAF_KEY_CACHE_SIZE", "MAF_REFUSAL_CACHE_TTL", "MAF_RETRIEVALS_IN_FLIGHT",
           "KeyLookup", "MAFKeyResolver", "MAFTable", "entry_for", "revocation_table"]

log = logging.getLogger("m2msec.gateway.maf")

#: Kc entries the gateway keeps between their retrieval and their expirationTime; beyond it the oldest is dropped
#: (a live SA with a dropped key ends at its next request, a new handshake retrieves it again). D92.
MAF_KEY_CACHE_SIZE: Final = 4096

#: Key Retrievals started and not yet answered (they run one after the other on the gateway's MAF connection); a
#: handshake offering a MAF identity not cached while that many run is refused at once, without a retrieval. Any
#: client can offer made-up identities, each one a retrieval: unbounded, they queued for minutes behind each other
#: (outliving the handshakes that started them) and new clients' keys waited behind them. D59.
MAF_RETRIEVALS_IN_FLIGHT: Final = 64

#: D213: seconds a MAF Key Identifier the MAF refused (a problem answer: unknown-key, not-a-target, key-expired) is
#: refused without a Key Retrieval: made-up identities do not make the gateway hammer the MAF (as the MEF's D203);
#: at most MAF_KEY_CACHE_SIZE remembered
MAF_REFUSAL_CACHE_TTL: Final = 5.0

#: a ``sourceMAFClientID`` starting so is an AE-ID / CSE-ID in the absolute form the MAF returns: the SA is bound to
#: exactly that value, the only ``From`` then accepted (no SP- or CSE-relative forms derived from it); anything else
#: must be a Credential-ID, resolved as for a PSK. D94.
BOUND_SOURCE_PREFIX: Final = "//"


def entry_for(identity: str, key: RetrievedKey, now: float) -> PSKEntry | None:
    """The PSK entry of a retrieved Kc for Entity B of the SAEF, or None with the reason logged: the SUID must be
    32, the key unexpired at ``now``, the source an AE-ID / CSE-ID (``//...``, bound as such, D94) or a
    Credential-ID (the SA is associated through it)."""
    if key.suid != SUID_SAEF:
        log.warning("MAF key %r refused: SUID %d is not the MAF-based SAEF's (%d)", identity, key.suid, SUID_SAEF)
        return None
    if key.expiration <= now:
        log.warning("MAF key %r refused: expired", identity)
        return None
    source = key.source_maf_client_id
    try:
        if source.startswith(BOUND_SOURCE_PREFIX):
            return PSKEntry(identity, key.key, entity=source, description="MAF-distributed Kc")
        credential = str(CredentialID.parse(source))
        return PSKEntry(identity, key.key, credential_id=credential, description="MAF-distributed Kc")
    except (IdentifierError, ValueError):
        log.warning("MAF key %r refused: its source %r is neither an AE-ID/CSE-ID nor a Credential-ID", identity,
                    source[:80])
        return None


@functools.lru_cache(maxsize=65536)
def _maf_key_id(identity: str) -> MAFKeyIdentifier | None:
    # one parse per identity, not per handshake (as gateway.rules does for Credential-IDs)
    if "@" not in identity:
        return None
    try:
        return MAFKeyIdentifier.parse(identity)
    except IdentifierError:
        return None


class MAFKeyResolver(RemoteKeyCache):
    """The ``psk_resolver`` of a gateway side with ``--maf`` (see the module docstring). ``clock``: Unix seconds,
    the time the MAF's expirationTime is compared with. A Kc serves until its expirationTime (no recheck); a
    refusal stands ``refusal_ttl`` seconds (D213). The shared mechanics:
    :class:`~m2msec.gateway.remote_keys.RemoteKeyCache`."""

    request_name = "MAF Key Retrieval"
    refusal_error = MAFError
    busy_message = "MAF Key Retrieval of %r refused: %d retrievals are running already (D59)"
    cache_size_message = "the MAF key cache holds at least one key"
    inflight_message = "at least one Key Retrieval must be allowed to run"

    def __init__(self, client: MAFClient, table: PSKTable | None = None, *, clock: Callable[[], float] = time.time,
                 max_cache: int = MAF_KEY_CACHE_SIZE, max_inflight: int = MAF_RETRIEVALS_IN_FLIGHT,
                 refusal_ttl: float = MAF_REFUSAL_CACHE_TTL) -> None:
        super().__init__(client.maf_fqdn, table, clock=clock, max_cache=max_cache, max_inflight=max_inflight, log=log,
                         refusal_ttl=refusal_ttl)
        self.client = client
        self.maf_fqdn = client.maf_fqdn
        #: Key Retrievals started (each is one request to the MAF)
        self.retrievals = 0

    def __repr__(self) -> str:
        return f"<MAFKeyResolver {self.maf_fqdn} {len(self._cache)} cached>"

    def _canonical(self, identity: str) -> str | None:
        """The cache and single-flight key of a MAF Key Identifier of our MAF: its canonical spelling (lowercase hex
        and MAF-FQDN), so that spellings in other letter cases share one entry and one retrieval; None for any other
        identity."""
        parsed = _maf_key_id(identity)
        return str(parsed) if parsed is not None and parsed.maf_fqdn == self.maf_fqdn else None

    async def _ask(self, key: str) -> Fetched:
        self.retrievals += 1
        parsed = _maf_key_id(key)
        assert parsed is not None
        retrieved = await self.client.retrieve_key(parsed.kc_id.hex())
        now = self.clock()
        return Fetched(entry_for(key, retrieved, now), retrieved.expiration, now)

    async def _close_remote(self) -> None:
        await self.client.close()


class KeyLookup(Protocol):
    """What the revocation guard's view reads: a remote-key resolver (``--maf``, ``--mef`` or both) and its table."""

    @property
    def table(self) -> PSKTable | None: ...
    def lookup(self, identity: str) -> PSKEntry | None: ...


class MAFTable:
    """The view of the PSK table and the MAF keys the revocation guard reads (:meth:`MAFKeyResolver.lookup`)."""

    def __init__(self, resolver: KeyLookup) -> None:
        self.resolver = resolver

    def lookup(self, identity: str) -> PSKEntry | None:
        return self.resolver.lookup(identity)


class _InMemoryMAFTable(MemoryPSKTable):
    """:class:`MAFTable` over an in-memory PSK table: read at every request like that table itself (the revocation
    guard reuses lookups only of stores read from disk), so that ``--maf`` does not delay a removed PSK's end."""

    def __init__(self, resolver: KeyLookup) -> None:
        super().__init__()
        self.resolver = resolver

    def lookup(self, identity: str) -> PSKEntry | None:
        return self.resolver.lookup(identity)


def revocation_table(resolver: KeyLookup) -> PSKTable:
    """What a side's revocation guard reads with ``--maf`` (or ``--mef``): the remote keys and the PSK table,
    through ``resolver``."""
    if resolver.table is None or isinstance(resolver.table, MemoryPSKTable):
        return _InMemoryMAFTable(resolver)
    return MAFTable(resolver)
