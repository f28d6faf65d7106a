"""The bytes all coaps peers' block-wise state may hold together, shared fairly per client (decision D48).

Kept apart from :mod:`m2msec.gateway.coap_blockwise` (which re-exports :class:`ByteBudget`) to keep modules small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from m2msec.gateway.coap_blockwise import PeerBlockwise

__all__ = ["ByteBudget"]


class ByteBudget:
    """The bytes held by all peers' block-wise state together (one per gateway), shared fairly by owners.

    Each :class:`PeerBlockwise` counts against its ``owner`` (the SA's credential: one client with many DTLS
    sessions is one owner). Anyone may use free memory; when it is full, a request of an owner holding less than
    another is served by dropping that other owner's oldest transfers (:meth:`PeerBlockwise.shed`), so one client
    can never keep everyone else out (decision D48). An owner that already holds the most is refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peers: set[PeerBlockwise] = set()

    def held_by(self, owner: str) -> int:
        return sum(p.held for p in self.peers if p.owner == owner)

    def take(self, size: int, requester: PeerBlockwise | None = None) -> bool:
        while self.used + size > self.limit:
            if requester is None or not self._shed_for(requester, size):
                return False
        self.used += size
        return True

    def _shed_for(self, requester: PeerBlockwise, size: int) -> bool:
        """Drop one transfer of the owner holding most, if that owner holds more than the requester would."""
        totals: dict[str, int] = {}
        for peer in self.peers:
            totals[peer.owner] = totals.get(peer.owner, 0) + peer.held
        mine = totals.get(requester.owner, 0) + size
        others = [(held, owner) for owner, held in totals.items() if owner != requester.owner and held > 0]
        if not others:
            return False
        held, owner = max(others)
        if held <= mine:  # the requester would hold at least as much: its share is spent
            return False
        victim = max((p for p in self.peers if p.owner == owner), key=lambda p: p.held)
        return victim.shed()

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)
