"""Helpers of test_registration_acme.py: recording relays in front of ACME, Entity A clients over HTTP and
coaps, and a gateway (HTTP or coaps) with a Registrar on the rules and bindings files of a test."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from acme_cse import CSE_ID

from conftest import LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY
from m2msec import http1
from m2msec.gateway import coap
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.registrar import BindingStore, Registrar
from m2msec.gateway.subscription import RuleTable
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.saef import EstablishedSA, PSKCredentials, establish_sa
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK
from m2msec.transport.dtls import create_dtls_endpoint

#: a KpsaID (TS-0003 §10.5 form) no rule applies to
OTHER_ID, OTHER_KEY = "AE123456789099-Other@in.provider.com", "0f1e2d3c4b5a6978"
#: Credential-ID "formed from KpsaId" (TS-0003 §8.2.2.1): credIDTypeID 12 (symmetric key SAEF, TS-0003 Table
#: 12.3.2.1-1), "-", then the KpsaID
LIGHT1_CRED, LIGHT2_CRED = f"12-{LIGHT1_ID}", f"12-{LIGHT2_ID}"
#: ACME's default serviceProviderID (//acme.example.com): the SP-ID of the absolute AE-IDs it accepts
SP_ID = "acme.example.com"
RULES = f"""
[[app_rule]]                    # explicit AE-ID-Stems
apci = ["{LIGHT1_CRED}"]
aai = ["Nlight"]
aae = ["Clight-e2e-*"]

[[app_rule]]                    # the registrar (ACME) assigns the C-type stem
apci = ["{LIGHT2_CRED}"]
aai = ["Nauto"]
aae = ["C*"]
"""
#: response status code -> (HTTP status, CoAP code) as TS-0009 and TS-0008 Table 6.2.4-1 map them; 4128 is not in
#: TS-0008 V3.9.0's table: Forbidden as its sibling 4126, as in TS-0009 (403) and ACME (4.03)
SPEC = {2000: (200, "2.05"), 2001: (201, "2.01"), 4000: (400, "4.00"), 4004: (404, "4.04"), 4106: (403, "4.03"),
        4107: (403, "4.03"), 4126: (403, "4.03"), 4128: (403, "4.03")}
#: CoAP Content-Formats (RFC 7252 §12.3, RFC 8949): application/json, application/xml, application/cbor
CF = {"json": 50, "xml": 41, "cbor": 60}
HTTP_TYPES = {"json": "application/json", "xml": "application/xml", "cbor": "application/cbor"}

_unique = itertools.count()


def unique(prefix: str) -> str:
    """A name no other test of the module (one ACME for all) uses."""
    return f"{prefix}{next(_unique)}t{time.monotonic_ns() % 10**6}"


def psk_table() -> MemoryPSKTable:
    return MemoryPSKTable([PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)),
                           PSKEntry(LIGHT2_ID, SecretKey.from_hex(LIGHT2_KEY)),
                           PSKEntry(OTHER_ID, SecretKey.from_hex(OTHER_KEY))])


def ae_body(rn: str, api: str) -> bytes:
    return json.dumps({"m2m:ae": {"rn": rn, "api": api, "rr": False, "srv": ["3"]}}).encode()


def acme_rsc(http_port: int, path: str) -> int:
    """RETRIEVE ``path`` directly at ACME as its admin: the response status code."""
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}{path}", headers={
        "X-M2M-Origin": "CAdmin", "X-M2M-RI": unique("direct"), "X-M2M-RVI": "3", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.headers["X-M2M-RSC"])
    except urllib.error.HTTPError as exc:
        return int(exc.headers["X-M2M-RSC"])


# --- recording relays between the gateway and ACME
class TCPRelay:
    """Forwards TCP connections to ACME's HTTP port and keeps every byte sent towards ACME."""

    def __init__(self, target: int) -> None:
        self.target, self.seen = target, bytearray()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
        try:
            while data := await src.read(65536):
                if record:
                    self.seen += data
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False))

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()


class UDPRelay(asyncio.DatagramProtocol):
    """Forwards datagrams to ACME's CoAP port (one upstream socket per sender) and keeps those sent to ACME."""

    def __init__(self, target: int) -> None:
        self.target, self.seen = target, bytearray()
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: dict[object, socket.socket] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.seen += data
        up = self.upstream.get(addr)
        if up is None:
            up = self.upstream[addr] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.setblocking(False)
            up.connect(("127.0.0.1", self.target))
            asyncio.get_running_loop().add_reader(up.fileno(), self._back, up, addr)
        up.send(data)

    def _back(self, up: socket.socket, addr: object) -> None:
        try:
            data = up.recv(65536)
        except OSError:
            return
        if self.transport is not None:
            self.transport.sendto(data, addr)  # type: ignore[arg-type]

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for up in self.upstream.values():
            loop.remove_reader(up.fileno())
            up.close()
        if self.transport is not None:
            self.transport.close()


@dataclass
class Relays:
    acme_http: int
    http: TCPRelay
    coap: UDPRelay
    http_port: int
    coap_port: int

    def saw(self, marker: str) -> bool:
        """Whether ``marker`` (a request's RQI) was sent to ACME, over either binding."""
        return marker.encode() in self.http.seen or marker.encode() in self.coap.seen



# --- clients (Entity A) over both bindings
@dataclass
class Answer:
    status: int | str
    rsc: int
    body: bytes


class Client(Protocol):
    kind: str

    async def call(self, op: str, path: str, origin: str | None, rqi: str, body: bytes = b"", *, ty: int | None = None,
                   fmt: str = "json", content_type: str | None = None,
                   extra: tuple[tuple[int, bytes], ...] = ()) -> Answer: ...

    async def close(self) -> None: ...


