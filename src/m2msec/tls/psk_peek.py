"""Find the client's PSK identity in plaintext handshake input, before OpenSSL reads it (issue 16 part 1).

The bindings the engine uses have no client-hello callback, no ``SSL_MODE_ASYNC`` and no way to pause
OpenSSL's PSK callback: OpenSSL asks for the key synchronously, inside ``SSL_do_handshake``. To let the
application fetch a key over the network, the server *peeks*: it parses the client's plaintext handshake
itself, and once the message that carries the identity is complete it holds that message and everything
after it, reports the identity, and feeds the held input to OpenSSL only after the application supplied
the key. The engine's synchronous callback then serves the supplied key from a per-connection cache.

Pure and OpenSSL-free. Three parsers:

* :class:`TLSPeeker` — a TLS record stream: a TLS 1.2 ``ClientKeyExchange`` (``psk_identity`` is its first
  field, RFC 4279 §2 / RFC 5489 §2) and TLS 1.3 ``ClientHello`` ``pre_shared_key`` identities (RFC 8446
  §4.2.11; every ClientHello, so the second one after a HelloRetryRequest too). Handshake messages may span
  records and records may span ``feed`` calls.
* :class:`DTLSPeeker` — DTLS 1.2 datagrams: ``ClientKeyExchange`` fragments of epoch 0, reassembled by
  ``message_seq`` / ``fragment_offset`` (RFC 6347 §4.2.3), in any order.

A parser never raises on what a client sends, except when input held for the application exceeds its cap
(:class:`~m2msec.errors.TLSProtocolError`). Anything it cannot parse (a record or message over its cap,
a malformed message, an identity over :data:`MAX_IDENTITY` bytes or with a NUL) makes it *give up*: it
reports nothing and passes every byte through; OpenSSL then judges the input and, asking for a key the
application never supplied, gets the unknown-identity outcome — never a synchronous lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from m2msec.errors import TLSProtocolError

__all__ = [
    "DEFAULT_MAX_CLIENT_HELLO",
    "DEFAULT_MAX_HELD",
    "DEFAULT_MAX_HELD_DATAGRAMS",
    "MAX_HANDSHAKE_MESSAGE",
    "MAX_IDENTITY",
    "MAX_RECORD",
    "DTLSPeeker",
    "PeekedIdentities",
    "TLSPeeker",
    "client_hello_psk_identities",
    "client_key_exchange_identity",
    "is_psk_suite",
    "server_hello_cipher_suite",
]

#: largest TLS/DTLS record body accepted (2^14 + 2048, RFC 5246 §6.2.3); a bigger one: give up
MAX_RECORD = 18432
#: largest TLS 1.2 / DTLS 1.2 handshake message parsed (a ClientHello, Certificate, ClientKeyExchange)
MAX_HANDSHAKE_MESSAGE = 16384
#: default cap on a TLS 1.3 ClientHello (it may carry many PSK identities and key shares)
DEFAULT_MAX_CLIENT_HELLO = 65536
#: default cap on the bytes held while the application resolves an identity
DEFAULT_MAX_HELD = 131072
#: default cap on the datagrams a DTLS peeker holds
DEFAULT_MAX_HELD_DATAGRAMS = 32
#: longest identity reported (RFC 4279 §5.3 asks for at least 128; 256 leaves room for oneM2M's KeyIds)
MAX_IDENTITY = 256

_HANDSHAKE = 22
_CHANGE_CIPHER_SPEC = 20
_APPLICATION_DATA = 23
_CLIENT_HELLO = 1
_CLIENT_KEY_EXCHANGE = 16
_PRE_SHARED_KEY = 41


@dataclass(frozen=True)
class PeekedIdentities:
    """Identities found in one handshake message (the message and what follows is held)."""

    message: Literal["client_hello", "client_key_exchange"]
    identities: tuple[bytes, ...]


def _valid(identity: bytes) -> bool:
    return 0 < len(identity) <= MAX_IDENTITY and b"\x00" not in identity


#: IANA code points of the TLS 1.2 cipher suites whose ClientKeyExchange starts with a psk_identity (RFC 4279,
#: 4785, 5487, 5489, 6209, 6367, 6655, 7905, 8442): ranges, inclusive
_PSK_SUITE_RANGES = (
    (0x002C, 0x002E), (0x008A, 0x0095), (0x00A8, 0x00B9), (0xC033, 0xC03B), (0xC064, 0xC071),
    (0xC08E, 0xC09B), (0xC0A4, 0xC0AB), (0xCCAB, 0xCCAE), (0xD001, 0xD005),
)


def is_psk_suite(code: int) -> bool:
    """Whether a TLS 1.2 cipher suite is a PSK suite (its ClientKeyExchange carries a psk_identity)."""
    return any(low <= code <= high for low, high in _PSK_SUITE_RANGES)


def server_hello_cipher_suite(data: bytes, *, dtls: bool = False) -> int | None:
    """The cipher suite of the ServerHello at the start of a server's first flight (our own output), or None."""
    header, hs_header = (13, 12) if dtls else (5, 4)
    p = header + hs_header
    if len(data) < p + 35 or data[0] != _HANDSHAKE or data[header] != 2:
        return None
    p += 2 + 32
    p += 1 + data[p]
    if len(data) < p + 2:
        return None
    return int.from_bytes(data[p : p + 2], "big")


