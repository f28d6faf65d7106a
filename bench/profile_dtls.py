"""Where the m2msec coaps gateway spends its CPU per DTLS 1.2 PSK handshake (on-demand diagnostics, not a test).

The m2msec servers below run in this process, pinned to CPU 0; the C benchmark client of bench/dtls_bench.py
(bench/dtls_baseline.c, client mode), pinned to CPU 1, makes N sequential full handshakes with
PSK-AES128-CCM8, each from a new UDP socket with the cookie exchange, then close_notify.

1. A *layer ladder*, measured without a profiler (CPU time of the server per handshake):
   - ``C baseline``: bench/dtls_baseline.c in server mode (system OpenSSL), a separate process, for scale;
   - ``engine, blocking``: m2msec.tls.engine's DTLSConnection driven by a blocking recvfrom/sendto loop with the
     same stateless cookie exchange (OpenSSL through pyOpenSSL + the PSK shim, no asyncio);
   - ``DTLS adapter, no app``: m2msec.transport.dtls.start_dtls_server with a DatagramProtocol that does nothing;
   - ``full coaps gateway``: m2msec.gateway.coaps_gateway.CoapsGateway, as ``m2msec gateway --coap-backend ...``.
   The m2msec lines run on uvloop, as the CLI does. For each, the CPU of this process's other threads is
   shown too (the event loop's thread pool, if anything uses it).
2. A cProfile run of the full gateway (main thread CPU clock): GC time, own time by area, top functions.

    .venv/bin/python bench/profile_dtls.py [--handshakes N] [--rounds R] [--top N] [--skip-ladder] [--skip-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dtls_bench as db  # the DTLS benchmark: binary, table, constants
import handshake_bench as hb
import profile_gateway as pg  # GCTimer, area()

from m2msec.cli.common import run_async  # uvloop when installed, as the CLI does

WARMUP = 300


def client_cmd(port: int, n: int) -> list[str]:
    return hb.pinned(hb.CLIENT_CPU, [str(db.DTLS_BIN), "client", "-t", "5", "-f", str(db.MAX_FAILURES), str(port),
                                     str(n), db.CIPHER, db.IDENTITY, db.KEY_HEX])


def check_client(returncode: int | None, out: bytes, err: bytes) -> None:
    if returncode != 0:
        raise hb.BenchError(f"client failed: {out.decode().strip()} {err.decode().strip()}")


async def run_client(port: int, n: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        *client_cmd(port, n), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    check_client(proc.returncode, out, err)


def table() -> Any:
    from m2msec.keys.table import TomlPSKTable

    return TomlPSKTable(db.psk_table())


def server_context(tbl: Any) -> Any:
    from m2msec.tls.engine import ServerConfig, TLSContext
    from m2msec.tls.profiles import ONEM2M_DTLS_PSK

    return TLSContext.dtls_server(ServerConfig(tbl.lookup, profiles=(ONEM2M_DTLS_PSK,)))


class Cpu:
    """Process and main-thread CPU time between start() and stop()."""

    def start(self) -> None:
        self.p0, self.t0 = time.process_time(), time.thread_time()

    def stop(self) -> tuple[float, float]:
        return time.process_time() - self.p0, time.thread_time() - self.t0


# --------------------------------------------------------------------------------------------------
# the ladder


def ladder_c(n: int) -> tuple[float, float]:
    server = db.start_c_server()
    try:
        db.run_client(server.port, WARMUP, 5.0)
        before = hb.cpu_seconds(server.proc.pid)
        _fields, stderr, code = db.run_client(server.port, n, 5.0)
        if code != 0:
            raise hb.BenchError(f"handshakes against the C server failed: {stderr}")
        time.sleep(hb.SETTLE_S)
        cpu = hb.cpu_seconds(server.proc.pid) - before
        return cpu / n, cpu / n
    finally:
        server.stop()


def _serve_blocking(ctx: Any, sock: socket.socket, count: int) -> None:
    """The engine under the simplest server: one thread, recvfrom/sendto, the gateway's per-peer rules."""
    from m2msec.errors import TLSError
    from m2msec.tls.engine import ConnectionClosed
    from m2msec.transport.dtls_records import is_initial_client_hello

    peers: dict[Any, Any] = {}
    closed = 0
    while closed < count:
        data, addr = sock.recvfrom(65535)
        conn = peers.get(addr)
        if conn is None or (conn.session is not None and is_initial_client_hello(data)):
            conn = ctx.dtls_connection(addr)
            try:
                events = conn.receive_datagram(data)
            except TLSError:
                events = []
            for datagram in conn.datagrams_to_send():
                sock.sendto(datagram, addr)
            if conn.awaiting_cookie or conn.state.value == "failed":
                continue
            peers[addr] = conn
        else:
            try:
                events = conn.receive_datagram(data)
            except TLSError:
                del peers[addr]
                continue
            for datagram in conn.datagrams_to_send():
                sock.sendto(datagram, addr)
        if any(isinstance(e, ConnectionClosed) for e in events):
            del peers[addr]
            closed += 1


