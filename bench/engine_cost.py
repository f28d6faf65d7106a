"""The TLS engine's own cost per handshake, server side, and the memory an idle connection holds (on demand).

Drives full PSK handshakes through ``TLSContext.server(...).connection()`` (the sans-I/O engine, no asyncio):

- TLS 1.2 ``PSK-AES128-CBC-SHA256`` (profile ``onem2m``) and TLS 1.3 PSK with (EC)DHE (profile ``tls13``,
  psk_dhe_ke, what the gateway offers for 1.3);
- ``pair``: an in-memory pair (engine client <-> engine server, no sockets). The server side is timed alone
  (CPU time of this thread around the server's calls only) and, with ``--callgrind``, counted alone in
  instructions (the script re-runs itself under ``valgrind --tool=callgrind --collect-atstart=no`` and toggles
  collection around the server's calls through a 2-line C helper built with <valgrind/callgrind.h>);
- the C baseline in the same run: ``bench/psk_baseline.c pair N CIPHER`` (client and server in one loop, system
  OpenSSL): CPU per handshake, and instructions per handshake under callgrind (two loop lengths, subtracted);
  it counts *both* sides, so the ratio printed is the engine server against half the C pair;
- ``--loopback`` (TLS 1.2, bench/engine_loopback.py): the engine in a blocking accept/recv/send loop against the C
  client ``bench/psk_hs_client.c`` over loopback, as ``bench/profile_gateway.py``'s "engine, blocking" rung, beside
  the C server ``psk_baseline server`` against the same client (server CPU per handshake, this process on CPU 0);
  with ``--callgrind`` also both whole server processes' instructions per handshake;
- ``--profile``: cProfile of the server side's calls only (own time, top functions);
- ``--idle N`` (bench/engine_idle.py): N established in-memory server connections kept idle, each TLS version in
  a fresh process; growth of RSS (VmRSS), of malloc in use (mallinfo2) and of the Python heap (tracemalloc) per
  connection.

    .venv/bin/python bench/engine_cost.py [--handshakes 2000] [--rounds 3] [--versions 1.2,1.3]
                                          [--callgrind] [--cg-handshakes 40] [--groups X25519] [--loopback]
                                          [--profile] [--idle N]
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import io
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_idle  # the sibling modules: idle connections' memory, the loopback rung
import engine_loopback
from engine_loopback import BASELINE_BIN, BUILD, CLIENT_BIN, IDENTITY, KEY_HEX, TOGGLE_BIN

from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.tls.engine import ClientConfig, ConnectionClosed, ServerConfig, TLSConnection, TLSContext
from m2msec.tls.profiles import parse_profiles

BENCH = Path(__file__).resolve().parent
BASELINE_SRC, CLIENT_SRC = BENCH / "psk_baseline.c", BENCH / "psk_hs_client.c"
TOGGLE_SRC = "#include <valgrind/callgrind.h>\nvoid cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }\n"
#: TLS version -> (engine profile, C baseline cipher argument)
VERSIONS = {"1.2": ("onem2m", "PSK-AES128-CBC-SHA256"), "1.3": ("tls13", "TLS13")}
OPENSSL_CONF = """openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_module
[ssl_module]
system_default = tls_defaults
[tls_defaults]
Groups = {groups}
"""


def contexts(version: str) -> tuple[TLSContext, TLSContext]:
    profile = parse_profiles(VERSIONS[version][0])
    key = SecretKey.from_hex(KEY_HEX)
    table = MemoryPSKTable([PSKEntry(IDENTITY, key, entity="Cbench")])
    server = TLSContext.server(ServerConfig(psk_lookup=table.lookup, profiles=profile))
    client = TLSContext.client(ClientConfig(IDENTITY, key, profiles=profile))
    return server, client


Step = Callable[[Callable[[], Any]], Any]


def plain(fn: Callable[[], Any]) -> Any:
    return fn()


def handshake(server: TLSContext, client: TLSContext, on_server: Step) -> TLSConnection:
    """One full in-memory handshake, then close_notify both ways; every server-side call goes through on_server."""
    c = client.connection()
    s: TLSConnection = on_server(server.connection)
    flight = c.data_to_send()
    while flight:
        on_server(lambda f=flight: s.receive_data(f))
        back = on_server(s.data_to_send)
        if back:
            c.receive_data(back)
        flight = c.data_to_send()
    assert s.session is not None and c.session is not None
    c.close()
    closing = c.data_to_send()
    events = on_server(lambda: s.receive_data(closing))
    assert any(isinstance(e, ConnectionClosed) for e in events), events
    on_server(s.close)
    on_server(s.data_to_send)
    return s


def build(source: Path, binary: Path, flags: list[str]) -> None:
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return
    BUILD.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-O2", *flags[:-2], "-o", str(binary), str(source), *flags[-2:]], check=True)


def build_all() -> None:
    build(BASELINE_SRC, BASELINE_BIN, ["-lssl", "-lcrypto"])
    build(CLIENT_SRC, CLIENT_BIN, ["-lssl", "-lcrypto"])


# --------------------------------------------------------------------------------------------------
# in-memory pair: CPU time


def pair_cpu(version: str, n: int) -> tuple[float, float]:
    """(server-side CPU s per handshake, whole pair CPU s per handshake) of n in-memory handshakes."""
    server, client = contexts(version)
    spent = 0
    clock = time.thread_time_ns

    def timed(fn: Callable[[], Any]) -> Any:
        nonlocal spent
        t0 = clock()
        result = fn()
        spent += clock() - t0
        return result

    for _ in range(50):
        handshake(server, client, plain)
    # the timer's own cost, measured the same way, is taken off
    t0 = clock()
    for _ in range(1000):
        timed(lambda: None)
    overhead = (clock() - t0) / 1000
    spent, calls = 0, 0

    def counted(fn: Callable[[], Any]) -> Any:
        nonlocal calls
        calls += 1
        return timed(fn)

    cpu0 = time.process_time()
    for _ in range(n):
        handshake(server, client, counted)
    whole = time.process_time() - cpu0
    return max(0.0, (spent - overhead * calls) / 1e9 / n), whole / n


def c_pair_cpu(version: str, n: int) -> float:
    """Seconds per handshake of psk_baseline's pair loop (client and server, system OpenSSL): the loop's own
    time as it prints it (monotonic clock around the loop only, so process start-up is left out)."""
    out = subprocess.run([str(BASELINE_BIN), "pair", str(n), VERSIONS[version][1]], check=True,
                         capture_output=True, text=True).stdout
    # "pair CIPHER: N handshakes in T s = R hs/s"
    return float(out.split(" handshakes in ")[1].split("s")[0]) / n


median = engine_loopback.median


def run_pair(args: argparse.Namespace) -> None:
    print(f"in-memory pair, {args.handshakes} handshakes per run, median of {args.rounds} interleaved rounds "
          "(engine server: thread CPU inside the server's calls; pairs: whole-loop CPU, both sides)")
    for version in args.versions:
        srv, whole, c = [], [], []
        for _ in range(args.rounds):
            s, w = pair_cpu(version, args.handshakes)
            srv.append(s)
            whole.append(w)
            c.append(c_pair_cpu(version, args.handshakes))
        s, w, cp = median(srv), median(whole), median(c)
        print(f"  TLS {version}: engine server {1e6 * s:6.1f} us/hs  engine pair {1e6 * w:6.1f} us/hs  "
              f"C pair {1e6 * cp:6.1f} us/hs  engine server / (C pair / 2) {s / (cp / 2):.2f}  "
              f"engine pair / C pair {w / cp:.2f}")


# --------------------------------------------------------------------------------------------------
# in-memory pair: instructions (callgrind)


callgrind_total = engine_loopback.callgrind_total


def cg_child(version: str, n: int) -> None:
    """Runs under callgrind: n handshakes, collection on only inside the server's calls; version ``empty``:
    n empty calls toggled the same way (what the toggling itself costs)."""
    toggle = ctypes.CDLL(str(TOGGLE_BIN)).cg_toggle

    def counted(fn: Callable[[], Any]) -> Any:
        toggle()
        try:
            return fn()
        finally:
            toggle()

    if version == "empty":
        for _ in range(n):
            counted(plain_none)
        return
    server, client = contexts(version)
    for _ in range(3):
        handshake(server, client, plain)
    for _ in range(n):
        handshake(server, client, counted)


def plain_none() -> None:
    return None


valgrind = engine_loopback.valgrind


def run_callgrind(args: argparse.Namespace) -> None:
    if shutil.which("valgrind") is None:
        print("callgrind: valgrind not installed, skipped")
        return
    BUILD.mkdir(exist_ok=True)
    if not TOGGLE_BIN.exists():
        src = BUILD / "cg_toggle.c"
        src.write_text(TOGGLE_SRC)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(TOGGLE_BIN), str(src)], check=True)
    n = args.cg_handshakes
    print(f"callgrind instructions (Ir) per handshake: engine server side ({n} handshakes), C pair loop "
          f"(both sides: runs of {n} and {2 * n}, subtracted)")
    with tempfile.TemporaryDirectory() as tmp:
        for version in args.versions:
            child = ["--collect-atstart=no", sys.executable, __file__, "--cg-child"]
            total = valgrind([*child, version, "--cg-handshakes", str(n)], Path(tmp) / "engine.out")
            calls = calls_per_handshake(version)
            toggles = valgrind([*child, "empty", "--cg-handshakes", str(n * calls)], Path(tmp) / "empty.out")
            engine = (total - toggles) / n
            small = valgrind([str(BASELINE_BIN), "pair", str(n), VERSIONS[version][1]], Path(tmp) / "c1.out")
            large = valgrind([str(BASELINE_BIN), "pair", str(2 * n), VERSIONS[version][1]], Path(tmp) / "c2.out")
            c_pair = (large - small) / n
            print(f"  TLS {version}: engine server {engine / 1e3:7.1f} k Ir/hs ({calls} server calls/hs)  "
                  f"C pair {c_pair / 1e3:7.1f} k Ir/hs  engine server / (C pair / 2) {engine / (c_pair / 2):.2f}")
            print_split(Path(tmp) / "engine.out", n, engine)


def print_split(out: Path, n: int, engine: float) -> None:
    """Where the server's instructions go: OpenSSL calls (cffi's _cffi_f_* wrappers, inclusive), the Python
    callbacks OpenSSL calls back into (PSK, inside SSL_do_handshake), and the rest (Python, cffi glue)."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                          capture_output=True, text=True, check=True).stdout
    calls: dict[str, float] = {}
    callbacks = 0.0
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*?:(\S+)", line)
        if match is None:
            continue
        cost, name = int(match[1].replace(",", "")) / n, match[2]
        if name.startswith("_cffi_f_"):
            calls[name[len("_cffi_f_"):]] = cost
        elif name == "general_invoke_callback":
            callbacks = cost
    in_openssl = sum(calls.values())
    rest = engine - in_openssl
    print(f"    OpenSSL calls {(in_openssl - callbacks) / 1e3:6.1f} k, Python callbacks inside them "
          f"{callbacks / 1e3:5.1f} k,"
          f" Python/cffi outside OpenSSL {rest / 1e3:6.1f} k ({100 * (rest + callbacks) / engine:.0f} % Python); "
          "OpenSSL calls by k Ir/hs:")
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
    print("      " + ", ".join(f"{name} {cost / 1e3:.1f}" for name, cost in top))


