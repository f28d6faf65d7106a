"""What the TLS and DTLS adapters share: the ``get_extra_info`` names of an authenticated session, and the
start of the application once the handshake is done."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from m2msec.tls.engine import SessionInfo

__all__ = ["NOT_SESSION_INFO", "session_extra_info", "start_application"]

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