def ladder_blocking(ctx: Any, n: int) -> tuple[float, float]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10.0)
        port = sock.getsockname()[1]
        result = (0.0, 0.0)
        for count, measured in ((WARMUP, False), (n, True)):
            proc = subprocess.Popen(client_cmd(port, count), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            cpu = Cpu()
            cpu.start()
            try:
                _serve_blocking(ctx, sock, count)
            except TimeoutError:
                proc.kill()
                raise hb.BenchError("blocking engine server: no datagram for 10 s") from None
            if measured:
                result = cpu.stop()
            out, err = proc.communicate()
            check_client(proc.returncode, out, err)
    return result[0] / n, result[1] / n


async def _measure_async(port: int, n: int) -> tuple[float, float]:
    await run_client(port, WARMUP)
    cpu = Cpu()
    cpu.start()
    await run_client(port, n)
    await asyncio.sleep(hb.SETTLE_S)
    p, t = cpu.stop()
    return p / n, t / n


async def ladder_adapter(ctx: Any, n: int) -> tuple[float, float]:
    from m2msec.transport.dtls import start_dtls_server

    udp, _proto = await start_dtls_server(asyncio.DatagramProtocol, "127.0.0.1", 0, ctx)
    try:
        return await _measure_async(udp.get_extra_info("sockname")[1], n)
    finally:
        udp.close()


async def start_gateway(tbl: Any) -> Any:
    from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway

    host, port = db.DUMMY_COAP_BACKEND.split(":")
    gateway = CoapsGateway(CoapsConfig(backend_host=host, backend_port=int(port), host="127.0.0.1", port=0), tbl)
    await gateway.start()
    return gateway


async def ladder_gateway(tbl: Any, n: int) -> tuple[float, float]:
    gateway = await start_gateway(tbl)
    try:
        return await _measure_async(gateway.port, n)
    finally:
        await gateway.close()


def run_ladder(args: argparse.Namespace, tbl: Any) -> None:
    n = args.handshakes
    ctx = server_context(tbl)
    steps: list[tuple[str, Callable[[], tuple[float, float]]]] = [
        ("C baseline server (system OpenSSL)", lambda: ladder_c(n)),
        ("engine, blocking loop (no asyncio)", lambda: ladder_blocking(ctx, n)),
        ("engine + DTLS adapter, no app", lambda: run_async(ladder_adapter(ctx, n))),
        ("full coaps gateway (CoapsGateway)", lambda: run_async(ladder_gateway(tbl, n))),
    ]
    print(f"layer ladder: {db.CIPHER}, {n} handshakes with cookie exchange, median of {args.rounds} rounds "
          f"(server CPU per handshake; 'other threads' = process CPU - main thread CPU)")
    samples: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _ in range(args.rounds):  # interleaved, like the benchmark
        for name, step in steps:
            samples[name].append(step())
    c = None
    previous = None
    for name, _step in steps:
        values = sorted(samples[name])
        per_hs, main_thread = values[len(values) // 2]
        c = per_hs if c is None else c
        delta = "" if previous is None else f"  (+{1e6 * (per_hs - previous):.0f} us over the line above)"
        others = "" if name.startswith("C ") else f", other threads {max(0.0, 1e6 * (per_hs - main_thread)):.0f} us"
        print(f"  {name:36s} {1e6 * per_hs:6.0f} us/hs  {1 / per_hs:6.0f} hs/cpu-s  C/this {c / per_hs:.2f}"
              f"{delta}{others}")
        previous = per_hs


# --------------------------------------------------------------------------------------------------
# the profile


def area(filename: str, name: str) -> str:
    if filename == "~" and "uvloop" in name:
        return "uvloop (C)"
    if "/m2msec/transport/dtls" in filename:
        return "m2msec DTLS adapter"
    if "/m2msec/gateway/" in filename:
        return "m2msec coaps gateway"
    if "/m2msec/tls/" in filename:
        return "m2msec engine"
    if "/hmac.py" in filename:
        return "hmac (cookie)"
    return pg.area(filename, name)


async def profile(args: argparse.Namespace, tbl: Any) -> None:
    n = args.handshakes
    gateway = await start_gateway(tbl)
    try:
        await run_client(gateway.port, WARMUP)
        threads_before = threading.active_count()
        cpu = Cpu()
        cpu.start()
        await run_client(gateway.port, n)
        await asyncio.sleep(hb.SETTLE_S)
        plain_p, plain_t = cpu.stop()

        timer = pg.GCTimer()
        gc.callbacks.append(timer)
        profiler = cProfile.Profile(time.thread_time)  # CPU of the event loop's thread only: idle waits cost nothing
        cpu.start()
        profiler.enable()
        await run_client(gateway.port, n)
        await asyncio.sleep(hb.SETTLE_S)
        profiler.disable()
        prof_p, _prof_t = cpu.stop()
        gc.callbacks.remove(timer)
    finally:
        await gateway.close()

    print(f"\ncProfile (main-thread CPU clock) of the full coaps gateway: {db.CIPHER}, {n} handshakes")
    print(f"  without profiler: {1e6 * plain_p / n:.0f} us/handshake of process CPU ({n / plain_p:.0f} hs/cpu-s), "
          f"of which the main thread {1e6 * plain_t / n:.0f} us; threads in the process: {threads_before} "
          "(Python-visible)")
    print(f"  with cProfile:    {1e6 * prof_p / n:.0f} us/handshake (profiler overhead included)")
    print(f"  cyclic GC (profiled run): gen0 {timer.count[0]}x {1e3 * timer.total[0]:.1f} ms, "
          f"gen1 {timer.count[1]}x {1e3 * timer.total[1]:.1f} ms, gen2 {timer.count[2]}x "
          f"{1e3 * timer.total[2]:.1f} ms = {1e6 * sum(timer.total) / n:.1f} us/handshake")

    pg.print_profile(profiler, n, args.top, area)


def main() -> int:
    p = argparse.ArgumentParser(description="where the coaps gateway spends its CPU per DTLS-PSK handshake")
    p.add_argument("--handshakes", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3, help="ladder rounds (median)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--skip-ladder", action="store_true")
    p.add_argument("--skip-profile", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)  # as `m2msec gateway --quiet`
    try:
        hb.build(db.DTLS_SRC, db.DTLS_BIN, "C DTLS baseline source")
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {int(hb.SERVER_CPU)})
        tbl = table()
        if not args.skip_ladder:
            run_ladder(args, tbl)
        if not args.skip_profile:
            run_async(profile(args, tbl))
    except hb.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
