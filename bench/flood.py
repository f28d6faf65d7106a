"""Slow, half-open and flooding clients against one ``m2msec gateway`` (TLS and coaps), and what a legitimate client
sees meanwhile (issue 21 part 3; docs/security.md section 3).

On-demand benchmark, not a test:

    .venv/bin/python bench/flood.py [--duration 10] [--halfopen 5000] [--only halfopen,garbage,...]

Each scenario starts a fresh gateway (default limits, ``--handshake-timeout 5``) in front of stub CSEs (HTTP and
CoAP). The attack runs in two processes of this script (``--attack KIND``) from their own loopback addresses
(127.0.<10+process>.x: the whole 127/8 is local on Linux); the legitimate client, at 127.0.0.1, meanwhile loops
TLS connect + handshake + GET + close and DTLS handshake + CoAP GET + close. Printed per scenario: the attack's
rate, the legitimate client's success rate and latency (p50 / p99 / max) for each side, and the gateway's open
file descriptors before, at the peak and once the attack is over (every socket reclaimed: back to baseline).

Scenarios: ``baseline`` (no attack); ``halfopen`` (--halfopen TCP connections from 200 addresses, never a byte);
``slowloris`` (handshakes done, then an HTTP request head one byte a second); ``garbage`` (random bytes as a
ClientHello, as fast as they go); ``wrongkey`` (TLS-PSK handshakes with a wrong key, 8 at a time per process);
``coaps-wrongkey`` (DTLS-PSK handshakes with a wrong key, cookie returned, 16 at a time per process: the gateway
stays silent and times each peer out); ``coaps-random`` (random datagrams); ``coaps-spoofed`` (valid DTLS
ClientHellos from 256 addresses per process that never answer the HelloVerifyRequest: what spoofed sources look
like).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from load_common import (
    ATTACK,
    LEGIT,
    WRONG_KEY,
    dtls_context,
    dtls_cycle,
    fd_count,
    gateway,
    percentile,
    tls_context,
    tls_cycle,
)

from m2msec.tls.engine import DEFAULT_DTLS_MTU
from m2msec.transport.dtls import _ClientProtocol
from m2msec.transport.tls import TLSAdapter

SCENARIOS = ["baseline", "halfopen", "slowloris", "garbage", "wrongkey", "coaps-wrongkey", "coaps-random",
             "coaps-spoofed"]
PROCESSES = 2
HANDSHAKE_TIMEOUT = 5.0
#: seconds the legitimate client gives one cycle (handshake, with the DTLS retransmissions of RFC 6347 §4.2.4 at 1,
#: 2, 4 s; the request, CoAP CON retransmitted at 1, 2, 4 s)
LEGIT_TIMEOUT = 10.0


def source(index: int, n: int) -> str:
    return f"127.0.{10 + index}.{2 + n % 250}"


# ------------------------------------------------------------------------------------------------ attackers


def attack_halfopen(port: int, index: int, count: int, duration: float) -> dict[str, int]:
    held, failed = [], 0
    for n in range(count):
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5,
                                                 source_address=(source(index, n % 100), 0)))
        except OSError:
            failed += 1
    time.sleep(duration)
    reset = 0
    for s in held:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                reset += 1
        except BlockingIOError:
            pass
        except OSError:
            reset += 1
        s.close()
    return {"attempts": count, "connected": len(held), "failed": failed, "closed_by_gateway": reset}


def attack_garbage(port: int, index: int, duration: float) -> dict[str, int]:
    attempts = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        attempts += 1
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source(index, 0), 0)) as s:
                s.sendall(b"\x16\x03\x01\x00\xc8" + os.urandom(200))
                while s.recv(4096):
                    pass
        except OSError:
            pass
    return {"attempts": attempts}


async def attack_wrongkey(port: int, index: int, duration: float) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    context = tls_context(LEGIT[0], WRONG_KEY)
    counts = {"attempts": 0, "bad_mac": 0, "reset": 0}
    end = loop.time() + duration

    async def one() -> None:
        while loop.time() < end:
            counts["attempts"] += 1
            try:
                _, adapter = await loop.create_connection(lambda: TLSAdapter(context, asyncio.Protocol), "127.0.0.1",
                                                          port, local_addr=(source(index, 0), 0))
                await asyncio.wait_for(adapter.handshake, 5)
            except Exception as exc:
                counts["bad_mac" if "mac" in str(exc) else "reset"] += 1

    await asyncio.gather(*(one() for _ in range(8)))
    return counts


async def attack_coaps_wrongkey(port: int, index: int, duration: float) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    context = dtls_context(LEGIT[0], WRONG_KEY)
    counts = {"attempts": 0, "no_answer": 0, "other": 0}
    end = loop.time() + duration

    async def one() -> None:
        while loop.time() < end:
            counts["attempts"] += 1
            udp, proto = await loop.create_datagram_endpoint(
                lambda: _ClientProtocol(context, asyncio.DatagramProtocol, mtu=DEFAULT_DTLS_MTU,
                                        remote=("127.0.0.1", port)),
                local_addr=(source(index, 0), 0), remote_addr=("127.0.0.1", port))
            try:
                await asyncio.wait_for(proto.handshake, 0.1)  # the gateway never answers a wrong key's Finished
            except TimeoutError:
                counts["no_answer"] += 1
            except Exception:
                counts["other"] += 1
            finally:
                udp.close()

    await asyncio.gather(*(one() for _ in range(16)))
    return counts


async def attack_slowloris(port: int, index: int, count: int, duration: float) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    context = tls_context(ATTACK[0], ATTACK[1])
    counts = {"attempts": count, "established": 0, "refused": 0, "closed_by_gateway": 0}

    async def one(n: int) -> None:
        try:
            _, adapter = await loop.create_connection(lambda: TLSAdapter(context, asyncio.Protocol), "127.0.0.1",
                                                      port, local_addr=(source(index, n), 0))
            await asyncio.wait_for(adapter.handshake, 10)
        except Exception:
            counts["refused"] += 1
            return
        counts["established"] += 1
        head = f"GET /{n} HTTP/1.1\r\nhost: x\r\nx-m2m-origin: {ATTACK[2]}\r\n".encode()
        for i in range(int(duration)):
            if adapter.raw_transport is None or adapter.raw_transport.is_closing():
                counts["closed_by_gateway"] += 1
                return
            assert adapter._app_transport is not None
            adapter._app_transport.write(head[i % len(head):i % len(head) + 1])
            await asyncio.sleep(1)
        if adapter.raw_transport is not None:
            adapter.raw_transport.close()

    await asyncio.gather(*(one(n) for n in range(count)))
    return counts


def attack_coaps_random(port: int, index: int, duration: float) -> dict[str, int]:
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source(index, 0), 0))
        s.setblocking(False)
        end = time.monotonic() + duration
        while time.monotonic() < end:
            for _ in range(100):
                try:
                    s.sendto(os.urandom(60 + sent % 200), ("127.0.0.1", port))
                    sent += 1
                except BlockingIOError:
                    time.sleep(0.0005)
    return {"attempts": sent}


def attack_coaps_spoofed(port: int, index: int, duration: float) -> dict[str, int]:
    hellos = [dtls_context().dtls_connection(("127.0.0.1", port)).datagrams_to_send()[0] for _ in range(64)]
    sockets = []
    for n in range(256):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.{20 + index}.{n}.1", 0))
        s.setblocking(False)
        sockets.append(s)
    sent = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        for s in sockets:
            try:
                s.sendto(hellos[sent % len(hellos)], ("127.0.0.1", port))
                sent += 1
            except BlockingIOError:
                time.sleep(0.0005)
    for s in sockets:
        s.close()
    return {"attempts": sent}


def run_attack(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    kind, port, index, duration = args.attack, args.port, args.index, args.duration
    if kind == "halfopen":
        result = attack_halfopen(port, index, args.halfopen // PROCESSES, duration)
    elif kind == "garbage":
        result = attack_garbage(port, index, duration)
    elif kind == "wrongkey":
        result = asyncio.run(attack_wrongkey(port, index, duration))
    elif kind == "slowloris":
        result = asyncio.run(attack_slowloris(port, index, 300, duration))
    elif kind == "coaps-wrongkey":
        result = asyncio.run(attack_coaps_wrongkey(port, index, duration))
    elif kind == "coaps-random":
        result = attack_coaps_random(port, index, duration)
    else:
        result = attack_coaps_spoofed(port, index, duration)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------- the legitimate client


async def legit(kind: str, port: int, end: float, latencies: list[float], failures: list[str]) -> None:
    loop = asyncio.get_running_loop()
    context = tls_context() if kind == "tls" else dtls_context()
    cycle = tls_cycle if kind == "tls" else dtls_cycle
    while loop.time() < end:
        try:
            latencies.append(await cycle(port, context, timeout=LEGIT_TIMEOUT))
        except Exception as exc:
            failures.append(type(exc).__name__)
        await asyncio.sleep(0.05)


def summary(name: str, latencies: list[float], failures: list[str]) -> str:
    total = len(latencies) + len(failures)
    rate = 100 * len(latencies) / total if total else float("nan")
    return (f"{name} {len(latencies)}/{total} ok ({rate:.2f} %), latency p50 {1000 * percentile(latencies, 50):.1f} "
            f"p99 {1000 * percentile(latencies, 99):.1f} max {1000 * max(latencies, default=float('nan')):.1f} ms"
            + (f", failures {sorted(set(failures))}" if failures else ""))


async def scenario(name: str, args: argparse.Namespace) -> None:
    async with gateway("--handshake-timeout", str(HANDSHAKE_TIMEOUT), *args.gateway_args.split(), name="flood") as gw:
        await tls_cycle(gw.port, tls_context())
        await dtls_cycle(gw.coaps_port, dtls_context())
        await asyncio.sleep(0.5)
        base = fd_count(gw.pid)
        loop = asyncio.get_running_loop()
        attackers = []
        if name != "baseline":
            port = gw.coaps_port if name.startswith("coaps") else gw.port
            attackers = [await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__)), "--attack", name, "--port", str(port), "--index", str(i),
                "--duration", str(args.duration), "--halfopen", str(args.halfopen), stdout=subprocess.PIPE)
                for i in range(PROCESSES)]
        end = loop.time() + args.duration + (2 if name == "halfopen" else 0)
        results: dict[str, tuple[list[float], list[str]]] = {"tls": ([], []), "dtls": ([], [])}
        peak = base

        async def watch() -> None:
            nonlocal peak
            while loop.time() < end:
                peak = max(peak, fd_count(gw.pid))
                await asyncio.sleep(0.2)

        await asyncio.gather(watch(), *(legit(k, gw.port if k == "tls" else gw.coaps_port, end, *results[k])
                                        for k in ("tls", "dtls")))
        reports = []
        for proc in attackers:
            out, _ = await proc.communicate()
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
        await asyncio.sleep(HANDSHAKE_TIMEOUT + 1)  # whatever is left times out
        after = fd_count(gw.pid)
        rate = sum(r["attempts"] for r in reports) / args.duration
        print(f"== {name}: {rate:,.0f} attempts/s from {len(reports)} processes {reports}")
        for kind in ("tls", "dtls"):
            print("   " + summary(kind, *results[kind]))
        print(f"   gateway fds: baseline {base}, peak {peak}, after {after} "
              f"({'back to baseline' if after <= base else 'NOT back'})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    p.add_argument("--halfopen", type=int, default=5000, help="half-open TCP connections in all")
    p.add_argument("--only", default=",".join(SCENARIOS))
    p.add_argument("--gateway-args", default="", metavar="ARGS",
                   help="more gateway options, e.g. '--max-failed-handshakes-per-source 0' (the limit off)")
    p.add_argument("--attack", choices=SCENARIOS[1:], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.attack is not None:
        run_attack(args)
        return
    for name in args.only.split(","):
        asyncio.run(scenario(name, args))


if __name__ == "__main__":
    main()
