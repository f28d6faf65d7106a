"""The demo's oneM2M clients (Entity A): one request primitive over an SA, on the HTTP binding (TS-0009, over
:func:`m2msec.saef.establish_sa`'s TLS) or the CoAP binding (TS-0008, over our DTLS client), answered as a
:class:`Reply` with the Response Status Code whichever binding carried it."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from m2msec import http1
from m2msec.gateway import coap
from m2msec.keys.secret import SecretKey
from m2msec.saef import EstablishedSA
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK
from m2msec.transport.dtls import create_dtls_endpoint

#: CoAP: Confirmable retransmissions and the wait for each (RFC 7252 §4.2, kept short on loopback)
COAP_TRIES, COAP_WAIT = 4, 3.0
_METHODS = {"POST": coap.POST, "GET": coap.GET, "PUT": coap.PUT, "DELETE": coap.DELETE}
_counter = itertools.count(1)


@dataclass(frozen=True)
class Reply:
    status: str  # HTTP status ("201") or CoAP code ("2.01")
    rsc: int | None
    body: dict[str, Any] = field(default_factory=dict)


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {"raw": data[:200].decode(errors="replace")}
    return value if isinstance(value, dict) else {"value": value}


class HttpClient:
    """oneM2M requests over an established TLS SA (HTTP binding)."""

    binding = "HTTP"

    def __init__(self, sa: EstablishedSA) -> None:
        self.sa = sa
        port = sa.writer.get_extra_info("sockname")[1]
        #: finds this SA's "SA established" line in the gateway's log (by the client's source port)
        self.log_pattern = rf"SA established with \('127\.0\.0\.1', {port}\): [^\n]*?"

    async def send(self, method: str, target: str, origin: str, body: dict[str, Any] | None = None,
                   ty: int | None = None) -> Reply:
        headers = [("host", "127.0.0.1"), ("x-m2m-origin", origin), ("x-m2m-ri", f"demo-{next(_counter)}"),
                   ("x-m2m-rvi", "3"), ("accept", "application/json")]
        if body is not None:
            headers.append(("content-type", f"application/json;ty={ty}" if ty else "application/json"))
        resp = await self.sa.request(http1.Message(headers=headers, body=json.dumps(body).encode() if body else b"",
                                                   method=method, target=target))
        rsc = resp.header("x-m2m-rsc")
        return Reply(str(resp.status), int(rsc) if rsc and rsc.isdigit() else None, _json(resp.body))

    @property
    def cipher(self) -> str:
        return self.sa.session.cipher

    async def close(self) -> None:
        await self.sa.close()


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


class CoapClient:
    """oneM2M requests over DTLS 1.2 PSK (TLS_PSK_WITH_AES_128_CCM_8, TS-0003 §10.2.2), CoAP binding."""

    binding = "CoAP"

    def __init__(self, transport: Any, inbox: _Inbox, cipher: str, kpsa_id: str) -> None:
        self.transport, self.inbox, self.cipher = transport, inbox, cipher
        #: finds this SA's "coaps SA" line in the gateway's log (by its PSK identity: one DTLS SA per light here)
        self.log_pattern = rf"coaps SA with [^\n]*?{re.escape(kpsa_id)}[^\n]*?"
        self._mid = itertools.count(0x2000)

    @classmethod
    async def connect(cls, host: str, port: int, kpsa_id: str, kpsa: SecretKey, peer_entity: str) -> CoapClient:
        ctx = TLSContext.dtls_client(ClientConfig(kpsa_id, kpsa, profiles=(ONEM2M_DTLS_PSK,), peer_entity=peer_entity))
        transport, inbox, session = await create_dtls_endpoint(_Inbox, host, port, ctx)
        assert isinstance(inbox, _Inbox)
        return cls(transport, inbox, session.cipher, kpsa_id)

    async def send(self, method: str, target: str, origin: str, body: dict[str, Any] | None = None,
                   ty: int | None = None) -> Reply:
        mid = next(self._mid) & 0xFFFF
        token = mid.to_bytes(2, "big")
        options: list[tuple[int, bytes]] = [(coap.URI_PATH, seg.encode()) for seg in target.strip("/").split("/")]
        if body is not None:
            options.append((12, coap.encode_uint(50)))  # Content-Format application/json
        if ty is not None:
            options.append((coap.ONEM2M_TY, coap.encode_uint(ty)))
        options += [(coap.ONEM2M_RVI, b"3"), (coap.ONEM2M_FR, origin.encode()),
                    (coap.ONEM2M_RQI, f"demo-{next(_counter)}".encode())]
        msg = coap.Message(coap.MessageType.CON, _METHODS[method], mid, token, options,
                           json.dumps(body).encode() if body is not None else b"")
        for _ in range(COAP_TRIES):
            self.transport.sendto(msg.encode())
            try:
                while True:
                    reply = coap.Message.decode(await asyncio.wait_for(self.inbox.queue.get(), COAP_WAIT))
                    if reply.token == token:
                        raw = reply.option(coap.ONEM2M_RSC)
                        return Reply(coap.format_code(reply.code), coap.decode_uint(raw) if raw else None,
                                     _json(reply.payload))
            except TimeoutError:
                continue
        return Reply("timeout", None)

    async def close(self) -> None:
        self.transport.close()
