"""MEF enrolments/s (with their MEF Handshake) and fetchCredentials/s, against the bare TLS-PSK handshake rate of the
same engine measured in the same run (issue 20; goal for ``enrol``: ratio >= 0.6).

The servers run as their own processes; the load comes from this process with ``--concurrency`` operations in flight.
Each phase runs ``--seconds``, the phases alternate over ``--rounds`` rounds; the figures are the server process's CPU
per operation (utime + stime from /proc: all its threads, SQLite's too), least over the rounds, and the best round's
wall rate; the ratio is CPU per bare handshake / CPU per operation (a server core's capacity for the operation over
its capacity for bare handshakes). Figures are printed, never asserted.

    .venv/bin/python bench/mef_bench.py [--seconds 3] [--rounds 3] [--concurrency 8] [--no-c] [--profile N]

Phases:
``bare``            an m2msec engine server (``m2msec.transport.tls.start_server``) with the MEF's cipher profiles
                    (onem2m, ecdhe-psk, tls13) and an in-memory PSK table, whose protocol closes at once: handshake,
                    close. The denominator.
``C bare``          ``bench/psk_baseline.c server`` (system OpenSSL, iterative) with the same TLS 1.2 suites: a
                    second denominator (skipped with ``--no-c`` or without gcc).
``mef-handshake``   the KpmID handshake against ``m2msec mef serve`` (the async PSK path, a store read), close.
``enrol``           ``m2msec.mef.client.enrol``: the KpmID handshake, the Enrolment Exchange (POST enrolment: the
                    export, the Ke store write; POST enrolment/done), close.
``fetch``           a target's handshake + ``MEFFetcher.fetch`` of a KeID from ``enrol`` (SUID 22) + close.
``fetch (kept)``    ``fetch`` over one kept MEFFetcher per worker: the request's own share.

The client offers ``DEFAULT_CLIENT_PROFILES`` (the onem2m profile: TLS 1.2 PSK-AES128-CBC-SHA256 first) in every
phase, so every server negotiates the same suite. The MEF is provisioned with the library
(``m2msec.mef.procedures.add_enrolee``/``add_target``, what ``m2msec mef enrolees|targets add`` run) before it
starts; nothing is imported from tests/. ``--profile N``: afterwards, N sequential enrolments against a MEF
running under cProfile (the main thread's CPU clock), and its top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from procs import cpu_seconds, free_port, wait_listening

from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import MASTER_KEY_ENV
from m2msec.mef.client import Enrolment, MEFCredentials, MEFFetcher, enrol
from m2msec.mef.procedures import EnrolmentTarget, add_enrolee, add_target
from m2msec.store import open_store
from m2msec.tls.engine import SessionInfo, TLSContext
from m2msec.transport.tls import TLSAdapter

BENCH = Path(__file__).resolve().parent
BUILD = BENCH / "build"
SP, FQDN = "bench.example.com", "mef.bench.example.com"
GW = "in-cse.bench.example.com"
KPMID, KPM = "kpm-bench", SecretKey(bytes(range(100, 132)))
GW_PSK = SecretKey(bytes(range(40, 72)))
ENROLEE_ID = f"//{SP}/in-cse/CBENCH"
BARE_ID, BARE_KEY = "bench@psk.example.com", SecretKey(bytes(range(32)))
C_ID, C_KEY = "client1", SecretKey(bytes.fromhex("00112233445566778899aabbccddeeff"))  # compiled into psk_baseline
C_SUITES = "PSK-AES128-CBC-SHA256:PSK-AES128-GCM-SHA256"

BARE_SERVER = textwrap.dedent(f"""
    import asyncio, sys
    from m2msec.keys.secret import SecretKey
    from m2msec.keys.table import MemoryPSKTable, PSKEntry
    from m2msec.tls.engine import ServerConfig, TLSContext
    from m2msec.tls.profiles import ONEM2M_PSK, ECDHE_PSK, TLS13_PSK
    from m2msec.transport.tls import start_server

    class Close(asyncio.Protocol):
        def connection_made(self, transport):
            transport.close()

    async def main():
        table = MemoryPSKTable([PSKEntry({BARE_ID!r}, SecretKey(bytes(range(32))))])
        ctx = TLSContext.server(ServerConfig(table.lookup, profiles=(ONEM2M_PSK, ECDHE_PSK, TLS13_PSK)))
        server = await start_server(Close, "127.0.0.1", 0, ctx)
        print("listening on 127.0.0.1:%d" % server.sockets[0].getsockname()[1], file=sys.stderr, flush=True)
        await asyncio.Future()

    asyncio.run(main())
