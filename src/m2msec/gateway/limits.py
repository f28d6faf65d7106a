"""Process-wide bounds of the gateway: request-body memory, write timeouts, file descriptors.

* :class:`BodyBudget`: the bytes of request *and response* bodies all connections together may hold (bodies
  are read whole before forwarding, and each is already capped at ``max_body``; a response stays counted until
  the client has read it, D46). A request that would take the total over the budget is answered
  503 with rsc 5000 and ``Retry-After`` (:class:`GatewayBusy`, docs/decisions.md D33): the request is fine, the
  gateway is momentarily full. The budget is shared fairly between clients (:class:`Lease`, one per
  connection, owned by its SA's credential, D46): anyone may use free memory, but when it is full a client
  holding less than another takes memory back from that other client's connections, which are answered 503
  while their request is being read (or dropped while their response is being written); a connection whose
  request is at the CSE is never evicted, and a response that does not fit is answered 500 without
  ``Retry-After`` (:class:`ResponseDropped`): the CSE executed the request, a retry could execute it twice.
* :data:`DEFAULT_WRITE_TIMEOUT`: how long a response may wait for a client that does not read it.
* :func:`check_fd_limit`: refuses at start a configuration whose connection caps exceed the process's
  file-descriptor limit (``RLIMIT_NOFILE``), after raising the soft limit towards the hard one if needed.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass, field

from m2msec.errors import ConfigurationError, OneM2MError

__all__ = [
    "DEFAULT_BODY_BUDGET",
    "DEFAULT_WRITE_TIMEOUT",
    "FDS_PER_CONNECTION",
    "FD_HEADROOM",
    "BodyBudget",
    "GatewayBusy",
    "Lease",
    "ResponseDropped",
    "check_fd_limit",
    "fds_needed",
    "fit_connection_cap",
    "max_connections_for",
]

#: bytes of request bodies held at once by all connections together (16 maximal 8 MiB bodies)
DEFAULT_BODY_BUDGET = 128 * 1024 * 1024
#: seconds a response (or a request to the CSE) may wait for the peer to read it
DEFAULT_WRITE_TIMEOUT = 30.0
#: seconds a client refused for lack of body memory is told to wait (``Retry-After``)
RETRY_AFTER = 1
#: descriptors one HTTP connection may need: the client's socket, plus one to the CSE while it forwards
FDS_PER_CONNECTION = 2
#: descriptors kept free for everything else: listening sockets, the SQLite store, logs, the event loop's
#: own, and the coaps peers' short-lived CSE sockets being opened (docs/gateway.md)
FD_HEADROOM = 64


class GatewayBusy(OneM2MError):
    """The gateway cannot take this request now (its request-body memory is in use); retry later."""

    rsc = 5000  # INTERNAL_SERVER_ERROR: TS-0004 has no "overloaded" code (docs/decisions.md D33)
    http_status = 503


class ResponseDropped(OneM2MError):
    """The CSE executed the request, but its response did not fit the body memory: never "retry" (D46).

    Not :class:`GatewayBusy` (503 + ``Retry-After``, D33): a retry of a non-idempotent request (CREATE) would
    execute it twice. 500 / rsc 5000 without ``Retry-After``; the client can learn the outcome by a RETRIEVE."""

    rsc = 5000  # INTERNAL_SERVER_ERROR
    http_status = 500


@dataclass(eq=False)
class Lease:
    """What one connection holds in a :class:`BodyBudget`, counted against ``owner`` (its SA's credential).

    ``evict`` is called (once) when another client needs the memory: it must end what the connection is doing
    (the bytes are already counted as released). ``evicted`` tells the connection why it was stopped.
    ``forwarded``: the connection's request is at the CSE (from the moment it is sent until its response has
    been read); such a lease is never evicted, as the client could no longer be told to retry (D46)."""

    owner: str
    evict: Callable[[], object] | None = field(default=None, repr=False)
    size: int = 0
    evicted: bool = False
    forwarded: bool = False


class BodyBudget:
    """Bytes of request and response bodies held at once, across connections; :meth:`reserve` refuses beyond
    ``limit``, after taking memory back from the client holding the most if that is another client (D46)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the body budget must be at least 1 byte")
        self.limit = limit
        self.used = 0
        self.refused = 0
        self.evicted = 0
        self.leases: set[Lease] = set()

    def lease(self, owner: str, evict: Callable[[], object] | None = None) -> Lease:
        lease = Lease(owner, evict)
        self.leases.add(lease)
        return lease

    def close(self, lease: Lease) -> None:
        """The connection ended: what it held goes back."""
        self.release(lease.size, lease)
        self.leases.discard(lease)

    def held_by(self, owner: str) -> int:
        return sum(lease.size for lease in self.leases if lease.owner == owner)

    def reserve(self, size: int, lease: Lease | None = None) -> bool:
        if lease is not None and lease.evicted:
            self.refused += 1
            return False
        while self.used + size > self.limit:
            if lease is None or not self._take_back(lease, size):
                self.refused += 1
                return False
        self.used += size
        if lease is not None:
            lease.size += size
        return True

    def _take_back(self, requester: Lease, size: int) -> bool:
        """Evict the largest evictable lease of the owner holding most, if that owner holds more than the
        requester's owner would with ``size`` more (so two large clients do not evict each other in turn)."""
        totals: dict[str, int] = {}
        for lease in self.leases:
            totals[lease.owner] = totals.get(lease.owner, 0) + lease.size
        mine = totals.get(requester.owner, 0) + size
        candidates = [ls for ls in self.leases
                      if ls.owner != requester.owner and ls.size > 0 and ls.evict is not None and not ls.evicted
                      and not ls.forwarded and totals[ls.owner] > mine]
        if not candidates:
            return False
        victim = max(candidates, key=lambda ls: (totals[ls.owner], ls.size))
        self.used = max(0, self.used - victim.size)
        victim.size, victim.evicted = 0, True
        self.evicted += 1
        assert victim.evict is not None
        victim.evict()
        return True

    def release(self, size: int, lease: Lease | None = None) -> None:
        if lease is not None:
            size = min(size, lease.size)  # an evicted lease was released already
            lease.size -= size
        self.used = max(0, self.used - size)