def client_key_exchange_identity(body: bytes) -> bytes | None:
    """The ``psk_identity`` of a PSK ``ClientKeyExchange`` body, or None if malformed / not acceptable."""
    if len(body) < 2:
        return None
    n = int.from_bytes(body[:2], "big")
    if 2 + n > len(body):
        return None
    identity = bytes(body[2 : 2 + n])
    return identity if _valid(identity) else None


def client_hello_psk_identities(body: bytes, limit: int | None = None) -> tuple[bytes, ...] | None:
    """The acceptable ``pre_shared_key`` identities of a ClientHello body (TLS framing, not DTLS).

    None when the message is malformed or has no ``pre_shared_key`` extension; identities over
    :data:`MAX_IDENTITY` bytes or with a NUL are left out. With ``limit``, only the first ``limit`` identities
    are read (a 64 KiB ClientHello holds thousands; nobody asks about more than a few).
    """
    try:
        p = 2 + 32
        p += 1 + body[p]  # legacy_session_id
        p += 2 + int.from_bytes(body[p : p + 2], "big")  # cipher_suites
        p += 1 + body[p]  # legacy_compression_methods
        if p == len(body):
            return None
        end = p + 2 + int.from_bytes(body[p : p + 2], "big")
        if end != len(body):
            return None
        p += 2
        while p + 4 <= end:
            etype = int.from_bytes(body[p : p + 2], "big")
            elen = int.from_bytes(body[p + 2 : p + 4], "big")
            p += 4
            if p + elen > end:
                return None
            if etype == _PRE_SHARED_KEY:
                return _psk_extension_identities(body[p : p + elen], limit)
            p += elen
    except IndexError:
        return None
    return None


def _psk_extension_identities(ext: bytes, limit: int | None) -> tuple[bytes, ...] | None:
    if len(ext) < 2:
        return None
    end = 2 + int.from_bytes(ext[:2], "big")
    if end > len(ext):
        return None
    q, found, read = 2, [], 0
    while q < end and (limit is None or read < limit):
        read += 1
        if q + 2 > end:
            return None
        n = int.from_bytes(ext[q : q + 2], "big")
        if q + 2 + n + 4 > end:  # identity, obfuscated_ticket_age
            return None
        identity = bytes(ext[q + 2 : q + 2 + n])
        if _valid(identity):
            found.append(identity)
        q += 2 + n + 4
    return tuple(found)


