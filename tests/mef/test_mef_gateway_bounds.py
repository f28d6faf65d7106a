"""The MEF resolver on the coaps side (DTLS 1.2 PSK with a provisioned Kpsa) and its bounds (D200 in-flight fetches,
D201 cache size), against the real MEF of tests/mef/world.py."""

from __future__ import annotations

import asyncio
import logging

import pytest

from m2msec.gateway import coap
from m2msec.gateway.coap import Message, MessageType
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.gateway.mef_resolver import MEFKeyResolver
from m2msec.mef.client import MEFCredentials, MEFFetcher, enrol
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK
from m2msec.transport.dtls import create_dtls_endpoint

from .test_mef_gateway import IDB, kpsa, mef_resolver
from .world import ENROLEE_ID, GW, KPM, KPMID, MEF_FQDN, SP, TARGET_PSKS, World


class CoAPServer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.requests: list[Message] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = Message.decode(data)
        self.requests.append(msg)
        assert self.transport is not None
        self.transport.sendto(Message(MessageType.ACK, coap.make_code(2, 5), msg.message_id, msg.token,
                                      [(coap.ONEM2M_RSC, coap.encode_uint(2000))], b"ok").encode(), addr)


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.q.put_nowait(data)


async def test_coaps_side_uses_the_provisioned_kpsa(world: World) -> None:
    loop = asyncio.get_running_loop()
    cse_transport, cse = await loop.create_datagram_endpoint(CoAPServer, local_addr=("127.0.0.1", 0))
    resolver = mef_resolver(world.address, world.clock)
    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=cse_transport.get_extra_info("sockname")[1],
                                  port=0), None, maf=resolver)
    await gw.start()
    try:
        e = await enrol(world.address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN)
        ctx = TLSContext.dtls_client(ClientConfig(str(e.keid), kpsa(e), profiles=(ONEM2M_DTLS_PSK,),
                                                  peer_entity=IDB))
        transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, ctx)
        assert isinstance(inbox, Inbox)
        for token, origin in ((b"\x01", ENROLEE_ID), (b"\x02", f"//{SP}/in-cse/CAE2")):
            req = Message(MessageType.CON, coap.GET, int.from_bytes(token, "big"), token, [], b"").with_options(
                (coap.URI_PATH, b"in-cse"), (coap.ONEM2M_RQI, b"rq-1"), (coap.ONEM2M_FR, origin.encode()))
            transport.sendto(req.encode())
            reply = Message.decode(await asyncio.wait_for(inbox.q.get(), 5))
            assert coap.format_code(reply.code) == ("2.05" if origin == ENROLEE_ID else "4.03")
        [seen] = cse.requests  # the foreign From was not relayed
        assert seen.options_of(coap.OPTION_SA_IDENTITY) == [ENROLEE_ID.encode()]
        assert resolver.fetches == 1
        transport.close()
    finally:
        await gw.close()
        await resolver.close()
        cse_transport.close()


async def test_in_flight_fetches_are_capped(caplog: pytest.LogCaptureFixture) -> None:
    conns: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)  # a MEF that accepts and never answers

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    fetcher = MEFFetcher(f"127.0.0.1:{hung.sockets[0].getsockname()[1]}", MEFCredentials(GW, TARGET_PSKS[GW]),
                         mef_fqdn=MEF_FQDN, timeout=1.0)
    resolver = MEFKeyResolver(fetcher, max_inflight=1)
    first, second = f"{'01' * 16}@{MEF_FQDN}", f"{'02' * 16}@{MEF_FQDN}"
    try:
        waiting = [asyncio.create_task(resolver(first)) for _ in range(3)]  # one fetch, three waiters
        await asyncio.sleep(0.05)
        with caplog.at_level(logging.WARNING, "m2msec.gateway.mef"):
            assert await asyncio.wait_for(resolver(second), 0.5) is None  # refused at once, no second fetch
        assert resolver.refused_busy == 1 and "2 fetches are running" not in caplog.text
        assert "1 fetches are running already (D200)" in caplog.text
        assert await asyncio.gather(*waiting) == [None, None, None]  # the fetch timed out: refused, no hang
        assert resolver.fetches == 1
    finally:
        await resolver.close()
        for w in conns:
            w.close()
        hung.close()


async def test_cache_keeps_at_most_max_cache_keys(world: World) -> None:
    resolver = mef_resolver(world.address, world.clock)
    resolver.max_cache = 1
    try:
        one, two = [await enrol(world.address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN) for _ in range(2)]
        first, second = await resolver(str(one.keid)), await resolver(str(two.keid))
        assert first is not None and first.key == kpsa(one) and second is not None and second.key == kpsa(two)
        assert resolver.cached(str(one.keid)) is None and resolver.cached(str(two.keid)) is not None
        assert await resolver(str(one.keid)) is not None and resolver.fetches == 3  # the dropped one fetched again
        assert await resolver(f"{'0f' * 16}@mef.other.example") is None and resolver.fetches == 3  # not ours
    finally:
        await resolver.close()
