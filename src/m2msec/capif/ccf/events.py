"""CAPIF Events (TS 29.222 §8.3, `/capif-events/v1`): subscriptions and notifications."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from m2msec.capif.ccf.context import CCF

__all__ = ["Notifier", "start_notifier"]


class Notifier:
    """Delivers the CCF's events to their subscribers (to be written: subscriptions are not yet served)."""

    def __init__(self, ccf: CCF) -> None:
        self.ccf = ccf

    async def emit(self, event: str, detail: dict[str, Any]) -> None:
        return None


@contextlib.asynccontextmanager
async def start_notifier(ccf: CCF) -> AsyncIterator[Notifier]:
    yield Notifier(ccf)
