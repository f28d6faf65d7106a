"""Hide which PSK identities exist (RFC 4279 §2).

RFC 4279 §2: when the server does not recognise the PSK identity it "MAY respond with an
unknown_psk_identity alert message. Alternatively, if the server wishes to hide the fact that the PSK
identity was not known, it MAY continue the protocol as if the PSK identity existed but the key was
incorrect". m2msec hides by default (docs/decisions.md D34): the server's PSK callback hands OpenSSL a
*decoy key* for an unknown identity, so the handshake fails exactly where a wrong key fails and the
client sees what it sees for a wrong key:

========  ==========================================  ==============================================
protocol  wrong key (and, hidden, unknown identity)   unknown identity, revealed
========  ==========================================  ==============================================
TLS 1.2   ``bad_record_mac`` on the client's Finished  ``unknown_psk_identity``
TLS 1.3   ``decrypt_error`` (the binder fails)         ``handshake_failure`` (no acceptable PSK)
DTLS 1.2  silence: the Finished is dropped (RFC 6347   ``unknown_psk_identity``
          §4.1.2.7), the client times out
========  ==========================================  ==============================================

The decoy is ``HMAC-SHA256(per-context secret, identity)``: stable for one identity (two attempts with
one identity behave alike, as a real wrong key would), unrelated between identities, unknowable to the
client. It is computed for *every* identity, known or not, so both cost the same work. The server
itself still knows and logs that the identity was unknown (``HandshakeFailed.reason``).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["DECOY_PSK_LENGTH", "DecoyKeys", "decoy_psk"]

#: bytes of the decoy key handed to OpenSSL for an unknown identity (docs/decisions.md D34); the length is
#: never visible to the client (every PSK key exchange hashes it into the master secret)
DECOY_PSK_LENGTH = 32


def decoy_psk(secret: bytes, identity: bytes) -> bytes:
    """The decoy key for ``identity`` under the context secret ``secret``."""
    return hmac.digest(secret, identity, hashlib.sha256)[:DECOY_PSK_LENGTH]


class DecoyKeys:
    """:func:`decoy_psk` under one context secret, keyed once: each key costs a copy of the keyed HMAC state
    and one update instead of a fresh HMAC (key schedule included), so about half the time per handshake."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes) -> None:
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return "<DecoyKeys>"

    def __call__(self, identity: bytes) -> bytes:
        h = self._keyed.copy()
        h.update(identity)
        return h.digest()[:DECOY_PSK_LENGTH]
