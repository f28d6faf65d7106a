"""The MAF-based SAEF on the coaps side (DTLS 1.2): a Kc registered at the (in-memory) MAF, retrieved by the
CoapsGateway's MAFKeyResolver, the SA bound to the key's source."""

from __future__ import annotations

import asyncio

from m2msec.gateway import coap
from m2msec.gateway.coap import Message, MessageType
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.gateway.maf_resolver import MAFKeyResolver
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK
from m2msec.transport.dtls import create_dtls_endpoint

from .saef_maf_stub import StubMAF
from .test_saef_gateway import A_ID, A_KM, A_KMID, B_KM, B_KMID, FQDN, IDB


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


async def test_coaps_side_resolves_maf_keys() -> None:
    stub = StubMAF(FQDN, {A_KMID: (A_KM, A_ID), B_KMID: (B_KM, IDB)})
    maf_port = await stub.start()
    loop = asyncio.get_running_loop()
    cse_transport, cse = await loop.create_datagram_endpoint(CoAPServer, local_addr=("127.0.0.1", 0))
    resolver = MAFKeyResolver(MAFClient("127.0.0.1", maf_port, MAFCredentials(FQDN, kmid=B_KMID, km=B_KM)))
    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=cse_transport.get_extra_info("sockname")[1],
                                  port=0), None, maf=resolver)
    await gw.start()
    try:
        async with MAFClient("127.0.0.1", maf_port, MAFCredentials(FQDN, kmid=A_KMID, km=A_KM)) as a:
            key = await a.register_key(suid=32, target_ids=[IDB], lifetime=600)
        assert key.kc is not None
        ctx = TLSContext.dtls_client(ClientConfig(f"{key.relative_key_id}@{FQDN}", key.kc,
                                                  profiles=(ONEM2M_DTLS_PSK,), peer_entity=IDB))
        transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, ctx)
        assert isinstance(inbox, Inbox)
        for token, origin in ((b"\x01", A_ID), (b"\x02", "//sp.example.com/cse-a/CAE2")):
            req = Message(MessageType.CON, coap.GET, int.from_bytes(token, "big"), token, [], b"").with_options(
                (coap.URI_PATH, b"cse-b"), (coap.ONEM2M_RQI, b"rq-1"), (coap.ONEM2M_FR, origin.encode()))
            transport.sendto(req.encode())
            reply = Message.decode(await asyncio.wait_for(inbox.q.get(), 5))
            expected = "2.05" if origin == A_ID else "4.03"
            assert coap.format_code(reply.code) == expected
        [seen] = cse.requests  # the foreign From was not relayed
        assert seen.options_of(coap.OPTION_SA_IDENTITY) == [A_ID.encode()]
        assert resolver.retrievals == 1
        transport.close()
    finally:
        await gw.close()
        await resolver.close()
        cse_transport.close()
        await stub.close()