class HTTPClient:
    kind = "http"

    def __init__(self, sa: EstablishedSA) -> None:
        self.sa = sa

    async def call(self, op: str, path: str, origin: str | None, rqi: str, body: bytes = b"", *, ty: int | None = None,
                   fmt: str = "json", content_type: str | None = None,
                   extra: tuple[tuple[int, bytes], ...] = ()) -> Answer:
        assert not extra, "CoAP options have no HTTP equivalent"
        headers = [("host", "gw"), ("x-m2m-ri", rqi), ("x-m2m-rvi", "3"), ("accept", "application/json")]
        if origin is not None:
            headers.append(("x-m2m-origin", origin))
        if content_type is None and ty is not None:
            content_type = f"{HTTP_TYPES[fmt]};ty={ty}"
        if content_type is not None:
            headers.append(("content-type", content_type))
        method = "POST" if op == "create" else "GET"
        resp = await self.sa.request(http1.Message(headers=headers, body=body, method=method, target=path))
        return Answer(resp.status, int(resp.header("x-m2m-rsc") or 0), resp.body)

    async def close(self) -> None:
        await self.sa.close()


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.q.put_nowait(data)


class CoapsClient:
    kind = "coaps"

    def __init__(self, transport: asyncio.DatagramTransport, inbox: Inbox) -> None:
        self.transport, self.inbox = transport, inbox
        self.ids = itertools.count(0x4000)

    async def call(self, op: str, path: str, origin: str | None, rqi: str, body: bytes = b"", *, ty: int | None = None,
                   fmt: str = "json", content_type: str | None = None,
                   extra: tuple[tuple[int, bytes], ...] = ()) -> Answer:
        assert content_type is None, "an HTTP Content-Type has no CoAP equivalent"
        n = next(self.ids)
        options = [(coap.URI_PATH, seg.encode()) for seg in path.strip("/").split("/")]
        options += [(coap.ONEM2M_RVI, b"3"), (coap.ONEM2M_RQI, rqi.encode())]
        if origin is not None:
            options.append((coap.ONEM2M_FR, origin.encode()))
        if ty is not None:
            options += [(coap.CONTENT_FORMAT, coap.encode_uint(CF[fmt])), (coap.ONEM2M_TY, coap.encode_uint(ty))]
        options += extra
        msg = coap.Message(coap.MessageType.CON, coap.POST if op == "create" else coap.GET, n & 0xFFFF,
                           n.to_bytes(2, "big"), [], body).with_options(*options)
        for _ in range(4):  # CON retransmission (RFC 7252 §4.2), kept short for loopback
            self.transport.sendto(msg.encode())
            try:
                while True:
                    reply = coap.Message.decode(await asyncio.wait_for(self.inbox.q.get(), 2))
                    if reply.token == msg.token:
                        rsc = reply.option(coap.ONEM2M_RSC)
                        return Answer(coap.format_code(reply.code), coap.decode_uint(rsc or b""), reply.payload)
            except TimeoutError:
                continue
        raise AssertionError("no CoAP response")

    async def close(self) -> None:
        self.transport.close()


def assert_answer(kind: str, answer: Answer, rsc: int) -> None:
    http_status, coap_code = SPEC[rsc]
    want = http_status if kind == "http" else coap_code
    assert (answer.status, answer.rsc) == (want, rsc), answer.body[:300]


# --- the gateway under test
class Stack:
    """One gateway (HTTP or coaps) with a Registrar on the rules and bindings files in ``work``."""

    def __init__(self, kind: str, relays: Relays, work: Path) -> None:
        self.kind, self.relays, self.work = kind, relays, work
        self.gateway: Gateway | CoapsGateway | None = None
        self.registrar: Registrar | None = None

    async def start(self) -> Stack:
        rules = self.work / "rules.toml"
        if not rules.exists():
            rules.write_text(RULES)
        self.registrar = Registrar(RuleTable.from_file(rules), BindingStore(self.work / "registrations.sqlite3"),
                                   cse_id=CSE_ID, sp_id=SP_ID)
        if self.kind == "http":
            self.gateway = Gateway(GatewayConfig(backend=Backend("127.0.0.1", self.relays.http_port), port=0,
                                                 cse_id=CSE_ID, sp_id=SP_ID), psk_table(), registrar=self.registrar)
        else:
            self.gateway = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=self.relays.coap_port,
                                                    port=0, cse_id=CSE_ID, sp_id=SP_ID),
                                        psk_table(), registrar=self.registrar)
        await self.gateway.start()
        return self

    async def client(self, identity: str, key: str) -> Client:
        assert self.gateway is not None
        if self.kind == "http":
            return HTTPClient(await establish_sa("127.0.0.1", self.gateway.port,
                                                 PSKCredentials(identity, SecretKey.from_hex(key), CSE_ID)))
        ctx = TLSContext.dtls_client(ClientConfig(identity, SecretKey.from_hex(key), profiles=(ONEM2M_DTLS_PSK,),
                                                  peer_entity=CSE_ID))
        transport, inbox = await create_dtls(self.gateway.port, ctx)
        return CoapsClient(transport, inbox)

    async def close(self) -> None:
        if self.gateway is not None:
            await self.gateway.close()
        if self.registrar is not None:
            self.registrar.close()


async def create_dtls(port: int, ctx: TLSContext) -> tuple[asyncio.DatagramTransport, Inbox]:
    transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", port, ctx)
    assert isinstance(inbox, Inbox)
    return transport, inbox