def calls_per_handshake(version: str) -> int:
    server, client = contexts(version)
    calls = 0

    def counting(fn: Callable[[], Any]) -> Any:
        nonlocal calls
        calls += 1
        return fn()

    handshake(server, client, counting)
    return calls


# --------------------------------------------------------------------------------------------------
# cProfile of the server side


def run_profile(args: argparse.Namespace) -> None:
    for version in args.versions:
        server, client = contexts(version)
        for _ in range(50):
            handshake(server, client, plain)
        profiler = cProfile.Profile(time.thread_time)

        def profiled(fn: Callable[[], Any], profiler: cProfile.Profile = profiler) -> Any:
            profiler.enable()
            try:
                return fn()
            finally:
                profiler.disable()

        n = args.handshakes
        for _ in range(n):
            handshake(server, client, profiled)
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(args.top)
        text = buf.getvalue()
        print(f"\ncProfile (thread CPU clock) of the server side, TLS {version}, {n} handshakes "
              f"(seconds for all of them; divide by {n})")
        print(text[text.find("   ncalls"):].rstrip())


def run_idle(args: argparse.Namespace) -> None:
    print(f"idle established server connections, {args.idle} per fresh process (in-memory pairs, one record each "
          "way; client ends discarded; RSS includes tracemalloc's own bookkeeping)")
    for version in args.versions:
        subprocess.run([sys.executable, __file__, "--idle-child", version, "--idle", str(args.idle)], check=True)


