"""Does a PSK lookup (or a handshake) take longer for an identity that exists than for one that does not?

Prints the median time of a lookup of a known and of an unknown identity, and their ratio, for the SQLite store
(``SQLitePSKStore``: a miss opens a decoy sealed row, docs/decisions.md D44) and the TOML table
(``TomlPSKTable``: a dictionary read), then the same for whole in-memory TLS 1.2 PSK handshakes of a client
holding a wrong key (the server's view: a known identity with the wrong key vs an unknown identity and its
decoy key, D34). Samples are interleaved so that drift of a shared machine hits both alike. A ratio near 1.00
is the goal; this is a measurement, not a test (timings on shared machines are noisy).

    .venv/bin/python bench/lookup_timing.py                      # 1,000 entries, 20,000 lookups, 300 handshakes
    .venv/bin/python bench/lookup_timing.py --entries 100000 --lookups 50000 --handshakes 0
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from m2msec.errors import HandshakeFailed, M2MSecError
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import SQLitePSKStore
from m2msec.keys.table import PSKEntry, PSKTable, TomlPSKTable
from m2msec.tls.engine import ClientConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_PSK


def identities(n: int) -> list[str]:
    return [f"ae{i}@in.provider.com" for i in range(n)]


def median_pair(run: Callable[[str], object], known: str, unknown: str, count: int) -> tuple[float, float]:
    """Median ns of ``run(known)`` and ``run(unknown)``, interleaved, after a short warm-up."""
    samples: dict[str, list[int]] = {known: [], unknown: []}
    for _ in range(min(count, 200)):
        run(known)
        run(unknown)
    for _ in range(count):
        for identity in (known, unknown):
            start = time.perf_counter_ns()
            run(identity)
            samples[identity].append(time.perf_counter_ns() - start)
    return statistics.median(samples[known]), statistics.median(samples[unknown])


def report(name: str, unit: str, known: float, unknown: float) -> None:
    scale = 1000.0 if unit == "us" else 1.0
    print(f"{name:<28} known {known / scale:10.1f} {unit}   unknown {unknown / scale:10.1f} {unit}   "
          f"unknown/known {unknown / known:5.2f}")


def failed_handshake(server: TLSContext, identity: str) -> None:
    """One in-memory TLS 1.2 PSK handshake of a client with a wrong key; ends in HandshakeFailed."""
    client = TLSContext.client(ClientConfig(identity, SecretKey(b"\x5a" * 16), profiles=(ONEM2M_PSK,),
                                            peer_entity="in-cse"))
    s, c = server.connection(), client.connection()
    try:
        to_server = c.data_to_send()
        for _ in range(20):
            s.receive_data(to_server)
            c.receive_data(s.data_to_send())
            to_server = c.data_to_send()
            if not to_server:
                break
    except HandshakeFailed:
        return
    raise RuntimeError("a handshake with a wrong key did not fail")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000, help="identities in each table (1000)")
    parser.add_argument("--lookups", type=int, default=20000, help="lookups per identity (20000)")
    parser.add_argument("--handshakes", type=int, default=300, help="handshakes per identity, 0 to skip (300)")
    args = parser.parse_args()
    if args.entries < 2 or args.lookups < 1 or args.handshakes < 0:
        print("error: --entries >= 2, --lookups >= 1, --handshakes >= 0", file=sys.stderr)
        return 2
    names = identities(args.entries)
    known, unknown = names[args.entries // 2], "nobody@in.provider.com"
    with tempfile.TemporaryDirectory(prefix="m2msec-lookup-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o700)
        toml = directory / "psk.toml"
        toml.write_text("".join(f'[[psk]]\nidentity = "{i}"\nkey = "{"ab" * 16}"\nentity = "C{n}"\n'
                                for n, i in enumerate(names)))
        toml.chmod(0o600)
        try:
            tables: list[tuple[str, PSKTable]] = [("TOML table (dict)", TomlPSKTable(toml))]
            store = SQLitePSKStore(directory / "keys.db", SecretKey.generate(32))
            store.add_many(PSKEntry(i, SecretKey.generate(16), f"C{n}") for n, i in enumerate(names))
            tables.append(("SQLite store", store))
        except M2MSecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.entries} entries; medians of {args.lookups} lookups / {args.handshakes} handshakes each")
        for name, table in tables:
            report(f"lookup, {name}", "ns", *median_pair(table.lookup, known, unknown, args.lookups))
        if args.handshakes:
            for name, table in tables:
                server = TLSContext.server(ServerConfig(table.lookup, profiles=(ONEM2M_PSK,)))
                report(f"handshake, {name}", "us", *median_pair(
                    functools.partial(failed_handshake, server), known, unknown, args.handshakes))
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
