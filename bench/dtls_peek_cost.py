"""What the DTLS peeker (``m2msec.tls.psk_peek.DTLSPeeker``) costs per byte of ClientKeyExchange fragments.

A hostile DTLS client (one cookie exchange) may send up to the held-input cap (D75: 128 KiB, 32 datagrams) of
overlapping ClientKeyExchange fragments that never complete the message. The peeker marks every byte it has
seen; this script times it against the per-byte Python loop it replaced (the baseline, kept here and run in the
same process) on the same datagrams, and prints milliseconds per held-input cap and the ratio.

    .venv/bin/python bench/dtls_peek_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    datagrams = hostile_datagrams()
    size = sum(len(d) for d in datagrams)
    print(f"{len(datagrams)} datagrams, {size} bytes of fragments (held-input cap {DEFAULT_MAX_HELD})")
    best = {"per-byte loop (baseline)": float("inf"), "DTLSPeeker": float("inf")}
    for _ in range(args.rounds):  # alternating, best of the rounds
        best["per-byte loop (baseline)"] = min(best["per-byte loop (baseline)"], feed_all(PerByteLoop, datagrams))
        best["DTLSPeeker"] = min(best["DTLSPeeker"], feed_all(DTLSPeeker, datagrams))
    for name, seconds in best.items():
        print(f"{name:26s} {seconds * 1e3:8.3f} ms per cap, {seconds / size * 1e9:7.1f} ns/byte")
    print(f"ratio DTLSPeeker / baseline: {best['DTLSPeeker'] / best['per-byte loop (baseline)']:.3f}")


if __name__ == "__main__":
    main()
