"""Full TLS 1.2 PSK handshakes per server CPU-second: the m2msec gateway against a C OpenSSL server.

On-demand benchmark, not a test. Run from anywhere:

    .venv/bin/python bench/handshake_bench.py [--handshakes N] [--rounds R] [--entries 1,1000000]
                                              [--source toml,sqlite] [--cipher cbc|gcm|tls13]

What it does (see bench/README.md for the why):

1. builds the C baseline server (bench/psk_baseline.c) and the
   benchmark client (bench/psk_hs_client.c) into bench/build/ against the system libssl;
2. for each PSK source (TOML table, SQLite store) and table size, generates the table once (cached in
   bench/build/), starts ``m2msec gateway`` pinned to CPU 0, and a C baseline server pinned to CPU 0;
3. runs the same C client, pinned to CPU 1, against both servers in turn (C, gateway, C, gateway, ...
   for R rounds): N sequential full handshakes, one TCP connection each, close_notify, close;
4. reads each server's CPU time (utime + stime, /proc/PID/stat) around every client run and prints
   handshakes per server CPU-second, wall handshakes/s, their gateway/C ratios (medians), the gateway's
   startup time and memory.

Exit status: 0 when every handshake succeeded, 1 when a handshake or a server failed, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from procs import cpu_seconds, free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BUILD = BENCH / "build"
BASELINE_SRC = BENCH / "psk_baseline.c"
CLIENT_SRC = BENCH / "psk_hs_client.c"
BASELINE_BIN = BUILD / "psk_baseline"
CLIENT_BIN = BUILD / "psk_hs_client"

#: the identity and key compiled into psk_baseline.c; every generated table contains this entry
IDENTITY = "client1"
KEY_HEX = "00112233445566778899aabbccddeeff"
#: suites the client can ask for: TS-0003 §10.2.2 mandatory TLS 1.2 suite, its GCM variant, and TLS 1.3 external
#: PSK (psk_dhe_ke, the gateway's "tls13" profile)
CIPHERS = {"cbc": "PSK-AES128-CBC-SHA256", "gcm": "PSK-AES128-GCM-SHA256", "tls13": "TLS_AES_128_GCM_SHA256"}
#: what both servers accept: the gateway's "onem2m" and "tls13" profiles (m2msec.tls.profiles.ONEM2M_PSK, TLS13_PSK)
SERVER_CIPHERS = "PSK-AES128-CBC-SHA256:PSK-AES128-GCM-SHA256,TLS13"
SERVER_PROFILES = "onem2m,tls13"
#: no HTTP request is ever sent, so the gateway never connects to its backend
DUMMY_BACKEND = "http://127.0.0.1:9"
SERVER_CPU = "0"
CLIENT_CPU = "1"
STARTUP_TIMEOUT = 900.0
#: how long to let a server finish the last connection's teardown before reading its CPU time
SETTLE_S = 0.15
GOAL = 0.7


class BenchError(Exception):
    """A failure that ends the benchmark with one message."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------------------------------
# building


