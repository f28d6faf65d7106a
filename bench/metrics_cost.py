"""What ``--metrics`` costs the gateway: CPU per handshake and per request with the metrics on and off.

On-demand benchmark, not a test:

    .venv/bin/python bench/metrics_cost.py [--handshakes N] [--requests N] [--rounds R]

Two ``m2msec gateway`` processes (bench/load_common.py: a TOML table, a keep-alive stub CSE in this process), one
started with ``--metrics 127.0.0.1:PORT``, one without, measured in turn (off, on, on, off, off, on, ...):

* N sequential TLS 1.2 PSK cycles (connect, full handshake, one GET, close) -- the handshake path with its
  observer calls (outcome, duration, open-connection gauge, request, backend latency);
* N sequential GETs over one kept SA -- the request path alone.

The gateway's CPU (utime + stime from /proc) around each run gives its CPU per cycle / per request; printed: the
medians over R rounds of both processes and the on/off difference (absolute and relative). The metrics process is
scraped once per round (a scrape's own cost is not in the figures: it is taken outside the measured window).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import urllib.request

from load_common import CSE_ID, LEGIT, gateway, tls_context, tls_cycle
from procs import cpu_seconds, free_port

from m2msec import http1
from m2msec.saef import EstablishedSA
from m2msec.transport.tls import open_connection


async def cycles(port: int, n: int) -> None:
    context = tls_context()
    for _ in range(n):
        await tls_cycle(port, context)


async def requests(port: int, n: int) -> None:
    reader, writer, session = await open_connection("127.0.0.1", port, tls_context(), peer_entity=CSE_ID)
    sa = EstablishedSA(reader, writer, session)
    msg = http1.Message(headers=[("host", CSE_ID), ("x-m2m-ri", "b"), ("x-m2m-rvi", "3"), ("x-m2m-origin", LEGIT[2])],
                        method="GET", target=f"/{CSE_ID}")
    try:
        for _ in range(n):
            answer = await sa.request(msg)
            if answer.status != 200:
                raise SystemExit(f"answer {answer.status}")
    finally:
        await sa.close()


def observer_calls(n: int = 100_000) -> tuple[float, float]:
    """In this process: seconds of the observer calls of one handshake cycle, and of one request (the events the
    gateway emits for them), without any I/O: the part of the difference the metrics themselves cause."""
    import time

    from m2msec.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    t0 = time.perf_counter()
    for _ in range(n):
        metrics.handshake_completed("tls", False, 0.002, LEGIT[0])
        metrics.request("http", LEGIT[0])
        metrics.backend_answered(0.0004)
        metrics.closed("tls")
    t1 = time.perf_counter()
    for _ in range(n):
        metrics.request("http", LEGIT[0])
        metrics.backend_answered(0.0004)
    t2 = time.perf_counter()
    return (t1 - t0) / n, (t2 - t1) / n


async def measured(pid: int, run: object) -> float:
    before = cpu_seconds(pid)
    await run  # type: ignore[misc]
    return cpu_seconds(pid) - before


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    metrics_port = free_port()
    figures: dict[str, dict[str, list[float]]] = {"off": {"hs": [], "rq": []}, "on": {"hs": [], "rq": []}}
    async with gateway(name="metrics-off") as off, \
            gateway("--metrics", f"127.0.0.1:{metrics_port}", name="metrics-on") as on:
        for n in range(args.rounds):  # which goes first alternates: no position bias
            for label, gw in (("off", off), ("on", on))[::1 if n % 2 == 0 else -1]:
                figures[label]["hs"].append(await measured(gw.pid, cycles(gw.port, args.handshakes))
                                            / args.handshakes)
                figures[label]["rq"].append(await measured(gw.pid, requests(gw.port, args.requests)) / args.requests)
            scraped = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read())
            assert b"m2msec_gateway_handshakes_total" in scraped
    print(f"{args.rounds} rounds, {args.handshakes} handshake cycles and {args.requests} requests per round "
          "(gateway CPU, median)")
    calls = observer_calls()
    print(f"  observer calls alone (no I/O, this process): {calls[0] * 1e6:.2f} us per handshake cycle, "
          f"{calls[1] * 1e6:.2f} us per request")
    for key, what in (("hs", "per handshake cycle (handshake + 1 GET)"), ("rq", "per request over a kept SA")):
        off_us = statistics.median(figures["off"][key]) * 1e6
        on_us = statistics.median(figures["on"][key]) * 1e6
        print(f"  {what:42} off {off_us:8.1f} us   on {on_us:8.1f} us   "
              f"difference {on_us - off_us:+7.1f} us ({(on_us / off_us - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    asyncio.run(main())
