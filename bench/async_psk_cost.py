"""What the asynchronous PSK path (``ServerConfig(async_psk=True)``) costs the server per handshake.

In-memory pairs (engine client <-> engine server, no sockets, no asyncio): the server's CPU time around its own
calls only, the synchronous ``psk_lookup`` path and the ``async_psk`` path (peeking, event, ``supply_psk``
answered at once from the same table) in alternating rounds of the same run, per TLS version. Prints
microseconds per handshake and the ratio async / sync (the figure to compare: the absolute times are noisy).

    .venv/bin/python bench/async_psk_cost.py [--handshakes 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.tls.engine import ClientConfig, PSKIdentityReceived, ServerConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_PSK, TLS13_PSK, CipherProfile

IDENTITY, KEY = "AE123456789012-Light@in.provider.com", SecretKey.from_hex("1a2b3c4d5e6f7a8b")
TABLE = MemoryPSKTable([PSKEntry(IDENTITY, KEY, "Clight-AE1")])


def run(profile: CipherProfile, asynchronous: bool, n: int) -> float:
    """Server CPU seconds per handshake over ``n`` handshakes."""
    config = ServerConfig(None if asynchronous else TABLE.lookup, profiles=(profile,), async_psk=asynchronous)
    server = TLSContext.server(config)
    client = TLSContext.client(ClientConfig(IDENTITY, KEY, profiles=(profile,), peer_entity="in-cse"))
    spent = 0.0
    clock = time.thread_time
    for _ in range(n):
        c = client.connection()
        t = clock()
        s = server.connection()
        spent += clock() - t
        while c.session is None or s.session is None:
            out = c.data_to_send()
            t = clock()
            events = s.receive_data(out) if out else []
            while events and isinstance(events[-1], PSKIdentityReceived):
                events = s.supply_psk(TABLE.lookup(events[-1].identity))
            back = s.data_to_send()
            spent += clock() - t
            if back:
                c.receive_data(back)
    return spent / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name, profile in (("TLS 1.2 onem2m", ONEM2M_PSK), ("TLS 1.3 tls13", TLS13_PSK)):
        sync, asyn = [], []
        for _ in range(args.rounds):
            sync.append(run(profile, False, args.handshakes))
            asyn.append(run(profile, True, args.handshakes))
        best_sync, best_async = min(sync), min(asyn)
        print(f"{name}: sync {best_sync * 1e6:.1f} us/handshake, async {best_async * 1e6:.1f} us/handshake, "
              f"async/sync {best_async / best_sync:.3f} (best of {args.rounds} x {args.handshakes})")


if __name__ == "__main__":
    main()
