"""Stateless DTLS cookies (RFC 6347 §4.2.1) with a rotating secret and a bounded age.

A cookie is ``issued (4 bytes, seconds) || HMAC-SHA256(window secret, issued || peer)[:16]``. The window
secret is derived from the long-term secret and the number of the :data:`COOKIE_LIFETIME`-second window the
cookie was issued in, so it changes every window without any state, and several processes sharing the
long-term secret (one address, several workers) derive the same window secrets. A cookie is accepted only
when its HMAC matches *and* it is at most :data:`COOKIE_LIFETIME` seconds old (a little clock skew between
such processes is tolerated): a cookie captured on the path cannot be replayed later, for example to make
the server restart an established peer's association (``m2msec.transport.dtls``).

Time is injected (``clock``), so the bound is testable without waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

__all__ = ["COOKIE_LIFETIME", "CookieJar"]

#: seconds a HelloVerifyRequest cookie stays valid (docs/decisions.md D32). RFC 6347 §4.2.4 starts the
#: ClientHello retransmission timer at 1 s and doubles it, so a client that lost datagrams still has
#: several attempts; the secret the cookie is keyed with changes every such window.
COOKIE_LIFETIME = 30.0
#: seconds a cookie may seem to come from the future (processes sharing a secret, clocks slightly apart)
_MAX_SKEW = 2
_MAC_LENGTH = 16
_LABEL = b"m2msec dtls cookie v1"


class CookieJar:
    """Makes and checks cookies for one DTLS server context (or several sharing ``secret``)."""

    def __init__(self, secret: bytes, *, lifetime: float = COOKIE_LIFETIME,
                 clock: Callable[[], float] = time.time) -> None:
        if lifetime < 1:
            raise ValueError("the cookie lifetime must be at least one second")
        self._secret = secret
        self._window = int(lifetime)
        self._clock = clock
        self._cache: dict[int, bytes] = {}

    def __repr__(self) -> str:
        return f"<CookieJar lifetime={self._window}s>"

    def _window_secret(self, window: int) -> bytes:
        secret = self._cache.get(window)
        if secret is None:
            secret = hmac.new(self._secret, _LABEL + window.to_bytes(8, "big"), hashlib.sha256).digest()
            if len(self._cache) > 4:  # only the current and the previous window are ever asked for
                self._cache.clear()
            self._cache[window] = secret
        return secret

    def _mac(self, issued: int, peer: bytes) -> bytes:
        stamp = issued.to_bytes(4, "big")
        key = self._window_secret(issued // self._window)
        return stamp + hmac.new(key, stamp + peer, hashlib.sha256).digest()[:_MAC_LENGTH]

    def make(self, peer: bytes) -> bytes:
        """A cookie for the client at transport address ``peer`` (any stable byte form of it)."""
        return self._mac(int(self._clock()) & 0xFFFFFFFF, peer)

    def check(self, cookie: bytes, peer: bytes) -> bool:
        """True when ``cookie`` was made for ``peer`` with this secret at most ``lifetime`` seconds ago."""
        if len(cookie) != 4 + _MAC_LENGTH:
            return False
        issued = int.from_bytes(cookie[:4], "big")
        age = (int(self._clock()) & 0xFFFFFFFF) - issued
        if not -_MAX_SKEW <= age <= self._window:
            return False
        return hmac.compare_digest(cookie, self._mac(issued, peer))
