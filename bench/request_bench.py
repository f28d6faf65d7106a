"""The gateway's request path: N oneM2M requests over one TLS-PSK SA, against a local keep-alive stub CSE.

On-demand benchmark, not a test:

    .venv/bin/python bench/request_bench.py [--requests N] [--rounds R] [--loop asyncio,uvloop]
                                            [--src DIR[,DIR...]]

``m2msec gateway`` runs as a separate process (from each ``--src`` source tree, default this checkout's
``src``: give another tree, e.g. an export of main, to compare before and after in one run) on the chosen
event loop, pinned to CPU 0; this process, pinned to CPU 1, holds the stub CSE (an HTTP/1.1 server that keeps
connections open) and one client SA that sends N sequential GETs. Printed per tree and loop: the gateway's
CPU time per request (utime + stime from /proc, median of R rounds), wall requests/s, and the number of TCP
connections the CSE accepted, then the ratio of each row's CPU per request to the first row's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h11

sys.path.insert(0, str(Path(__file__).resolve().parent))
import handshake_bench as hb  # the sibling benchmark: pinning, /proc readers, ports

from m2msec import http1
from m2msec.keys.secret import SecretKey
from m2msec.saef import PSKCredentials, establish_sa

ROOT = Path(__file__).resolve().parent.parent
AE = "Cbench"
CSE_ID = "mn-cse-bench"
#: starts the gateway CLI on the asked loop, whatever the tree's own default is
LAUNCH = ("import asyncio, sys\n"
          "import m2msec.cli.common as c\n"
          "loop = sys.argv.pop(1)\n"
          "def run(coro, *a, **k):\n"
          "    if loop == 'uvloop':\n"
          "        import uvloop\n"
          "        return uvloop.run(coro)\n"
          "    return asyncio.run(coro)\n"
          "c.run_async = run\n"
          "from m2msec.cli.main import main\n"
          "sys.exit(main())\n")


class StubCSE:
    def __init__(self) -> None:
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = await http1.read_message(conn, reader)
                if req is None:
                    return
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("content-type", "application/json"), ("x-m2m-rsc", "2000"),
                             ("x-m2m-ri", req.header("x-m2m-ri") or "")], body=b'{"m2m:cb":{"rn":"bench"}}',
                    status=200))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (http1.HTTPError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def one_round(port: int, pid: int, requests: int) -> tuple[float, float]:
    creds = PSKCredentials(hb.IDENTITY, SecretKey.from_hex(hb.KEY_HEX), CSE_ID)
    sa = await establish_sa("127.0.0.1", port, creds)
    msg = http1.Message(headers=[("host", CSE_ID), ("x-m2m-origin", AE), ("x-m2m-ri", "r"), ("x-m2m-rvi", "3")],
                        method="GET", target=f"/{CSE_ID}")
    await sa.request(msg)  # warm-up
    cpu0, t0 = hb.cpu_seconds(pid), time.perf_counter()
    for _ in range(requests):
        resp = await sa.request(msg)
        if resp.status != 200:
            raise RuntimeError(f"request failed: {resp.status} {resp.body[:200]!r}")
    wall = time.perf_counter() - t0
    await asyncio.sleep(hb.SETTLE_S)
    cpu = hb.cpu_seconds(pid) - cpu0
    await sa.close()
    return cpu / requests * 1e6, requests / wall


async def run_config(src: Path, loop: str, table: Path, args: argparse.Namespace) -> tuple[float, float, int]:
    cse = StubCSE()
    server = await asyncio.start_server(cse.handle, "127.0.0.1", 0)
    cse_port = server.sockets[0].getsockname()[1]
    port = hb.free_port()
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = hb.pinned(hb.SERVER_CPU, [sys.executable, "-c", LAUNCH, loop, "gateway", "--listen", f"127.0.0.1:{port}",
                                    "--psk-table", str(table), "--backend", f"http://127.0.0.1:{cse_port}",
                                    "--profiles", "onem2m", "--quiet"])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(2000):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
            await asyncio.sleep(0.01)
        samples = [await one_round(port, proc.pid, args.requests) for _ in range(args.rounds)]
    finally:
        proc.terminate()
        proc.wait(10)
        server.close()
    return (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples), cse.connections)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loop", default="asyncio,uvloop")
    p.add_argument("--src", default=str(ROOT / "src"), help="comma-separated source trees to run the gateway from")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "psk.toml"
        fd = os.open(table, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f'[[psk]]\nidentity = "{hb.IDENTITY}"\nkey = "{hb.KEY_HEX}"\nentity = "{AE}"\n')
        print(f"{args.requests} GETs over one SA x {args.rounds} rounds (medians); gateway pinned to CPU 0")
        print(f"{'tree':<40} {'loop':<8} {'CPU us/req':>11} {'wall req/s':>11} {'CSE conns':>10} {'CPU ratio':>10}")
        first = None
        for src in args.src.split(","):
            for loop in args.loop.split(","):
                us, rps, conns = asyncio.run(run_config(Path(src), loop, table, args))
                first = first or us
                print(f"{src[-40:]:<40} {loop:<8} {us:>11.1f} {rps:>11.0f} {conns:>10} {us / first:>10.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
