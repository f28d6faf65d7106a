"""Requests/s through ``m2msec tunnel`` (plain HTTP client -> tunnel -> gateway -> backend) against the same client
doing TLS itself (``m2msec.saef.establish_sa`` -> gateway -> backend), measured in the same run.

Processes: an HTTP/1.1 backend (keep-alive, answers 2000), ``m2msec gateway`` with a PSK table in front of it,
``m2msec tunnel`` to the gateway with the same PSK; this process is the client. Two modes, each in alternating
rounds for both paths: ``keep-alive`` (``--concurrency`` connections, each sending requests one after the other)
and ``connect`` (a new connection, hence a new handshake, per request). Printed per mode: requests/s of each path,
the ratio tunnel/direct, and the tunnel process's CPU per request (from /proc, robust on a shared machine).

    .venv/bin/python bench/tunnel_bench.py [--requests 600] [--rounds 2] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h11
from procs import cpu_seconds, free_port, wait_listening

from m2msec import http1
from m2msec.keys.secret import SecretKey
from m2msec.saef import EstablishedSA, PSKCredentials, establish_sa

M2MSEC = [sys.executable, "-m", "m2msec"]
IDB, ORIGIN = "in-cse", "CBench"
PSK_ID, PSK_KEY = "bench@in.provider.com", SecretKey(bytes(range(32)))
BODY = b'{"m2m:cin": {"con": "' + b"x" * 200 + b'"}}'


def serve_backend(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (req := await http1.read_message(conn, reader)) is not None:
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("content-type", "application/json"), ("x-m2m-rsc", "2001"),
                             ("x-m2m-ri", req.header("x-m2m-ri") or "")], body=req.body, status=201))
                conn.start_next_cycle()
        except (http1.HTTPError, ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


def request(i: int) -> http1.Message:
    return http1.Message(headers=[("host", IDB), ("x-m2m-origin", ORIGIN), ("x-m2m-ri", str(i)), ("x-m2m-rvi", "3"),
                                  ("content-type", "application/json;ty=4")], body=BODY, method="POST",
                         target=f"/{IDB}/cnt")


class Plain:
    """A keep-alive HTTP client over plain TCP (to the tunnel)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.conn = reader, writer, h11.Connection(h11.CLIENT)

    async def request(self, msg: http1.Message) -> http1.Message:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        await http1.send_message(self.conn, self.writer, msg)
        resp = await http1.read_message(self.conn, self.reader)
        assert resp is not None
        return resp

    async def close(self) -> None:
        self.writer.close()


class Client:
    """Opens a connection of one path: ``tunnel`` (plain TCP to the tunnel) or ``direct`` (TLS to the gateway)."""

    def __init__(self, path: str, port: int) -> None:
        self.path, self.port = path, port

    async def connect(self) -> Plain | Direct:
        if self.path == "tunnel":
            return Plain(*await asyncio.open_connection("127.0.0.1", self.port))
        return Direct(await establish_sa("127.0.0.1", self.port, PSKCredentials(PSK_ID, PSK_KEY, peer_entity=IDB)))


class Direct:
    """A keep-alive HTTP client inside its own SA with the gateway."""

    def __init__(self, sa: EstablishedSA) -> None:
        self.sa = sa

    async def request(self, msg: http1.Message) -> http1.Message:
        return await self.sa.request(msg)

    async def close(self) -> None:
        await self.sa.close()


async def run_mode(client: Client, n: int, concurrency: int, keep_alive: bool) -> None:
    left = n

    async def worker() -> None:
        nonlocal left
        conn = await client.connect() if keep_alive else None
        while left > 0:
            left -= 1
            c = conn or await client.connect()
            resp = await c.request(request(left))
            assert resp.status == 201 and resp.body == BODY, resp.status
            if conn is None:
                await c.close()
        if conn is not None:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MSEC_")}
    table, keyfile = tmp / "psk.toml", tmp / "bench.key"
    table.write_text(f'[[psk]]\nidentity = "{PSK_ID}"\nkey = "{PSK_KEY.reveal().hex()}"\nentity = "{ORIGIN}"\n')
    keyfile.write_text(PSK_KEY.reveal().hex())
    for f in (table, keyfile):
        f.chmod(0o600)
    backend_port, gw_port = free_port(), free_port()
    backend = multiprocessing.Process(target=serve_backend, args=(backend_port,), daemon=True)
    backend.start()
    gateway = subprocess.Popen([*M2MSEC, "gateway", "--psk-table", str(table), "--backend",
                                f"http://127.0.0.1:{backend_port}", "--listen", f"127.0.0.1:{gw_port}", "--cse-id",
                                IDB, "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tunnel = subprocess.Popen([*M2MSEC, "tunnel", "--to", f"127.0.0.1:{gw_port}", "--identity", PSK_ID,
                               "--key-file", str(keyfile), "--entity-id", IDB], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        wait_listening(backend_port)
        wait_listening(gw_port)
        assert tunnel.stdout is not None
        line = tunnel.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"m2msec tunnel did not start: {line!r}")
        clients = {"tunnel": Client("tunnel", int(line.rsplit(":", 1)[1])), "direct": Client("direct", gw_port)}
        for mode, keep_alive, n in (("keep-alive", True, args.requests), ("connect", False, args.requests // 4)):
            for c in clients.values():
                await run_mode(c, 20, 1, keep_alive)  # warm-up
            rates: dict[str, list[float]] = {"tunnel": [], "direct": []}
            tunnel_cpu: list[float] = []
            for _ in range(args.rounds):
                for name, c in clients.items():
                    cpu0, t0 = cpu_seconds(tunnel.pid), time.perf_counter()
                    await run_mode(c, n, args.concurrency, keep_alive)
                    rates[name].append(n / (time.perf_counter() - t0))
                    if name == "tunnel":
                        tunnel_cpu.append((cpu_seconds(tunnel.pid) - cpu0) / n)
            t, d = max(rates["tunnel"]), max(rates["direct"])
            print(f"{mode:10}: tunnel {t:7.0f} req/s, direct TLS {d:7.0f} req/s, ratio tunnel/direct {t / d:.3f}; "
                  f"tunnel process {min(tunnel_cpu) * 1e6:.0f} us CPU/request (best of {args.rounds} x {n}, "
                  f"concurrency {args.concurrency})")
    finally:
        for proc in (tunnel, gateway):
            proc.terminate()
            proc.wait()
        backend.terminate()
        backend.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
