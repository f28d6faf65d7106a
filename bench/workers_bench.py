"""Full TLS 1.2 PSK handshakes per second (wall) with ``m2msec gateway --workers 1`` and ``--workers 2``.

On-demand benchmark, not a test. Run from anywhere:

    .venv/bin/python bench/workers_bench.py [--clients C] [--handshakes N] [--rounds R]

What it does (see bench/README.md, "Workers benchmark"):

1. builds bench/psk_baseline.c and bench/psk_hs_client.c as bench/handshake_bench.py does;
2. starts three servers, none pinned: the C OpenSSL baseline (one process, one thread), ``m2msec gateway
   --workers 1`` and ``m2msec gateway --workers 2`` (TOML table of one entry, ``--profiles onem2m --quiet``);
3. for R rounds, in the order C, 1 worker, 2 workers: C concurrent ``psk_hs_client`` processes (C 4), each
   making N sequential full handshakes on new TCP connections, and measures the wall time of the whole batch,
   the CPU time (utime + stime) of every server process (/proc/PID/stat: the supervisor and each worker, before
   and after) and of the client processes (their rusage, read when each is reaped: the same counters);
4. prints every round and the medians: handshakes/s wall, server and client CPU seconds, handshakes per server
   CPU-second, each with its ratio to the C server measured in the same round.

Client and servers share the machine's CPUs (2 here): the clients' CPU is reported because it competes with the
servers for the same cores. Exit status: 0 when every handshake succeeded, 1 otherwise, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import handshake_bench as hb  # bench/ is not a package


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int

    def pids(self) -> list[int]:
        """The server's processes: itself and its children (a supervisor's workers)."""
        pids = [self.proc.pid]
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children", encoding="ascii") as fh:
                pids += [int(p) for p in fh.read().split()]
        except OSError:
            pass
        return pids

    def cpu(self) -> dict[int, float]:
        out = {}
        for pid in self.pids():
            try:
                out[pid] = hb.cpu_seconds(pid)
            except OSError:
                pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(name: str, cmd: Sequence[str], port: int) -> Server:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=hb.ROOT)
    server = Server(name, proc, port)
    if "gateway" in name:  # the supervisor prints its start line once every worker serves
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("m2msec gateway on"):
            server.stop()
            raise hb.BenchError(f"{name} did not start: {line!r}")
        proc.stdout.close()
        return server
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return server
        except OSError:
            time.sleep(0.01)
    server.stop()
    raise hb.BenchError(f"{name} did not accept connections")


def start_gateway(workers: int) -> Server:
    m2msec = Path(sys.executable).parent / "m2msec"
    port = hb.free_port()
    cmd = [str(m2msec), "gateway", "--listen", f"127.0.0.1:{port}", "--psk-table", str(hb.toml_table(1)),
           "--backend", hb.DUMMY_BACKEND, "--profiles", "onem2m", "--quiet", "--workers", str(workers)]
    return start(f"gateway --workers {workers}", cmd, port)


@dataclass(frozen=True)
class Sample:
    wall_hs_per_s: float
    server_cpu_s: float
    client_cpu_s: float
    handshakes: int

    @property
    def hs_per_server_cpu_s(self) -> float:
        return self.handshakes / self.server_cpu_s


def batch(server: Server, clients: int, handshakes: int, cipher: str) -> Sample:
    """``clients`` concurrent C clients, ``handshakes`` each; wall time, server and client CPU."""
    before = server.cpu()
    cmd = [str(hb.CLIENT_BIN), str(server.port), str(handshakes), cipher, hb.IDENTITY, hb.KEY_HEX]
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(clients)]
    client_cpu = 0.0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        client_cpu += usage.ru_utime + usage.ru_stime
    wall = time.monotonic() - t0
    for proc in procs:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
        if proc.returncode != 0 or f"ok={handshakes}" not in out:
            raise hb.BenchError(f"{server.name}: client failed: {out.strip()} {err.strip()[:500]}")
    time.sleep(hb.SETTLE_S)
    after = server.cpu()
    server_cpu = sum(after[pid] - before.get(pid, 0.0) for pid in after)
    return Sample(clients * handshakes / wall, server_cpu, client_cpu, clients * handshakes)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=4, metavar="C", help="concurrent client processes (4)")
    p.add_argument("--handshakes", type=int, default=500, metavar="N", help="handshakes per client per round (500)")
    p.add_argument("--rounds", type=int, default=3, metavar="R", help="rounds, C / 1 worker / 2 workers each (3)")
    args = p.parse_args(argv)
    if min(args.clients, args.handshakes, args.rounds) < 1:
        p.error("--clients, --handshakes and --rounds must be positive")
    cipher = hb.CIPHERS["cbc"]
    servers: list[Server] = []
    results: dict[str, list[Sample]] = {}
    try:
        hb.build(hb.BASELINE_SRC, hb.BASELINE_BIN, "C baseline source (bench/psk_baseline.c)")
        hb.build(hb.CLIENT_SRC, hb.CLIENT_BIN, "benchmark client source")
        c_port = hb.free_port()
        servers = [start("C server", [str(hb.BASELINE_BIN), "server", str(c_port), hb.SERVER_CIPHERS], c_port),
                   start_gateway(1), start_gateway(2)]
        print(f"TLS 1.2 {cipher}, full handshakes; {args.clients} concurrent C clients x {args.handshakes} "
              f"handshakes per batch; {os.cpu_count()} CPUs shared by servers and clients (nothing pinned)",
              flush=True)
        for server in servers:
            batch(server, 1, 50, cipher)  # warm-up, not measured
            results[server.name] = []
        for r in range(1, args.rounds + 1):
            line = []
            for server in servers:
                s = batch(server, args.clients, args.handshakes, cipher)
                results[server.name].append(s)
                line.append(f"{server.name}: {s.wall_hs_per_s:6.0f} hs/s server {s.server_cpu_s:5.2f} cpu-s "
                            f"clients {s.client_cpu_s:5.2f} cpu-s")
            print(f"round {r}: " + " | ".join(line), flush=True)
    except hb.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        for server in servers:
            server.stop()
    print()
    for line in hb.versions():
        print(line)
    print(f"medians of {args.rounds} rounds; ratios against the C server in the same rounds")
    c = results["C server"]

    def med(samples: list[Sample], attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in samples)

    header = ("server", "wall hs/s", "vs C", "server cpu-s", "client cpu-s", "hs/server-cpu-s", "vs C")
    rows = [header]
    for name, samples in results.items():
        rows.append((name, f"{med(samples, 'wall_hs_per_s'):.0f}",
                     f"{med(samples, 'wall_hs_per_s') / med(c, 'wall_hs_per_s'):.2f}",
                     f"{med(samples, 'server_cpu_s'):.2f}", f"{med(samples, 'client_cpu_s'):.2f}",
                     f"{med(samples, 'hs_per_server_cpu_s'):.0f}",
                     f"{med(samples, 'hs_per_server_cpu_s') / med(c, 'hs_per_server_cpu_s'):.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join([row[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(row[1:], widths[1:], strict=True)]))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    one, two = results["gateway --workers 1"], results["gateway --workers 2"]
    print(f"\n2 workers / 1 worker, wall handshakes/s: {med(two, 'wall_hs_per_s') / med(one, 'wall_hs_per_s'):.2f} "
          f"(per round: {' '.join(f'{b.wall_hs_per_s / a.wall_hs_per_s:.2f}' for a, b in zip(one, two, strict=True))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
