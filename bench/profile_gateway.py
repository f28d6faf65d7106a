"""Where the m2msec gateway spends its CPU per TLS-PSK handshake (on-demand diagnostics, not a test).

Every server below runs in this process pinned to CPU 0; the C benchmark client (bench/psk_hs_client.c),
pinned to CPU 1, makes N sequential full PSK handshakes (new TCP connection, close_notify, close) against it,
exactly as in bench/handshake_bench.py: TLS 1.2 PSK-AES128-CBC-SHA256 and TLS 1.3 external PSK (psk_dhe_ke,
TLS_AES_128_GCM_SHA256), each on asyncio's loop and on uvloop (``--ciphers``, ``--loops``), all from one run.

1. A *layer ladder*, measured without a profiler (CPU time of this process per handshake):
   - ``C baseline``: bench/psk_baseline.c (system OpenSSL), a separate process, for scale;
   - ``engine, blocking``: m2msec.tls.engine's TLSConnection driven by a blocking accept/recv/send loop
     (OpenSSL through pyOpenSSL + the PSK shim, no asyncio);
   - ``engine + minimal asyncio Protocol``: the engine fed by a 20-line asyncio.Protocol (the asyncio floor);
   - ``engine + asyncio adapter``: m2msec.transport.tls.start_server with a protocol that does nothing;
   - ``full gateway``: m2msec.gateway.http_gateway.Gateway, as ``m2msec gateway --profiles onem2m --quiet``.
2. A cProfile run of the full gateway: time in the cyclic GC (gc.callbacks), own time grouped by area,
   and the top functions by own and cumulative time.

    .venv/bin/python bench/profile_gateway.py [--source toml|sqlite] [--entries N] [--handshakes N]
                                              [--ciphers cbc,tls13] [--loops asyncio,uvloop]
                                              [--skip-ladder] [--skip-profile] [--timer cpu|wall]

It imports ``m2msec`` from wherever Python finds it: ``PYTHONPATH=OTHER/src`` measures another tree (e.g. an
export of main) with this script, for a before/after from one run each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import logging
import os
import pstats
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import handshake_bench as hb  # the sibling benchmark: tables, binaries, constants


def run_on(loop: str, coro: Any) -> Any:
    """Run ``coro`` on asyncio's loop or on uvloop (what ``m2msec gateway --loop`` does)."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


WARMUP = 300  # handshakes before each measured run (--warmup)


