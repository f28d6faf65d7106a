"""What bench/flood.py and bench/leaks.py share: stub CSEs (HTTP and CoAP), ``m2msec gateway`` as a process with
both sides, the legitimate clients (TLS + one GET, DTLS + one CoAP GET), and the gateway's descriptors and RSS.
Imported as ``from load_common import ...`` (the scripts run as ``python bench/<name>.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h11

from m2msec import http1
from m2msec.gateway import coap
from m2msec.gateway.coap import Message, MessageType
from m2msec.keys.secret import SecretKey
from m2msec.saef import EstablishedSA
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK, ONEM2M_PSK
from m2msec.transport.dtls import create_dtls_endpoint
from m2msec.transport.tls import open_connection

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "build"
CSE_ID = "mn-cse-123456"
#: the legitimate client's credential, and the attackers' (a wrong key is LEGIT_ID with WRONG_KEY)
LEGIT = ("legit@bench.example", "11" * 16, "Clegit-AE")
ATTACK = ("attack@bench.example", "22" * 16, "Cattack-AE")
WRONG_KEY = "33" * 16


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def client_sockets(pid: int, port: int, *, remote: bool = False) -> int:
    """The process's TCP sockets on local ``port`` other than its listener: the client connections it holds
    (``remote``: the sockets connected to remote ``port``, e.g. the keep-alive connections to a CSE)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}", encoding="ascii") as fh:
            for line in list(fh)[1:]:
                fields = line.split()
                address = fields[2] if remote else fields[1]
                if int(address.rsplit(":", 1)[1], 16) == port and fields[3] != "0A" and fields[9] in inodes:
                    count += 1
    return count


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def stub_cse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while (req := await http1.read_message(conn, reader)) is not None:
            await http1.send_message(conn, writer, http1.Message(
                headers=[("content-type", "application/json"), ("x-m2m-rsc", "2000"),
                         ("x-m2m-ri", req.header("x-m2m-ri") or "")],
                body=json.dumps({"m2m:cb": {"rn": CSE_ID}}).encode(), status=200))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
    except (ConnectionError, h11.ProtocolError):
        pass
    finally:
        writer.close()


class CoapCse(asyncio.DatagramProtocol):
    """Answers every CON request 2.05 piggy-backed, echoing token and RQI."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = Message.decode(data)
        if not coap.is_request(msg.code):
            return
        options = [(coap.ONEM2M_RSC, coap.encode_uint(2000))]
        rqi = msg.option(coap.ONEM2M_RQI)
        if rqi is not None:
            options.append((coap.ONEM2M_RQI, rqi))
        answer = Message(MessageType.ACK, coap.make_code(2, 5), msg.message_id, msg.token, [], b"ok")
        self.transport.sendto(answer.with_options(*options).encode(), addr)


@dataclass
class Gateway:
    pid: int
    port: int
    coaps_port: int
    proc: asyncio.subprocess.Process
    log: Path
    cse_port: int = 0


@contextlib.asynccontextmanager
async def gateway(*extra: str, name: str = "load", quiet: bool = True,
                  more_keys: int = 0) -> AsyncIterator[Gateway]:
    """``m2msec gateway`` (TLS and coaps) in front of the stub CSEs, with ``extra`` options (and ``more_keys``
    made-up identities in its PSK table)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    table = BUILD / f"{name}-psk.toml"
    rows = [f'[[psk]]\nidentity = "{i}"\nkey = "{k}"\nentity = "{e}"\n' for i, k, e in (LEGIT, ATTACK)]
    rows += [f'[[psk]]\nidentity = "filler{n}@load.test"\nkey = "{n:032x}"\n' for n in range(more_keys)]
    table.write_text("".join(rows))
    table.chmod(0o600)
    loop = asyncio.get_running_loop()
    cse = await asyncio.start_server(stub_cse, "127.0.0.1", 0, backlog=1024)
    udp, _ = await loop.create_datagram_endpoint(CoapCse, local_addr=("127.0.0.1", 0))
    m2msec = Path(sys.executable).parent / "m2msec"
    cmd = [str(m2msec), "gateway", "--listen", "127.0.0.1:0", "--coaps-listen", "127.0.0.1:0",
           "--psk-table", str(table), "--backend", f"http://127.0.0.1:{cse.sockets[0].getsockname()[1]}",
           "--coap-backend", f"127.0.0.1:{udp.get_extra_info('sockname')[1]}", "--profiles", "onem2m",
           "--cse-id", CSE_ID, *(["--quiet"] if quiet else []), *extra]
    log = BUILD / f"{name}-gateway.log"
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=fh)
    try:
        assert proc.stdout is not None
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 60)).decode() for _ in range(2)]
        ports = {words[1]: int(words[words.index("on") + 1].rsplit(":", 1)[1])
                 for words in (line.split() for line in lines) if "on" in words}
        if set(ports) != {"coaps", "gateway"}:
            raise SystemExit(f"the gateway did not start: {lines} {log.read_text()[-500:]}")
        yield Gateway(proc.pid, ports["gateway"], ports["coaps"], proc, log, cse.sockets[0].getsockname()[1])
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        cse.close()
        udp.close()


