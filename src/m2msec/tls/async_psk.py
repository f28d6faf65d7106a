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
from typing import TYPE_CHECKING

from m2msec.errors import ConfigurationError, HandshakeFailed, TLSProtocolError
from m2msec.keys.table import PSKEntry
from m2msec.tls.psk_peek import (
    DEFAULT_MAX_CLIENT_HELLO,
    DTLSPeeker,
    PeekedIdentities,
    TLSPeeker,
    is_psk_suite,
    server_hello_cipher_suite,
)

if TYPE_CHECKING:
    from m2msec.tls.connection import Event

__all__ = ["MAX_SUPPLIED_IDENTITIES", "AsyncPSK", "AsyncPSKConnection", "PSKIdentityReceived"]

#: the TLS 1.3 cipher suites (RFC 8446 B.4): a ServerHello choosing one of them says nothing of PSK
_TLS13_SUITES = (0x1301, 0x13FF)
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
                                               max_client_hello=max_client_hello,
                                               max_identities=MAX_SUPPLIED_IDENTITIES)
        self.datagrams = DTLSPeeker() if dtls else None
        self.supplied: dict[str, PSKEntry | None] = {}
        self.pending: str | None = None
        self._queue: list[str] = []
        self._asked: PeekedIdentities | None = None  # the message whose identities were queued

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
            if suite is not None and not psk and not _TLS13_SUITES[0] <= suite <= _TLS13_SUITES[1] \
                    and self.tls.held == 0:
                # a TLS 1.2 certificate suite: nothing more to peek, and the client's later records are not all
                # plaintext (its encrypted Finished, read as a handshake header, could claim more bytes than its
                # record holds and stall the handshake: about 1 in 1,000 before this)
                self.tls.gave_up = True
        elif not psk and self.datagrams is not None:
            self.datagrams.gave_up = True  # nothing to peek in a certificate key exchange

    def found(self) -> PSKIdentityReceived | None:
        """After input: the identity to ask the application about, or None (then :meth:`release` may run)."""
        peeked = self.tls.found if self.tls is not None else self.datagrams.found if self.datagrams else None
        if peeked is None or self.pending is not None:
            return None
        if peeked is not self._asked:  # each message is asked about once (not again after a key was found)
            self._asked = peeked
            names = []
            for raw in peeked.identities:
                try:
                    names.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    continue
            queue = [n for n in names[:MAX_SUPPLIED_IDENTITIES] if n not in self.supplied]
            if not self.reveal:
                queue = queue[:1] if names and names[0] not in self.supplied else []
            # D78: per connection, whatever the number of messages (ClientHellos after HRR, pipelined ones, a
            # TLS 1.2 ClientHello with pre_shared_key and then its ClientKeyExchange)
            self._queue = queue[: max(0, MAX_SUPPLIED_IDENTITIES - len(self.supplied))]
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


class AsyncPSKConnection:
    """The connection side of ``async_psk`` (mixed into :class:`~m2msec.tls.connection.TLSConnection`)."""

    _async: AsyncPSK | None

    def _feed(self, data: bytes) -> list[Event]:
        """Give ``data`` to OpenSSL and advance (the connection's)."""
        raise NotImplementedError

    def _handshaking(self) -> bool:
        raise NotImplementedError

    def _fail(self) -> None:
        raise NotImplementedError

    @property
    def pending_psk_identity(self) -> str | None:
        """Server side, ``async_psk``: the identity reported by :class:`PSKIdentityReceived` and not yet answered."""
        return self._async.pending if self._async is not None else None

    def supply_psk(self, entry: PSKEntry | None) -> list[Event]:
        """Answer :attr:`pending_psk_identity`: its entry, or None for an unknown identity (then exactly what an
        unknown identity gets from a synchronous lookup: a decoy key, or the alert when revealed)."""
        pending = self.pending_psk_identity
        if self._async is None or pending is None:
            raise TLSProtocolError("no PSK identity is waiting for its key")
        if entry is not None and entry.identity != pending:
            raise ConfigurationError("the PSK entry supplied is for another identity")
        if not self._async.supply(entry):
            event = self._async.found()
            return [event] if event is not None else []
        if not self._handshaking():
            return []
        return self._async_release()

    def _async_input(self, data: bytes) -> list[Event]:
        """Client bytes during the handshake, ``async_psk``: through the peeker."""
        assert self._async is not None and self._async.tls is not None
        try:
            passed = self._async.tls.feed(data)
        except TLSProtocolError as exc:
            self._fail()
            raise HandshakeFailed(str(exc)) from None
        events = self._feed(passed) if passed else []
        return events + self._async_release()

    def _async_release(self) -> list[Event]:
        """Ask the application about the next identity found, or give OpenSSL the input nobody waits for."""
        assert self._async is not None
        events: list[Event] = []
        while True:
            event = self._async.found()
            if event is not None:
                return [*events, event]
            if self._async.pending is not None or (not self._async.holding and not self._async_gave_up()):
                return events
            events += self._async_resume()

    def _async_gave_up(self) -> bool:
        return False

    def _async_resume(self) -> list[Event]:
        assert self._async is not None and self._async.tls is not None
        held = self._async.tls.resume()
        return self._feed(held) if held else []
