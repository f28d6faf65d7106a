"""The per-subscriber bound on event subscriptions, atomic across requests and CCF instances (D136).

A subscriber has :data:`~.events_rules.MAX_SUBSCRIPTIONS` slots: ``capif-subscription`` records
``slot~<subscriber>~<n>`` with body ``{"holder": subscriptionId, "since": time}``. Creating a subscription first
inserts a free slot (the store's insert of a new record is atomic: a slot another request took is a ``Conflict``), then
the subscription record ``{"subscriber", "subscription", "slot": n}``; deleting a subscription frees its slot. A slot
whose holder was never written (a crash between the two writes) is taken over, by compare-and-swap, once it is older
than :data:`SLOT_GRACE`. Slot records carry no ``subscriber`` nor ``subscription``: no subscription operation, the
dispatcher or :func:`~.events.drop_subscriptions` ever takes one for a subscription.
"""

from __future__ import annotations

import contextlib
from typing import Final

from m2msec.capif.ccf.context import CCF
from m2msec.capif.ccf.events_rules import MAX_SUBSCRIPTIONS
from m2msec.errors import CAPIFError, Conflict, NotFound
from m2msec.store import Document

__all__ = ["SLOT_GRACE", "SUBSCRIPTION_KIND", "claim_slot", "forget_subscription", "is_slot", "release_slot"]

SUBSCRIPTION_KIND: Final = "capif-subscription"
#: D136: seconds after which a slot whose subscription record does not exist is free again
SLOT_GRACE: Final = 60.0
_PREFIX: Final = "slot~"


def _slot_id(subscriber: str, n: int) -> str:
    return f"{_PREFIX}{subscriber}~{n}"


def is_slot(record_id: str) -> bool:
    return record_id.startswith(_PREFIX)


async def claim_slot(ccf: CCF, subscriber: str, subscription_id: str) -> int:
    """Take a free slot of ``subscriber`` for ``subscription_id``; its number. Raises CAPIFError 403 when all
    :data:`MAX_SUBSCRIPTIONS` are held."""
    store, now = ccf.store, ccf.clock()
    for n in range(MAX_SUBSCRIPTIONS):
        slot = Document(SUBSCRIPTION_KIND, _slot_id(subscriber, n), {"holder": subscription_id, "since": now})
        try:
            await store.put_document(slot)
            return n
        except Conflict:
            continue
    for n in range(MAX_SUBSCRIPTIONS):  # every slot taken: any orphan (its holder never written)?
        old = await store.get_document(SUBSCRIPTION_KIND, _slot_id(subscriber, n))
        if old is None or now - float(old.body.get("since", now)) < SLOT_GRACE:
            continue
        if await store.get_document(SUBSCRIPTION_KIND, str(old.body.get("holder"))) is not None:
            continue
        slot = Document(SUBSCRIPTION_KIND, old.record_id, {"holder": subscription_id, "since": now})
        try:
            await store.put_document(slot, expect=old)
            return n
        except (Conflict, NotFound):
            continue
    raise CAPIFError(f"a subscriber holds at most {MAX_SUBSCRIPTIONS} event subscriptions", status=403)


async def release_slot(ccf: CCF, subscriber: str, n: object, subscription_id: str) -> None:
    """Free slot ``n`` of ``subscriber`` if ``subscription_id`` holds it."""
    if not isinstance(n, int) or isinstance(n, bool):
        return
    slot = await ccf.store.get_document(SUBSCRIPTION_KIND, _slot_id(subscriber, n))
    if slot is not None and slot.body.get("holder") == subscription_id:
        with contextlib.suppress(NotFound):
            await ccf.store.delete_document(SUBSCRIPTION_KIND, slot.record_id)


async def forget_subscription(ccf: CCF, subscription_id: str) -> bool:
    """Delete a subscription and free its slot; False when it was already gone."""
    doc = await ccf.store.get_document(SUBSCRIPTION_KIND, subscription_id)
    if doc is None or is_slot(subscription_id):
        return False
    try:
        await ccf.store.delete_document(SUBSCRIPTION_KIND, subscription_id)
    except NotFound:
        return False
    await release_slot(ccf, str(doc.body.get("subscriber", "")), doc.body.get("slot"), subscription_id)
    return True