def build(source: Path, binary: Path, what: str) -> None:
    """Compile ``source`` with gcc against the system libssl, unless ``binary`` is newer."""
    if not source.is_file():
        raise BenchError(f"{what} not found: {source}", exit_code=2)
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BenchError("gcc not found (install gcc and libssl-dev)", exit_code=2)
    binary.parent.mkdir(parents=True, exist_ok=True)
    cmd = [gcc, "-O2", "-o", str(binary), str(source), "-lssl", "-lcrypto"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
        raise BenchError(f"building {source.name} failed: {first}", exit_code=2)


# --------------------------------------------------------------------------------------------------
# PSK tables


def _identities(entries: int) -> Iterator[tuple[str, str]]:
    """(identity, key hex) pairs: ``client1`` with the baseline key in the middle, random keys elsewhere."""
    special = entries // 2
    for i in range(entries):
        if i == special:
            yield IDENTITY, KEY_HEX
        else:
            yield f"id{i}@bench.example", secrets.token_hex(16)


def toml_table(entries: int) -> Path:
    """bench/build/psk-N.toml (mode 600), generated on first use."""
    path = BUILD / f"psk-{entries}.toml"
    if path.exists():
        return path
    BUILD.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=BUILD)  # mode 600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            chunk: list[str] = []
            for identity, key in _identities(entries):
                chunk.append(f'[[psk]]\nidentity = "{identity}"\nkey = "{key}"\n')
                if len(chunk) >= 10000:
                    fh.write("".join(chunk))
                    chunk.clear()
            fh.write("".join(chunk))
        os.replace(tmp_name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    return path


def sqlite_table(entries: int) -> Path:
    """bench/build/psk-N.db with its master key psk-N.db.key, generated on first use."""
    path = BUILD / f"psk-{entries}.db"
    key_file = path.with_name(path.name + ".key")
    if path.exists() and key_file.exists():
        return path
    from m2msec.keys.secret import SecretKey
    from m2msec.keys.sqlite_store import SQLitePSKStore
    from m2msec.keys.table import PSKEntry

    BUILD.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD, prefix="gen-") as tmp:
        tmp_db = Path(tmp) / path.name
        store = SQLitePSKStore(tmp_db)  # creates tmp_db.key beside it
        try:
            store.add_many(PSKEntry(ident, SecretKey.from_hex(key)) for ident, key in _identities(entries))
        finally:
            store.close()
        # the key first: a database without its key would make the gateway create a wrong one
        os.replace(tmp_db.with_name(tmp_db.name + ".key"), key_file)
        os.replace(tmp_db, path)
    return path


# --------------------------------------------------------------------------------------------------
# processes and /proc


