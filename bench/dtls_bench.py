"""Full DTLS 1.2 PSK handshakes per server CPU-second: the m2msec coaps gateway against a C OpenSSL server.

On-demand benchmark, not a test. Run from anywhere:

    .venv/bin/python bench/dtls_bench.py [--handshakes N] [--rounds R] [--warmup N] [--loss PCT] [--seed S]

What it does (see bench/README.md, "DTLS handshake benchmark", for the why):

1. builds bench/dtls_baseline.c (the C DTLS server and the benchmark client, one binary) into bench/build/
   against the system libssl;
2. writes the one-entry PSK table bench/build/dtls-psk.toml (mode 600) and starts the C server and
   ``m2msec gateway --coap-backend 127.0.0.1:9 --coaps-listen 127.0.0.1:0``, both pinned to CPU 0;
3. runs the same C client, pinned to CPU 1, against both in turn (C, m2msec, C, m2msec, ... for R rounds):
   N sequential full handshakes with TLS_PSK_WITH_AES_128_CCM_8, each from a new UDP socket (a new source
   port, so each one includes the cookie exchange), then close_notify; with ``--loss PCT`` the client goes
   through bench/dtls_relay.py (also on CPU 1), which drops PCT % of the datagrams both ways;
4. reads each server's CPU time (utime + stime, /proc/PID/stat) around every client run and prints
   handshakes per server CPU-second, wall handshakes/s and their m2msec/C ratios (medians).

Exit status: 0 when every handshake succeeded, 1 when a handshake or a server failed (the reasons are
printed), 2 on a setup error.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import handshake_bench as hb  # the TLS benchmark: building, pinning, /proc accounting, versions

DTLS_SRC = hb.BENCH / "dtls_baseline.c"
DTLS_BIN = hb.BUILD / "dtls_baseline"
RELAY = hb.BENCH / "dtls_relay.py"
TABLE = hb.BUILD / "dtls-psk.toml"

#: the suite the client asks for: TS-0003 §10.2.2 / RFC 7252 §9.1.3.1 mandatory TLS_PSK_WITH_AES_128_CCM_8
CIPHER = "PSK-AES128-CCM8"
#: identity and key of the one-entry table, given to the C server and the client on their command lines
IDENTITY = hb.IDENTITY
KEY_HEX = hb.KEY_HEX
#: no CoAP message is ever sent, so the gateway never sends anything to its backend
DUMMY_COAP_BACKEND = "127.0.0.1:9"
#: the gateway's DTLS handshake timeout by default (CoapsConfig.handshake_timeout); the C server gets the same
SERVER_HS_TIMEOUT = 10.0
STARTUP_TIMEOUT = 60.0
#: stop a client run after this many failures (a broken server would otherwise cost N client timeouts)
MAX_FAILURES = 10
GOAL = hb.GOAL

LISTENING = re.compile(r" on [0-9.]+:(\d+)")


def server_ciphers() -> str:
    """What both servers accept: the gateway's DTLS profile (m2msec.tls.profiles.ONEM2M_DTLS_PSK)."""
    from m2msec.tls.profiles import ONEM2M_DTLS_PSK

    return ONEM2M_DTLS_PSK.tls12_ciphers


def psk_table() -> Path:
    """bench/build/dtls-psk.toml, mode 600: ``client1`` with the benchmark key."""
    hb.BUILD.mkdir(parents=True, exist_ok=True)
    text = f'[[psk]]\nidentity = "{IDENTITY}"\nkey = "{KEY_HEX}"\n'
    fd = os.open(TABLE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text)
    os.chmod(TABLE, 0o600)  # an older file keeps its mode through O_CREAT
    return TABLE


# --------------------------------------------------------------------------------------------------
# processes


def spawn(name: str, cmd: Sequence[str], cpu: str, log: Path) -> hb.Server:
    """Start ``cmd`` pinned to ``cpu``; return once it printed ``... on HOST:PORT`` (the port it bound)."""
    with open(log, "wb") as fh:
        t0 = time.monotonic()
        proc = subprocess.Popen(hb.pinned(cpu, cmd), stdout=fh, stderr=subprocess.STDOUT, cwd=hb.ROOT)
    server = hb.Server(name, proc, 0, log)
    while True:
        try:
            server.check_alive()
        except hb.BenchError:
            server.stop()
            raise
        match = LISTENING.search(log.read_text(encoding="utf-8", errors="replace"))
        if match:
            server.port = int(match.group(1))
            server.startup_s = time.monotonic() - t0
            return server
        if time.monotonic() - t0 > STARTUP_TIMEOUT:
            server.stop()
            raise hb.BenchError(f"{name} did not report its port within {STARTUP_TIMEOUT:.0f} s:\n{server.log_tail()}")
        time.sleep(0.005)


