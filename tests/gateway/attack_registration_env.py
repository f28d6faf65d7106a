"""What the two hostile reviews of registration upon SAE (tests/gateway/test_attack_registration*.py) share: a real ACME
(module-scoped), the HTTP and coaps gateways in front of it with a Registrar, Entity A over TLS-PSK and DTLS-PSK."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from acme_cse import CSE_ID, running_acme
from registration_front import SP_ID, Inbox, create_dtls, psk_table, unique

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

#: a registree MN-CSE's PSK (its table entry binds it to a CSE-ID: its SA relays, D102)
EVIL_CSE_ID, EVIL_KEY = "mn-cse-evil", "00112233445566778899aabbccddeeff"
EVIL_IDENTITY = "CSE000000000666-Evil@in.provider.com"


@pytest.fixture(scope="module")
def acme_ports_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """A real ACME (HTTP and CoAP) for one test module: ``acme_ports = acme_ports_fixture`` there."""
    with running_acme(tmp_path_factory.mktemp("acme-attack17"), coap=True) as (http_port, coap_port):
        assert coap_port is not None
        yield http_port, coap_port


@pytest.fixture
def acme_http_fixture(acme_ports: tuple[int, int]) -> int:
    return acme_ports[0]


def table(evil_entity: str | None) -> MemoryPSKTable:
    """The lights' PSKs (no entity) and, with ``evil_entity``, a registree CSE's bound to it."""
    if evil_entity is None:
        return psk_table()
    return MemoryPSKTable([*psk_table().entries(), PSKEntry(EVIL_IDENTITY, SecretKey.from_hex(EVIL_KEY),
                                                              entity=evil_entity)])


def rules_file(tmp_path: Path, rules: str) -> Path:
    (tmp_path / "rules.toml").write_text(rules)
    return tmp_path / "rules.toml"


def registrar(tmp_path: Path, rules: str, cse_id: str | None = CSE_ID, sp_id: str | None = SP_ID) -> Registrar:
    return Registrar(RuleTable.from_file(rules_file(tmp_path, rules)),
                     BindingStore(tmp_path / "registrations.sqlite3"), cse_id=cse_id, sp_id=sp_id)


async def gateway(acme_http: int, tmp_path: Path, evil_entity: str | None, *, cse_id: str | None,
                  sp_id: str | None, rules: str | None) -> AsyncIterator[Gateway]:
    """An HTTP gateway in front of ACME (``async for gw in gateway(...)``); without ``rules`` no registrar."""
    reg = registrar(tmp_path, rules, cse_id, sp_id) if rules is not None else None
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", acme_http), port=0, cse_id=cse_id, sp_id=sp_id),
                 table(evil_entity), registrar=reg)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()
        if reg is not None:
            reg.close()


async def sa(gw: Gateway, identity: str, key: str) -> EstablishedSA:
    return await establish_sa("127.0.0.1", gw.port, PSKCredentials(identity, SecretKey.from_hex(key), CSE_ID))


async def call(sa: EstablishedSA, method: str, path: str, origin: str, body: bytes = b"",
               content_type: str | None = None, accept: str = "application/json") -> tuple[int, int, bytes]:
    headers = [("host", "gw"), ("x-m2m-ri", unique("rq")), ("x-m2m-rvi", "3"), ("accept", accept),
               ("x-m2m-origin", origin)]
    if content_type is not None:
        headers.append(("content-type", content_type))
    resp = await sa.request(http1.Message(headers=headers, body=body, method=method, target=path))
    return resp.status, int(resp.header("x-m2m-rsc") or 0), resp.body


class Coaps:
    """Entity A over coaps: one DTLS-PSK association, CON requests, CoAP answers as (code, rsc, payload)."""

    def __init__(self, transport: asyncio.DatagramTransport, inbox: Inbox) -> None:
        self.transport, self.inbox, self.ids = transport, inbox, itertools.count(0x5000)

    async def call(self, code: int, path: str, origin: str, body: bytes = b"", ty: int | None = None,
                   accept: int | None = None) -> tuple[str, int, bytes]:
        n = next(self.ids)
        options = [(coap.URI_PATH, seg.encode()) for seg in path.strip("/").split("/")]
        options += [(coap.ONEM2M_RVI, b"3"), (coap.ONEM2M_RQI, unique("rq").encode()),
                    (coap.ONEM2M_FR, origin.encode())]
        if ty is not None:
            options += [(coap.CONTENT_FORMAT, coap.encode_uint(50)), (coap.ONEM2M_TY, coap.encode_uint(ty))]
        if accept is not None:
            options.append((coap.ACCEPT, coap.encode_uint(accept)))
        msg = coap.Message(coap.MessageType.CON, code, n & 0xFFFF, n.to_bytes(2, "big"), [], body)
        msg = msg.with_options(*options)
        for _ in range(4):
            self.transport.sendto(msg.encode())
            try:
                while True:
                    reply = coap.Message.decode(await asyncio.wait_for(self.inbox.q.get(), 2))
                    if reply.token == msg.token:
                        rsc = reply.option(coap.ONEM2M_RSC)
                        return coap.format_code(reply.code), coap.decode_uint(rsc or b""), reply.payload
            except TimeoutError:
                continue
        raise AssertionError("no CoAP response")


@contextlib.asynccontextmanager
async def coaps_gateway(acme: tuple[int, int], tmp_path: Path, rules: str,
                        evil_entity: str | None = None) -> AsyncIterator[CoapsGateway]:
    reg = registrar(tmp_path, rules)
    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=acme[1], port=0, cse_id=CSE_ID,
                                  sp_id=SP_ID), table(evil_entity), registrar=reg)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()
        reg.close()


@contextlib.asynccontextmanager
async def coaps(gw: CoapsGateway, identity: str, key: str) -> AsyncIterator[Coaps]:
    ctx = TLSContext.dtls_client(ClientConfig(identity, SecretKey.from_hex(key), profiles=(ONEM2M_DTLS_PSK,),
                                              peer_entity=CSE_ID))
    transport, inbox = await create_dtls(gw.port, ctx)
    try:
        yield Coaps(transport, inbox)
    finally:
        transport.close()
