"""Events raised outside the CCF server (the operator's ``m2msec ccf revoke-credential`` offboarding an invoker) reach
the running CCF's subscribers through the store (D155).

A process that is not the server emits into the outbox (:class:`OutboxSink`, ``capif-outbox`` records); every running
CCF instance polls it every :data:`OUTBOX_POLL` seconds (:func:`relay_outbox`) and hands each event to its own
notifier. An event is taken by deleting its record first: with several instances on one store, the one whose delete
succeeds emits it, and only that one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any, Final

from m2msec.capif.ccf.context import CCF
from m2msec.errors import NotFound, StorageError
from m2msec.store import AsyncKeyStore, Document

__all__ = ["OUTBOX_KIND", "OUTBOX_POLL", "OutboxSink", "relay_once", "relay_outbox"]

log = logging.getLogger("m2msec.ccf")

OUTBOX_KIND: Final = "capif-outbox"
#: D155: seconds between two looks at the outbox by a running CCF
OUTBOX_POLL: Final = 1.0


class OutboxSink:
    """The :class:`~m2msec.capif.ccf.context.EventSink` of a process that is not the server: events go to the store."""

    def __init__(self, store: AsyncKeyStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    async def emit(self, event: str, detail: dict[str, Any]) -> None:
        record_id = f"{self.clock():020.6f}-{secrets.token_hex(8)}"  # ids sort in the order of emission
        await self.store.put_document(Document(OUTBOX_KIND, record_id, {"event": event, "detail": detail}))


async def relay_once(ccf: CCF) -> int:
    """Hand every event waiting in the outbox to ``ccf.events`` (each taken by deleting its record first). Returns
    how many this instance took."""
    taken = 0
    for doc in await ccf.store.documents(OUTBOX_KIND):
        try:
            await ccf.store.delete_document(OUTBOX_KIND, doc.record_id)
        except NotFound:
            continue  # another instance took it
        event, detail = doc.body.get("event"), doc.body.get("detail")
        if isinstance(event, str) and isinstance(detail, dict):
            await ccf.events.emit(event, detail)
            taken += 1
    return taken


async def relay_outbox(ccf: CCF, interval: float = OUTBOX_POLL) -> None:
    """Run :func:`relay_once` every ``interval`` seconds until cancelled (a store failure is logged and retried)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await relay_once(ccf)
        except StorageError as exc:
            log.error("key store error reading the event outbox: %s", type(exc).__name__)
