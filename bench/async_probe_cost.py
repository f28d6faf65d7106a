"""What the synchronous probe (``lookup_now``) saves a cached Kc's handshake through the asyncio adapter.

One process, one event loop: the m2msec TLS server (``transport.tls.start_stream_server``) and sequential m2msec
clients over loopback, TLS 1.2 PSK, each connection closed after the handshake. Three servers: ``sync`` (a
``psk_lookup`` table, the provisioned-PSK path), ``probe`` (``async_psk`` with :class:`MAFKeyResolver` holding the
Kc in its cache: answered by ``lookup_now``, no task) and ``task`` (the same resolver seen without ``lookup_now``:
the task path every identity took before). Instructions under callgrind (repeatable on a shared machine), whole
process, two loop lengths subtracted so start-up cancels; the client's share is the same in the three.

    .venv/bin/python bench/async_probe_cost.py [--short 100] [--long 300]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine_loopback import valgrind

from m2msec.gateway.maf_resolver import MAFKeyResolver
from m2msec.idb import ANY_ENTITY
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.tls.engine import ClientConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_PSK
from m2msec.transport.tls import open_connection, start_stream_server

FQDN = "maf.bench.example.com"
IDENTITY, KEY = f"{'ab' * 8}@{FQDN}", SecretKey(bytes(range(16)))
ENTRY = PSKEntry(IDENTITY, KEY, entity="//sp.example.com/cse-a/CAE1")


class TaskOnly:
    """The resolver without its probe: every identity goes through a task, as before ``lookup_now``."""

    def __init__(self, resolver: MAFKeyResolver) -> None:
        self.resolver = resolver

    async def __call__(self, identity: str) -> PSKEntry | None:
        return await self.resolver(identity)


async def closer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def child(variant: str, n: int) -> None:
    table = MemoryPSKTable([ENTRY])
    if variant == "sync":
        server_ctx = TLSContext.server(ServerConfig(table.lookup, profiles=(ONEM2M_PSK,)))
        resolver = None
    else:
        server_ctx = TLSContext.server(ServerConfig(None, profiles=(ONEM2M_PSK,), async_psk=True))
        maf = MAFKeyResolver(MAFClient("127.0.0.1", 9, MAFCredentials(FQDN, kmid=f"b@{FQDN}",
                                                                                     km=SecretKey(b"k" * 32))))
        maf._cache[IDENTITY] = (time.time() + 3600, ENTRY)  # the Kc retrieved earlier
        resolver = maf if variant == "probe" else TaskOnly(maf)
    server = await start_stream_server(closer, "127.0.0.1", 0, server_ctx, psk_resolver=resolver)
    port = server.sockets[0].getsockname()[1]
    client_ctx = TLSContext.client(ClientConfig(IDENTITY, KEY, profiles=(ONEM2M_PSK,), peer_entity=ANY_ENTITY))
    for _ in range(n):
        reader, writer, _s = await open_connection("127.0.0.1", port, client_ctx)
        await reader.read()
        writer.close()
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=100)
    parser.add_argument("--long", type=int, default=300)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child[0], int(args.child[1])))
        return
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("sync", "probe", "task"):
            counts = []
            for n in (args.short, args.long):
                out = Path(tmp) / f"{variant}-{n}.out"
                counts.append(valgrind([sys.executable, __file__, "--child", variant, str(n)], out))
            results[variant] = (counts[1] - counts[0]) / (args.long - args.short)
    for variant, ir in results.items():
        print(f"{variant:6} {ir / 1e6:7.3f} M instructions per handshake (client + server)")
    print(f"server-side cost of the async path over sync: probe {(results['probe'] - results['sync']) / 1e3:.0f} k, "
          f"task {(results['task'] - results['sync']) / 1e3:.0f} k instructions per handshake")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(f"callgrind run failed: {exc}")