def fds_needed(http_connections: int, coaps_peers: int) -> int:
    """File descriptors the gateway may need with these caps (0 for a side that is not served)."""
    return FDS_PER_CONNECTION * http_connections + coaps_peers + FD_HEADROOM


def max_connections_for(limit: int, coaps_peers: int) -> int:
    """The largest HTTP connection cap that fits ``limit`` descriptors beside ``coaps_peers``."""
    return max(0, (limit - FD_HEADROOM - coaps_peers) // FDS_PER_CONNECTION)


def check_fd_limit(
    needed: int,
    what: str,
    *,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> int:
    """Make sure ``needed`` descriptors are allowed; returns the (possibly raised) soft limit.

    Raises:
        ConfigurationError: the hard limit is below ``needed`` (``what`` names the options to lower).
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return needed if soft == resource.RLIM_INFINITY else soft
    if hard == resource.RLIM_INFINITY or needed <= hard:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        except (ValueError, OSError):
            pass
        else:
            return needed
    raise ConfigurationError(
        f"{what} need up to {needed} file descriptors but the limit is {soft} (hard {hard}): "
        "lower them or raise 'ulimit -n'"
    )


def fit_connection_cap(
    wanted: int | None,
    default: int,
    coaps_peers: int,
    *,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> int:
    """The HTTP connection cap to use: ``wanted`` (an explicit ``--max-connections``) if the descriptors fit,
    else a :class:`ConfigurationError`; with ``wanted=None``, ``default`` lowered to what fits beside
    ``coaps_peers``. ``coaps_peers`` is 0 when coaps is not served; pass ``wanted=0`` when HTTP is not."""
    what = "--max-connections and the coaps peer cap" if coaps_peers else "--max-connections"
    if wanted == 0:
        what = "the coaps peer cap (max_peers)"
    cap = default if wanted is None else wanted
    try:
        check_fd_limit(fds_needed(cap, coaps_peers), what, getrlimit=getrlimit, setrlimit=setrlimit)
        return cap
    except ConfigurationError:
        if wanted is not None:
            raise
    _, hard = getrlimit(resource.RLIMIT_NOFILE)  # the default does not fit: take what the hard limit allows
    fit = max_connections_for(hard, coaps_peers)
    if fit < 1:
        raise ConfigurationError(f"the coaps peer cap needs up to {fds_needed(0, coaps_peers)} file descriptors "
                                 f"but the limit is {hard}: raise 'ulimit -n'")
    check_fd_limit(fds_needed(fit, coaps_peers), what, getrlimit=getrlimit, setrlimit=setrlimit)
    return fit