def tls_context(identity: str = LEGIT[0], key: str = LEGIT[1]) -> TLSContext:
    return TLSContext.client(ClientConfig(identity, SecretKey.from_hex(key), profiles=(ONEM2M_PSK,),
                                          peer_entity=CSE_ID))


def dtls_context(identity: str = LEGIT[0], key: str = LEGIT[1]) -> TLSContext:
    return TLSContext.dtls_client(ClientConfig(identity, SecretKey.from_hex(key), profiles=(ONEM2M_DTLS_PSK,),
                                               peer_entity=CSE_ID))


async def tls_cycle(port: int, context: TLSContext, entity: str = LEGIT[2], timeout: float = 10.0) -> float:
    """Connect, handshake, GET, close: its seconds (raises on any failure)."""
    t0 = time.monotonic()
    reader, writer, session = await open_connection("127.0.0.1", port, context, handshake_timeout=timeout,
                                                    peer_entity=CSE_ID)
    sa = EstablishedSA(reader, writer, session)
    try:
        msg = http1.Message(headers=[("host", CSE_ID), ("x-m2m-ri", "load"), ("x-m2m-rvi", "3"),
                                     ("x-m2m-origin", entity)], method="GET", target=f"/{CSE_ID}")
        answer = await sa.request(msg, timeout=timeout)
        if answer.status != 200:
            raise RuntimeError(f"answer {answer.status}")
    finally:
        await sa.close()
    return time.monotonic() - t0


@dataclass
class _Inbox(asyncio.DatagramProtocol):
    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


async def dtls_cycle(port: int, context: TLSContext, entity: str = LEGIT[2], timeout: float = 10.0) -> float:
    """DTLS handshake, one CoAP GET, close: its seconds (raises on any failure)."""
    t0 = time.monotonic()
    transport, inbox, _ = await create_dtls_endpoint(_Inbox, "127.0.0.1", port, context, handshake_timeout=timeout)
    try:
        assert isinstance(inbox, _Inbox)
        request = Message(MessageType.CON, coap.GET, 0x1234, b"lg", [], b"").with_options(
            (coap.URI_PATH, CSE_ID.encode()), (coap.ONEM2M_RQI, b"load"), (coap.ONEM2M_FR, entity.encode()))
        # a CON request is retransmitted until answered (RFC 7252 §4.2; 1 s, doubling, instead of ACK_TIMEOUT 2 s)
        wait, deadline = 1.0, time.monotonic() + timeout
        while True:
            transport.sendto(request.encode())
            try:
                data = await asyncio.wait_for(inbox.queue.get(), min(wait, max(0.0, deadline - time.monotonic())))
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                wait *= 2
        answer = Message.decode(data)
        if coap.format_code(answer.code) != "2.05":
            raise RuntimeError(f"answer {coap.format_code(answer.code)}")
    finally:
        transport.close()
    return time.monotonic() - t0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
