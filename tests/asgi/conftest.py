"""Helpers of the ASGI server tests: a raw ASGI application that reports what it sees, TLS contexts (PSK and
certificates) and clients that talk HTTP/1.1 over m2msec's own TLS client (h11, or raw bytes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_ID, LIGHT1_KEY, make_table
from m2msec import http1
from m2msec.asgi import Server, serve
from m2msec.keys.secret import SecretKey
from m2msec.pki import CertificateFlavour, Issued, create_ca, issue
from m2msec.saef import EXPORTER_CONNECTION_LABEL, EstablishedSA
from m2msec.tls.engine import CertificateConfig, ClientConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, ONEM2M_PSK, TLS13_PSK
from m2msec.transport.tls import open_connection

TIMEOUT = 10.0
MAF_FQDN = "maf.m2m.test"
SP = "m2m.test"


@dataclass
class Recorder:
    """What the raw application saw: scopes, messages, cancellations, lifespan events."""

    scopes: list[MutableMapping[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    fail_startup: str | None = None


def raw_app(rec: Recorder) -> Any:
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                rec.events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    if rec.fail_startup is not None:
                        await send({"type": "lifespan.startup.failed", "message": rec.fail_startup})
                        return
                    scope["state"]["greeting"] = "hello"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        rec.scopes.append(scope)
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("the application failed")
        if path == "/hang":  # never answers, never reads
            rec.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                rec.events.append("cancelled")
                rec.ended.set()
                raise
        if path == "/wait-disconnect":  # reads the body, then waits for the client to go away
            rec.started.set()
            while (await receive())["type"] != "http.disconnect":
                pass
            rec.events.append("disconnect")
            rec.ended.set()
            return
        if path == "/slow":  # answers once released (graceful stop)
            rec.started.set()
            await rec.release.wait()
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for i in range(5):
                await send({"type": "http.response.body", "body": f"part {i}\n".encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        chunks = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message["body"]
            chunks += 1
            if not message["more_body"]:
                break
        ext = scope["extensions"]["m2msec.tls"]
        report = {
            "method": scope["method"], "path": path, "raw_path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(), "http_version": scope["http_version"],
            "scheme": scope["scheme"], "root_path": scope["root_path"], "asgi": scope["asgi"],
            "client": list(scope["client"]), "server": list(scope["server"]),
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "identity": ext.session.psk_identity, "entity": ext.session.entity,
            "exported": ext.export_keying_material(EXPORTER_CONNECTION_LABEL, 48).reveal().hex(),
            "body_len": len(body), "body_tail": body[-16:].decode("latin-1"),
            "state": scope.get("state"),
        }
        out = json.dumps(report).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    return app


def psk_server_context(*, tls13: bool = False) -> TLSContext:
    profiles = (TLS13_PSK,) if tls13 else (ONEM2M_PSK,)
    return TLSContext.server(ServerConfig(make_table().lookup, profiles=profiles))


def psk_client_context(*, tls13: bool = False) -> TLSContext:
    profiles = (TLS13_PSK,) if tls13 else (ONEM2M_PSK,)
    return TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=profiles,
                                          peer_entity=HOME_GATEWAY_CSE_ID))


@dataclass(frozen=True)
class PKI:
    ca: Issued
    server: Issued
    client: Issued

    def server_context(self) -> TLSContext:
        cert = CertificateConfig(self.server.certificate_pem(), self.server.private_key_pem(),
                                 trust_anchors_pem=self.ca.certificate_pem())
        return TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), certificate=cert))

    def client_context(self) -> TLSContext:
        cert = CertificateConfig(self.client.certificate_pem(), self.client.private_key_pem(),
                                 trust_anchors_pem=self.ca.certificate_pem())
        return TLSContext.client(ClientConfig(None, None, profiles=(ECDHE_ECDSA,), certificate=cert))


@pytest.fixture(scope="session")
def pki() -> PKI:
    ca = create_ca("asgi test root", permitted_dns=[SP])
    return PKI(ca, issue(ca, CertificateFlavour.FQDN, MAF_FQDN),
               issue(ca, CertificateFlavour.AE_ID, f"//{SP}/in-cse/Cmeter"))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def server(rec: Recorder) -> AsyncIterator[Server]:
    srv = await serve(raw_app(rec), psk_server_context(), "127.0.0.1", 0, max_body=64 * 1024)
    yield srv
    await srv.aclose()


async def connect(port: int, context: TLSContext | None = None) -> EstablishedSA:
    from m2msec.idb import ANY_ENTITY

    ctx = context if context is not None else psk_client_context()
    peer = ANY_ENTITY if ctx.config.psk_identity is None else HOME_GATEWAY_CSE_ID  # type: ignore[union-attr]
    reader, writer, session = await open_connection("127.0.0.1", port, ctx, peer_entity=peer)
    return EstablishedSA(reader, writer, session)


def request(method: str, target: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None
            ) -> http1.Message:
    return http1.Message(headers=[("host", "maf"), *(headers or [])], body=body, method=method, target=target)


async def exchange_raw(sa: EstablishedSA, data: bytes, *, until_eof: bool = True) -> bytes:
    """Write raw bytes inside the TLS connection; read until the server closes (or a first answer)."""
    sa.writer.write(data)
    out = b""
    async with asyncio.timeout(TIMEOUT):
        while True:
            chunk = await sa.reader.read(65536)
            if not chunk:
                return out
            out += chunk
            if not until_eof and b"\r\n\r\n" in out:
                return out


async def read_response(sa: EstablishedSA, conn: h11.Connection) -> tuple[h11.Response, bytes]:
    """The next final response on an h11 client connection (informational ones skipped)."""
    response: h11.Response | None = None
    body = b""
    async with asyncio.timeout(TIMEOUT):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await sa.reader.read(65536))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, body
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("closed before a response")
