"""MAF Key Registrations/s and Key Retrievals/s, each with its own MAF Handshake, against the bare TLS-PSK
handshake rate of the same engine measured in the same run (issue 16 part 5; goal: ratio >= 0.6).

Servers run as their own processes (one core each at most on this 2-core machine); the load comes from this
process with ``--concurrency`` connections in flight. Each phase runs ``--seconds``; the figures are the server
process's CPU seconds per operation (from /proc, robust on a shared machine) and the wall rate; the ratio is the
server's capacity for the operation over its capacity for a bare handshake (CPU per bare handshake / CPU per op).

    .venv/bin/python bench/maf_bench.py [--seconds 5] [--concurrency 8] [--postgres]

Phases: ``bare`` (TLS-PSK handshake with an in-memory table, then close: the denominator), ``maf-handshake``
(the MAF's KmID handshake through the async PSK path and the store, then close), ``register`` (handshake + Key
Registration from the exporter + close), ``retrieve`` (handshake + Key Retrieval + close), ``retrieve (kept
conn.)`` (Key Retrieval alone, over connections kept open: the request's own share, for the floor). SQLite always;
PostgreSQL with ``--postgres`` (a throw-away server started like the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from procs import cpu_seconds

from m2msec import http1
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import MASTER_KEY_ENV
from m2msec.maf.wire import format_timestamp
from m2msec.saef import ANY_ENTITY, EstablishedSA, PSKCredentials, establish_sa
from m2msec.store import MAFClient, open_store

FQDN, SP = "maf.bench.example.com", "bench.example.com"
KM_A, KM_B = SecretKey(bytes(range(32))), SecretKey(bytes(range(1, 33)))
KMID_A, KMID_B = f"a@{FQDN}", f"b@{FQDN}"
BARE_ID = "bench@psk.example.com"

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


@contextlib.contextmanager
def server(args: list[str], env: dict[str, str]) -> Iterator[tuple[int, int]]:
    proc = subprocess.Popen([sys.executable, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if "listening on 127.0.0.1:" not in line:
            raise RuntimeError(f"server did not start: {line}{proc.stderr.read()}")
        yield proc.pid, int(line.split("listening on 127.0.0.1:")[1].split()[0])
    finally:
        proc.terminate()
        proc.wait(30)


async def call(sa: EstablishedSA, method: str, target: str, body: object = None) -> dict[str, object]:
    data = b"" if body is None else json.dumps(body).encode()
    headers = [("Host", FQDN)] + ([("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
                                  if data else [])
    resp = await sa.request(http1.Message(headers, data, method=method, target=target))
    if resp.status not in (200, 201):
        raise RuntimeError(f"{method} {target}: {resp.status} {resp.body!r}")
    out: dict[str, object] = json.loads(resp.body)
    return out


def later(seconds: float = 3600) -> str:
    return format_timestamp(time.time() + seconds)


async def phase(pid: int, seconds: float, concurrency: int, op: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(server CPU seconds per op, ops per wall second)."""
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await op()
            done += 1

    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
    return cpu / max(done, 1), done / wall


