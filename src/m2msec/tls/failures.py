"""Why a server handshake failed, as one fixed word for metrics and logs (docs/gateway.md "Metrics").

``unknown_identity``, ``bad_key``, ``lookup_failed``, ``certificate_expired``, ``certificate_revoked``,
``certificate_untrusted``, ``closed`` or ``protocol``. The server tells an unknown identity apart from a wrong key
even when the peer cannot (RFC 4279 §2 hiding, :mod:`m2msec.tls.psk_hiding`): the wire stays as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from m2msec.errors import HandshakeFailed, HandshakeTimeout, TLSError

if TYPE_CHECKING:
    from m2msec.tls.connection import SessionInfo, TLSConnection

__all__ = ["HandshakeObserver", "failure_kind", "failure_of", "observe_established", "observe_failed",
           "stalled_kind"]


class HandshakeObserver(Protocol):
    """What the DTLS server tells the gateway's metrics (m2msec.metrics.GatewayMetrics)."""

    def handshake_failed(self, transport: str, reason: str) -> None: ...

    def dtls_established(self, session: SessionInfo, seconds: float) -> None: ...

#: the alert a refused peer certificate got (tls/verify.py) -> its kind; any other alert: certificate_untrusted
_CERTIFICATE_ALERTS = {"certificate_expired": "certificate_expired", "certificate_revoked": "certificate_revoked"}
#: ``TLSConnection.psk_failure`` values meaning the identity is not in the table (the others: the lookup failed)
_UNKNOWN_IDENTITY = frozenset({"unknown psk identity", "psk identity is not valid UTF-8"})


def failure_kind(failed: HandshakeFailed, *, verify_failure: bool, psk_failure: str | None,
                 known_identity: bool) -> str:
    """The kind of ``failed``: the engine's error, with what the connection knew when it failed."""
    if verify_failure:
        return _CERTIFICATE_ALERTS.get(failed.alert or "", "certificate_untrusted")
    if psk_failure is not None:
        return "unknown_identity" if psk_failure in _UNKNOWN_IDENTITY else "lookup_failed"
    if failed.alert in ("bad_record_mac", "decrypt_error") and known_identity:
        return "bad_key"  # the identity is known; its key did not verify the peer's Finished (1.2) / binder (1.3)
    if failed.reason == "transport error":
        return "closed"
    return "protocol"


def stalled_kind(psk_failure: str | None) -> str:
    """The kind of a handshake that ran out of time: over DTLS, an unknown identity gets silence as a wrong key
    does (RFC 4279 §2 hiding, D34), so its handshake ends in the server's timeout; the server still knows why."""
    if psk_failure is None:
        return "timeout"
    return "unknown_identity" if psk_failure in _UNKNOWN_IDENTITY else "lookup_failed"


def failure_of(conn: TLSConnection, exc: TLSError) -> str | None:
    """Why ``conn``'s handshake failed with ``exc``; None when the handshake had completed (no handshake failure)."""
    if conn.session is not None:
        return None
    return "timeout" if isinstance(exc, HandshakeTimeout) else conn.failure_kind


def observe_failed(observer: HandshakeObserver | None, reason: str | None) -> None:
    """A DTLS handshake failed for ``reason`` (None: nothing to count); nothing without an observer."""
    if observer is not None and reason is not None:
        observer.handshake_failed("dtls", reason)


def observe_established(observer: HandshakeObserver | None, session: SessionInfo, seconds: float) -> None:
    if observer is not None:
        observer.dtls_established(session, seconds)
