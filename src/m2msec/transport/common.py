"""What the TLS and DTLS adapters share: the handshake deadline (:class:`Deadlines`), the ``get_extra_info`` names
of an authenticated session, and the start of the application once the handshake is done."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from m2msec.tls.engine import SessionInfo

__all__ = ["NOT_SESSION_INFO", "Deadline", "Deadlines", "session_extra_info", "start_application"]

#: :func:`session_extra_info`'s answer for a name it does not know (the caller asks its socket)
NOT_SESSION_INFO: Any = object()

P = TypeVar("P", bound=asyncio.BaseProtocol)


def session_extra_info(name: str, session: SessionInfo | None, connection: object, default: Any) -> Any:
    """``get_extra_info(name)`` of a TLS/DTLS transport: ``m2msec_session``, ``peer_identity``, ``sa_entity``,
    ``tls_connection``, ``cipher``; :data:`NOT_SESSION_INFO` for any other name."""
    if name == "m2msec_session":
        value: Any = session
    elif name == "peer_identity":
        value = session.psk_identity if session is not None else None
    elif name == "sa_entity":
        value = session.entity if session is not None else None
    elif name == "tls_connection":
        value = connection
    elif name == "cipher":
        value = (session.cipher, session.version, None) if session is not None else None
    else:
        return NOT_SESSION_INFO
    return default if value is None else value


def start_application(app_factory: Callable[[], P], transport: asyncio.BaseTransport) -> P:
    """The handshake is done: a new application protocol, connected to ``transport``."""
    app = app_factory()
    app.connection_made(transport)
    return app


class Deadline:
    """One entry of :class:`Deadlines`; :meth:`cancel` when what it guards is done."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        self.callback = None


class Deadlines:
    """Calls back what is not done ``timeout`` seconds after it was added (the handshake timeout of a server's
    TLS connections or DTLS peers): one timer for all of them, not one each. Every entry gets the same timeout, so
    they expire in the order they were added (a FIFO); a cancelled one leaves the queue when its time comes."""

    #: seconds an entry may be expired early (asyncio may run a timer a clock resolution ahead)
    SLACK = 0.001

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._queue: deque[Deadline] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, callback: Callable[[], object]) -> Deadline:
        loop = asyncio.get_running_loop()
        deadline = Deadline(loop.time() + self.timeout, callback)
        self._queue.append(deadline)
        if self._timer is None:
            self._timer = loop.call_at(deadline.when, self._expire)
        return deadline

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time() + self.SLACK
        queue = self._queue
        try:
            while queue and (queue[0].callback is None or queue[0].when <= now):
                deadline = queue.popleft()
                callback, deadline.callback = deadline.callback, None
                if callback is not None:
                    callback()
        finally:  # a callback that raises (asyncio logs it) must not leave every later entry without a timer
            if queue and self._timer is None:
                self._timer = loop.call_at(queue[0].when, self._expire)

    def close(self) -> None:
        """Forget every entry (the server is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
