"""Process-wide bounds of the gateway: request-body memory, write timeouts, file descriptors.

* :class:`BodyBudget`: the bytes of request bodies all connections together may hold (bodies are read whole
  before forwarding, and each is already capped at ``max_body``). A request that would take the total
  over the budget is answered 503 with rsc 5000 and ``Retry-After`` (:class:`GatewayBusy`,
  docs/decisions.md D33): the request is fine, the gateway is momentarily full.
* :data:`DEFAULT_WRITE_TIMEOUT`: how long a response may wait for a client that does not read it.
* :func:`check_fd_limit`: refuses at start a configuration whose connection caps exceed the process's
  file-descriptor limit (``RLIMIT_NOFILE``), after raising the soft limit towards the hard one if needed.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

from m2msec.errors import ConfigurationError, OneM2MError

__all__ = [
    "DEFAULT_BODY_BUDGET",
    "DEFAULT_WRITE_TIMEOUT",
    "FDS_PER_CONNECTION",
    "FD_HEADROOM",
    "BodyBudget",
    "GatewayBusy",
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


class BodyBudget:
    """Bytes of request bodies held at once, across connections; :meth:`reserve` refuses beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the body budget must be at least 1 byte")
        self.limit = limit
        self.used = 0
        self.refused = 0

    def reserve(self, size: int) -> bool:
        if self.used + size > self.limit:
            self.refused += 1
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
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
