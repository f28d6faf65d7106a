"""Delivering CAPIF event notifications (the ``EventNotification`` callback of TS 29.222 §8.3) without holding up
the request that caused them (docs/ccf.md "Events", D135).

:meth:`Notifier.emit` only queues the event (a bounded queue: when it is full the event is dropped and logged).
A dispatcher task finds the matching subscriptions in the store (an ``API_INVOKER_AUTHORIZATION_REVOKED`` goes to
provider functions of the domain owning the revoked APIs only, D151) and queues one delivery per subscription in the
fair queue of :mod:`.events_queue` (one queue per destination, in-flight caps, a circuit breaker: D150). Delivery
workers POST the ``EventNotification`` as ``application/json`` (HTTP/1.1 with h11 over asyncio streams, TLS with
Python's ``ssl`` for ``https``), each attempt within a timeout, a few retries with exponential backoff on transport
errors, 429 and 5xx, never following a redirect. An API invoker's destination is resolved at delivery and must be
public, and the CCF connects to the address it checked (D149, :mod:`.events_address`). Logs name the destination's
origin only (a path or query may carry the receiver's token) and the error's type, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from m2msec.capif.ccf.context import CCF
from m2msec.capif.ccf.events_address import InternalAddress, refuse_internal_literal, resolve_public
from m2msec.capif.ccf.events_queue import Delivery, FairQueue
from m2msec.capif.ccf.events_rules import check_destination, destination_origin, matches
from m2msec.capif.ccf.events_slots import SUBSCRIPTION_KIND, forget_subscription
from m2msec.capif.schema import SchemaViolation, validate_request
from m2msec.errors import CAPIFError
from m2msec.http1 import HTTPError, Message, request

__all__ = ["NOTIFICATION", "SUBSCRIPTION_KIND", "CallbackSink", "DeliveryPolicy", "Notifier", "send_callback",
           "start_notifier"]

log = logging.getLogger("m2msec.ccf.events")
_T = TypeVar("_T")

#: the official name of the notification (the callback of the subscription POST), for validation
NOTIFICATION: Final = "POST /{subscriberId}/subscriptions callback notificationDestination"
_API: Final = "capif-events"

#: D135: events waiting for the dispatcher, and deliveries waiting for a worker (each queue); more are dropped
QUEUE_SIZE: Final = 1024
#: D135: seconds for one delivery attempt (connect, TLS, request, response)
DELIVERY_TIMEOUT: Final = 5.0
#: D135: further attempts after a failed one (transport error, timeout, 429, 5xx), waiting RETRY_BACKOFF * 2**n s
DELIVERY_RETRIES: Final = 3
RETRY_BACKOFF: Final = 0.5
#: D135: deliveries in progress at once (D150: at most IN_FLIGHT_PER_DESTINATION to one destination)
DELIVERY_WORKERS: Final = 8
#: D151: the event only the provider domain owning its ``apiIds`` is told of
REVOKED_EVENT: Final = "API_INVOKER_AUTHORIZATION_REVOKED"
#: D135: the largest response body read from a receiver (then the connection is dropped)
MAX_RESPONSE: Final = 64 * 1024
_RETRY_STATUS: Final = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class DeliveryPolicy:
    """How notifications are delivered (D135, D150); ``ssl_context`` is the HTTPS trust (D136: None = the system's
    CAs through :func:`ssl.create_default_context`); ``invoker_private_destinations`` lets API invokers' notifications
    go to internal addresses too (D149: off by default; ``CCFConfig.invoker_private_destinations``)."""

    queue_size: int = QUEUE_SIZE
    timeout: float = DELIVERY_TIMEOUT
    retries: int = DELIVERY_RETRIES
    backoff: float = RETRY_BACKOFF
    workers: int = DELIVERY_WORKERS
    max_response: int = MAX_RESPONSE
    ssl_context: ssl.SSLContext | None = None
    invoker_private_destinations: bool = False


@runtime_checkable
class CallbackSink(Protocol):
    """An event sink that also delivers other CAPIF callbacks (the :class:`Notifier`)."""

    def deliver(self, destination: str, body: dict[str, Any], label: str) -> bool: ...


async def post_json(url: str, body: bytes, *, timeout: float, ssl_context: ssl.SSLContext,
                    max_response: int = MAX_RESPONSE, public_only: bool = False) -> int:
    """POST ``body`` as application/json to ``url`` on a new connection; the response status (redirects are not
    followed). With ``public_only`` (D149) the host is resolved first, every address must be public, and the
    connection goes to the address checked. Raises OSError, HTTPError or TimeoutError."""
    parts = check_destination(url)
    https = parts.scheme.lower() == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    authority = (f"[{host}]" if ":" in host else host) + ("" if parts.port is None else f":{parts.port}")
    async with asyncio.timeout(timeout):
        address = await resolve_public(host, port) if public_only else host
        reader, writer = await asyncio.open_connection(address, port, ssl=ssl_context if https else None,
                                                       server_hostname=host if https else None)
        try:
            answer = await request(reader, writer, Message(
                method="POST", target=target, body=body,
                headers=[("host", authority), ("content-type", "application/json"),
                         ("accept", "application/json, application/problem+json"), ("connection", "close"),
                         ("user-agent", "m2msec-ccf")]), max_body=max_response)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return answer.status


class Notifier:
    """Queues the CCF's events and delivers them to the matching subscriptions (see the module docstring)."""

    def __init__(self, ccf: CCF, policy: DeliveryPolicy | None = None) -> None:
        self.ccf = ccf
        self.policy = policy or DeliveryPolicy()
        self.ssl_context = self.policy.ssl_context or ssl.create_default_context()
        self._events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(self.policy.queue_size)
        self._deliveries = FairQueue(self.policy.queue_size)
        self._wake = asyncio.Event()  # a delivery was queued or one finished: a worker may start one
        self._idle = asyncio.Event()  # nothing queued nor in flight
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        #: store operations in progress (a store call runs in a thread: cancelling its task does not stop it)
        self._store_calls: set[asyncio.Future[Any]] = set()
        #: counters (tests, operators): events and deliveries dropped (full queue, suspended destination),
        #: deliveries done and given up
        self.dropped = 0
        self.delivered = 0
        self.failed = 0

    def private_destinations_allowed(self) -> bool:
        """D149: whether API invokers may have notifications sent to internal addresses."""
        return self.policy.invoker_private_destinations

    async def emit(self, event: str, detail: dict[str, Any]) -> None:
        """Queue ``event`` for delivery; never waits and never raises (a full queue drops it, logged)."""
        try:
            copied = json.loads(json.dumps(detail))  # the caller may change its dict after emit returns
        except (TypeError, ValueError, RecursionError):
            log.error("%s not queued: its detail is not JSON", event)
            return
        try:
            self._events.put_nowait((event, copied))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("event queue full (%d): %s dropped", self.policy.queue_size, event)

    def deliver(self, destination: str, body: dict[str, Any], label: str) -> bool:
        """Queue one callback POST of ``body`` (already checked against its official schema) to an API invoker's
        ``destination`` (D149 applies), delivered as event notifications are (timeout, retries, no redirects);
        ``label`` names it in logs (never a key) and is whom it is for (D150). False when the destination is not
        one D136 or D149 allows or it cannot be queued (logged)."""
        try:
            parts = check_destination(destination)
            if not self.policy.invoker_private_destinations:
                refuse_internal_literal(parts.hostname or "")
        except CAPIFError:
            log.warning("%s not sent: its destination %s is not a notification URL it may use", label,
                        destination_origin(destination))
            return False
        return self._queue(Delivery(label, destination, json.dumps(body, separators=(",", ":")).encode(),
                                    destination_origin(destination), label, True))

    def _queue(self, delivery: Delivery) -> bool:
        why = self._deliveries.put(delivery, self.ccf.clock())
        if why is not None:
            self.dropped += 1
            log.warning("%s to %s dropped: %s", delivery.label, delivery.origin, why)
            return False
        self._idle.clear()
        self._wake.set()
        return True

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._dispatch(), name="ccf-events-dispatch"))
        for i in range(self.policy.workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"ccf-events-deliver-{i}"))

    async def stop(self) -> None:
        pending = self._events.qsize() + self._deliveries.queued + self._deliveries.in_flight
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._deliveries.clear()
        # a store call still running in its thread would otherwise outlive the notifier, and the store may be
        # closed under it as soon as this returns
        await asyncio.gather(*list(self._store_calls), return_exceptions=True)
        if pending:
            log.warning("stopped with %d undelivered events or notifications", pending)

    async def drain(self) -> None:
        """Wait until every queued event has been dispatched and every delivery finished (or given up)."""
        await self._events.join()
        await self._idle.wait()

    async def _store(self, call: Awaitable[_T]) -> _T:
        """Run a store call so that cancelling the caller lets it finish (:meth:`stop` waits for it)."""
        future = asyncio.ensure_future(call)
        self._store_calls.add(future)
        future.add_done_callback(self._store_calls.discard)
        return await asyncio.shield(future)

    async def _dispatch(self) -> None:
        while True:
            event, detail = await self._events.get()
            try:
                await self._fan_out(event, detail)
            except Exception as exc:  # the dispatcher must outlive any one event; no traceback in the log
                log.error("dispatching %s failed: %s", event, type(exc).__name__)
            finally:
                self._events.task_done()

    async def _fan_out(self, event: str, detail: dict[str, Any]) -> None:
        owners: dict[str, str] | None = None  # D151: apiId -> provider domain, for a revocation
        for doc in await self._store(self.ccf.store.documents(SUBSCRIPTION_KIND)):
            subscription = doc.body.get("subscription") or {}
            if not matches(subscription, event, detail):
                continue
            subscriber = str(doc.body.get("subscriber", ""))
            kind, domain = await self._subscriber(subscriber)
            if kind is None:
                await self._forget(doc.record_id)
                continue
            told = detail
            if event == REVOKED_EVENT and kind != "invoker":
                if owners is None:
                    owners = await self._api_domains([str(a) for a in detail.get("apiIds") or []])
                mine = [a for a in detail.get("apiIds") or [] if domain is not None and owners.get(str(a)) == domain]
                if not mine:
                    continue
                told = {**detail, "apiIds": mine}
            notification = {"subscriptionId": doc.record_id, "events": event, "eventDetail": told}
            try:
                validate_request(_API, NOTIFICATION, notification)
            except SchemaViolation as exc:
                where = [*str(exc).split(": ", 2), "", ""][1][:100]  # the member, not its value
                log.error("%s notification dropped: it breaks the official schema at %s", event, where)
                return
            destination = str(subscription["notificationDestination"])
            self._queue(Delivery(f"subscription {doc.record_id}", destination,
                                 json.dumps(notification, separators=(",", ":")).encode(),
                                 destination_origin(destination), subscriber, kind == "invoker"))

    async def _subscriber(self, subscriber: str) -> tuple[str | None, str | None]:
        """``("invoker", None)``, ``("provider", domain)``, or ``(None, None)`` when the subscriber is gone (an
        invoker offboarded, a provider function deregistered): a subscription outlives no subscriber."""
        store = self.ccf.store
        if await self._store(store.get_document("capif-invoker", subscriber)) is not None:
            return "invoker", None
        function = await self._store(store.get_document("capif-provider", "func:" + subscriber))
        if function is None:
            return None, None
        domain = function.body.get("domain")
        return "provider", None if domain is None else str(domain)

    async def _api_domains(self, api_ids: list[str]) -> dict[str, str]:
        """D151: the provider domain of each service API still published (its APF's); a withdrawn API has none."""
        store, owners = self.ccf.store, {}
        for api_id in dict.fromkeys(api_ids):
            service = await self._store(store.get_document("capif-service", api_id))
            apf = None if service is None else service.body.get("apf")
            function = None if apf is None else await self._store(store.get_document("capif-provider", f"func:{apf}"))
            if function is not None and function.body.get("domain") is not None:
                owners[api_id] = str(function.body["domain"])
        return owners

    async def _forget(self, subscription_id: str) -> None:
        await self._store(forget_subscription(self.ccf, subscription_id))
        log.info("subscription %s dropped: its subscriber is gone", subscription_id)

    async def _work(self) -> None:
        queue = self._deliveries
        while True:
            delivery, dropped = queue.take(self.ccf.clock())
            for gone in dropped:
                self.dropped += 1
                log.warning("%s to %s dropped: destination suspended", gone.label, gone.origin)
            if delivery is None:
                if queue.queued == 0 and queue.in_flight == 0:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            outcome: bool | None = False
            try:
                outcome = await self._deliver(delivery)
            except Exception as exc:
                self.failed += 1
                log.error("delivery of %s failed: %s", delivery.label, type(exc).__name__)
            finally:
                if queue.done(delivery, outcome, self.ccf.clock()):
                    log.warning("destination %s suspended: its deliveries keep failing", delivery.origin)
                self._wake.set()

    async def _deliver(self, delivery: Delivery) -> bool | None:
        """Deliver with retries: True delivered, False given up (transport errors, timeouts, 429, 5xx), None refused
        (by the receiver: a redirect or another status; by D149: an internal address)."""
        policy, origin = self.policy, delivery.origin
        public_only = delivery.third_party and not policy.invoker_private_destinations
        for attempt in range(policy.retries + 1):
            if attempt:
                await asyncio.sleep(policy.backoff * 2 ** (attempt - 1))
            try:
                status = await post_json(delivery.destination, delivery.body, timeout=policy.timeout,
                                         ssl_context=self.ssl_context, max_response=policy.max_response,
                                         public_only=public_only)
            except InternalAddress:
                self.failed += 1
                log.warning("notification for %s not sent: %s is not a public address", delivery.label, origin)
                return None
            except (OSError, HTTPError, TimeoutError) as exc:
                why = f"{type(exc).__name__}"
            else:
                if 200 <= status < 300:
                    self.delivered += 1
                    return True
                if status not in _RETRY_STATUS:  # a redirect (never followed) or a refusal: not retried
                    self.failed += 1
                    log.warning("notification for %s to %s refused with %d", delivery.label,
                                origin, status)
                    return None
                why = f"status {status}"
            log.info("notification for %s to %s: attempt %d failed (%s)", delivery.label,
                     origin, attempt + 1, why)
        self.failed += 1
        log.warning("notification for %s to %s given up after %d attempts", delivery.label,
                    origin, policy.retries + 1)
        return False


def send_callback(ccf: CCF, destination: str, body: dict[str, Any], label: str) -> bool:
    """Hand a callback to the CCF's notifier; False (logged) when its event sink delivers no callbacks."""
    if isinstance(ccf.events, CallbackSink):
        return ccf.events.deliver(destination, body, label)
    log.info("%s not sent: the CCF's event sink delivers no callbacks", label)
    return False


@contextlib.asynccontextmanager
async def start_notifier(ccf: CCF, policy: DeliveryPolicy | None = None) -> AsyncIterator[Notifier]:
    """A running :class:`Notifier` for ``ccf``, stopped on exit (undelivered notifications are dropped, logged)."""
    notifier = Notifier(ccf, policy)
    notifier.start()
    try:
        yield notifier
    finally:
        await notifier.stop()
