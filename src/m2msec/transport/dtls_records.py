"""DTLS 1.2 record-level checks the server makes before a datagram reaches the engine (RFC 6347 §4.1).

Pure functions on bytes: which datagrams may start a handshake (a new peer's ClientHello: anything else from an
unknown address is dropped unparsed, issue 21 part 3) and which records a peer mid-handshake may not have processed
(unauthenticated epoch-0 alerts, D232).
"""

from __future__ import annotations

__all__ = ["DROP_PLAINTEXT_ALERTS_IN_HANDSHAKE", "is_initial_client_hello", "without_plaintext_alerts"]

#: D232: epoch-0 alert records reaching a peer whose handshake is in progress are dropped, not processed
DROP_PLAINTEXT_ALERTS_IN_HANDSHAKE = True
_RECORD_HEADER = 13  # type, version (2), epoch (2), sequence number (6), length (2): RFC 6347 §4.1
_ALERT = 21


def without_plaintext_alerts(datagram: bytes) -> bytes:
    """``datagram`` without its epoch-0 alert records (D232). An alert in epoch 0 is unauthenticated: anyone who
    knows a client's address and port can send one, and OpenSSL would end that client's handshake on it (RFC 6347
    §4.1.2.7: invalid records are discarded, and nothing here proves the record is the peer's). A client that does
    give up is then ended by the handshake timeout. A truncated record is left for the engine to judge."""
    if not DROP_PLAINTEXT_ALERTS_IN_HANDSHAKE or _ALERT not in datagram:
        return datagram
    kept: list[bytes] = []
    offset, end = 0, len(datagram)
    while offset + _RECORD_HEADER <= end:
        length = int.from_bytes(datagram[offset + 11:offset + 13], "big")
        record_end = offset + _RECORD_HEADER + length
        if record_end > end:
            break
        if not (datagram[offset] == _ALERT and datagram[offset + 3:offset + 5] == b"\0\0"):
            kept.append(datagram[offset:record_end])
        offset = record_end
    if offset < end:
        kept.append(datagram[offset:])
    return b"".join(kept)


def is_initial_client_hello(datagram: bytes) -> bool:
    """A handshake record in epoch 0 whose first message is a ClientHello (RFC 6347 §4.1, §4.2.2)."""
    return len(datagram) > 25 and datagram[0] == 22 and datagram[3:5] == b"\0\0" and datagram[13] == 1