def start_c_server() -> hb.Server:
    cmd = [str(DTLS_BIN), "server", "-t", f"{SERVER_HS_TIMEOUT:g}", "127.0.0.1", "0", IDENTITY, KEY_HEX,
           server_ciphers()]
    return spawn("C server", cmd, hb.SERVER_CPU, hb.BUILD / "dtls-C-server.log")


def start_gateway(table: Path) -> hb.Server:
    m2msec = Path(sys.executable).parent / "m2msec"
    if not m2msec.exists():
        raise hb.BenchError(f"{m2msec} not found: run with the project's venv python (.venv/bin/python)", 2)
    cmd = [str(m2msec), "gateway", "--quiet", "--psk-table", str(table), "--coap-backend", DUMMY_COAP_BACKEND,
           "--coaps-listen", "127.0.0.1:0", "--handshake-timeout", f"{SERVER_HS_TIMEOUT:g}"]
    return spawn("m2msec gateway", cmd, hb.SERVER_CPU, hb.BUILD / "dtls-m2msec-gateway.log")


def start_relay(port: int, loss: float, seed: int) -> hb.Server:
    cmd = [sys.executable, str(RELAY), "--target", f"127.0.0.1:{port}", "--loss", f"{loss:g}", "--seed", str(seed)]
    return spawn("relay", cmd, hb.CLIENT_CPU, hb.BUILD / "dtls-relay.log")


def counters(log: Path, prefix: str) -> dict[str, int]:
    """The ``name=value`` pairs of the last line of ``log`` that starts with ``prefix``."""
    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.startswith(prefix)]
    if not lines:
        return {}
    pairs = (item.split("=", 1) for item in lines[-1].split() if "=" in item)
    return {k: int(v) for k, v in pairs if v.isdigit()}


# --------------------------------------------------------------------------------------------------
# measuring


@dataclass(frozen=True)
class Sample:
    hs_per_cpu_s: float  # completed handshakes per server CPU-second
    wall_hs_per_s: float  # the client's figure: handshakes / elapsed
    cpu_s: float
    ok: int
    failures: int
    retransmits: int  # the client's retransmission timeouts
    dropped: int = 0  # datagrams the relay dropped (both ways)
    relayed: int = 0  # datagrams the relay saw (both ways)


@dataclass
class Failure:
    server: str
    round: int
    failures: int
    attempted: int
    detail: str


def run_client(port: int, handshakes: int, timeout: float) -> tuple[dict[str, str], str, int]:
    cmd = hb.pinned(hb.CLIENT_CPU, [str(DTLS_BIN), "client", "-t", f"{timeout:g}", "-f", str(MAX_FAILURES),
                                    str(port), str(handshakes), CIPHER, IDENTITY, KEY_HEX])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    fields = dict(item.split("=", 1) for item in proc.stdout.split() if "=" in item)
    if proc.returncode not in (0, 1) or "ok" not in fields:
        detail = proc.stderr.strip() or proc.stdout.strip() or "(no output)"
        raise hb.BenchError(f"the client failed (exit status {proc.returncode}): {detail}")
    return fields, proc.stderr.strip(), proc.returncode


