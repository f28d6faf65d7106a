"""A server connection's asynchronous PSK resolution state (``ServerConfig(async_psk=True)``, issue 16 part 1).

The connection runs the client's input through a :mod:`m2msec.tls.psk_peek` parser. When it finds the
identity's message it reports :class:`PSKIdentityReceived` and holds the input; ``supply_psk`` records the
application's answer in a per-connection cache and releases the input. OpenSSL's synchronous PSK callback then
serves *only* that cache: an identity the application was never asked about (a parser/OpenSSL disagreement, an
identity the parser refused) takes today's unknown-identity path (decoy key or alert), never a lookup.

No OpenSSL here: the connection classes feed and release bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from m2msec.keys.table import PSKEntry
from m2msec.tls.psk_peek import (
    DEFAULT_MAX_CLIENT_HELLO,
    DTLSPeeker,
    TLSPeeker,
    is_psk_suite,
    server_hello_cipher_suite,
)

__all__ = ["MAX_SUPPLIED_IDENTITIES", "AsyncPSK", "PSKIdentityReceived"]

#: identities one connection may ask the application about (a TLS 1.3 ClientHello may list many; with
#: hiding only the first is ever used, revealed each refused one lets OpenSSL try the next)
MAX_SUPPLIED_IDENTITIES = 4


@dataclass(frozen=True)
class PSKIdentityReceived:
    """Server side, ``async_psk``: the client offered ``identity``; answer with ``conn.supply_psk(...)``."""

    identity: str


class AsyncPSK:
    """Per-connection: the peeker, the identities supplied so far, the one the application is asked about."""

    def __init__(self, *, dtls: bool, tls13: bool, certificates: bool, reveal: bool,
                 max_client_hello: int = DEFAULT_MAX_CLIENT_HELLO) -> None:
        self.dtls = dtls
        self.reveal = reveal
        # without certificate suites every TLS 1.2 suite is a PSK one; otherwise our ServerHello decides
        self._decided = not certificates
        self.tls = None if dtls else TLSPeeker(client_hello=tls13, client_key_exchange=not certificates,
                                               max_client_hello=max_client_hello)
        self.datagrams = DTLSPeeker() if dtls else None
        self.supplied: dict[str, PSKEntry | None] = {}
        self.pending: str | None = None
        self._queue: list[str] = []

    def entry_for(self, identity: str) -> tuple[bool, PSKEntry | None]:
        """What OpenSSL's callback uses: (was it supplied, the entry)."""
        if identity in self.supplied:
            return True, self.supplied[identity]
        return False, None

    def saw_output(self, data: bytes) -> None:
        """Our own first flight: a ServerHello choosing a certificate suite means no PSK in its key exchange."""
        if self._decided or not data:
            return
        self._decided = True
        suite = server_hello_cipher_suite(data, dtls=self.dtls)
        psk = suite is not None and is_psk_suite(suite)
        if self.tls is not None:
            self.tls.client_key_exchange = psk
        elif not psk and self.datagrams is not None:
            self.datagrams.gave_up = True  # nothing to peek in a certificate key exchange

    def found(self) -> PSKIdentityReceived | None:
        """After input: the identity to ask the application about, or None (then :meth:`release` may run)."""
        peeked = self.tls.found if self.tls is not None else self.datagrams.found if self.datagrams else None
        if peeked is None or self.pending is not None:
            return None
        if not self._queue:
            names = []
            for raw in peeked.identities:
                try:
                    names.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    continue
            self._queue = [n for n in names[:MAX_SUPPLIED_IDENTITIES] if n not in self.supplied]
            if not self.reveal:
                self._queue = self._queue[:1] if names and names[0] not in self.supplied else []
        if not self._queue:
            return None
        self.pending = self._queue.pop(0)
        return PSKIdentityReceived(self.pending)

    def supply(self, entry: PSKEntry | None) -> bool:
        """Record the answer for the pending identity; True when the held input may go to OpenSSL."""
        assert self.pending is not None
        self.supplied[self.pending] = entry
        self.pending = None
        if entry is not None:
            self._queue.clear()  # OpenSSL takes the first identity it gets a key for
        return not self._queue

    @property
    def holding(self) -> bool:
        """Input is held for an identity found (answered or not)."""
        if self.tls is not None:
            return self.tls.found is not None
        return self.datagrams is not None and self.datagrams.found is not None
