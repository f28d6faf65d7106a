"""Memory of idle established engine connections, for bench/engine_cost.py ``--idle N`` (run it from there).

Each TLS version runs in a fresh process: N server connections from in-memory pairs (one record each way, the
client ends dropped) are kept; the growth of VmRSS, of glibc's malloc in use (``mallinfo2``: OpenSSL allocates
through it) and of the Python heap (tracemalloc) is printed per connection.
"""

from __future__ import annotations

import ctypes
import gc
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from m2msec.tls.engine import TLSConnection, TLSContext


def vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def idle_connections(pair: tuple[TLSContext, TLSContext], n: int) -> Iterator[TLSConnection]:
    server, client = pair
    for _ in range(n):
        c = client.connection()
        s = server.connection()
        s.receive_data(c.data_to_send())
        c.receive_data(s.data_to_send())
        s.receive_data(c.data_to_send())
        c.receive_data(s.data_to_send())
        s.send(b"x")  # one record each way: the connection has been used, as an idle SA has
        c.receive_data(s.data_to_send())
        c.send(b"y")
        s.receive_data(c.data_to_send())
        assert s.session is not None and c.session is not None
        yield s


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_in_use() -> int:
    """Bytes glibc's malloc has handed out and not got back (OpenSSL allocates through it): mallinfo2."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def idle_child(pair: tuple[TLSContext, TLSContext], version: str, n: int) -> None:
    """In a fresh process: n idle server connections; prints RSS, malloc and Python-heap growth per connection."""
    list(idle_connections(pair, 50))  # warm up the allocator and the caches
    gc.collect()
    rss0, heap0 = vm_rss(), malloc_in_use()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    kept = list(idle_connections(pair, n))
    gc.collect()
    py = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap0, "filename"))
    tracemalloc.stop()
    rss, heap = vm_rss() - rss0, malloc_in_use() - heap0
    print(f"  TLS {version}: RSS {rss / n / 1024:6.1f} KiB, malloc in use {heap / n / 1024:6.1f} KiB, "
          f"Python heap (tracemalloc) {py / n / 1024:5.2f} KiB per idle connection ({len(kept)} kept)")
