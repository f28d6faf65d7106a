"""The handshake deadline both transports use (m2msec.transport.common.Deadlines): one timer for all entries."""

from __future__ import annotations

import asyncio

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
