"""A short-lived read cache for the MAF's per-request lookups (docs/decisions.md D74).

Every MAF request needs its client's record (revoked? expired?) and its Client Registration; the handshake that
carried it has just read the first. Reading both again per request doubled a Key Retrieval's cost on PostgreSQL.
Entries live :data:`CACHE_TTL` seconds by the injected clock, so a revocation or de-registration made through
another MAF instance sharing the database takes effect here within that time (at once through this instance:
it updates or drops its own entries). Keys themselves are never cached.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["CACHE_TTL", "MAX_CACHE_ENTRIES", "TTLCache"]

#: How long a client record or registration read is reused (D74)
CACHE_TTL = 1.0
#: Entries kept at most; the cache is emptied when it would grow past this
MAX_CACHE_ENTRIES = 10_000

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, clock: Callable[[], float], ttl: float = CACHE_TTL,
                 max_entries: int = MAX_CACHE_ENTRIES) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> tuple[bool, V | None]:
        """(True, value) for a fresh entry, else (False, None)."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if entry[0] <= self._clock():
            del self._entries[key]
            return False, None
        return True, entry[1]

    def put(self, key: K, value: V) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (self._clock() + self._ttl, value)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)
