"""The ASGI ``lifespan`` protocol: startup before the server listens, shutdown after it has stopped.

``mode``: ``"on"`` (the application must answer the startup), ``"off"`` (no lifespan scope at all), ``"auto"`` (the
default: an application that raises before answering the startup does not support lifespan, and runs without
it, as ASGI servers usually do). In every mode a ``lifespan.startup.failed`` answer is a failure: the server
refuses to start (:class:`LifespanFailed`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from m2msec.asgi.protocol import ASGIApp, Message
from m2msec.asgi.scope import ASGI_VERSION
from m2msec.errors import ConfigurationError

__all__ = ["Lifespan", "LifespanFailed", "LifespanMode"]

log = logging.getLogger("m2msec.asgi")

LifespanMode = Literal["auto", "on", "off"]


class LifespanFailed(ConfigurationError):
    """The ASGI application refused to start (``lifespan.startup.failed``, or it raised with ``lifespan="on"``)."""


class Lifespan:
    """Runs one application's lifespan scope as a task; ``state`` is the ASGI lifespan state for the requests."""

    def __init__(self, app: ASGIApp, mode: LifespanMode = "auto") -> None:
        if mode not in ("auto", "on", "off"):
            raise ConfigurationError(f"lifespan must be 'auto', 'on' or 'off', not {mode!r}")
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self.supported = False
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._answer = asyncio.Event()
        self._outcome: tuple[str, str] | None = None  # (message type, message) of the last answer
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait for the answer.

        Raises:
            LifespanFailed: the application answered ``lifespan.startup.failed`` (or raised, with mode "on")."""
        if self.mode == "off":
            return
        scope = {"type": "lifespan", "asgi": dict(ASGI_VERSION), "state": self.state}
        self._task = asyncio.get_running_loop().create_task(self._main(scope))
        outcome = await self._ask("lifespan.startup")
        if outcome is None:
            if self.mode == "on":
                raise LifespanFailed(f"ASGI application startup failed: {self._describe()}")
            log.info("the ASGI application does not support lifespan (%s): serving without it", self._describe())
            return
        kind, message = outcome
        if kind == "lifespan.startup.failed":
            await self._finish()
            raise LifespanFailed(f"ASGI application startup failed: {message or 'no reason given'}")
        self.supported = True

    async def shutdown(self, timeout: float) -> None:
        """Send ``lifespan.shutdown`` and wait up to ``timeout`` seconds for the answer (failures are logged)."""
        if not self.supported:
            return
        self.supported = False
        try:
            async with asyncio.timeout(timeout):
                outcome = await self._ask("lifespan.shutdown")
        except TimeoutError:
            log.error("ASGI application shutdown did not finish within %.1f s", timeout)
            outcome = ("", "")
        if outcome is None:
            log.error("ASGI application shutdown failed: %s", self._describe())
        elif outcome[0] == "lifespan.shutdown.failed":
            log.error("ASGI application shutdown failed: %s", outcome[1] or "no reason given")
        await self._finish()

    async def _ask(self, kind: str) -> tuple[str, str] | None:
        """Send ``kind``; the application's answer, or None when it raised or returned instead."""
        assert self._task is not None
        self._answer.clear()
        self._outcome = None
        await self._inbox.put({"type": kind})
        answer = asyncio.ensure_future(self._answer.wait())
        try:
            await asyncio.wait((answer, self._task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            answer.cancel()
        return self._outcome

    async def _main(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._inbox.get, self._send)
        except Exception as exc:
            self._error = exc
            if self.supported:
                log.exception("ASGI application failed in its lifespan")

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind not in ("lifespan.startup.complete", "lifespan.startup.failed",
                        "lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            raise RuntimeError(f"unexpected lifespan message {kind!r}")
        self._outcome = (kind, str(message.get("message", "")))
        self._answer.set()

    def _describe(self) -> str:
        if self._error is not None:
            return f"{type(self._error).__name__}: {self._error}"
        return "it returned without answering"

    async def _finish(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait((task,), timeout=0)  # one turn: an application that answered usually returns now
            task.cancel()
            await asyncio.wait((task,))