class GCTimer:
    """Wall time spent in cyclic GC collections, per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.total = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            gen = info["generation"]
            self.total[gen] += time.perf_counter() - self._start
            self.count[gen] += 1


def area(filename: str, name: str) -> str:
    if filename == "~":
        if "_openssl." in name or "_cffi_backend" in name:
            return "OpenSSL C calls (cffi)"
        if "socket" in name or "select" in name or "epoll" in name:
            return "socket/epoll syscalls"
        return "other builtins"
    for key, label in (("/OpenSSL/", "pyOpenSSL (Python)"), ("/m2msec/", "m2msec (Python)"),
                       ("/asyncio/", "asyncio (Python)"), ("/h11/", "h11"), ("/logging/", "logging"),
                       ("/cryptography/", "cryptography (Python)"), ("sqlite", "sqlite3")):
        if key in filename:
            return label
    return "other Python"


def print_profile(profiler: cProfile.Profile, n: int, top: int, area_of: Callable[[str, str], str]) -> None:
    """Own time by area, then the top functions by own and cumulative time, per handshake."""
    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    by_area: dict[str, float] = defaultdict(float)
    for (filename, _line, name), (_cc, _nc, tt, _ct, _callers) in raw.items():
        by_area[area_of(filename, name)] += tt
    print(f"\nown time by area (profiled total {1e6 * total / n:.0f} us/handshake):")
    for label, tt in sorted(by_area.items(), key=lambda kv: -kv[1]):
        print(f"  {label:28s} {100 * tt / total:5.1f} %  {1e6 * tt / n:6.1f} us/handshake")
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats(key).print_stats(top)
        text = buf.getvalue()
        print(f"\ntop {top} by {key} (seconds for {n} handshakes):")
        print(text[text.find("   ncalls") :].rstrip())


def client_cmd(port: int, n: int, cipher: str) -> list[str]:
    return hb.pinned(hb.CLIENT_CPU, [str(hb.CLIENT_BIN), str(port), str(n), cipher, hb.IDENTITY, hb.KEY_HEX])


def check_client(returncode: int | None, out: bytes, err: bytes) -> None:
    if returncode != 0:
        raise hb.BenchError(f"client failed: {out.decode().strip()} {err.decode().strip()}")


async def run_client(port: int, n: int, cipher: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *client_cmd(port, n, cipher), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    check_client(proc.returncode, out, err)


def make_table(args: argparse.Namespace) -> Any:
    from m2msec.keys.table import TomlPSKTable

    if args.source == "toml":
        return TomlPSKTable(hb.toml_table(args.entries))
    from m2msec.keys.sqlite_store import SQLitePSKStore

    return SQLitePSKStore(hb.sqlite_table(args.entries))


def server_context(table: Any) -> Any:
    from m2msec.tls.engine import ServerConfig, TLSContext
    from m2msec.tls.profiles import parse_profiles

    return TLSContext.server(ServerConfig(psk_lookup=table.lookup, profiles=parse_profiles(hb.SERVER_PROFILES)))


# --------------------------------------------------------------------------------------------------
# the ladder


def ladder_c(n: int, cipher: str) -> float:
    """CPU seconds per handshake of the C baseline server (separate process, CPU 0)."""
    server = hb.start_c_server()
    try:
        if WARMUP:
            hb.run_client(server, WARMUP, cipher)
        return hb.measure(server, n, cipher).cpu_s / n
    finally:
        server.stop()


def _serve_blocking(ctx: Any, lsock: socket.socket, count: int) -> None:
    from m2msec.errors import TLSError
    from m2msec.tls.engine import ConnectionClosed

    for _ in range(count):
        sock, _addr = lsock.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = ctx.connection()
        try:
            while True:
                data = sock.recv(65536)
                try:
                    events = conn.receive_data(data)
                except TLSError:
                    break
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
                if not data or any(isinstance(e, ConnectionClosed) for e in events):
                    break
            conn.close()  # close_notify back, as the C server does
            out = conn.data_to_send()
            if out:
                with contextlib.suppress(OSError):
                    sock.sendall(out)
        finally:
            sock.close()


def ladder_blocking(ctx: Any, n: int, cipher: str) -> float:
    """CPU seconds per handshake of the engine driven by a blocking socket loop (no asyncio)."""
    with socket.socket() as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(512)
        port = lsock.getsockname()[1]
        cpu = 0.0
        for count, measured in ((WARMUP, False), (n, True)) if WARMUP else ((n, True),):
            proc = subprocess.Popen(client_cmd(port, count, cipher), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            cpu0 = time.process_time()
            _serve_blocking(ctx, lsock, count)
            if measured:
                cpu = time.process_time() - cpu0
            out, err = proc.communicate()
            check_client(proc.returncode, out, err)
    return cpu / n


class _MinimalTLS(asyncio.Protocol):
    """The least an asyncio server can do with the engine: feed bytes, write replies, close on close_notify."""

    def __init__(self, ctx: Any) -> None:
        self.conn = ctx.connection()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert hasattr(transport, "write")  # uvloop transports are not asyncio.Transport subclasses
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        from m2msec.errors import TLSError
        from m2msec.tls.engine import ConnectionClosed

        assert self.transport is not None
        try:
            events = self.conn.receive_data(data)
        except TLSError:
            self.transport.close()
            return
        if any(isinstance(e, ConnectionClosed) for e in events):
            self.conn.close()
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)
        if self.conn.state.value != "handshaking" and self.conn.state.value != "established":
            self.transport.close()

    def eof_received(self) -> bool:
        return False


async def ladder_minimal(ctx: Any, n: int, cipher: str) -> float:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _MinimalTLS(ctx), "127.0.0.1", 0)
    try:
        return await _measure_async(server.sockets[0].getsockname()[1], n, cipher)
    finally:
        server.close()
        await server.wait_closed()


class _Sink(asyncio.Protocol):
    """An application protocol that does nothing: the TLSAdapter closes the connection on close_notify."""

    def eof_received(self) -> bool:
        return False


async def _measure_async(port: int, n: int, cipher: str) -> float:
    if WARMUP:
        await run_client(port, WARMUP, cipher)
    cpu0 = time.process_time()
    await run_client(port, n, cipher)
    return (time.process_time() - cpu0) / n


async def ladder_adapter(ctx: Any, n: int, cipher: str) -> float:
    from m2msec.transport.tls import start_server

    server = await start_server(_Sink, "127.0.0.1", 0, ctx)
    try:
        return await _measure_async(server.sockets[0].getsockname()[1], n, cipher)
    finally:
        server.close()
        await server.wait_closed()


async def start_gateway(table: Any) -> Any:
    from m2msec.gateway.http_gateway import Gateway, GatewayConfig, parse_backend
    from m2msec.tls.profiles import parse_profiles

    config = GatewayConfig(backend=parse_backend(hb.DUMMY_BACKEND), host="127.0.0.1", port=0,
                           profiles=parse_profiles(hb.SERVER_PROFILES))
    gateway = Gateway(config, table)
    await gateway.start()
    return gateway


async def ladder_gateway(table: Any, n: int, cipher: str) -> float:
    gateway = await start_gateway(table)
    try:
        return await _measure_async(gateway.port, n, cipher)
    finally:
        await gateway.close()


def run_ladder(args: argparse.Namespace, table: Any, cipher: str) -> None:
    n = args.handshakes
    ctx = server_context(table)
    steps: list[tuple[str, Callable[[], float]]] = [
        ("C baseline server (system OpenSSL)", lambda: ladder_c(n, cipher)),
        ("engine, blocking loop (no asyncio)", lambda: ladder_blocking(ctx, n, cipher)),
    ]
    for loop in args.loops:
        steps += [
            (f"{loop}: engine + minimal Protocol", lambda loop=loop: run_on(loop, ladder_minimal(ctx, n, cipher))),
            (f"{loop}: engine + TLSAdapter, no app", lambda loop=loop: run_on(loop, ladder_adapter(ctx, n, cipher))),
            (f"{loop}: full gateway", lambda loop=loop: run_on(loop, ladder_gateway(table, n, cipher))),
        ]
    print(f"layer ladder: {args.source} table, {args.entries:,} entries, {cipher}, {n} handshakes, "
          f"median of {args.rounds} rounds (CPU of the server process per handshake)", flush=True)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.rounds):  # interleaved, like the benchmark
        for name, step in steps:
            samples[name].append(step())
    results = [(name, sorted(samples[name])[len(samples[name]) // 2]) for name, _step in steps]
    c = results[0][1]
    previous = None
    for name, per_hs in results:
        if name.endswith("minimal Protocol"):
            previous = results[1][1]  # each loop's rungs stack on the blocking engine
        delta = "" if previous is None else f"  ({1e6 * (per_hs - previous):+.0f} us over the rung below)"
        print(f"  {name:38s} {1e6 * per_hs:6.0f} us/hs  {1 / per_hs:6.0f} hs/cpu-s  "
              f"C/this {c / per_hs:.2f}{delta}", flush=True)
        previous = per_hs


# --------------------------------------------------------------------------------------------------
# the profile


async def profile_gateway(args: argparse.Namespace, table: Any, cipher: str, loop: str) -> None:
    n = args.handshakes
    gateway = await start_gateway(table)
    try:
        await run_client(gateway.port, WARMUP, cipher)
        cpu0 = time.process_time()
        await run_client(gateway.port, n, cipher)
        plain_cpu = time.process_time() - cpu0

        timer = GCTimer()
        gc.callbacks.append(timer)
        # a CPU-time clock: with the default wall clock, epoll_wait's idle time would count as cost
        profiler = cProfile.Profile(time.process_time) if args.timer == "cpu" else cProfile.Profile()
        cpu0 = time.process_time()
        profiler.enable()
        await run_client(gateway.port, n, cipher)
        profiler.disable()
        prof_cpu = time.process_time() - cpu0
        gc.callbacks.remove(timer)
    finally:
        await gateway.close()

    print(f"\ncProfile ({args.timer} clock) of the full gateway on {loop}: {args.source} table, "
          f"{args.entries:,} entries, {cipher}, {n} handshakes")
    print(f"  without profiler: {1e6 * plain_cpu / n:.0f} us/handshake ({n / plain_cpu:.0f} hs/cpu-s)")
    print(f"  with cProfile:    {1e6 * prof_cpu / n:.0f} us/handshake (profiler overhead included)")
    print(f"  cyclic GC (profiled run): gen0 {timer.count[0]}x {1e3 * timer.total[0]:.1f} ms, "
          f"gen1 {timer.count[1]}x {1e3 * timer.total[1]:.1f} ms, gen2 {timer.count[2]}x "
          f"{1e3 * timer.total[2]:.1f} ms = {1e6 * sum(timer.total) / n:.1f} us/handshake")

    print_profile(profiler, n, args.top, area)


def run_rung(args: argparse.Namespace, table: Any, ciphers: list[str]) -> None:
    """One rung, once: what valgrind counts is then this rung (plus start-up: subtract a run with fewer handshakes)."""
    n, ctx = args.handshakes, server_context(table)
    for cipher in ciphers:
        for loop in (["-"] if args.rung == "blocking" else args.loops):
            if args.rung == "blocking":
                cpu = ladder_blocking(ctx, n, cipher)
            elif args.rung == "minimal":
                cpu = run_on(loop, ladder_minimal(ctx, n, cipher))
            elif args.rung == "adapter":
                cpu = run_on(loop, ladder_adapter(ctx, n, cipher))
            else:
                cpu = run_on(loop, ladder_gateway(table, n, cipher))
            print(f"{args.rung} {cipher} {loop}: {n} handshakes, {1e6 * cpu:.0f} us/hs", flush=True)


def main() -> int:
    global WARMUP
    p = argparse.ArgumentParser(description="where the gateway spends its CPU per TLS-PSK handshake")
    p.add_argument("--source", choices=("toml", "sqlite"), default="toml")
    p.add_argument("--entries", type=int, default=1)
    p.add_argument("--handshakes", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3, help="ladder rounds (median)")
    p.add_argument("--ciphers", default="cbc,tls13", help=f"comma-separated, of {', '.join(sorted(hb.CIPHERS))}")
    p.add_argument("--loops", default="asyncio,uvloop", help="comma-separated: asyncio, uvloop")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                   help="profiler clock: process CPU time (default; idle waits cost nothing) or wall time")
    p.add_argument("--skip-ladder", action="store_true")
    p.add_argument("--warmup", type=int, default=WARMUP, help=f"handshakes before each measured run ({WARMUP})")
    p.add_argument("--rung", choices=("blocking", "minimal", "adapter", "gateway"),
                   help="run this one rung once per cipher and loop, and exit: for instruction counts, e.g. "
                   "valgrind --tool=callgrind (see bench/README.md)")
    p.add_argument("--skip-profile", action="store_true")
    args = p.parse_args()
    args.loops = args.loops.split(",")
    WARMUP = args.warmup
    ciphers = [hb.CIPHERS[name] for name in args.ciphers.split(",")]
    logging.basicConfig(level=logging.WARNING)  # as `m2msec gateway --quiet`
    try:
        hb.build(hb.BASELINE_SRC, hb.BASELINE_BIN, "C baseline source (bench/psk_baseline.c)")
        hb.build(hb.CLIENT_SRC, hb.CLIENT_BIN, "benchmark client source")
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {int(hb.SERVER_CPU)})
        table = make_table(args)
        if args.rung:
            run_rung(args, table, ciphers)
            return 0
        for cipher in ciphers:
            if not args.skip_ladder:
                run_ladder(args, table, cipher)
            if not args.skip_profile:
                for loop in args.loops:
                    run_on(loop, profile_gateway(args, table, cipher, loop))
    except hb.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
