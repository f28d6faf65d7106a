"""Durations of the live-SA checks (SA lifetime, lookup cache) run on the injected monotonic clock; a wall-clock
step in either direction changes neither (docs/decisions.md D45). Pure: clocks injected, no sockets."""

from __future__ import annotations

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY
from m2msec.gateway.revocation import LOOKUP_CACHE_SECONDS, Grant, Revocation, SAGuard
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry

ENTRY = PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE)


class DiskLikeTable:
    """A table that is not a MemoryPSKTable, so Revocation caches its lookups (as it does SQLite's)."""

    def __init__(self) -> None:
        self.entries = {LIGHT1_ID: ENTRY}
        self.lookups = 0

    def lookup(self, identity: str) -> PSKEntry | None:
        self.lookups += 1
        return self.entries.get(identity)


def setup(max_lifetime: float = 100.0) -> tuple[list[float], list[float], DiskLikeTable, SAGuard]:
    wall, mono = [1_800_000_000.0], [50.0]
    table = DiskLikeTable()
    policy = Revocation(table, max_lifetime=max_lifetime, clock=lambda: wall[0], monotonic=lambda: mono[0])
    return wall, mono, table, SAGuard(policy, Grant(policy.monotonic(), LIGHT1_ID, ENTRY, None))


def test_lifetime_ends_on_monotonic_time_whatever_the_wall_clock_does() -> None:
    wall, mono, _, guard = setup()
    wall[0] -= 3600  # stepped back an hour
    mono[0] += 99
    assert guard.check() is None
    mono[0] += 1
    ended = guard.check()
    assert ended is not None and "maximum SA lifetime (100 s) reached" in ended.detail


def test_a_wall_clock_step_forward_does_not_end_a_young_sa() -> None:
    wall, mono, _, guard = setup()
    wall[0] += 86400
    mono[0] += 1
    assert guard.check() is None


def test_the_lookup_cache_expires_on_monotonic_time() -> None:
    wall, mono, table, guard = setup(max_lifetime=10_000)
    assert guard.check() is None and table.lookups == 1
    del table.entries[LIGHT1_ID]  # m2msec keys remove
    wall[0] -= 3600
    mono[0] += LOOKUP_CACHE_SECONDS / 2
    assert guard.check() is None and table.lookups == 1  # still cached
    mono[0] += LOOKUP_CACHE_SECONDS
    ended = guard.check()
    assert table.lookups == 2 and ended is not None and f"PSK identity {LIGHT1_ID!r} was removed" in ended.detail
