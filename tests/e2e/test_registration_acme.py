"""Registration upon SAE in front of a real CSE (ACME), over HTTP and coaps (issue 17).

Credential-only SAs (PSK table entries without ``entity``): the gateway knows only the Credential-ID formed from
the KpsaID, the service subscription rules (TS-0001 §10.2.2.2) decide which CREATE <AE> may reach ACME, and the
AE-ID ACME assigns is bound to the Credential-ID (in a bindings file) for the requests that follow.

Every request to ACME goes through a recording relay, so that "never reached the CSE" is checked on the wire
(the request's unique RQI is not in what the relay carried), besides ACME's own state (the resource a refused
CREATE names does not exist). Expected status codes are the spec's (TS-0004 Table 6.6.3.3-1 response status
codes, TS-0009 Table 6.6-1 HTTP status, TS-0008 Table 6.3.3-1 CoAP response code), never the gateway's tables.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from acme_cse import CSE_ID, CSE_RN, needs_acme, running_acme

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

pytestmark = needs_acme

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
#: response status code -> (HTTP status, CoAP code) as TS-0009 Table 6.6-1 and TS-0008 Table 6.3.3-1 map them
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


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    with running_acme(tmp_path_factory.mktemp("acme-reg"), coap=True) as (http_port, coap_port):
        assert coap_port is not None
        yield http_port, coap_port


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


@pytest.fixture
async def relays(acme: tuple[int, int]) -> AsyncIterator[Relays]:
    http = TCPRelay(acme[0])
    http_port = await http.start()
    udp = UDPRelay(acme[1])
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: udp, local_addr=("127.0.0.1", 0))
    coap_port = int(transport.get_extra_info("sockname")[1])
    yield Relays(acme[0], http, udp, http_port, coap_port)
    http.close()
    udp.close()


# --- clients (Entity A) over both bindings
@dataclass
class Answer:
    status: int | str
    rsc: int
    body: bytes


class Client(Protocol):
    kind: str

    async def call(self, op: str, path: str, origin: str | None, rqi: str, body: bytes = b"", *, ty: int | None = None,
                   fmt: str = "json", content_type: str | None = None) -> Answer: ...

    async def close(self) -> None: ...


class HTTPClient:
    kind = "http"

    def __init__(self, sa: EstablishedSA) -> None:
        self.sa = sa

    async def call(self, op: str, path: str, origin: str | None, rqi: str, body: bytes = b"", *, ty: int | None = None,
                   fmt: str = "json", content_type: str | None = None) -> Answer:
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
                   fmt: str = "json", content_type: str | None = None) -> Answer:
        assert content_type is None, "an HTTP Content-Type has no CoAP equivalent"
        n = next(self.ids)
        options = [(coap.URI_PATH, seg.encode()) for seg in path.strip("/").split("/")]
        options += [(coap.ONEM2M_RVI, b"3"), (coap.ONEM2M_RQI, rqi.encode())]
        if origin is not None:
            options.append((coap.ONEM2M_FR, origin.encode()))
        if ty is not None:
            options += [(coap.CONTENT_FORMAT, coap.encode_uint(CF[fmt])), (coap.ONEM2M_TY, coap.encode_uint(ty))]
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


@pytest.fixture(params=["http", "coaps"])
async def stack(request: pytest.FixtureRequest, relays: Relays, tmp_path: Path) -> AsyncIterator[Stack]:
    s = await Stack(request.param, relays, tmp_path).start()
    yield s
    await s.close()


# --- 1. a rule with an explicit From
async def test_explicit_from_registers_and_only_that_ae_id_passes(stack: Stack, relays: Relays) -> None:
    kind = stack.kind
    rn, ae_id = unique(f"lt{kind}"), unique(f"Clight-e2e-{kind}")
    light = await stack.client(LIGHT1_ID, LIGHT1_KEY)
    try:
        created = await light.call("create", f"/{CSE_RN}", ae_id, unique("rq"), ae_body(rn, "Nlight"), ty=2)
        assert_answer(kind, created, 2001)
        assert json.loads(created.body)["m2m:ae"]["aei"] == ae_id
        for form in (ae_id, f"/{CSE_ID}/{ae_id}", f"//{SP_ID}/{CSE_ID}/{ae_id}"):  # stem, SP-relative, absolute
            got = await light.call("retrieve", f"/{CSE_RN}/{rn}", form, unique("rq"))
            assert_answer(kind, got, 2000)
            assert json.loads(got.body)["m2m:ae"]["rn"] == rn
        for other in ("CAdmin", unique("Clight-e2e-")):  # not the AE-ID registered through this credential
            rqi = unique("rq-hijack")
            cnt = json.dumps({"m2m:cnt": {"rn": "stolen"}}).encode()
            refused = await light.call("create", f"/{CSE_RN}/{rn}", other, rqi, cnt, ty=3)
            assert_answer(kind, refused, 4106)
            assert not relays.saw(rqi)
            assert acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}/stolen") == 4004
    finally:
        await light.close()
    assert acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}") == 2000


# --- 2. the registrar (ACME) assigns the AE-ID
async def test_assigned_ae_id_is_bound_across_connections_and_restarts(stack: Stack, relays: Relays) -> None:
    kind = stack.kind
    rn = unique(f"auto{kind}")
    light = await stack.client(LIGHT2_ID, LIGHT2_KEY)
    try:
        created = await light.call("create", f"/{CSE_RN}", "C", unique("rq"), ae_body(rn, "Nauto"), ty=2)
        assert_answer(kind, created, 2001)
        aei = json.loads(created.body)["m2m:ae"]["aei"]
        assert aei.startswith("C") and len(aei) > 1  # a C-type AE-ID-Stem ACME chose
        assert_answer(kind, await light.call("retrieve", f"/{CSE_RN}/{rn}", aei, unique("rq")), 2000)
    finally:
        await light.close()
    again = await stack.client(LIGHT2_ID, LIGHT2_KEY)  # a new SA of the same credential
    try:
        assert_answer(kind, await again.call("retrieve", f"/{CSE_RN}/{rn}", aei, unique("rq")), 2000)
    finally:
        await again.close()
    await stack.close()
    restarted = await Stack(kind, relays, stack.work).start()  # same bindings file
    try:
        light = await restarted.client(LIGHT2_ID, LIGHT2_KEY)
        try:
            assert_answer(kind, await light.call("retrieve", f"/{CSE_RN}/{rn}", aei, unique("rq")), 2000)
            rqi = unique("rq-other")
            assert_answer(kind, await light.call("retrieve", f"/{CSE_RN}/{rn}", "CAdmin", rqi), 4106)
            assert not relays.saw(rqi)
        finally:
            await light.close()
        # the AE-ID is LIGHT2's only: LIGHT1 (its own rule, nothing bound) cannot use it
        other = await restarted.client(LIGHT1_ID, LIGHT1_KEY)
        try:
            rqi = unique("rq-other")
            assert_answer(kind, await other.call("retrieve", f"/{CSE_RN}/{rn}", aei, rqi), 4106)
            assert not relays.saw(rqi)
        finally:
            await other.close()
    finally:
        await restarted.close()


# --- 3. 4128 and 4126
@pytest.mark.parametrize(("who", "api", "origin", "rsc"), [
    ("other", "Nlight", "Clight-e2e-norule", 4128),  # no rule applies to the credential
    ("light1", "Nwrong", "Clight-e2e-wrongapi", 4126),  # the rule does not admit the App-ID
    ("light1", "Nlight", "Cintruder", 4126),  # ... nor this From
    ("light1", "Nlight", "C", 4126),  # Clight-e2e-* cannot admit a stem ACME would choose (D98)
    ("light2", "Nauto", None, None),  # From absent: ACME assigns, admitted by C* (the positive control)
])
async def test_refused_registrations_never_reach_acme(stack: Stack, relays: Relays, who: str, api: str,
                                                      origin: str | None, rsc: int | None) -> None:
    identity, key = {"other": (OTHER_ID, OTHER_KEY), "light1": (LIGHT1_ID, LIGHT1_KEY),
                     "light2": (LIGHT2_ID, LIGHT2_KEY)}[who]
    rn, rqi = unique(f"ref{stack.kind}"), unique("rq-reg")
    client = await stack.client(identity, key)
    try:
        answer = await client.call("create", f"/{CSE_RN}", origin, rqi, ae_body(rn, api), ty=2)
    finally:
        await client.close()
    if rsc is None:
        assert_answer(stack.kind, answer, 2001)
        assert relays.saw(rqi) and acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}") == 2000
        return
    assert_answer(stack.kind, answer, rsc)
    assert not relays.saw(rqi)
    assert acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}") == 4004


# --- 4. a CSE-ID as From on a credential-only SA
async def test_cse_id_from_on_a_credential_only_sa_is_4107(stack: Stack, relays: Relays) -> None:
    rn = unique(f"cse{stack.kind}")
    light = await stack.client(LIGHT1_ID, LIGHT1_KEY)
    try:
        rqi = unique("rq-cse")
        assert_answer(stack.kind, await light.call("retrieve", f"/{CSE_RN}", "/some-cse", rqi), 4107)
        rqi2 = unique("rq-cse")
        answer = await light.call("create", f"/{CSE_RN}", "/some-cse", rqi2, ae_body(rn, "Nlight"), ty=2)
        assert_answer(stack.kind, answer, 4107)
    finally:
        await light.close()
    assert not relays.saw(rqi) and not relays.saw(rqi2)
    assert acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}") == 4004


# --- 5. CREATE <AE> the rules could not check
async def test_create_ae_in_another_form_is_4000_and_not_forwarded(stack: Stack, relays: Relays) -> None:
    kind = stack.kind
    light = await stack.client(LIGHT1_ID, LIGHT1_KEY)
    names: list[str] = []
    try:
        def attempt(label: str) -> tuple[str, str, str]:
            rn = unique(f"smug{label}")
            names.append(rn)
            return rn, unique(f"Clight-e2e-{label}"), unique("rq-smug")

        rn, ae_id, rqi = attempt("dup")  # the rules would read one api, the CSE perhaps the other
        dup = (f'{{"m2m:ae": {{"rn": "{rn}", "api": "Nlight", "api": "Nevil", "rr": false, '
               f'"srv": ["3"]}}}}').encode()
        assert_answer(kind, await light.call("create", f"/{CSE_RN}", ae_id, rqi, dup, ty=2), 4000)
        assert not relays.saw(rqi)
        rn, ae_id, rqi = attempt("xml")
        xml = (f'<m2m:ae xmlns:m2m="http://www.onem2m.org/xml/protocols" rn="{rn}"><api>Nlight</api>'
               f'<rr>false</rr><srv>3</srv></m2m:ae>').encode()
        assert_answer(kind, await light.call("create", f"/{CSE_RN}", ae_id, rqi, xml, ty=2, fmt="xml"), 4000)
        assert not relays.saw(rqi)
        rn, ae_id, rqi = attempt("cbor")
        cbor = b"\xa1\x66m2m:ae\xa2\x62rn" + bytes([0x60 + len(rn)]) + rn.encode() + b"\x63api\x66Nlight"
        assert_answer(kind, await light.call("create", f"/{CSE_RN}", ae_id, rqi, cbor, ty=2, fmt="cbor"), 4000)
        assert not relays.saw(rqi)
        if kind == "http":
            # ACME reads the text after the first "=" of the parameters as ty: ty=02 is a CREATE <AE> for it
            for content_type in ("application/json;ty=02", "application/json;x=2", "application/json;ty=2;x=1"):
                rn, ae_id, rqi = attempt("ct")
                answer = await light.call("create", f"/{CSE_RN}", ae_id, rqi, ae_body(rn, "Nlight"),
                                          content_type=content_type)
                assert_answer(kind, answer, 4000)
                assert not relays.saw(rqi), content_type
    finally:
        await light.close()
    for rn in names:
        assert acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}") == 4004


def test_acme_itself_takes_ty_02_as_a_create_ae(acme: tuple[int, int]) -> None:
    """Why ``ty=02`` must be refused: sent straight to ACME, it registers an AE."""
    rn = unique("direct02")
    req = urllib.request.Request(f"http://127.0.0.1:{acme[0]}/{CSE_RN}", data=ae_body(rn, "Nlight"),
                                 method="POST", headers={"X-M2M-Origin": unique("Cdirect"), "X-M2M-RI": unique("d"),
                                                         "X-M2M-RVI": "3", "Content-Type": "application/json;ty=02"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["X-M2M-RSC"] == "2001"
    assert acme_rsc(acme[0], f"/{CSE_RN}/{rn}") == 2000


# --- 6. the CLI
def write_psk_table(path: Path) -> Path:
    path.write_text(f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\n')
    path.chmod(0o600)
    return path


async def test_cli_gateway_with_app_rules(relays: Relays, tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "m2msec.cli.main", "gateway", "--psk-table", str(write_psk_table(tmp_path / "psk.toml")),
        "--backend", f"http://127.0.0.1:{relays.http_port}", "--listen", "127.0.0.1:0", "--cse-id", CSE_ID,
        "--app-rules", str(tmp_path / "rules.toml"), "--registrations", str(tmp_path / "registrations.sqlite3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("m2msec gateway on 127.0.0.1:"), line
        port = int(line.split()[3].rsplit(":", 1)[1])
        light = HTTPClient(await establish_sa("127.0.0.1", port,
                                              PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), CSE_ID)))
        try:
            rn, ae_id = unique("cli"), unique("Clight-e2e-cli")
            assert_answer("http", await light.call("create", f"/{CSE_RN}", ae_id, unique("rq"),
                                                   ae_body(rn, "Nlight"), ty=2), 2001)
            assert_answer("http", await light.call("retrieve", f"/{CSE_RN}/{rn}", ae_id, unique("rq")), 2000)
            rn2, rqi = unique("cli"), unique("rq-cli")
            assert_answer("http", await light.call("create", f"/{CSE_RN}", unique("Cintruder"), rqi,
                                                   ae_body(rn2, "Nlight"), ty=2), 4126)
        finally:
            await light.close()
        assert not relays.saw(rqi) and acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn2}") == 4004
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert LIGHT1_KEY not in err.decode()


def test_cli_app_rules_without_registrations_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES)
    done = subprocess.run(
        [sys.executable, "-m", "m2msec.cli.main", "gateway", "--psk-table", str(write_psk_table(tmp_path / "p.toml")),
         "--backend", "http://127.0.0.1:9", "--listen", "127.0.0.1:0", "--app-rules", str(tmp_path / "rules.toml")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "--registrations" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
