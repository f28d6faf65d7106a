"""What the peeking parsers (``m2msec.tls.psk_peek``) cost on hostile input, against a baseline in the same run.

1. DTLS: a client (one cookie exchange) may send up to the held-input cap (D75: 128 KiB, 32 datagrams) of
   overlapping ClientKeyExchange fragments that never complete the message. ``DTLSPeeker`` against the per-byte
   Python loop it replaced (kept here as the baseline): milliseconds per held-input cap and the ratio.
2. TLS 1.3: one ClientHello of ~56 KiB listing 5000 PSK identities (hidden unknown identities, the default).
   Server CPU to refuse it with ``async_psk`` against the synchronous ``psk_lookup`` server, and the ratio.

Thread CPU time, alternating rounds, best of the rounds.

    .venv/bin/python bench/peek_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

from m2msec.errors import HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import ClientConfig, PSKIdentityReceived, ServerConfig, TLSContext
from m2msec.tls.profiles import TLS13_PSK
from m2msec.tls.psk_peek import (
    DEFAULT_MAX_HELD,
    DEFAULT_MAX_HELD_DATAGRAMS,
    MAX_HANDSHAKE_MESSAGE,
    DTLSPeeker,
    PeekedIdentities,
    client_key_exchange_identity,
)


class PerByteLoop(DTLSPeeker):
    """The baseline: ``_fragment`` as it was, one Python iteration per byte of each fragment."""

    def _fragment(self, mlen: int, seq: int, off: int, fragment: bytes, flen: int) -> bool:
        if mlen > MAX_HANDSHAKE_MESSAGE or off + flen > mlen or len(fragment) != flen:
            return False
        if self._seq is None:
            self._seq, self._message, self._have, self._missing = seq, bytearray(mlen), bytearray(mlen), mlen
        elif seq != self._seq or mlen != len(self._message):
            return False
        if self.found is not None:
            return True
        for i in range(off, off + flen):
            if not self._have[i]:
                self._have[i] = 1
                self._missing -= 1
        self._message[off : off + flen] = fragment
        if self._missing == 0:
            identity = client_key_exchange_identity(bytes(self._message))
            if identity is None:
                return False
            self.found = PeekedIdentities("client_key_exchange", (identity,))
        return True


def hostile_datagrams() -> list[bytes]:
    """Fragments covering all but the last byte of a 16 KiB ClientKeyExchange, up to the held-input cap."""
    mlen = MAX_HANDSHAKE_MESSAGE
    flen = min(mlen - 1, DEFAULT_MAX_HELD // DEFAULT_MAX_HELD_DATAGRAMS - 40)
    out = []
    for n in range(DEFAULT_MAX_HELD // (flen + 40)):
        off = (n * 997) % (mlen - 1 - flen)
        body = (bytes([16]) + mlen.to_bytes(3, "big") + (2).to_bytes(2, "big") + off.to_bytes(3, "big")
                + flen.to_bytes(3, "big") + bytes(flen))
        out.append(bytes([22, 254, 253, 0, 0]) + n.to_bytes(6, "big") + len(body).to_bytes(2, "big") + body)
    return out


def feed_all(cls: type[DTLSPeeker], datagrams: list[bytes]) -> float:
    peeker = cls()
    t = time.thread_time()
    for d in datagrams:
        peeker.feed(d)
    return time.thread_time() - t


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def crowded_client_hello(count: int) -> bytes:
    """A real TLS 1.3 ClientHello whose pre_shared_key lists ``count`` identities (one binder), in 16 KiB records."""
    client = TLSContext.client(ClientConfig("x", SecretKey.generate(16), profiles=(TLS13_PSK,), peer_entity="x"))
    body = client.connection().data_to_send()[9:]
    p = 34
    p += 1 + body[p]
    p += 2 + int.from_bytes(body[p : p + 2], "big")
    p += 1 + body[p]
    head, exts, q, kept = body[:p], body[p + 2 :], 0, b""
    while q < len(exts):
        etype, n = int.from_bytes(exts[q : q + 2], "big"), int.from_bytes(exts[q + 2 : q + 4], "big")
        if etype not in (41, 45):
            kept += exts[q : q + 4 + n]
        q += 4 + n
    ids = b"".join(_u16(5) + b"%05d" % i + bytes(4) for i in range(count))
    psk = _u16(len(ids)) + ids + _u16(33) + b"\x20" + bytes(32)
    kept += _u16(45) + _u16(2) + b"\x01\x01" + _u16(41) + _u16(len(psk)) + psk
    body = head + _u16(len(kept)) + kept
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"".join(b"\x16\x03\x01" + _u16(len(message[i : i + 16384])) + message[i : i + 16384]
                    for i in range(0, len(message), 16384))


def refuse(server: TLSContext, records: bytes) -> float:
    """Server CPU seconds to take ``records`` and refuse the handshake (answering every lookup: unknown)."""
    conn = server.connection()
    t = time.thread_time()
    try:
        events = conn.receive_data(records)
        while events and isinstance(events[-1], PSKIdentityReceived):
            events = conn.supply_psk(None)
    except HandshakeFailed:
        pass
    return time.thread_time() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    dtls_fragments(args.rounds)
    crowded_hello(args.rounds)


def crowded_hello(rounds: int) -> None:
    records = crowded_client_hello(5000)
    servers = {"sync psk_lookup (baseline)": TLSContext.server(ServerConfig(lambda i: None, profiles=(TLS13_PSK,))),
               "async_psk": TLSContext.server(ServerConfig(None, profiles=(TLS13_PSK,), async_psk=True))}
    best = dict.fromkeys(servers, float("inf"))
    for _ in range(rounds):
        for name, server in servers.items():
            best[name] = min(best[name], refuse(server, records))
    print(f"\nTLS 1.3 ClientHello of {len(records)} bytes with 5000 PSK identities, refused (hidden):")
    for name, seconds in best.items():
        print(f"{name:26s} {seconds * 1e3:8.3f} ms")
    print(f"ratio async_psk / sync: {best['async_psk'] / best['sync psk_lookup (baseline)']:.2f}")


def dtls_fragments(rounds: int) -> None:
    datagrams = hostile_datagrams()
    size = sum(len(d) for d in datagrams)
    print(f"{len(datagrams)} datagrams, {size} bytes of fragments (held-input cap {DEFAULT_MAX_HELD})")
    best = {"per-byte loop (baseline)": float("inf"), "DTLSPeeker": float("inf")}
    for _ in range(rounds):  # alternating, best of the rounds
        best["per-byte loop (baseline)"] = min(best["per-byte loop (baseline)"], feed_all(PerByteLoop, datagrams))
        best["DTLSPeeker"] = min(best["DTLSPeeker"], feed_all(DTLSPeeker, datagrams))
    for name, seconds in best.items():
        print(f"{name:26s} {seconds * 1e3:8.3f} ms per cap, {seconds / size * 1e9:7.1f} ns/byte")
    print(f"ratio DTLSPeeker / baseline: {best['DTLSPeeker'] / best['per-byte loop (baseline)']:.3f}")


if __name__ == "__main__":
    main()
