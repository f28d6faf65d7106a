"""What a SIGHUP reload (issue 22) costs a running gateway: how long it takes, and what a live SA and new clients see
meanwhile.

On-demand benchmark, not a test:

    .venv/bin/python bench/reload.py [--reloads 20] [--interval 0.5] [--keys 0,10000]

For each PSK table size (``--keys`` made-up identities besides the test ones), one ``m2msec gateway`` (TLS and
coaps, stub CSEs) serves three clients at once for the whole run: a live SA sending keep-alive requests on one TLS
connection, a loop of new TLS connections (handshake + GET + close) and a loop of DTLS handshakes + CoAP GET. First a
quiet phase of ``--reloads * --interval`` seconds, then the same time with a SIGHUP every ``--interval`` s (the
config is the flags: nothing changes, everything is re-read and rebuilt). Printed per phase: each client's
successes and latency p50 / p99 / max, and for the reload phase the time from each SIGHUP to its
"configuration reloaded" log line (p50 / max). The live SA must never fail: a reload keeps live SAs (D239).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from load_common import CSE_ID, LEGIT, dtls_context, dtls_cycle, gateway, percentile, tls_context, tls_cycle

from m2msec import http1
from m2msec.saef import EstablishedSA
from m2msec.transport.tls import open_connection

Samples = dict[str, tuple[list[float], list[str]]]


async def clients(port: int, coaps_port: int, end: float, samples: Samples) -> None:
    loop = asyncio.get_running_loop()
    reader, writer, session = await open_connection("127.0.0.1", port, tls_context(), peer_entity=CSE_ID)
    sa = EstablishedSA(reader, writer, session)

    async def live() -> None:
        n = 0
        while loop.time() < end:
            n += 1
            msg = http1.Message(headers=[("host", CSE_ID), ("x-m2m-ri", f"live{n}"), ("x-m2m-rvi", "3"),
                                         ("x-m2m-origin", LEGIT[2])], method="GET", target=f"/{CSE_ID}")
            t0 = time.monotonic()
            try:
                answer = await sa.request(msg, timeout=10)
                if answer.status != 200:
                    raise RuntimeError(f"answer {answer.status}")
                samples["live SA"][0].append(time.monotonic() - t0)
            except Exception as exc:
                samples["live SA"][1].append(type(exc).__name__)
            await asyncio.sleep(0.01)

    async def cycles(kind: str) -> None:
        context = tls_context() if kind == "new TLS" else dtls_context()
        while loop.time() < end:
            try:
                if kind == "new TLS":
                    samples[kind][0].append(await tls_cycle(port, context))
                else:
                    samples[kind][0].append(await dtls_cycle(coaps_port, context))
            except Exception as exc:
                samples[kind][1].append(type(exc).__name__)
            await asyncio.sleep(0.02)

    try:
        await asyncio.gather(live(), cycles("new TLS"), cycles("new DTLS"))
    finally:
        await sa.close()


def report(phase: str, samples: Samples) -> None:
    for name, (ok, failed) in samples.items():
        print(f"   {phase:>7} {name:<9} {len(ok):>5} ok {len(failed):>3} failed  latency p50 "
              f"{1000 * percentile(ok, 50):6.1f}  p99 {1000 * percentile(ok, 99):6.1f}  max "
              f"{1000 * max(ok, default=float('nan')):7.1f} ms" + (f"  {sorted(set(failed))}" if failed else ""),
              flush=True)


async def run(args: argparse.Namespace) -> None:
    for keys in (int(k) for k in args.keys.split(",")):
        async with gateway(name="reload", quiet=False, more_keys=keys) as gw:
            duration = args.reloads * args.interval
            print(f"== PSK table of {keys + 2} identities; {args.reloads} reloads, one every {args.interval:g} s")
            for phase in ("quiet", "reload"):
                samples: Samples = {"live SA": ([], []), "new TLS": ([], []), "new DTLS": ([], [])}
                loop = asyncio.get_running_loop()
                end = loop.time() + duration
                work = asyncio.ensure_future(clients(gw.port, gw.coaps_port, end, samples))
                took: list[float] = []
                if phase == "reload":
                    for _ in range(args.reloads):
                        seen = gw.log.read_text(errors="replace").count("configuration reloaded")
                        t0 = time.monotonic()
                        gw.proc.send_signal(signal.SIGHUP)
                        while gw.log.read_text(errors="replace").count("configuration reloaded") == seen:
                            if time.monotonic() - t0 > 10:
                                raise SystemExit(f"no reload within 10 s: {gw.log.read_text()[-500:]}")
                            await asyncio.sleep(0.002)
                        took.append(time.monotonic() - t0)
                        await asyncio.sleep(max(0.0, args.interval - took[-1]))
                await work
                report(phase, samples)
                if took:
                    print(f"   SIGHUP to 'configuration reloaded': p50 {1000 * percentile(took, 50):.0f} ms, "
                          f"max {1000 * max(took):.0f} ms over {len(took)} reloads", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reloads", type=int, default=20)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between two SIGHUPs")
    p.add_argument("--keys", default="0,10000", help="made-up identities in the PSK table, one gateway per value")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