def measure(server: hb.Server, args: argparse.Namespace, rnd: int, failures: list[Failure]) -> Sample:
    server.check_alive()
    relay = start_relay(server.port, args.loss, args.seed + rnd) if args.loss > 0 else None
    pid = server.proc.pid
    try:
        before = hb.cpu_seconds(pid)
        fields, stderr, _ = run_client(relay.port if relay else server.port, args.handshakes, args.client_timeout)
        time.sleep(hb.SETTLE_S)  # the server may still be handling the last close_notify
        server.check_alive()
        cpu = hb.cpu_seconds(pid) - before
    finally:
        if relay is not None:
            relay.stop()
    ok, failed, attempted = int(fields["ok"]), int(fields["failures"]), int(fields["handshakes"])
    if failed:
        failures.append(Failure(server.name, rnd, failed, attempted,
                                f"{stderr}\n-- {server.name} log (last lines) --\n{server.log_tail()}"))
    if cpu <= 0:
        raise hb.BenchError(f"the {server.name} used no measurable CPU time: raise --handshakes")
    relay_counts = counters(relay.log, "relay ") if relay else {}
    dropped = relay_counts.get("up_dropped", 0) + relay_counts.get("down_dropped", 0)
    relayed = dropped + relay_counts.get("up", 0) + relay_counts.get("down", 0)
    return Sample(ok / cpu, float(fields["hs_per_s"]), cpu, ok, failed, int(fields.get("retransmits", 0)),
                  dropped, relayed)


@dataclass
class Result:
    c: list[Sample] = field(default_factory=list)
    gw: list[Sample] = field(default_factory=list)
    c_startup_s: float = 0.0
    gw_startup_s: float = 0.0
    c_mem: tuple[float, float] = (0.0, 0.0)
    gw_mem: tuple[float, float] = (0.0, 0.0)
    c_counters: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def median(samples: Sequence[Sample], attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in samples)

    def ratio(self, attr: str) -> float:
        c = self.median(self.c, attr)
        return self.median(self.gw, attr) / c if c else float("nan")

    def round_ratios(self, attr: str) -> list[float]:
        return [getattr(g, attr) / getattr(c, attr) if getattr(c, attr) else float("nan")
                for c, g in zip(self.c, self.gw, strict=True)]


def fmt_round(name: str, s: Sample, loss: bool) -> str:
    text = f"{name} {s.hs_per_cpu_s:6.0f} hs/cpu-s {s.wall_hs_per_s:7.1f} hs/s"
    if loss:
        text += f" {s.retransmits:3d} retr, {s.dropped}/{s.relayed} dropped"
    if s.failures:
        text += f" {s.failures} FAILED"
    return text


def bench(args: argparse.Namespace, failures: list[Failure]) -> Result:
    table = psk_table()
    result = Result()
    c_server = gateway = None
    try:
        c_server = start_c_server()
        gateway = start_gateway(table)
        result.c_startup_s, result.gw_startup_s = c_server.startup_s, gateway.startup_s
        print(f"  C server listening after {c_server.startup_s:.2f} s, m2msec gateway after "
              f"{gateway.startup_s:.2f} s", flush=True)
        for server in (c_server, gateway):  # warm-up without loss, not measured; also checks the setup works
            fields, stderr, _ = run_client(server.port, args.warmup, 5.0)
            if fields["failures"] != "0":
                failures.append(Failure(server.name, 0, int(fields["failures"]), int(fields["handshakes"]),
                                        f"{stderr}\n-- {server.name} log (last lines) --\n{server.log_tail()}"))
                raise hb.BenchError(f"warm-up handshakes against the {server.name} failed")
        for r in range(1, args.rounds + 1):
            c = measure(c_server, args, r, failures)
            g = measure(gateway, args, r, failures)
            result.c.append(c)
            result.gw.append(g)
            cpu_ratio = g.hs_per_cpu_s / c.hs_per_cpu_s if c.hs_per_cpu_s else float("nan")
            print(f"  round {r}: {fmt_round('C', c, args.loss > 0)} | {fmt_round('m2msec', g, args.loss > 0)} | "
                  f"ratio cpu {cpu_ratio:.2f} wall {g.wall_hs_per_s / c.wall_hs_per_s:.2f}", flush=True)
        result.c_mem = hb.memory_mib(c_server.proc.pid)
        result.gw_mem = hb.memory_mib(gateway.proc.pid)
    finally:
        for server in (gateway, c_server):
            if server is not None:
                server.stop()
        if c_server is not None:
            result.c_counters = counters(c_server.log, "handshakes=")
    return result


# --------------------------------------------------------------------------------------------------
# report