async def maf_phases(port: int, pid: int, a: argparse.Namespace) -> dict[str, tuple[float, float]]:
    async def connect(kmid: str, km: SecretKey) -> EstablishedSA:
        return await establish_sa("127.0.0.1", port, PSKCredentials(kmid, km, peer_entity=ANY_ENTITY))

    for kmid, km in ((KMID_A, KM_A), (KMID_B, KM_B)):  # one Client Registration each, kept for the run
        sa = await connect(kmid, km)
        await call(sa, "POST", "/maf/v1/registrations", {"mafFQDN": FQDN, "expirationTime": later(),
                                                        "adminFQDN": FQDN})
        await sa.close()
    registered: list[str] = []

    async def handshake() -> None:
        await (await connect(KMID_A, KM_A)).close()

    async def register() -> None:
        sa = await connect(KMID_A, KM_A)
        out = await call(sa, "POST", "/maf/v1/keys", {"mafFQDN": FQDN, "expirationTime": later(), "adminFQDN": FQDN,
                                                     "SUID": 32, "targetIDs": ["/mn-cse-b"]})
        registered.append(str(out["relativeKeyID"]))
        await sa.close()

    turn = 0

    async def retrieve() -> None:
        nonlocal turn
        sa = await connect(KMID_B, KM_B)
        turn += 1
        out = await call(sa, "GET", f"/maf/v1/keys/{registered[turn % len(registered)]}")
        assert len(base64.b64decode(str(out["keyValue"]))) == 32
        await sa.close()

    kept: list[EstablishedSA] = []

    async def retrieve_kept() -> None:
        nonlocal turn
        if not kept:
            kept.append(await connect(KMID_B, KM_B))  # one connection per worker, opened in its first op
        sa = kept.pop()
        turn += 1
        out = await call(sa, "GET", f"/maf/v1/keys/{registered[turn % len(registered)]}")
        assert len(base64.b64decode(str(out["keyValue"]))) == 32
        kept.append(sa)

    results = {"maf-handshake": await phase(pid, a.seconds, a.concurrency, handshake),
               "register": await phase(pid, a.seconds, a.concurrency, register),
               "retrieve": await phase(pid, a.seconds, a.concurrency, retrieve),
               "retrieve (kept conn.)": await phase(pid, a.seconds, a.concurrency, retrieve_kept)}
    for sa in kept:
        await sa.close()
    return results


async def bare_phase(port: int, pid: int, a: argparse.Namespace) -> tuple[float, float]:
    creds = PSKCredentials(BARE_ID, SecretKey(bytes(range(32))), peer_entity=ANY_ENTITY)

    async def handshake() -> None:
        await (await establish_sa("127.0.0.1", port, creds)).close()

    return await phase(pid, a.seconds, a.concurrency, handshake)


def run_store(url: str, master: SecretKey, tmp: Path, a: argparse.Namespace, env: dict[str, str]) -> None:
    with open_store(url, master) as store:
        store.register_client(MAFClient(KMID_A, KM_A, "/mn-cse-a/CAE1"))
        store.register_client(MAFClient(KMID_B, KM_B, "/mn-cse-b"))
    config = tmp / f"maf-{len(list(tmp.iterdir()))}.toml"
    config.write_text(f'listen = "127.0.0.1:0"\nmaf_fqdn = "{FQDN}"\nsp_id = "{SP}"\nstore = "{url}"\n')
    backend = url.split(":", 1)[0]
    with server(["-c", BARE_SERVER], env) as (bpid, bport):
        bare = asyncio.run(bare_phase(bport, bpid, a))
    with server(["-m", "m2msec.cli.main", "maf", "--config", str(config), "serve"], env) as (pid, port):
        results = asyncio.run(maf_phases(port, pid, a))
    print(f"\n{backend}: server CPU per operation, wall rate ({a.concurrency} in flight, {a.seconds:g} s each)")
    print(f"  {'bare TLS-PSK handshake':<26} {bare[0] * 1e6:8.0f} us  {bare[1]:7.0f}/s  ratio 1.00 (denominator)")
    for name, (cpu, rate) in results.items():
        print(f"  {name:<26} {cpu * 1e6:8.0f} us  {rate:7.0f}/s  ratio {bare[0] / cpu:.2f}")


def main() -> None:
    import logging
    import warnings

    warnings.simplefilter("ignore")  # the ANY_ENTITY notice, once per connection
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--postgres", action="store_true", help="also run on a throw-away PostgreSQL server")
    a = parser.parse_args()
    master = SecretKey.generate(32)
    env = dict(os.environ, **{MASTER_KEY_ENV: master.reveal().hex()})
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        run_store(f"sqlite://{tmp}/maf.db", master, tmp, a, env)
        if a.postgres:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from postgres import start_postgres  # the tests' throw-away server

            with start_postgres() as pg:
                import psycopg

                with psycopg.connect(pg.url, autocommit=True) as conn:
                    conn.execute("CREATE DATABASE bench")
                run_store(pg.database_url("bench"), master, tmp, a, env)


if __name__ == "__main__":
    main()
