"""Fair delivery scheduling for the events notifier (D150; docs/ccf.md "Events").

Deliveries wait in one queue per destination (its origin, ``scheme://host:port``), served round-robin: a worker takes
the next delivery of the next destination that has fewer than ``per_destination`` deliveries in flight and whose
owner (the subscriber, or the invoker a SecurityNotification is for) has fewer than ``per_owner`` in flight. So a
receiver that never answers holds at most ``per_destination`` workers, one subscriber at most ``per_owner``, and
every other destination keeps being served. A destination whose deliveries keep failing is suspended (a circuit
breaker): its queued deliveries and those queued while it is suspended are dropped, then one delivery is tried
again. Memory is bounded: ``total`` deliveries queued in all, ``per_queue`` per destination, ``tracked`` breakers.
Pure bookkeeping: no I/O, time passed in.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Final

__all__ = ["BREAKER_COOLDOWN", "BREAKER_FAILURES", "DESTINATION_QUEUE", "IN_FLIGHT_PER_DESTINATION",
           "IN_FLIGHT_PER_OWNER", "TRACKED_DESTINATIONS", "Delivery", "FairQueue"]

#: D150: deliveries in flight at once to one destination (origin), and for one owner (subscriber)
IN_FLIGHT_PER_DESTINATION: Final = 1
IN_FLIGHT_PER_OWNER: Final = 2
#: D150: deliveries queued for one destination; more are dropped (logged)
DESTINATION_QUEUE: Final = 64
#: D150: deliveries given up in a row that suspend a destination, and for how long (seconds)
BREAKER_FAILURES: Final = 2
BREAKER_COOLDOWN: Final = 60.0
#: D150: destinations whose failures are remembered (the oldest is forgotten beyond)
TRACKED_DESTINATIONS: Final = 4096


@dataclass(frozen=True)
class Delivery:
    #: what the logs call it: ``subscription <id>``, or another callback's label
    label: str
    destination: str
    body: bytes
    #: the destination's origin (the queue), and whom the delivery is for (the subscriber or invoker)
    origin: str
    owner: str
    #: D149: the destination is an API invoker's (a third party): public addresses only, checked when resolved
    third_party: bool


@dataclass
class _Breaker:
    failures: int = 0
    open_until: float = 0.0


class FairQueue:
    """Per-destination queues served round-robin under in-flight caps, with a circuit breaker per destination."""

    def __init__(self, total: int, *, per_queue: int = DESTINATION_QUEUE,
                 per_destination: int = IN_FLIGHT_PER_DESTINATION, per_owner: int = IN_FLIGHT_PER_OWNER,
                 failures: int = BREAKER_FAILURES, cooldown: float = BREAKER_COOLDOWN,
                 tracked: int = TRACKED_DESTINATIONS) -> None:
        self.total, self.per_queue = total, per_queue
        self.per_destination, self.per_owner = per_destination, per_owner
        self.failures, self.cooldown, self.tracked = failures, cooldown, tracked
        self._queues: OrderedDict[str, deque[Delivery]] = OrderedDict()
        self._breakers: OrderedDict[str, _Breaker] = OrderedDict()
        self._origin_flight: Counter[str] = Counter()
        self._owner_flight: Counter[str] = Counter()
        self.queued = 0
        self.in_flight = 0

    def suspended(self, origin: str, now: float) -> bool:
        breaker = self._breakers.get(origin)
        return breaker is not None and breaker.open_until > now

    def put(self, delivery: Delivery, now: float) -> str | None:
        """Queue ``delivery``; None, or why it was dropped instead."""
        if self.suspended(delivery.origin, now):
            return "destination suspended"
        if self.queued >= self.total:
            return "delivery queue full"
        queue = self._queues.setdefault(delivery.origin, deque())
        if len(queue) >= self.per_queue:
            return "destination queue full"
        queue.append(delivery)
        self.queued += 1
        return None

    def take(self, now: float) -> tuple[Delivery | None, list[Delivery]]:
        """The next delivery to start (None when none may start now), and the deliveries dropped because their
        destination is suspended. The caller must :meth:`done` each delivery taken."""
        dropped: list[Delivery] = []
        for origin in list(self._queues):
            queue = self._queues[origin]
            if self.suspended(origin, now):
                dropped.extend(queue)
                self.queued -= len(queue)
                del self._queues[origin]
                continue
            if self._origin_flight[origin] >= self.per_destination or self._owner_flight[queue[0].owner] >= \
                    self.per_owner:
                continue
            delivery = queue.popleft()
            self.queued -= 1
            del self._queues[origin]
            if queue:  # round-robin: this destination goes to the back
                self._queues[origin] = queue
            self._origin_flight[origin] += 1
            self._owner_flight[delivery.owner] += 1
            self.in_flight += 1
            return delivery, dropped
        return None, dropped

    def done(self, delivery: Delivery, ok: bool | None, now: float) -> bool:
        """Record the end of a delivery taken: ``ok`` True delivered, False given up after transport errors,
        timeouts or 429/5xx (counts towards the breaker), None refused by the receiver or by D149. True when this
        opened the destination's breaker."""
        for counter, key in ((self._origin_flight, delivery.origin), (self._owner_flight, delivery.owner)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
        self.in_flight -= 1
        if ok is None:
            return False
        breaker = self._breakers.pop(delivery.origin, None)
        if ok:
            return False
        breaker = breaker or _Breaker()
        breaker.failures += 1
        opened = breaker.failures >= self.failures and breaker.open_until <= now
        if opened:
            breaker.open_until = now + self.cooldown
            breaker.failures = self.failures - 1  # half-open afterwards: one more failure re-opens it
        self._breakers[delivery.origin] = breaker
        while len(self._breakers) > self.tracked:
            self._breakers.popitem(last=False)
        return opened

    def clear(self) -> int:
        """Drop everything queued; how many."""
        count = self.queued
        self._queues.clear()
        self.queued = 0
        return count
