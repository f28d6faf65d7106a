"""A lossy UDP relay for bench/dtls_bench.py: drops a given share of the datagrams in both directions.

    python bench/dtls_relay.py --target HOST:PORT [--loss PCT] [--drop up:N,down:M,...] [--listen HOST:PORT]
                               [--seed N]

Clients send to the relay's port; for every new client address the relay opens a socket of its own towards
the target, so the server still sees one source port per client. Each datagram, either way, is dropped with
probability PCT/100 (a seeded random.Random, so a run can be repeated), otherwise forwarded unchanged.
``--drop`` drops chosen datagrams of every flow instead, to reproduce one loss pattern exactly: ``down:2``
drops the second datagram from the server to each client (in a DTLS 1.2 PSK handshake with cookie exchange:
1 HelloVerifyRequest, 2 ServerHello+ServerHelloDone, 3 ChangeCipherSpec+Finished), ``up:3`` the third from
each client (1 ClientHello, 2 ClientHello with the cookie, 3 ClientKeyExchange+ChangeCipherSpec+Finished,
4 close_notify; what a client packs into one datagram depends on its DTLS stack).

It prints ``dtls relay on HOST:PORT -> TARGET ...`` once bound, and on SIGTERM or SIGINT one line of counters
(``up`` = client to server, ``down`` = server to client), then exits 0.
"""

from __future__ import annotations

import argparse
import random
import selectors
import signal
import socket
import sys
from collections import OrderedDict
from collections.abc import Sequence
from types import FrameType

#: flows (client addresses) kept; the oldest one's upstream socket is closed beyond that
MAX_FLOWS = 256


class Stop(Exception):
    """Raised by the signal handler to leave the loop."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


class Relay:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int], loss: float, seed: int,
                 drop: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.target = target
        self.loss = loss
        self.rng = random.Random(seed)
        self.drop = drop
        self.seen: dict[tuple[str, tuple[str, int]], int] = {}  # (direction, client) -> datagrams so far
        self.sel = selectors.DefaultSelector()
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(listen)
        self.front.setblocking(False)
        self.sel.register(self.front, selectors.EVENT_READ, None)
        self.flows: OrderedDict[tuple[str, int], socket.socket] = OrderedDict()
        self.counts = {"up": 0, "up_dropped": 0, "down": 0, "down_dropped": 0}

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.front.getsockname()[:2]
        return str(host), int(port)

    def _drop(self, direction: str, client: tuple[str, int]) -> bool:
        if self.drop:
            n = self.seen[direction, client] = self.seen.get((direction, client), 0) + 1
            return (direction, n) in self.drop
        return self.loss > 0 and self.rng.random() * 100.0 < self.loss

    def _upstream(self, client: tuple[str, int]) -> socket.socket:
        sock = self.flows.get(client)
        if sock is not None:
            self.flows.move_to_end(client)
            return sock
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(self.target)  # a new source port towards the server
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, client)
        self.flows[client] = sock
        if len(self.flows) > MAX_FLOWS:
            gone, old = self.flows.popitem(last=False)
            self.seen.pop(("up", gone), None)
            self.seen.pop(("down", gone), None)
            self.sel.unregister(old)
            old.close()
        return sock

    def _from_clients(self) -> None:
        while True:
            try:
                data, client = self.front.recvfrom(65535)
            except (BlockingIOError, ConnectionRefusedError):
                return
            upstream = self._upstream(client)
            if self._drop("up", client):
                self.counts["up_dropped"] += 1
                continue
            self.counts["up"] += 1
            try:
                upstream.send(data)
            except OSError:
                pass  # e.g. ICMP port unreachable from an earlier datagram: the DTLS timers deal with it

    def _from_server(self, sock: socket.socket, client: tuple[str, int]) -> None:
        while True:
            try:
                data = sock.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                return
            if self._drop("down", client):
                self.counts["down_dropped"] += 1
                continue
            self.counts["down"] += 1
            try:
                self.front.sendto(data, client)
            except OSError:
                pass

    def run(self) -> None:
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    self._from_clients()
                else:
                    self._from_server(key.fileobj, key.data)  # type: ignore[arg-type]

    def summary(self) -> str:
        c = self.counts
        return (f"relay up={c['up']} up_dropped={c['up_dropped']} down={c['down']} "
                f"down_dropped={c['down_dropped']} flows={len(self.flows)}")


def drop_spec(text: str) -> frozenset[tuple[str, int]]:
    items = set()
    for item in text.split(","):
        direction, _, n = item.strip().partition(":")
        if direction not in ("up", "down") or not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"expected up:N or down:N (N >= 1), got {item!r}")
        items.add((direction, int(n)))
    return frozenset(items)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--target", type=hostport, required=True, metavar="HOST:PORT", help="the DTLS server")
    p.add_argument("--listen", type=hostport, default=("127.0.0.1", 0), metavar="HOST:PORT",
                   help="where clients send (default 127.0.0.1:0, any free port)")
    p.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="percentage of datagrams dropped (0)")
    p.add_argument("--seed", type=int, default=1, help="seed of the drop decisions (1)")
    p.add_argument("--drop", type=drop_spec, default=frozenset(), metavar="up:N,down:M",
                   help="drop exactly these datagrams of every flow (1-based, per direction) instead of --loss")
    args = p.parse_args(argv)
    if not 0.0 <= args.loss < 100.0:
        p.error("--loss must be in [0, 100)")
    if args.drop and args.loss:
        p.error("give --loss or --drop, not both")
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    relay = Relay(args.listen, args.target, args.loss, args.seed, args.drop)
    host, port = relay.address
    what = ",".join(f"{d}:{n}" for d, n in sorted(args.drop)) if args.drop else f"{args.loss:g}%"
    print(f"dtls relay on {host}:{port} -> {args.target[0]}:{args.target[1]} drop {what}", flush=True)
    try:
        relay.run()
    except Stop:
        pass
    print(relay.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
