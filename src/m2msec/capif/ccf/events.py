"""CAPIF Events (TS 29.222 §8.3, ``/capif-events/v1``): subscriptions and notifications (docs/ccf.md "Events").

A subscriber is an onboarded API invoker or a registered AEF, APF or AMF, with the certificate the CCF issued it;
``{subscriberId}`` must be its own identity (403 otherwise) and a subscription is reached only under the subscriber
that created it (404 under another). What each role may subscribe to and how filters apply: :mod:`.events_rules`
(D133, D134); destinations: D136, and for an API invoker D149 (:mod:`.events_address`). Subscriptions are
``capif-subscription`` documents ``{"subscriber": id, "subscription": EventSubscription, "slot": n}``, each holding
one of its subscriber's slots (:mod:`.events_slots`: the bound of D136, atomic); an offboarded invoker's are
deleted at once (a :data:`~.invokers.purge_hooks` hook), a removed provider function's at once too
(:mod:`.providers` calls :func:`drop_subscriptions`; the dispatcher also drops those whose subscriber's record is gone).
Delivery: :mod:`.events_notifier` (D135), which also delivers the invoker's SecurityNotification (D140).
"""

from __future__ import annotations

from typing import Any, Final

from m2msec.capif.ccf import invokers
from m2msec.capif.ccf.context import CCF
from m2msec.capif.ccf.events_address import refuse_internal_literal
from m2msec.capif.ccf.events_notifier import DeliveryPolicy, Notifier, start_notifier
from m2msec.capif.ccf.events_rules import check_destination, check_subscription
from m2msec.capif.ccf.events_slots import SUBSCRIPTION_KIND, claim_slot, forget_subscription, is_slot, release_slot
from m2msec.capif.ccf.http import MERGE_PATCH, CCFRequest, Reply, operation
from m2msec.capif.certificates import CAPIFRole
from m2msec.errors import CAPIFError
from m2msec.store import Document

__all__ = ["API", "DeliveryPolicy", "Notifier", "drop_subscriptions", "start_notifier", "subscription_location"]

API: Final = "capif-events"
_ROLES: Final = (CAPIFRole.INVOKER, CAPIFRole.AEF, CAPIFRole.APF, CAPIFRole.AMF)
#: the members of an EventSubscription a merge patch may change (EventSubscriptionPatch)
_PATCHABLE: Final = ("events", "eventFilters", "eventReq", "notificationDestination")


def subscription_location(ccf: CCF, subscriber: str, subscription_id: str) -> str:
    return f"{ccf.policy.api_root}/{API}/v1/{subscriber}/subscriptions/{subscription_id}"


async def _subscriber(request: CCFRequest) -> CAPIFRole:
    """The caller's role; the caller must be the subscriber the URL names, with its current certificate."""
    await request.ccf.authenticate(request.caller, *_ROLES)
    if request.caller.identity != request.params["subscriberId"]:
        raise CAPIFError("a subscriber manages only its own event subscriptions", status=403)
    assert request.caller.role is not None  # authenticate refused a caller without one
    return request.caller.role


def _checked(ccf: CCF, role: CAPIFRole, wanted: dict[str, Any]) -> dict[str, Any]:
    """The subscription as kept (:func:`.events_rules.check_subscription`); an API invoker's destination must not
    name an internal address (D149) unless the CCF allows it (``DeliveryPolicy.invoker_private_destinations``)."""
    subscription = check_subscription(role, wanted)
    allowed = isinstance(ccf.events, Notifier) and ccf.events.private_destinations_allowed()
    if role is CAPIFRole.INVOKER and not allowed:
        refuse_internal_literal(check_destination(subscription["notificationDestination"]).hostname or "")
    return subscription


async def _own_subscription(request: CCFRequest) -> Document:
    subscription_id = request.params["subscriptionId"]
    doc = None if is_slot(subscription_id) else await request.ccf.store.get_document(SUBSCRIPTION_KIND,
                                                                                      subscription_id)
    if doc is None or doc.body.get("subscriber") != request.params["subscriberId"]:
        raise CAPIFError("no such event subscription", status=404)
    return doc


@operation(API, "POST", "/{subscriberId}/subscriptions")
async def subscribe(request: CCFRequest) -> Reply:
    role = await _subscriber(request)
    ccf, subscriber = request.ccf, request.params["subscriberId"]
    subscription = _checked(ccf, role, request.body)
    subscription_id = ccf.new_id()
    slot = await claim_slot(ccf, subscriber, subscription_id)  # D136: 403 when every slot is held
    try:
        await ccf.store.put_document(Document(SUBSCRIPTION_KIND, subscription_id,
                                              {"subscriber": subscriber, "subscription": subscription, "slot": slot}))
    except BaseException:
        await release_slot(ccf, subscriber, slot, subscription_id)
        raise
    return Reply(201, subscription, {"Location": subscription_location(ccf, subscriber, subscription_id)})


async def _replace(request: CCFRequest, doc: Document, role: CAPIFRole, wanted: dict[str, Any]) -> Reply:
    subscription = _checked(request.ccf, role, wanted)
    await request.ccf.store.put_document(
        Document(SUBSCRIPTION_KIND, doc.record_id, {**doc.body, "subscription": subscription}), replace=True)
    return Reply(200, subscription)


@operation(API, "PUT", "/{subscriberId}/subscriptions/{subscriptionId}")
async def replace(request: CCFRequest) -> Reply:
    role = await _subscriber(request)
    doc = await _own_subscription(request)
    return await _replace(request, doc, role, request.body)


@operation(API, "PATCH", "/{subscriberId}/subscriptions/{subscriptionId}", media=MERGE_PATCH)
async def modify(request: CCFRequest) -> Reply:
    role = await _subscriber(request)
    doc = await _own_subscription(request)
    merged = dict(doc.body["subscription"])
    for key in _PATCHABLE:
        if key not in request.body:
            continue
        if request.body[key] is None:  # RFC 7396: null removes the member
            merged.pop(key, None)
        else:
            merged[key] = request.body[key]
    if not merged.get("events") or "notificationDestination" not in merged:
        raise CAPIFError("the patch removes a required member of the subscription", status=400)
    return await _replace(request, doc, role, merged)


@operation(API, "DELETE", "/{subscriberId}/subscriptions/{subscriptionId}", media=None)
async def unsubscribe(request: CCFRequest) -> Reply:
    await _subscriber(request)
    doc = await _own_subscription(request)
    if not await forget_subscription(request.ccf, doc.record_id):
        raise CAPIFError("no such event subscription", status=404)
    return Reply(204)


async def drop_subscriptions(ccf: CCF, subscriber: str) -> int:
    """Delete every subscription of ``subscriber`` (an offboarded invoker, a deregistered provider function)."""
    dropped = 0
    for doc in await ccf.store.documents(SUBSCRIPTION_KIND):
        if doc.body.get("subscriber") == subscriber and await forget_subscription(ccf, doc.record_id):
            dropped += 1
    return dropped


if drop_subscriptions not in invokers.purge_hooks:
    invokers.purge_hooks.append(drop_subscriptions)
