"""What the tunnel tests share: an HTTP backend standing in for the CSE (echoes the body), a certificate
gateway in front of it (m2msec.pki), and a plain HTTP client for the tunnel's loopback side."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import h11

from conftest import make_table
from m2msec import http1
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.pki import CertificateFlavour, Issued, create_ca, issue
from m2msec.saef import CertificateCredentials
from m2msec.tls.engine import CertificateConfig
from m2msec.tls.profiles import ECDHE_ECDSA, ONEM2M_PSK

SP = "m2m.provider.com"
IN_CSE = "in-cse"
MN_CSE = "mn-cse-123456"
F = CertificateFlavour


@dataclass
class EchoBackend:
    """A real HTTP/1.1 server on loopback (the CSE): keep-alive, answers 200 / 2000 with the request body."""

    requests: list[http1.Message] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                req = await http1.read_message(conn, reader, max_body=64 * 1024 * 1024)
                if req is None:
                    return
                self.requests.append(req)
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("content-type", "application/octet-stream"), ("x-m2m-rsc", "2000"),
                             ("x-m2m-ri", req.header("x-m2m-ri") or "")], body=req.body, status=200))
        except (http1.HTTPError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> EchoBackend:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@dataclass
class Certificates:
    ca: Issued
    gateway: Issued  # the IN-CSE gateway's CSE-ID certificate
    mn_cse: Issued  # the client's (the MN-CSE's) CSE-ID certificate


def make_certificates() -> Certificates:
    ca = create_ca("provider root", permitted_dns=[SP])
    return Certificates(ca, issue(ca, F.CSE_ID, IN_CSE, sp_domain=SP), issue(ca, F.CSE_ID, MN_CSE, sp_domain=SP))


async def start_gateway(backend_port: int, certs: Certificates, **kw: object) -> Gateway:
    cert = CertificateConfig(certs.gateway.certificate_pem(), certs.gateway.private_key_pem(),
                             trust_anchors_pem=certs.ca.certificate_pem())
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", backend_port), port=0, profiles=(ONEM2M_PSK, ECDHE_ECDSA),
                               certificate=cert, cse_id=IN_CSE, sp_id=f"//{SP}", **kw),  # type: ignore[arg-type]
                 make_table())
    await gw.start()
    return gw


def client_credentials(certs: Certificates, *, trust: Issued | None = None,
                       peer_entity: str = IN_CSE) -> CertificateCredentials:
    return CertificateCredentials(certs.mn_cse.certificate_pem(), certs.mn_cse.private_key_pem(),
                                  (trust or certs.ca).certificate_pem(), peer_entity=peer_entity)


def onem2m(origin: str, *, body: bytes = b"", ri: str = "req-1", close: bool = False) -> http1.Message:
    headers = [("host", IN_CSE), ("x-m2m-ri", ri), ("x-m2m-rvi", "3"), ("x-m2m-origin", origin)]
    if close:
        headers.append(("connection", "close"))
    return http1.Message(headers=headers, body=body, method="POST" if body else "GET", target=f"/{IN_CSE}")


class PlainClient:
    """An HTTP/1.1 client over plain TCP (what the CSE does), keep-alive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> PlainClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def request(self, msg: http1.Message, *, timeout: float = 10.0) -> http1.Message:
        async with asyncio.timeout(timeout):
            if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                self.conn.start_next_cycle()
            await http1.send_message(self.conn, self.writer, msg)
            resp = await http1.read_message(self.conn, self.reader, max_body=64 * 1024 * 1024)
        assert resp is not None, "closed before a response"
        return resp

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
