"""One worker of ``m2msec gateway --workers N`` (started by :mod:`m2msec.gateway.workers`, never by hand).

``python -m m2msec.gateway.worker`` reads its share from stdin (a pickle the supervisor writes: the worker's index,
the numbers of its inherited TCP / UDP sockets, the supervisor's ready pipe and the parsed ``m2msec gateway``
options), then runs :func:`m2msec.cli.gateway.run` on those sockets: the single-process code path, so it opens the
key store (its own SQLite reader) or loads the TOML table itself and runs its own reloader. Its log lines carry
``[worker I]`` after the logger name; the single-process format is unchanged.

On SIGTERM (SIGINT is blocked: it is the supervisor's, which sends SIGTERM) it drains (:func:`drain`, D64): it
stops taking new connections and datagrams from its sockets (the supervisor still holds them), waits for its
open TLS connections to end, at most
:data:`~m2msec.gateway.workers.DRAIN_TIMEOUT` seconds (serving coaps, at least
:data:`~m2msec.gateway.workers.COAPS_DRAIN_GRACE` for the CSE's answers still due), then closes what is left and
exits 0.

SIGHUP (forwarded by the supervisor) reloads the configuration as in a single process
(:class:`~m2msec.gateway.reload.ConfigReload`): each worker reads the files again itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from m2msec.errors import M2MSecError
from m2msec.gateway.workers import COAPS_DRAIN_GRACE, DRAIN_TIMEOUT, WorkerSockets

__all__ = ["drain", "main"]

log = logging.getLogger("m2msec.gateway.workers")

#: prctl(2) option: the signal this process gets when its parent (the supervisor) dies
_PR_SET_PDEATHSIG = 1
#: how often a draining worker looks at its count of open connections
_DRAIN_POLL = 0.05


def _open_connections(services: Sequence[Any]) -> int:
    """Open TLS connections (handshaking or established) of the HTTP side, from its connection limiter."""
    return sum(int(getattr(getattr(s, "limiter", None), "open", 0)) for s in services)


def _stop_taking(loop: asyncio.AbstractEventLoop, sockets: WorkerSockets, services: Sequence[Any]) -> None:
    """No new connection or datagram for this worker: they wait in the shared sockets' queues instead."""
    for service in services:  # the UDP socket belongs to its datagram transport: paused there, on any loop
        stop = getattr(service, "stop_receiving", None)
        if stop is not None:
            stop()
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        if sockets.tcp is not None and sockets.tcp.fileno() >= 0:
            loop.remove_reader(sockets.tcp.fileno())
        return
    for service in services:  # other loops (uvloop) accept on their own: new connections are reset at once
        limiter = getattr(service, "limiter", None)
        if limiter is not None:
            limiter.limit = 0


async def drain(services: Sequence[Any], sockets: WorkerSockets, *, timeout: float = DRAIN_TIMEOUT,
                clock: Callable[[], float] = time.monotonic) -> None:
    """Stop taking work, let the open connections finish (at most ``timeout`` s); the caller then closes."""
    _stop_taking(asyncio.get_running_loop(), sockets, services)
    start = clock()
    deadline = start + timeout
    grace = start + min(timeout, COAPS_DRAIN_GRACE) if sockets.udp is not None else start
    while (_open_connections(services) or clock() < grace) and clock() < deadline:
        await asyncio.sleep(_DRAIN_POLL)
    left = _open_connections(services)
    if left:
        log.warning("%d connection(s) still open after %g s of draining: closed", left, timeout)


def _die_with_parent(supervisor: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    spec: dict[str, Any] = pickle.load(sys.stdin.buffer)  # written by our supervisor (trusted: our parent)
    args: argparse.Namespace = spec["args"]
    index: int = spec["index"]
    logging.basicConfig(format=f"%(asctime)s %(levelname)s %(name)s [worker {index}]: %(message)s")
    from m2msec.cli.gateway import use_logging

    use_logging(args)  # --quiet / --log-format as the supervisor resolved them, JSON lines included
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until run() serves and reloads on it: never a death by SIGHUP
    _die_with_parent(spec["supervisor"])
    tcp = socket.socket(fileno=spec["tcp"]) if spec["tcp"] is not None else None
    udp = socket.socket(fileno=spec["udp"]) if spec["udp"] is not None else None
    from m2msec.cli import gateway
    from m2msec.cli.common import run_async

    try:
        return run_async(gateway.run(args, sockets=WorkerSockets(index, tcp, udp, spec["ready"])),
                         loop=args.loop)
    except M2MSecError as exc:
        print(f"m2msec: error: [worker {index}] {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
