"""Does the gateway give back what a connection took? Open file descriptors and RSS of one ``m2msec gateway`` over
many connect / handshake / request / close cycles, TLS and DTLS, good and failed (issue 21 part 3; docs/security.md
section 3).

On-demand benchmark, not a test:

    .venv/bin/python bench/leaks.py [--cycles 20000] [--round 1000] [--warmup 2]

Each round runs ``--round`` cycles, a quarter of each kind at once: ``tls-good`` (TLS 1.2 PSK handshake, GET, close),
``tls-bad`` (a wrong key: the handshake fails), ``dtls-good`` (DTLS handshake, CoAP GET, close), ``dtls-bad`` (a
wrong key: the gateway hears nothing it can decrypt and times the peer out after ``--handshake-timeout 1``).
Failed cycles come from 250 loopback addresses (127.0.30.x), so the per-source caps and the failed-handshake
limit (D220) hold state for many sources, as they would in the field. After every round: the gateway's open
descriptors (/proc/PID/fd; also how many are client TCP connections, from /proc/PID/net/tcp: the rest are the
listeners, the coaps socket and the keep-alive connections to the CSE, which the first round opens) and VmRSS.
Printed: both curves; once everything has timed out, the descriptors against the baseline after the warm-up and
the client connections held (must be 0); the RSS growth after the ``--warmup`` rounds (goal < 10 MiB).
Exit status 0 when all three held.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter

from load_common import (
    LEGIT,
    WRONG_KEY,
    client_sockets,
    dtls_context,
    dtls_cycle,
    fd_count,
    gateway,
    rss_kib,
    tls_context,
    tls_cycle,
)

from m2msec.tls.engine import DEFAULT_DTLS_MTU
from m2msec.transport.dtls import _ClientProtocol
from m2msec.transport.tls import TLSAdapter

GOAL_MIB = 10
KINDS = ("tls-good", "tls-bad", "dtls-good", "dtls-bad")
CONCURRENCY = {"tls-good": 8, "tls-bad": 8, "dtls-good": 8, "dtls-bad": 64}


def bad_source(n: int) -> str:
    return f"127.0.30.{2 + n % 250}"


async def tls_bad(port: int, n: int) -> None:
    loop = asyncio.get_running_loop()
    _, adapter = await loop.create_connection(lambda: TLSAdapter(tls_context(LEGIT[0], WRONG_KEY), asyncio.Protocol),
                                              "127.0.0.1", port, local_addr=(bad_source(n), 0))
    await asyncio.wait_for(adapter.handshake, 10)


async def dtls_bad(port: int, n: int) -> None:
    loop = asyncio.get_running_loop()
    udp, proto = await loop.create_datagram_endpoint(
        lambda: _ClientProtocol(dtls_context(LEGIT[0], WRONG_KEY), asyncio.DatagramProtocol, mtu=DEFAULT_DTLS_MTU,
                                remote=("127.0.0.1", port)),
        local_addr=(bad_source(n), 0), remote_addr=("127.0.0.1", port))
    try:
        await asyncio.wait_for(proto.handshake, 0.3)  # the gateway stays silent: it keeps the peer until its timeout
    finally:
        udp.close()


async def run_kind(kind: str, first: int, count: int, tls_port: int, coaps_port: int, outcome: Counter[str]) -> None:
    sem = asyncio.Semaphore(CONCURRENCY[kind])
    good_tls, good_dtls = tls_context(), dtls_context()

    async def one(n: int) -> None:
        async with sem:
            try:
                if kind == "tls-good":
                    await tls_cycle(tls_port, good_tls)
                elif kind == "dtls-good":
                    await dtls_cycle(coaps_port, good_dtls)
                elif kind == "tls-bad":
                    await tls_bad(tls_port, n)
                else:
                    await dtls_bad(coaps_port, n)
                outcome[f"{kind} ok"] += 1
            except Exception as exc:
                outcome[f"{kind} {type(exc).__name__}"] += 1

    await asyncio.gather(*(one(n) for n in range(first, first + count)))


async def run(args: argparse.Namespace) -> int:
    async with gateway("--handshake-timeout", "1", name="leaks") as gw:
        await asyncio.sleep(0.5)
        base_fds, base_rss = fd_count(gw.pid), rss_kib(gw.pid)
        print(f"gateway pid {gw.pid}: {base_fds} fds, VmRSS {base_rss / 1024:.1f} MiB before the first cycle")
        print(f"{'cycles':>7} {'fds':>5} {'clients':>7} {'VmRSS MiB':>10}  outcomes of the round", flush=True)
        rounds = max(1, args.cycles // args.round)
        per_kind = args.round // len(KINDS)
        curve: list[tuple[int, int, int, int]] = []
        for r in range(rounds):
            outcome: Counter[str] = Counter()
            await asyncio.gather(*(run_kind(kind, r * per_kind, per_kind, gw.port, gw.coaps_port, outcome)
                                   for kind in KINDS))
            await asyncio.sleep(1.2)  # this round's failed DTLS peers time out (1 s)
            point = ((r + 1) * per_kind * len(KINDS), fd_count(gw.pid), client_sockets(gw.pid, gw.port),
                     rss_kib(gw.pid))
            curve.append(point)
            print(f"{point[0]:>7} {point[1]:>5} {point[2]:>7} {point[3] / 1024:>10.1f}  "
                  f"{dict(sorted(outcome.items()))}", flush=True)
        await asyncio.sleep(1.5)
        end_fds, end_clients, end_rss = fd_count(gw.pid), client_sockets(gw.pid, gw.port), rss_kib(gw.pid)
        to_cse = client_sockets(gw.pid, gw.cse_port, remote=True)
        warm_point = curve[min(args.warmup, len(curve)) - 1]
        growth = (end_rss - warm_point[3]) / 1024
        fds_ok = end_fds <= warm_point[1] and end_clients == 0
        verdict = "back to baseline" if fds_ok else "NOT back"
        print(f"after all cycles and timeouts: {end_fds} fds (after the warm-up {warm_point[1]}, before the first "
              f"cycle {base_fds}; {to_cse} of them keep-alive connections to the CSE), {end_clients} client "
              f"connections held: {verdict}; VmRSS {end_rss / 1024:.1f} MiB: "
              f"{growth:+.1f} MiB since the warm-up ({args.warmup} rounds; goal < "
              f"{GOAL_MIB} MiB: {'met' if growth < GOAL_MIB else 'NOT met'})", flush=True)
        return 0 if fds_ok and growth < GOAL_MIB else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=20000)
    p.add_argument("--round", type=int, default=1000, help="cycles between two samples")
    p.add_argument("--warmup", type=int, default=2, help="rounds before the RSS reference")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
