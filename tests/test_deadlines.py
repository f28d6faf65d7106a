"""The handshake deadline both transports use (m2msec.transport.common.Deadlines): one timer for all entries."""

from __future__ import annotations

import asyncio
from typing import Any

from m2msec.transport.common import Deadlines


async def test_entries_expire_in_order_and_cancelled_ones_never_fire() -> None:
    deadlines = Deadlines(0.4)
    fired: list[str] = []
    deadlines.add(lambda: fired.append("first"))
    cancelled = deadlines.add(lambda: fired.append("cancelled"))
    await asyncio.sleep(0.2)
    deadlines.add(lambda: fired.append("later"))
    cancelled.cancel()
    await asyncio.sleep(0.3)
    assert fired == ["first"]  # at 0.5 s: the first is due (0.4 s), the later one (0.6 s) not yet
    await asyncio.sleep(0.3)
    assert fired == ["first", "later"]
    deadlines.add(lambda: fired.append("after a pause"))  # the queue was empty: a new timer starts
    await asyncio.sleep(0.6)
    assert fired == ["first", "later", "after a pause"]


async def test_close_forgets_every_entry() -> None:
    deadlines = Deadlines(0.05)
    fired: list[int] = []
    deadlines.add(lambda: fired.append(1))
    deadlines.close()
    await asyncio.sleep(0.1)
    assert fired == []


async def test_a_callback_that_raises_does_not_stop_the_later_entries() -> None:
    # one handshake's timeout handler failing must not leave every other stalled handshake without a deadline
    # (nothing else re-arms the timer until the next connection arrives)
    deadlines = Deadlines(0.05)
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("handler failed")

    loop = asyncio.get_running_loop()
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    try:
        deadlines.add(boom)
        deadlines.add(lambda: fired.append("same time"))
        await asyncio.sleep(0.02)
        deadlines.add(lambda: fired.append("later"))
        await asyncio.sleep(0.2)
    finally:
        loop.set_exception_handler(None)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert fired == ["same time", "later"]


async def test_entries_added_from_a_callback_keep_one_timer() -> None:
    # a timeout handler that starts something with a deadline (re-entrant add) gets it, with a single timer
    deadlines = Deadlines(0.05)
    fired: list[str] = []
    deadlines.add(lambda: (fired.append("first"), deadlines.add(lambda: fired.append("added by first"))))
    await asyncio.sleep(0.08)
    assert fired == ["first"]
    loop: Any = asyncio.get_running_loop()  # asyncio's loop (this file runs on it): its timer heap
    timers = [h for h in loop._scheduled if not h.cancelled() and h._callback == deadlines._expire]
    assert len(timers) == 1  # not one per re-entrant add, each re-arming itself while the queue lasts
    await asyncio.sleep(0.08)
    assert fired == ["first", "added by first"]