def idle_child(version: str, n: int) -> None:
    engine_idle.idle_child(contexts(version), version, n)


def main() -> int:
    p = argparse.ArgumentParser(description="the TLS engine's own cost per handshake, server side")
    p.add_argument("--handshakes", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--versions", default="1.2,1.3")
    p.add_argument("--callgrind", action="store_true", help="also count instructions under valgrind")
    p.add_argument("--cg-handshakes", type=int, default=40)
    p.add_argument("--cg-child", help=argparse.SUPPRESS)
    p.add_argument("--loopback", action="store_true", help="also TLS 1.2 over loopback against the C client")
    p.add_argument("--loopback-handshakes", type=int, default=2000)
    p.add_argument("--profile", action="store_true", help="cProfile of the server side")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--idle", type=int, default=0, help="N idle connections: bytes per connection")
    p.add_argument("--idle-child", help=argparse.SUPPRESS)
    p.add_argument("--lb-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--skip-pair", action="store_true")
    p.add_argument("--groups", default="X25519",
                   help="TLS 1.3 key exchange groups of every context in the run, through an OpenSSL config file "
                        "(default X25519: what an OpenSSL 3.0 client such as the C baseline offers; '' leaves "
                        "OpenSSL's default, where an OpenSSL >= 3.5 engine client offers X25519MLKEM768)")
    args = p.parse_args()
    if args.groups and os.environ.get("M2MSEC_BENCH_GROUPS") != args.groups:
        BUILD.mkdir(exist_ok=True)
        conf = BUILD / f"openssl-groups-{args.groups.replace(':', '_')}.cnf"
        conf.write_text(OPENSSL_CONF.format(groups=args.groups))
        env = dict(os.environ, OPENSSL_CONF=str(conf), M2MSEC_BENCH_GROUPS=args.groups)
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    if args.lb_child:
        engine_loopback.lb_child(contexts("1.2")[0], args.lb_child)
        return 0
    if args.idle_child:
        idle_child(args.idle_child, args.idle)
        return 0
    if args.cg_child:
        cg_child(args.cg_child, args.cg_handshakes)
        return 0
    args.versions = [v for v in args.versions.split(",") if v]
    build_all()
    from m2msec.tls.engine import openssl_version

    print(f"engine: {openssl_version()}; C baseline: system libssl ({BASELINE_BIN.name}); TLS 1.3 groups: "
          f"{args.groups or 'OpenSSL default'}")
    if not args.skip_pair:
        run_pair(args)
    if args.callgrind:
        run_callgrind(args)
    if args.loopback:
        engine_loopback.run_loopback(contexts("1.2")[0], args.loopback_handshakes, args.rounds)
        if args.callgrind and shutil.which("valgrind") and TOGGLE_BIN.exists():
            engine_loopback.run_callgrind(__file__, args.cg_handshakes)
    if args.profile:
        run_profile(args)
    if args.idle:
        run_idle(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