class TLSPeeker:
    """Scan a TLS client's record stream; hold input from the record carrying the identity's message.

    ``feed`` returns the bytes OpenSSL may read now. When :attr:`found` becomes set, later input is held
    until :meth:`resume`. ``client_hello`` (TLS 1.3 PSK enabled) and ``client_key_exchange`` (our
    ServerHello chose a TLS 1.2 PSK suite) say which messages are reported; the wiring may change them.
    """

    def __init__(
        self,
        *,
        client_hello: bool,
        client_key_exchange: bool,
        max_client_hello: int = DEFAULT_MAX_CLIENT_HELLO,
        max_held: int = DEFAULT_MAX_HELD,
        max_identities: int | None = None,
    ) -> None:
        self.client_hello = client_hello
        self._max_identities = max_identities  # of a ClientHello's, read and reported (None: all)
        self.client_key_exchange = client_key_exchange
        self._max_client_hello = max_client_hello
        self._max_held = max_held
        self._raw = bytearray()  # unparsed record bytes
        self._hs = bytearray()  # plaintext handshake stream not yet consumed
        self._pending = bytearray()  # records carrying an incomplete handshake message
        self.found: PeekedIdentities | None = None
        self.gave_up = False  # pass everything through from now on
        self._done = False  # TLS 1.2 key message seen or encrypted records: nothing more to peek

    @property
    def held(self) -> int:
        """Bytes held back from OpenSSL."""
        return len(self._raw) + len(self._pending)

    def feed(self, data: bytes) -> bytes:
        """Take client bytes; return those OpenSSL may read now."""
        if self.found is not None:
            self._raw += data
            self._check_held()
            return b""
        if self.gave_up or self._done:
            return bytes(data)
        self._raw += data
        return self._scan()

    def resume(self) -> bytes:
        """The application answered :attr:`found`: return the held bytes (scanning what follows)."""
        self.found = None
        out = bytes(self._pending)
        self._pending.clear()
        if self.gave_up or self._done:
            out += bytes(self._raw)
            self._raw.clear()
            return out
        return out + self._scan()

    def _give_up(self) -> bytes:
        self.gave_up = True
        out = bytes(self._pending + self._raw)
        self._pending.clear()
        self._raw.clear()
        self._hs.clear()
        return out

    def _check_held(self) -> None:
        if self.held > self._max_held:
            raise TLSProtocolError("too much client input while its PSK identity is resolved")

    def _scan(self) -> bytes:
        out = bytearray()
        while len(self._raw) >= 5 and self.found is None:
            ctype = self._raw[0]
            length = int.from_bytes(self._raw[3:5], "big")
            if length > MAX_RECORD:
                return bytes(out) + self._give_up()
            if len(self._raw) < 5 + length:
                break
            # RFC 5246 §6.2.1, RFC 8446 §5.1: no zero-length handshake fragment; and a message cut into tiny
            # records must not make the records held for it outgrow what D75 lets a connection hold
            if ctype == _HANDSHAKE and (length == 0 or len(self._pending) + 5 + length > self._max_held):
                return bytes(out) + self._give_up()
            record = bytes(self._raw[: 5 + length])
            del self._raw[: 5 + length]
            if ctype != _HANDSHAKE:
                if self._pending:  # another record inside a handshake message: not a flight we follow
                    return bytes(out) + self._give_up()
                out += record
                if ctype == _APPLICATION_DATA:  # TLS 1.3 encrypted records: nothing more to peek
                    self._done = True
                    out += self._raw
                    self._raw.clear()
                    return bytes(out)
                continue
            self._pending += record
            self._hs += record[5:]
            verdict = self._messages()
            if verdict == "give_up":
                return bytes(out) + self._give_up()
            if self.found is None and not self._hs:
                out += self._pending
                self._pending.clear()
            if self._done and self.found is None:
                out += self._pending + self._raw
                self._pending.clear()
                self._raw.clear()
        if self.found is not None:
            self._check_held()
        elif len(self._raw) > MAX_RECORD + 5:
            return bytes(out) + self._give_up()
        return bytes(out)

    def _messages(self) -> str:
        while len(self._hs) >= 4 and self.found is None:
            mtype = self._hs[0]
            mlen = int.from_bytes(self._hs[1:4], "big")
            cap = self._max_client_hello if mtype == _CLIENT_HELLO else MAX_HANDSHAKE_MESSAGE
            if mlen > cap:
                return "give_up"
            if len(self._hs) < 4 + mlen:
                return "incomplete"
            body = bytes(self._hs[4 : 4 + mlen])
            del self._hs[: 4 + mlen]
            if mtype == _CLIENT_HELLO and self.client_hello:
                ids = client_hello_psk_identities(body, self._max_identities)
                if ids:
                    self.found = PeekedIdentities("client_hello", ids)
            elif mtype == _CLIENT_KEY_EXCHANGE and self.client_key_exchange:
                identity = client_key_exchange_identity(body)
                if identity is None:
                    return "give_up"
                self.found = PeekedIdentities("client_key_exchange", (identity,))
                self._done = True  # TLS 1.2: what follows the key exchange is OpenSSL's alone
        return "ok"


