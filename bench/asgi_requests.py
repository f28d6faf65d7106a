"""The ASGI server's request path: server CPU per request over one keep-alive TLS-PSK connection.

On-demand benchmark, not a test:

    .venv/bin/python bench/asgi_requests.py [--requests N] [--rounds R] [--servers h11,asgi-raw,asgi-fastapi]

Each server runs as its own process pinned to CPU 0, over the same TLS transport (``m2msec.transport.tls``,
TLS 1.2 PSK-AES128-CBC-SHA256); this process, pinned to CPU 1, is the client (``m2msec.saef`` SA, N sequential
GETs on one connection, after one warm-up request). Servers: ``h11`` (the baseline: a bare h11 protocol answering
a fixed 2-byte JSON body, no ASGI), ``asgi-raw`` (``m2msec.asgi.serve`` with a raw ASGI application answering the
same body), ``asgi-fastapi`` (a FastAPI route returning ``{}``; its own framework cost included). Printed: the
server's CPU time per request (utime + stime from /proc, median of R rounds, interleaved), wall requests/s, and
the ratio of each row's CPU per request to the baseline's measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import h11

sys.path.insert(0, str(Path(__file__).resolve().parent))
import handshake_bench as hb  # the sibling benchmark: pinning, /proc readers, ports

from m2msec import http1
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.saef import PSKCredentials, establish_sa
from m2msec.tls.engine import ServerConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_PSK

SERVERS = ("h11", "asgi-raw", "asgi-fastapi")
BODY = b"{}"
IDB = "maf-bench"


class BareH11(asyncio.Protocol):
    """The baseline: HTTP/1.1 keep-alive with h11 and a fixed response, nothing else."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.conn = h11.Connection(h11.SERVER)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.EndOfMessage):
                out = self.conn.send(h11.Response(status_code=200, headers=[
                    ("content-type", "application/json"), ("content-length", str(len(BODY)))]))
                out += self.conn.send(h11.Data(data=BODY)) + self.conn.send(h11.EndOfMessage())
                self.transport.write(out)
                self.conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return


async def raw_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": BODY})


def fastapi_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {}

    return app


async def serve_forever(kind: str, port: int) -> None:
    from m2msec.asgi import serve
    from m2msec.transport.tls import start_server

    table = MemoryPSKTable([PSKEntry(hb.IDENTITY, SecretKey.from_hex(hb.KEY_HEX))])
    context = TLSContext.server(ServerConfig(table.lookup, profiles=(ONEM2M_PSK,)))
    if kind == "h11":
        server = await start_server(BareH11, "127.0.0.1", port, context)
        await server.serve_forever()
    else:
        app = raw_app if kind == "asgi-raw" else fastapi_app()
        running = await serve(app, context, "127.0.0.1", port)
        await running.serve_forever()


async def one_round(port: int, pid: int, requests: int) -> tuple[float, float]:
    sa = await establish_sa("127.0.0.1", port, PSKCredentials(hb.IDENTITY, SecretKey.from_hex(hb.KEY_HEX), IDB))
    msg = http1.Message(headers=[("host", IDB)], method="GET", target="/")
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


async def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(3000):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("server exited before listening") from None
            await asyncio.sleep(0.01)
    raise RuntimeError("server did not listen")


async def run(args: argparse.Namespace) -> None:
    kinds = args.servers.split(",")
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for kind in kinds:
            port = hb.free_port()
            cmd = hb.pinned(hb.SERVER_CPU, [sys.executable, __file__, "--serve", kind, "--port", str(port)])
            procs[kind] = (subprocess.Popen(cmd), port)
            await wait_listening(port, procs[kind][0])
        samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):  # interleaved: the machine's noise spreads over every server
            for kind in kinds:
                proc, port = procs[kind]
                samples[kind].append(await one_round(port, proc.pid, args.requests))
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)
    print(f"{args.requests} GETs over one TLS-PSK connection x {args.rounds} rounds (medians); server on CPU 0")
    print(f"{'server':<14} {'CPU us/req':>11} {'wall req/s':>11} {'CPU ratio':>10}")
    base = statistics.median(s[0] for s in samples[kinds[0]])
    for kind in kinds:
        us = statistics.median(s[0] for s in samples[kind])
        rps = statistics.median(s[1] for s in samples[kind])
        print(f"{kind:<14} {us:>11.1f} {rps:>11.0f} {us / base:>10.2f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, the first is the baseline: "
                                                                  f"{', '.join(SERVERS)}")
    p.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve_forever(args.serve, args.port))
        return 0
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {int(hb.CLIENT_CPU)})
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
