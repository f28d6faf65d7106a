"""DTLS 1.2 specifics (RFC 6347, TS-0003 §10.2.1): the datagram connection, its MTU and retransmission timers.

Stateless cookies are :mod:`m2msec.tls.cookies`, wired into the context by :class:`~m2msec.tls.context.TLSContext`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from OpenSSL import SSL

from m2msec.errors import HandshakeFailed, HandshakeTimeout, TLSProtocolError
from m2msec.tls import _shim
from m2msec.tls.connection import ConnectionState, Event, TLSConnection, _reason

if TYPE_CHECKING:
    from m2msec.tls.context import TLSContext

__all__ = ["DEFAULT_DTLS_MTU", "DTLS1_2_VERSION", "DTLSConnection"]

#: DTLS1_2_VERSION (RFC 6347 §4.1: {254, 253}); pyOpenSSL names no constant for it
DTLS1_2_VERSION = 0xFEFD
#: datagram payload size used for DTLS records: fits IPv6's 1280-byte minimum MTU with UDP/IP headers
DEFAULT_DTLS_MTU = 1200
_DTLS_HEADER = 13  # RFC 6347 §4.1: type, version, epoch, sequence_number (6), length


class DTLSConnection(TLSConnection):
    """One DTLS 1.2 association with one peer, sans-I/O: one datagram in, datagrams out, timers exposed.

    Server side, the first datagrams go through ``DTLSv1_listen``: a ClientHello without a valid cookie
    is answered with a HelloVerifyRequest and *no state is kept* (:attr:`awaiting_cookie` stays True: the
    adapter drops this object). Retransmission is the adapter's job: after each call it asks
    :meth:`timeout` and calls :meth:`handle_timeout` when that much time has passed (RFC 6347 §4.2.4).
    """

    _WHOLE_DATAGRAMS = True  # records coalesced after the Finished are read at once, not at the next datagram

    def __init__(self, context: TLSContext, peer: object, *, mtu: int = DEFAULT_DTLS_MTU) -> None:
        self.peer = peer
        self.mtu = mtu
        self.awaiting_cookie = context.is_server
        super().__init__(context)

    def _configure_ssl(self) -> None:
        self._ssl.set_ciphertext_mtu(self.mtu)

    def __repr__(self) -> str:
        role = "server" if self._context.is_server else "client"
        return f"<DTLSConnection {role} {self.peer!r} {self.state.value}>"

    def send(self, data: bytes) -> None:
        """Encrypt one application datagram into one record (and so one UDP datagram).

        Raises:
            TLSProtocolError: ``data`` does not fit the MTU (use CoAP block-wise transfer for more).
        """
        limit = self._ssl.get_cleartext_mtu()
        if len(data) > limit:
            raise TLSProtocolError(f"datagram of {len(data)} bytes exceeds the DTLS MTU ({limit} bytes of plaintext)")
        super().send(data)

    def receive_datagram(self, datagram: bytes) -> list[Event]:
        """Feed one datagram from the peer; return what happened."""
        if self.state in (ConnectionState.CLOSED, ConnectionState.FAILED) or not datagram:
            return []
        if self.awaiting_cookie:
            _shim.feed(self._ssl, datagram)
            try:
                self._ssl.DTLSv1_listen()
            except SSL.WantReadError:
                return []  # HelloVerifyRequest (or nothing, for junk) queued: stay stateless
            except SSL.Error as exc:
                self.state = ConnectionState.FAILED
                raise HandshakeFailed(f"bad ClientHello: {_reason(exc)}") from None
            self.awaiting_cookie = False
            return self._progress()  # the ClientHello stays buffered: OpenSSL continues from it
        return self.receive_data(datagram)

    def _async_input(self, data: bytes) -> list[Event]:
        """One client datagram during the handshake, ``async_psk``: held from the ClientKeyExchange on."""
        assert self._async is not None and self._async.datagrams is not None
        try:
            held = self._async.datagrams.feed(data)
        except TLSProtocolError as exc:
            self.state = ConnectionState.FAILED
            raise HandshakeFailed(str(exc)) from None
        events = [] if held else self._feed(data)
        return events + self._async_release()

    def _async_gave_up(self) -> bool:
        peeker = self._async.datagrams if self._async is not None else None
        return peeker is not None and peeker.gave_up and peeker.held > 0

    def _async_resume(self) -> list[Event]:
        assert self._async is not None and self._async.datagrams is not None
        events: list[Event] = []
        for datagram in self._async.datagrams.resume():
            events += self._feed(datagram)
        return events

    def datagrams_to_send(self) -> list[bytes]:
        """The pending records, packed whole into datagrams of at most ``mtu`` bytes."""
        data = self.data_to_send()
        out: list[bytes] = []
        current = bytearray()
        pos = 0
        while pos + _DTLS_HEADER <= len(data):
            end = pos + _DTLS_HEADER + int.from_bytes(data[pos + 11 : pos + 13], "big")
            record = data[pos:end]
            pos = end
            if current and len(current) + len(record) > self.mtu:
                out.append(bytes(current))
                current = bytearray()
            current += record
        if current:
            out.append(bytes(current))
        return out

    def timeout(self) -> float | None:
        """Seconds until a retransmission is due (RFC 6347 §4.2.4), or None when no timer runs."""
        value = self._ssl.DTLSv1_get_timeout()
        return None if value is None else float(value)

    def handle_timeout(self) -> None:
        """Let OpenSSL retransmit its last flight (then send :meth:`datagrams_to_send`).

        Raises:
            HandshakeTimeout: OpenSSL gave up after its retransmission limit.
        """
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self.state = ConnectionState.FAILED
            raise HandshakeTimeout(f"DTLS retransmissions exhausted: {_reason(exc)}") from None
