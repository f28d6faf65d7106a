"""Asynchronous PSK resolvers for the asyncio servers (issue 16 part 1).

A ``psk_resolver`` is ``async (identity) -> PSKEntry | None``: it may fetch a key over the network (a MAF, a
database) while the loop serves other handshakes. It runs on a context made with
``ServerConfig(async_psk=True)`` (:mod:`m2msec.tls.async_psk`): the connection reports the identity, the
adapter starts the resolver in a task, and supplies its answer. A resolver that raises, or answers with
anything but the entry of the identity asked about, refuses that client only, as an unknown identity (the
error is logged, never the key); one that outlasts the handshake timeout is
cancelled with the connection. Each pending resolution holds held input and a task: they are capped per
source and in total (:class:`PendingLookups`); a client over a cap is refused as an unknown identity.

A resolver may also answer at once when it already holds the answer (a cache, a local table): an object with a
``lookup_now(identity) -> PSKEntry | None | MISS`` method (:class:`SyncProbe`). The adapters call it first: an
entry or ``None`` is supplied at once, without a task and outside the pending-lookup caps (nothing is held
while the loop waits), checked like the asynchronous answer (:func:`probe`); :data:`MISS` means "not known
without I/O", and the resolver is then awaited as above. ``lookup_now`` must not block.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Final, Literal, Protocol, runtime_checkable

from m2msec.errors import ConfigurationError
from m2msec.keys.table import PSKEntry
from m2msec.tls.engine import TLSContext
from m2msec.transport.limits import source_of

__all__ = [
    "DEFAULT_MAX_PENDING_LOOKUPS",
    "DEFAULT_MAX_PENDING_LOOKUPS_PER_SOURCE",
    "MISS",
    "PSKResolver",
    "PendingLookups",
    "ProbeAnswer",
    "SyncProbe",
    "check_resolver",
    "probe",
    "resolve",
]

log = logging.getLogger("m2msec.transport")

PSKResolver = Callable[[str], Awaitable[PSKEntry | None]]


class _Miss(Enum):
    MISS = "MISS"


#: what :meth:`SyncProbe.lookup_now` answers when only the asynchronous resolver can tell
MISS: Final = _Miss.MISS
#: the answer of :meth:`SyncProbe.lookup_now`
ProbeAnswer = PSKEntry | None | Literal[_Miss.MISS]


@runtime_checkable
class SyncProbe(Protocol):
    """A resolver that can answer some identities at once (see the module docstring)."""

    def lookup_now(self, identity: str) -> ProbeAnswer: ...

#: resolutions in flight for one server, all sources together (docs/decisions.md D79)
DEFAULT_MAX_PENDING_LOOKUPS = 1024
#: resolutions in flight for one source (IPv4 address, IPv6 /64)
DEFAULT_MAX_PENDING_LOOKUPS_PER_SOURCE = 16


class PendingLookups:
    """Counts the resolutions in flight, per source and in total."""

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING_LOOKUPS,
                 max_per_source: int = DEFAULT_MAX_PENDING_LOOKUPS_PER_SOURCE) -> None:
        self.max_pending = max_pending
        self.max_per_source = max_per_source
        self.total = 0
        self._per_source: dict[str, int] = {}
        self.refused = 0

    def acquire(self, peer: Any) -> str | None:
        """A token (the source) when a lookup may start, else None."""
        source = source_of(peer)
        count = self._per_source.get(source, 0)
        if self.total >= self.max_pending or count >= self.max_per_source:
            self.refused += 1
            return None
        self.total += 1
        self._per_source[source] = count + 1
        return source

    def release(self, source: str) -> None:
        self.total -= 1
        left = self._per_source[source] - 1
        if left:
            self._per_source[source] = left
        else:
            del self._per_source[source]


def check_resolver(context: TLSContext, resolver: PSKResolver | None) -> None:
    """A resolver needs an ``async_psk`` server context, and an ``async_psk`` context needs a resolver."""
    config = context.config
    wants = bool(getattr(config, "async_psk", False))
    if resolver is not None and not wants:
        raise ConfigurationError("a psk_resolver needs a server context made with ServerConfig(async_psk=True)")
    if resolver is None and wants:
        raise ConfigurationError("a ServerConfig(async_psk=True) context needs a psk_resolver")


def _checked(entry: object, identity: str, peer: Any) -> PSKEntry | None:
    if entry is not None and (not isinstance(entry, PSKEntry) or entry.identity != identity):
        log.error("PSK resolver answered identity %r from %s with %s; handshake refused", identity, peer,
                  f"the entry of {entry.identity!r}" if isinstance(entry, PSKEntry) else type(entry).__name__)
        return None
    return entry


def probe(resolver: PSKResolver, identity: str, peer: Any) -> ProbeAnswer:
    """The answer of ``resolver.lookup_now(identity)`` when the resolver has one (:class:`SyncProbe`), checked as
    :func:`resolve` checks an asynchronous answer (an exception or a wrong entry refuses the client); :data:`MISS`
    when the resolver has no ``lookup_now`` or cannot answer without I/O."""
    lookup_now = getattr(resolver, "lookup_now", None)
    if lookup_now is None:
        return MISS
    try:
        entry: object = lookup_now(identity)
    except Exception as exc:
        log.error("PSK resolver raised %s for identity %r from %s; handshake refused", type(exc).__name__,
                  identity, peer)
        return None
    if entry is MISS:
        return MISS
    return _checked(entry, identity, peer)


async def resolve(resolver: PSKResolver, identity: str, peer: Any) -> PSKEntry | None:
    """Run ``resolver``; an exception refuses the client as an unknown identity (logged without key material),
    and so does an answer that is not a :class:`PSKEntry` for ``identity`` itself (a resolver that matches
    identities loosely, e.g. without case, must not hand the connection another identity's entry)."""
    try:
        entry = await resolver(identity)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("PSK resolver raised %s for identity %r from %s; handshake refused", type(exc).__name__,
                  identity, peer)
        return None
    return _checked(entry, identity, peer)