""")

# the MEF under cProfile with the main thread's CPU clock (idle epoll waits cost nothing; SQLite's thread is not seen),
# the profile written when it exits cleanly on SIGTERM
PROFILED = textwrap.dedent("""
    import cProfile, runpy, signal, sys, time
    out = sys.argv.pop(1)
    p = cProfile.Profile(time.thread_time)
    signal.signal(signal.SIGUSR1, lambda *_: p.enable())  # after the start and a warm-up: no imports in it
    try:
        runpy.run_module("m2msec.cli.main", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        p.disable()
        p.dump_stats(out)
""")

Result = tuple[float, float]  # (server CPU seconds per op, ops per wall second)


@contextlib.contextmanager
def server(args: list[str], env: dict[str, str], marker: str) -> Iterator[tuple[int, int]]:
    """A server process; its port is read from its start line on stderr (after ``marker``)."""
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if marker not in line:
            raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
        yield proc.pid, int(line.split(marker)[1].split()[0].rsplit(":", 1)[-1])
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def c_server() -> Iterator[tuple[int, int] | None]:
    source, binary = BENCH / "psk_baseline.c", BUILD / "psk_baseline"
    gcc = shutil.which("gcc")
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        if gcc is None:
            print("C bare: skipped (no gcc)")
            yield None
            return
        BUILD.mkdir(exist_ok=True)
        subprocess.run([gcc, "-O2", "-o", str(binary), str(source), "-lssl", "-lcrypto"], check=True)
    port = free_port()
    proc = subprocess.Popen([str(binary), "server", str(port), C_SUITES], stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)  # its one probe connection is before the rounds
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(30)


async def handshake(port: int, context: TLSContext) -> SessionInfo:
    """One client handshake with our engine, then close (what ``enrol`` opens, without the request)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        transport, adapter = await loop.create_connection(
            lambda: TLSAdapter(context, asyncio.Protocol, handshake_timeout=10), "127.0.0.1", port)
        try:
            session: SessionInfo = await adapter.handshake
        finally:
            transport.close()
    return session


async def phase(pid: int, seconds: float, concurrency: int, op: Callable[[], Awaitable[None]]) -> Result:
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await op()
            done += 1

    await asyncio.sleep(0.1)  # the previous phase's closes
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.monotonic() - t0
    await asyncio.sleep(0.15)  # the server finishes the last closes
    return (cpu_seconds(pid) - cpu0) / max(done, 1), done / wall


def psk_context(identity: str, key: SecretKey) -> TLSContext:
    return TLSContext.client(MEFCredentials(identity, key).client_config(FQDN))


async def run(a: argparse.Namespace, bare: tuple[int, int], c: tuple[int, int] | None,
              mef: tuple[int, int]) -> dict[str, list[Result]]:
    address = f"127.0.0.1:{mef[1]}"
    kpm, target = MEFCredentials(KPMID, KPM), MEFCredentials(GW, GW_PSK)
    bare_ctx, c_ctx, kpm_ctx = psk_context(BARE_ID, BARE_KEY), psk_context(C_ID, C_KEY), psk_context(KPMID, KPM)

    # checks before the timed rounds: the suites, and one enrolment's key as the target fetches it
    suites = {"bare": (await handshake(bare[1], bare_ctx)).cipher, "mef": (await handshake(mef[1], kpm_ctx)).cipher}
    if c is not None:
        suites["C"] = (await handshake(c[1], c_ctx)).cipher
    print("negotiated: " + ", ".join(f"{k} {v}" for k, v in suites.items()))
    first: Enrolment = await enrol(address, kpm, mef_fqdn=FQDN)
    async with MEFFetcher(address, target, mef_fqdn=FQDN) as fetcher:
        got = await fetcher.fetch(first.keid, 22)
    if not hmac.compare_digest(got.credential.reveal(), first.credential(22, GW).reveal()):
        raise SystemExit("the fetched Kpsa differs from the Enrolee's: not benchmarking a broken MEF")
    keids = [first.keid]

    async def bare_op() -> None:
        await handshake(bare[1], bare_ctx)

    async def c_op() -> None:
        assert c is not None
        await handshake(c[1], c_ctx)

    async def mef_hs_op() -> None:
        await handshake(mef[1], kpm_ctx)

    async def enrol_op() -> None:
        keids.append((await enrol(address, kpm, mef_fqdn=FQDN)).keid)

    turn = 0

    async def fetch_op() -> None:
        nonlocal turn
        turn += 1
        async with MEFFetcher(address, target, mef_fqdn=FQDN) as f:
            await f.fetch(keids[turn % len(keids)], 22)

    kept: list[MEFFetcher] = []

    async def fetch_kept_op() -> None:
        nonlocal turn
        turn += 1
        f = kept.pop() if kept else MEFFetcher(address, target, mef_fqdn=FQDN)  # one per worker
        await f.fetch(keids[turn % len(keids)], 22)
        kept.append(f)

    phases: list[tuple[str, int, Callable[[], Awaitable[None]]]] = [("bare", bare[0], bare_op)]
    if c is not None:
        phases.append(("C bare", c[0], c_op))
    phases += [("mef-handshake", mef[0], mef_hs_op), ("enrol", mef[0], enrol_op), ("fetch", mef[0], fetch_op),
               ("fetch (kept)", mef[0], fetch_kept_op)]
    results: dict[str, list[Result]] = {name: [] for name, _, _ in phases}
    for r in range(a.rounds):
        for name, pid, op in phases:
            results[name].append(await phase(pid, a.seconds, a.concurrency, op))
            for f in kept:
                await f.close()
            kept.clear()
        print(f"round {r + 1}: " + "  ".join(f"{n} {results[n][-1][0] * 1e6:.0f}us" for n, _, _ in phases),
              flush=True)
    return results


async def profile_enrolments(n: int, pid: int, port: int) -> None:
    for i in range(n + 50):
        if i == 50:  # 50 unprofiled first: lazy imports, caches
            os.kill(pid, signal.SIGUSR1)
            await asyncio.sleep(0.1)
        await enrol(f"127.0.0.1:{port}", MEFCredentials(KPMID, KPM), mef_fqdn=FQDN)


AREAS = (("m2msec/tls", "m2msec.tls (engine, adapter, async PSK)"), ("m2msec/asgi", "m2msec.asgi"),
         ("m2msec/mef", "m2msec.mef"), ("m2msec/store", "m2msec.store"), ("m2msec", "m2msec (other)"),
         ("fastapi", "fastapi"), ("starlette", "starlette"), ("pydantic", "pydantic"), ("h11", "h11"),
         ("asyncio", "asyncio"), ("OpenSSL", "pyOpenSSL"), ("cryptography", "cryptography"))


def areas(stats: pstats.Stats) -> dict[str, float]:
    """Own time by area (file path), per enrolment."""
    own: dict[str, float] = {}
    for (path, _, _), (_, _, tt, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        area = next((label for key, label in AREAS if key in path), "builtins (C: ssl, socket, sqlite, json...)"
                    if path == "~" else "other Python")
        own[area] = own.get(area, 0.0) + tt
    return own


def main() -> None:
    import logging

    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-c", action="store_true", help="skip the C OpenSSL denominator")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="then N enrolments against a MEF under cProfile, top functions")
    parser.add_argument("--top", type=int, default=25, help="functions listed by --profile (25)")
    a = parser.parse_args()
    master = SecretKey.generate(32)
    env = dict(os.environ, **{MASTER_KEY_ENV: master.reveal().hex()})
    py = [sys.executable]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        url = f"sqlite://{tmp}/mef.db"
        with open_store(url, master) as store:
            add_target(store, GW, "cse", GW_PSK)
            add_enrolee(store, KPMID, enrolee_id=ENROLEE_ID, kpm=KPM, targets=[EnrolmentTarget(GW, (22,))])
        config = tmp / "mef.toml"
        config.write_text(f'listen = "127.0.0.1:0"\nmef_fqdn = "{FQDN}"\nsp_id = "{SP}"\nstore = "{url}"\n')
        mef_cmd = ["-m", "m2msec.cli.main", "mef", "--config", str(config), "serve"]
        with contextlib.ExitStack() as stack:
            bare = stack.enter_context(server([*py, "-c", BARE_SERVER], env, "listening on "))
            c = None if a.no_c else stack.enter_context(c_server())
            mef = stack.enter_context(server([*py, *mef_cmd], env, "listening on "))
            results = asyncio.run(run(a, bare, c, mef))
        report(a, results)
        if a.profile:
            out = tmp / "mef.prof"
            with server([*py, "-c", PROFILED, str(out), *mef_cmd[2:]], env, "listening on ") as (pid, port):
                asyncio.run(profile_enrolments(a.profile, pid, port))
            print(f"\ncProfile of the MEF process's main thread (its CPU clock) over {a.profile} sequential "
                  f"enrolments after 50 unprofiled: top {a.top} by cumulative, then by own time")
            stats = pstats.Stats(str(out))
            own = areas(stats)
            total = sum(own.values())
            print(f"  main thread CPU {total / a.profile * 1e6:.0f} us per enrolment; own time by area:")
            for area, t in sorted(own.items(), key=lambda kv: -kv[1]):
                print(f"    {area:<45} {t / a.profile * 1e6:6.0f} us  {100 * t / total:4.1f} %")
            stats.sort_stats("cumulative").print_stats(a.top)
            stats.sort_stats("tottime").print_stats(a.top)


def report(a: argparse.Namespace, results: dict[str, list[Result]]) -> None:
    cpu = {name: min(c for c, _ in rs) for name, rs in results.items()}
    wall = {name: max(w for _, w in rs) for name, rs in results.items()}
    print(f"\nserver CPU per operation (least of {a.rounds} rounds x {a.seconds:g} s, {a.concurrency} in flight) and "
          "wall rate (best round); ratio = bare's CPU per op / this CPU per op (wall: this rate / bare's rate)")
    cbare = cpu.get("C bare")
    for name in results:
        line = (f"  {name:<15} {cpu[name] * 1e6:7.0f} us  {wall[name]:7.0f}/s  ratio to bare "
                f"{cpu['bare'] / cpu[name]:5.2f} (wall {wall[name] / wall['bare']:4.2f})")
        if cbare is not None:
            line += f"  to C bare {cbare / cpu[name]:5.2f}"
        print(line)
    print(f"per MEF core (1 / CPU per op): {1 / cpu['enrol']:.0f} enrolments/s, {1 / cpu['fetch']:.0f} fetches/s "
          f"(new connection), {1 / cpu['fetch (kept)']:.0f} fetches/s (kept connection)")

if __name__ == "__main__":
    main()