def pinned(cpu: str, cmd: Sequence[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", cpu, *cmd]
    return list(cmd)


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    startup_s: float = 0.0

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.proc.returncode}; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(name: str, cmd: Sequence[str], port: int) -> Server:
    """Start a server pinned to SERVER_CPU; return once a TCP connection to it is accepted."""
    log = BUILD / f"{name.replace(' ', '-')}.log"
    with open(log, "wb") as fh:
        t0 = time.monotonic()
        proc = subprocess.Popen(pinned(SERVER_CPU, cmd), stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    server = Server(name, proc, port, log)
    while True:
        try:
            server.check_alive()
        except BenchError:
            server.stop()
            raise
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                server.startup_s = time.monotonic() - t0
                return server
        except OSError:
            pass
        if time.monotonic() - t0 > STARTUP_TIMEOUT:
            server.stop()
            raise BenchError(f"{name} did not accept connections within {STARTUP_TIMEOUT:.0f} s")
        time.sleep(0.005)


def start_c_server() -> Server:
    port = free_port()
    return start_server("C baseline", [str(BASELINE_BIN), "server", str(port), SERVER_CIPHERS], port)


def start_gateway(source: str, table: Path, entries: int) -> Server:
    m2msec = Path(sys.executable).parent / "m2msec"
    if not m2msec.exists():
        raise BenchError(f"{m2msec} not found: run with the project's venv python (.venv/bin/python)", 2)
    port = free_port()
    option = "--psk-table" if source == "toml" else "--db"
    cmd = [str(m2msec), "gateway", "--listen", f"127.0.0.1:{port}", option, str(table),
           "--backend", DUMMY_BACKEND, "--profiles", SERVER_PROFILES, "--quiet"]
    return start_server(f"gateway {source} {entries}", cmd, port)


# --------------------------------------------------------------------------------------------------
# measuring


@dataclass(frozen=True)
class Sample:
    hs_per_cpu_s: float
    wall_hs_per_s: float
    cpu_s: float


def run_client(server: Server, handshakes: int, cipher: str) -> dict[str, str]:
    cmd = pinned(CLIENT_CPU, [str(CLIENT_BIN), str(server.port), str(handshakes), cipher, IDENTITY, KEY_HEX])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    fields = dict(item.split("=", 1) for item in proc.stdout.split() if "=" in item)
    if proc.returncode != 0 or fields.get("failures") != "0" or fields.get("ok") != str(handshakes):
        detail = proc.stderr.strip() or proc.stdout.strip() or f"client exit status {proc.returncode}"
        raise BenchError(
            f"handshakes against the {server.name} failed ({fields.get('failures', '?')} of {handshakes}):\n"
            f"{detail}\n-- server log --\n{server.log_tail()}"
        )
    return fields


def measure(server: Server, handshakes: int, cipher: str) -> Sample:
    server.check_alive()
    pid = server.proc.pid
    before = cpu_seconds(pid)
    fields = run_client(server, handshakes, cipher)
    time.sleep(SETTLE_S)  # the server may still be tearing down the last connection
    server.check_alive()
    cpu = cpu_seconds(pid) - before
    if cpu <= 0:
        raise BenchError(f"the {server.name} used no measurable CPU time: raise --handshakes")
    return Sample(handshakes / cpu, float(fields["hs_per_s"]), cpu)


@dataclass
class Result:
    source: str
    entries: int
    c: list[Sample] = field(default_factory=list)
    gw: list[Sample] = field(default_factory=list)
    startup_s: float = 0.0
    rss_mib: float = 0.0
    peak_mib: float = 0.0

    def median(self, which: str, attr: str) -> float:
        samples = self.c if which == "c" else self.gw
        return statistics.median(getattr(s, attr) for s in samples)

    def ratio(self, attr: str) -> float:
        return self.median("gw", attr) / self.median("c", attr)

    def round_ratios(self, attr: str) -> list[float]:
        return [getattr(g, attr) / getattr(c, attr) for c, g in zip(self.c, self.gw, strict=True)]


def bench_one(source: str, entries: int, args: argparse.Namespace, cipher: str) -> Result:
    cached = (BUILD / f"psk-{entries}.{'toml' if source == 'toml' else 'db'}").exists()
    t0 = time.monotonic()
    table = toml_table(entries) if source == "toml" else sqlite_table(entries)
    if not cached:
        print(f"  generated {table.name} in {time.monotonic() - t0:.1f} s (cached in bench/build/)", flush=True)
    result = Result(source, entries)
    c_server = gateway = None
    try:
        c_server = start_c_server()
        gateway = start_gateway(source, table, entries)
        result.startup_s = gateway.startup_s
        print(f"  gateway accepting after {gateway.startup_s:.2f} s", flush=True)
        for server in (c_server, gateway):  # warm-up, not measured; also checks the configuration works
            run_client(server, args.warmup, cipher)
        for r in range(1, args.rounds + 1):
            c = measure(c_server, args.handshakes, cipher)
            g = measure(gateway, args.handshakes, cipher)
            result.c.append(c)
            result.gw.append(g)
            print(f"  round {r}: C {c.hs_per_cpu_s:7.0f} hs/cpu-s {c.wall_hs_per_s:6.0f} hs/s | "
                  f"gateway {g.hs_per_cpu_s:7.0f} hs/cpu-s {g.wall_hs_per_s:6.0f} hs/s | "
                  f"ratio cpu {g.hs_per_cpu_s / c.hs_per_cpu_s:.2f} wall {g.wall_hs_per_s / c.wall_hs_per_s:.2f}",
                  flush=True)
        result.rss_mib, result.peak_mib = memory_mib(gateway.proc.pid)
    finally:
        for server in (gateway, c_server):
            if server is not None:
                server.stop()
    return result


# --------------------------------------------------------------------------------------------------
# report


def versions() -> list[str]:
    lines = [f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}"]
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    lines.append(f"machine: {os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
                 f"Python {platform.python_version()}")
    try:
        system = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        system = "unknown (no openssl command)"
    lines.append(f"C baseline and client (system libssl): {system}")
    from m2msec.tls.engine import openssl_version

    lines.append(f"gateway engine (pyOpenSSL/cryptography): {openssl_version()}")
    return lines


def print_table(results: Sequence[Result]) -> None:
    header = ("source", "entries", "C hs/cpu-s", "gw hs/cpu-s", "ratio", "C wall hs/s", "gw wall hs/s", "ratio",
              "gw startup s", "gw RSS MiB", "gw peak MiB")
    rows = [header]
    for r in results:
        rows.append((
            r.source, f"{r.entries:,}",
            f"{r.median('c', 'hs_per_cpu_s'):.0f}", f"{r.median('gw', 'hs_per_cpu_s'):.0f}",
            f"{r.ratio('hs_per_cpu_s'):.2f}",
            f"{r.median('c', 'wall_hs_per_s'):.0f}", f"{r.median('gw', 'wall_hs_per_s'):.0f}",
            f"{r.ratio('wall_hs_per_s'):.2f}",
            f"{r.startup_s:.2f}", f"{r.rss_mib:.0f}", f"{r.peak_mib:.0f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def parse_list(text: str, allowed: Sequence[str] | None = None) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    if allowed is not None:
        bad = [item for item in items if item not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def parse_entries(text: str) -> list[int]:
    try:
        sizes = [int(item) for item in parse_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError("table sizes must be integers, e.g. 1,1000000") from None
    if any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError("table sizes must be at least 1")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--handshakes", type=int, default=5000, metavar="N", help="handshakes per client run (5000)")
    p.add_argument("--rounds", type=int, default=3, metavar="R", help="interleaved C/gateway rounds (3)")
    p.add_argument("--entries", type=parse_entries, default=[1, 1_000_000], metavar="SIZES",
                   help="comma-separated PSK table sizes (1,1000000)")
    p.add_argument("--source", type=lambda s: parse_list(s, ("toml", "sqlite")), default=["toml", "sqlite"],
                   metavar="SOURCES", help="comma-separated gateway key sources: toml, sqlite (both)")
    p.add_argument("--cipher", choices=sorted(CIPHERS), default="cbc",
                   help="cbc = PSK-AES128-CBC-SHA256 (TS-0003 §10.2.2 mandatory, default), gcm = PSK-AES128-GCM-SHA256")
    p.add_argument("--warmup", type=int, default=200, metavar="N", help="unmeasured handshakes per server (200)")
    args = p.parse_args(argv)
    if args.handshakes < 1 or args.rounds < 1 or args.warmup < 1:
        p.error("--handshakes, --rounds and --warmup must be positive")
    cipher = CIPHERS[args.cipher]
    try:
        build(BASELINE_SRC, BASELINE_BIN, "C baseline source (bench/psk_baseline.c)")
        build(CLIENT_SRC, CLIENT_BIN, "benchmark client source")
        if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
            print("warning: fewer than 2 CPUs or no taskset: server and client are not pinned apart", flush=True)
        header = versions()
        print(f"TLS 1.2 {cipher}, full handshakes (new TCP connection, no resumption), "
              f"{args.handshakes} per run, {args.rounds} interleaved rounds; server on CPU {SERVER_CPU}, "
              f"client on CPU {CLIENT_CPU}", flush=True)
        results: list[Result] = []
        for source in args.source:
            for entries in args.entries:
                print(f"{source} table, {entries:,} {'entry' if entries == 1 else 'entries'}:", flush=True)
                results.append(bench_one(source, entries, args, cipher))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    print()
    for line in header:
        print(line)
    print(f"medians of {args.rounds} rounds; ratio = gateway / C; goal: cpu ratio >= {GOAL}")
    print()
    print_table(results)
    print()
    for r in results:
        spread = " ".join(f"{x:.2f}" for x in r.round_ratios("hs_per_cpu_s"))
        verdict = "met" if r.ratio("hs_per_cpu_s") >= GOAL else "NOT met"
        print(f"{r.source} {r.entries:,}: per-round cpu ratios {spread}; goal >= {GOAL}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
