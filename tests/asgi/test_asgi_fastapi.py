"""A small FastAPI application over the ASGI server: TLS-PSK and certificate clients over real handshakes, the
handler reading who authenticated and exporting keying material from the connection that carries its request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from conftest import LIGHT1_AE, LIGHT1_ID, make_table
from m2msec.asgi import EXTENSION, LifespanFailed, TLSExtension, serve, tls_extension
from m2msec.keys.table import PSKEntry
from m2msec.pki import CertificateFlavour, identity_from_certificate
from m2msec.saef import EXPORTER_CONNECTION_LABEL
from m2msec.tls.engine import ServerConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_PSK

from .conftest import MAF_FQDN, PKI, SP, TIMEOUT, connect, psk_server_context, request

FQDN = CertificateFlavour.FQDN


class Registration(BaseModel):
    targets: list[str]


def make_app(log: list[str], *, fail: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        log.append("startup")
        if fail:
            raise RuntimeError("key store unavailable")
        yield {"store": "ready"}
        log.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/whoami")
    async def whoami(req: Request) -> dict[str, Any]:
        tls: TLSExtension = req.scope["extensions"][EXTENSION]
        cert = tls.session.peer_certificate
        return {"authentication": tls.session.authentication, "psk_identity": tls.session.psk_identity,
                "entity": tls.session.entity, "certificate": identity_from_certificate(cert).value if cert else None,
                "store": req.state.store}

    @app.post("/keys")
    async def register(body: Registration, req: Request) -> dict[str, Any]:
        tls = tls_extension(req.scope)
        material = tls.export_keying_material(EXPORTER_CONNECTION_LABEL, 48).reveal()
        return {"kcid": material[:16].hex(), "kc": material[16:].hex(), "targets": body.targets}

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(status_code=404, detail="no such key")

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("handler bug")

    @app.get("/events")
    async def events() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"event {i}\n".encode()
                await asyncio.sleep(0)
        return StreamingResponse(parts(), media_type="text/plain")

    return app


async def test_fastapi_over_tls_psk() -> None:
    log: list[str] = []
    srv = await serve(make_app(log), psk_server_context(), "127.0.0.1", 0)
    async with srv:
        sa = await connect(srv.port)
        who = json.loads((await sa.request(request("GET", "/whoami"))).body)
        assert who == {"authentication": "psk", "psk_identity": LIGHT1_ID, "entity": LIGHT1_AE,
                       "certificate": None, "store": "ready"}
        resp = await sa.request(request("POST", "/keys", json.dumps({"targets": ["mn-cse-123456"]}).encode(),
                                        [("content-type", "application/json")]))
        assert resp.status == 200
        keys = json.loads(resp.body)
        mine = sa.export_keying_material(EXPORTER_CONNECTION_LABEL, 48).reveal()
        assert keys["kcid"] == mine[:16].hex() and keys["kc"] == mine[16:].hex()
        bad = await sa.request(request("POST", "/keys", b'{"targets": 1}', [("content-type", "application/json")]))
        assert bad.status == 422
        assert (await sa.request(request("GET", "/missing"))).status == 404
        crashed = await sa.request(request("GET", "/crash"))
        assert crashed.status == 500 and b"handler bug" not in crashed.body
        await sa.close()
        sa = await connect(srv.port)  # still serving
        streamed = await sa.request(request("GET", "/events"))
        assert streamed.body == b"event 0\nevent 1\nevent 2\n"
        await sa.close()
    assert log == ["startup", "shutdown"]


async def test_fastapi_over_certificates(pki: PKI) -> None:
    log: list[str] = []
    async with await serve(make_app(log), pki.server_context(), "127.0.0.1", 0) as srv:
        sa = await connect(srv.port, pki.client_context())
        who = json.loads((await sa.request(request("GET", "/whoami"))).body)
        assert who["authentication"] == "certificate" and who["psk_identity"] is None
        assert who["certificate"] == f"//{SP}/in-cse/Cmeter"
        keys = json.loads((await sa.request(request("POST", "/keys", b'{"targets": []}',
                                                    [("content-type", "application/json")]))).body)
        mine = sa.export_keying_material(EXPORTER_CONNECTION_LABEL, 48).reveal()
        assert bytes.fromhex(keys["kcid"] + keys["kc"]) == mine
        assert sa.session.peer_certificate is not None
        assert identity_from_certificate(sa.session.peer_certificate, dns_flavour=FQDN).value == MAF_FQDN
        await sa.close()


async def test_fastapi_startup_failure_refuses_to_start() -> None:
    log: list[str] = []
    with pytest.raises(LifespanFailed, match="key store unavailable"):
        async with asyncio.timeout(TIMEOUT):
            await serve(make_app(log, fail=True), psk_server_context(), "127.0.0.1", 0)
    assert log == ["startup"]


async def test_fastapi_with_an_asynchronous_psk_resolver() -> None:
    table = make_table()
    asked: list[str] = []

    async def resolver(identity: str) -> PSKEntry | None:
        asked.append(identity)
        await asyncio.sleep(0.01)  # as a key fetched from a MAF or a database would
        return table.lookup(identity)

    context = TLSContext.server(ServerConfig(None, profiles=(ONEM2M_PSK,), async_psk=True))
    async with await serve(make_app([]), context, "127.0.0.1", 0, psk_resolver=resolver) as srv:
        sa = await connect(srv.port)
        who = json.loads((await sa.request(request("GET", "/whoami"))).body)
        await sa.close()
    assert asked == [LIGHT1_ID] and who["psk_identity"] == LIGHT1_ID and who["entity"] == LIGHT1_AE