class DTLSPeeker:
    """Scan a DTLS 1.2 client's datagrams for its ``ClientKeyExchange``; hold from the first fragment on.

    ``feed`` returns True when the datagram is held (then :attr:`found` tells once the message is whole);
    :meth:`resume` returns the held datagrams in arrival order and stops peeking.
    """

    def __init__(
        self, *, max_held_datagrams: int = DEFAULT_MAX_HELD_DATAGRAMS, max_held: int = DEFAULT_MAX_HELD
    ) -> None:
        self._max_datagrams = max_held_datagrams
        self._max_held = max_held
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._seq: int | None = None
        self._message = bytearray()
        self._have = bytearray()  # 1 per byte of the message received
        self._missing = 0
        self.found: PeekedIdentities | None = None
        self.gave_up = False
        self._resumed = False

    def feed(self, datagram: bytes) -> bool:
        """True if ``datagram`` is held (do not give it to OpenSSL now)."""
        if self.gave_up or self._resumed:
            return False
        # once the message is whole everything is held unread: nothing that follows may make the peeker give up
        # and let later datagrams reach OpenSSL ahead of the held key exchange
        hit = self.found is not None or self._scan(datagram)
        if hit or self._held:  # having given up, the caller releases what is held with resume()
            self._held.append(datagram)
            self._held_bytes += len(datagram)
            if len(self._held) > self._max_datagrams or self._held_bytes > self._max_held:
                raise TLSProtocolError("too many client datagrams while its PSK identity is resolved")
            return True
        return False

    def resume(self) -> list[bytes]:
        """The application answered (or the peeker gave up): the held datagrams, in order."""
        self._resumed = True
        self.found = None
        held, self._held, self._held_bytes = self._held, [], 0
        return held

    @property
    def held(self) -> int:
        return len(self._held)

    def _scan(self, dg: bytes) -> bool:
        hit, p = False, 0
        while p + 13 <= len(dg):
            rtype = dg[p]
            epoch = int.from_bytes(dg[p + 3 : p + 5], "big")
            rlen = int.from_bytes(dg[p + 11 : p + 13], "big")
            body = dg[p + 13 : p + 13 + rlen]
            p += 13 + rlen
            if rlen > MAX_RECORD or len(body) < rlen:
                break  # OpenSSL drops a malformed datagram's rest too
            if rtype != _HANDSHAKE or epoch != 0:
                continue
            q = 0
            while q + 12 <= len(body):
                mtype = body[q]
                mlen = int.from_bytes(body[q + 1 : q + 4], "big")
                seq = int.from_bytes(body[q + 4 : q + 6], "big")
                off = int.from_bytes(body[q + 6 : q + 9], "big")
                flen = int.from_bytes(body[q + 9 : q + 12], "big")
                fragment = body[q + 12 : q + 12 + flen]
                q += 12 + flen
                if mtype != _CLIENT_KEY_EXCHANGE:
                    continue
                hit = True
                if not self._fragment(mlen, seq, off, fragment, flen):
                    self.gave_up = True
                    return hit
        return hit

    def _fragment(self, mlen: int, seq: int, off: int, fragment: bytes, flen: int) -> bool:
        if self.found is not None:
            return True  # the message is whole: what follows it in the datagram is held, whatever it is
        if mlen > MAX_HANDSHAKE_MESSAGE or off + flen > mlen or len(fragment) != flen:
            return False
        if self._seq is None:
            self._seq, self._message, self._have, self._missing = seq, bytearray(mlen), bytearray(mlen), mlen
        elif seq != self._seq or mlen != len(self._message):
            return False
        self._missing -= self._have.count(0, off, off + flen)  # bytes of this fragment not seen before
        self._have[off : off + flen] = b"\x01" * flen
        self._message[off : off + flen] = fragment
        if self._missing == 0:
            identity = client_key_exchange_identity(bytes(self._message))
            if identity is None:
                return False
            self.found = PeekedIdentities("client_key_exchange", (identity,))
        return True