def print_table(res: Result, loss: bool) -> None:
    header = ["server", "hs/cpu-s", "us/hs", "wall hs/s", "cpu-s/run", "failed", "startup s", "RSS MiB", "peak MiB"]
    if loss:
        header[6:6] = ["client retr", "dropped"]
    rows = [header]
    for name, samples, startup, (rss, peak) in (("C baseline", res.c, res.c_startup_s, res.c_mem),
                                                 ("m2msec gateway", res.gw, res.gw_startup_s, res.gw_mem)):
        rate = Result.median(samples, "hs_per_cpu_s")
        row = [name, f"{rate:.0f}", f"{1e6 / rate:.0f}" if rate else "-",
               f"{Result.median(samples, 'wall_hs_per_s'):.1f}", f"{Result.median(samples, 'cpu_s'):.2f}",
               f"{sum(s.failures for s in samples)}/{sum(s.ok + s.failures for s in samples)}",
               f"{startup:.2f}", f"{rss:.0f}", f"{peak:.0f}"]
        if loss:
            row[6:6] = [f"{Result.median(samples, 'retransmits'):.0f}",
                        f"{sum(s.dropped for s in samples)}/{sum(s.relayed for s in samples)}"]
        rows.append(row)
    ratio = ["ratio m2msec/C", f"{res.ratio('hs_per_cpu_s'):.2f}", f"{1 / res.ratio('hs_per_cpu_s'):.2f}",
             f"{res.ratio('wall_hs_per_s'):.2f}", f"{res.ratio('cpu_s'):.2f}"]
    rows.append(ratio + [""] * (len(header) - len(ratio)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--handshakes", type=int, default=2000, metavar="N",
                   help="handshakes per client run (2000; keep it small, e.g. 50, with --loss)")
    p.add_argument("--rounds", type=int, default=3, metavar="R", help="interleaved C/m2msec rounds (3)")
    p.add_argument("--warmup", type=int, default=200, metavar="N",
                   help="unmeasured handshakes per server before the rounds, without loss (200)")
    p.add_argument("--loss", type=float, default=0.0, metavar="PCT",
                   help="run the client through a UDP relay that drops PCT %% of the datagrams both ways (0: none)")
    p.add_argument("--seed", type=int, default=1, help="seed of the relay's drops; round r uses SEED + r (1)")
    p.add_argument("--client-timeout", type=float, default=None, metavar="S",
                   help="the client's limit per handshake (5 s; 30 s with --loss: the servers give up after 10 s)")
    args = p.parse_args(argv)
    if args.handshakes < 1 or args.rounds < 1 or args.warmup < 1:
        p.error("--handshakes, --rounds and --warmup must be positive")
    if not 0 <= args.loss < 100:
        p.error("--loss must be in [0, 100)")
    if args.client_timeout is None:
        args.client_timeout = 30.0 if args.loss > 0 else 5.0
    failures: list[Failure] = []
    try:
        hb.build(DTLS_SRC, DTLS_BIN, "C DTLS baseline source")
        if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
            print("warning: fewer than 2 CPUs or no taskset: servers and client are not pinned apart", flush=True)
        header = hb.versions()
        loss = f", through a relay dropping {args.loss:g}% of datagrams both ways" if args.loss > 0 else ""
        print(f"DTLS 1.2 {CIPHER}, full handshakes with cookie exchange (HelloVerifyRequest), each from a new UDP "
              f"socket, no resumption{loss}; {args.handshakes} per run, {args.rounds} interleaved rounds; "
              f"servers on CPU {hb.SERVER_CPU}, client on CPU {hb.CLIENT_CPU}", flush=True)
        result = bench(args, failures)
    except hb.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for f in failures:
            print(f"{f.server}: {f.failures} of {f.attempted} handshakes failed:\n{f.detail}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    print()
    for line in header:
        print(line)
    print(f"medians of {args.rounds} rounds; ratio = m2msec / C; goal: cpu ratio >= {GOAL}")
    print()
    print_table(result, args.loss > 0)
    print()
    if result.c_counters:
        print("C server counters: " + " ".join(f"{k}={v}" for k, v in result.c_counters.items()))
    spread = " ".join(f"{x:.2f}" for x in result.round_ratios("hs_per_cpu_s"))
    ratio = result.ratio("hs_per_cpu_s")
    verdict = "yes" if ratio >= GOAL else "NO"
    print(f"per-round cpu ratios {spread}; m2msec reaches {GOAL}x C per CPU-second: {verdict} ({ratio:.2f}x)")
    if failures:
        print()
        for f in failures:
            print(f"FAILED: round {f.round}, {f.server}: {f.failures} of {f.attempted} handshakes failed:\n{f.detail}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
