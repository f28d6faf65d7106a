"""The loopback rung of bench/engine_cost.py ``--loopback`` (run it from there): TLS 1.2 PSK handshakes from the C
client ``psk_hs_client`` against the engine in a blocking accept/recv/send loop (as bench/profile_gateway.py's
"engine, blocking" rung) and against the C server ``psk_baseline server``: server CPU per handshake and, with
``--callgrind``, server instructions per handshake (the whole server process's user-space work: the loop, the
engine, OpenSSL, garbage collection and frees; the kernel's is not counted).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from m2msec.tls.engine import ConnectionClosed, TLSContext

BUILD = Path(__file__).resolve().parent / "build"
BASELINE_BIN, CLIENT_BIN = BUILD / "psk_baseline", BUILD / "psk_hs_client"
TOGGLE_BIN = BUILD / "cg_toggle.so"
IDENTITY, KEY_HEX = "client1", "00112233445566778899aabbccddeeff"  # what psk_baseline.c compiles in
TLS12_CIPHER = "PSK-AES128-CBC-SHA256"
SERVER_CPU, CLIENT_CPU = 0, 1
WARMUP = 20


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def callgrind_total(out: Path) -> int:
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def valgrind(cmd: list[str], out: Path) -> int:
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return callgrind_total(out)


def pinned(cpu: int, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else cmd


def serve_blocking(ctx: TLSContext, lsock: socket.socket, count: int) -> None:
    from m2msec.errors import TLSError

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
            conn.close()
            out = conn.data_to_send()
            if out:
                with contextlib.suppress(OSError):
                    sock.sendall(out)
        finally:
            sock.close()


def client_cmd(port: int, n: int) -> list[str]:
    return pinned(CLIENT_CPU, [str(CLIENT_BIN), str(port), str(n), TLS12_CIPHER, IDENTITY, KEY_HEX])


def loopback_engine(ctx: TLSContext, n: int) -> float:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(512)
        port = lsock.getsockname()[1]
        cpu = 0.0
        for count, measured in ((200, False), (n, True)):
            proc = subprocess.Popen(client_cmd(port, count), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            cpu0 = time.process_time()
            serve_blocking(ctx, lsock, count)
            if measured:
                cpu = time.process_time() - cpu0
            _out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"client failed: {err.decode().strip()}")
    return cpu / n


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loopback_c(n: int) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(pinned(SERVER_CPU, [str(BASELINE_BIN), "server", str(port), TLS12_CIPHER]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert server.stderr is not None
        server.stderr.readline()  # "listening"
        subprocess.run(client_cmd(port, 200), check=True, capture_output=True)
        cpu0 = proc_cpu(server.pid)
        subprocess.run(client_cmd(port, n), check=True, capture_output=True)
        time.sleep(0.15)
        return (proc_cpu(server.pid) - cpu0) / n
    finally:
        server.kill()
        server.wait()


def run_loopback(ctx: TLSContext, n: int, rounds: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {SERVER_CPU})
    c, e = [], []
    for _ in range(rounds):
        c.append(loopback_c(n))
        e.append(loopback_engine(ctx, n))
    cm, em = median(c), median(e)
    print(f"loopback, TLS 1.2 {TLS12_CIPHER}, C client, {n} handshakes, median of {rounds} rounds "
          f"(server CPU per handshake)")
    print(f"  C server (psk_baseline)       {1e6 * cm:6.1f} us/hs")
    print(f"  engine, blocking loop         {1e6 * em:6.1f} us/hs   C/engine {cm / em:.2f}  "
          f"(+{1e6 * (em - cm):.0f} us)")


def lb_child(ctx: TLSContext, n: int) -> None:
    """Under callgrind (collection off): serve WARMUP handshakes, then n with collection on; the port on stdout."""
    toggle = ctypes.CDLL(str(TOGGLE_BIN)).cg_toggle
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(512)
        print(lsock.getsockname()[1], flush=True)
        serve_blocking(ctx, lsock, WARMUP)
        toggle()
        serve_blocking(ctx, lsock, n)
        toggle()


def _engine_instructions(script: str, n: int, tmp: str) -> float:
    out = Path(tmp) / "lb.out"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--callgrind-out-file={out}",
                             sys.executable, script, "--lb-child", str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    subprocess.run(client_cmd(port, WARMUP), check=True, capture_output=True)
    subprocess.run(client_cmd(port, n), check=True, capture_output=True)
    if proc.wait() != 0:
        raise RuntimeError("the engine server under callgrind failed")
    return callgrind_total(out) / n


def _c_instructions(n: int, tmp: str) -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = Path(tmp) / f"c-{n}.out"
    server = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(BASELINE_BIN),
                               "server", str(port), TLS12_CIPHER], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert server.stderr is not None
        while "listening" not in server.stderr.readline():
            pass
        subprocess.run(client_cmd(port, n), check=True, capture_output=True)
    finally:
        server.terminate()  # callgrind writes its counts on the fatal signal too
        server.communicate()
    return callgrind_total(out)


def run_callgrind(script: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = _engine_instructions(script, n, tmp)
        c = (_c_instructions(2 * n, tmp) - _c_instructions(n, tmp)) / n
    print(f"loopback, TLS 1.2, C client, callgrind ({n} handshakes; C server: runs of {n} and {2 * n}, subtracted): "
          f"C server {c / 1e3:7.1f} k Ir/hs, engine blocking loop {engine / 1e3:7.1f} k Ir/hs, "
          f"C/engine {c / engine:.2f}")
