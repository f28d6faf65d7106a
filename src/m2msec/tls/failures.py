"""Why a server handshake failed, as one fixed word for metrics and logs (docs/gateway.md "Metrics").

``unknown_identity``, ``bad_key``, ``lookup_failed``, ``certificate_expired``, ``certificate_revoked``,
``certificate_untrusted``, ``closed`` or ``protocol``. The server tells an unknown identity apart from a wrong key
even when the peer cannot (RFC 4279 §2 hiding, :mod:`m2msec.tls.psk_hiding`): the wire stays as it is.
"""

from __future__ import annotations

from m2msec.errors import HandshakeFailed

__all__ = ["failure_kind"]

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
