"""The gateway (Entity B) end to end over loopback: real TLS-PSK clients, a real HTTP backend."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from conftest import (
    HOME_GATEWAY_CSE_ID,
    LIGHT1_AE,
    LIGHT1_ID,
    LIGHT1_KEY,
    LIGHT2_ID,
    LIGHT2_KEY,
    TD_ID,
    TD_KEY,
    make_table,
)
from m2msec import http1
from m2msec.errors import HandshakeFailed
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.rules import UnboundPolicy
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKTable, TomlPSKTable
from m2msec.saef import EstablishedSA, PSKCredentials, establish_sa


@dataclass
class RecordingBackend:
    """A real HTTP/1.1 server on loopback that records what reached it (stands in for the CSE); answers 2000 with
    ``extra`` response headers."""

    extra: list[tuple[str, str]] = field(default_factory=list)
    requests: list[http1.Message] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            req = await http1.read_message(conn, reader)
            if req is not None:
                self.requests.append(req)
                body = json.dumps({"m2m:cb": {"rn": HOME_GATEWAY_CSE_ID}}).encode()
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("content-type", "application/json"), ("x-m2m-rsc", "2000"),
                             ("x-m2m-ri", req.header("x-m2m-ri") or ""), *self.extra], body=body, status=200))
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def backend() -> AsyncIterator[RecordingBackend]:
    rec = RecordingBackend()
    rec.server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    yield rec
    rec.server.close()
    await rec.server.wait_closed()


async def start_gateway(backend_port: int, table: PSKTable, **kw: object) -> Gateway:
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", backend_port), port=0, **kw), table)  # type: ignore[arg-type]
    await gw.start()
    return gw


@pytest.fixture
async def gateway(backend: RecordingBackend) -> AsyncIterator[Gateway]:
    gw = await start_gateway(backend.port, make_table())
    yield gw
    await gw.close()


async def connect(gw: Gateway, identity: str = LIGHT1_ID, key: str = LIGHT1_KEY) -> EstablishedSA:
    creds = PSKCredentials(identity, SecretKey.from_hex(key), HOME_GATEWAY_CSE_ID)
    return await establish_sa("127.0.0.1", gw.port, creds)


def onem2m(origin: str | None, *, method: str = "GET", body: bytes = b"", extra: list[tuple[str, str]] | None = None,
           ri: str = "req-1") -> http1.Message:
    headers = [("host", HOME_GATEWAY_CSE_ID), ("x-m2m-ri", ri), ("x-m2m-rvi", "3")]
    if origin is not None:
        headers.append(("x-m2m-origin", origin))
    return http1.Message(headers=headers + (extra or []), body=body, method=method, target=f"/{HOME_GATEWAY_CSE_ID}")


async def test_matching_origin_is_forwarded_with_identity_headers(gateway: Gateway, backend: RecordingBackend) -> None:
    sa = await connect(gateway)
    spoof = [("x-m2msec-sa-identity", "CAdmin"), ("X-M2MSEC-Credential-ID", "12-admin@x.com"), ("connection", "x")]
    body = json.dumps({"m2m:ae": {"rn": "light1", "api": "Nlight", "rr": False}}).encode()
    resp = await sa.request(onem2m(LIGHT1_AE, method="POST", body=body, extra=[*spoof, ("content-type",
                                                                                          "application/json;ty=2")]))
    await sa.close()
    assert resp.status == 200 and resp.header("x-m2m-rsc") == "2000" and resp.header("x-m2m-ri") == "req-1"
    assert json.loads(resp.body) == {"m2m:cb": {"rn": HOME_GATEWAY_CSE_ID}}
    [seen] = backend.requests
    assert seen.method == "POST" and seen.target == f"/{HOME_GATEWAY_CSE_ID}" and seen.body == body
    assert seen.header("content-type") == "application/json;ty=2"
    assert [v for k, v in seen.headers if k == "x-m2msec-sa-identity"] == [LIGHT1_AE]
    assert [v for k, v in seen.headers if k == "x-m2msec-credential-id"] == [f"12-{LIGHT1_ID}"]
    assert [v for k, v in seen.headers if k == "x-m2msec-psk-identity"] == [LIGHT1_ID]
    assert seen.header("x-m2m-origin") == LIGHT1_AE


async def test_origin_mismatch_is_4106_and_not_forwarded(gateway: Gateway, backend: RecordingBackend) -> None:
    sa = await connect(gateway, LIGHT2_ID, LIGHT2_KEY)  # ADN-AE2 claims to be Clight-AE1
    resp = await sa.request(onem2m(LIGHT1_AE, ri="r-42"))
    missing = await sa.request(onem2m(None, ri="r-43"))  # keep-alive: same SA, second request
    await sa.close()
    assert (resp.status, resp.header("x-m2m-rsc"), resp.header("x-m2m-ri")) == (403, "4106", "r-42")
    assert "m2m:dbg" in json.loads(resp.body)
    assert (missing.status, missing.header("x-m2m-rsc")) == (403, "4106")
    assert backend.requests == []


async def test_keep_alive_several_requests_on_one_sa(gateway: Gateway, backend: RecordingBackend) -> None:
    sa = await connect(gateway)
    for i in range(3):
        resp = await sa.request(onem2m(LIGHT1_AE, ri=f"r{i}"))
        assert resp.header("x-m2m-ri") == f"r{i}"
    await sa.close()
    assert len(backend.requests) == 3


async def test_unbound_identity_rejected_by_default(gateway: Gateway, backend: RecordingBackend) -> None:
    sa = await connect(gateway, TD_ID, TD_KEY)
    resp = await sa.request(onem2m("CAE01"))
    await sa.close()
    assert (resp.status, resp.header("x-m2m-rsc")) == (403, "4106") and backend.requests == []


async def test_unbound_identity_forwarded_with_credential_id_when_asked(backend: RecordingBackend) -> None:
    gw = await start_gateway(backend.port, make_table(), unbound_policy=UnboundPolicy.FORWARD)
    try:
        sa = await connect(gw, TD_ID, TD_KEY)
        resp = await sa.request(onem2m("CAE01"))
        await sa.close()
    finally:
        await gw.close()
    assert resp.status == 200
    [seen] = backend.requests
    # TS-0003 §8.2.2.1: no bound entity -> the Credential-ID formed from the KpsaID (type 12)
    assert seen.header("x-m2msec-credential-id") == "12-test@onem2m.com"
    assert seen.header("x-m2msec-sa-identity") is None


async def test_backend_down_is_5103(backend: RecordingBackend) -> None:
    assert backend.server is not None
    port = backend.port
    backend.server.close()
    await backend.server.wait_closed()
    gw = await start_gateway(port, make_table())
    try:
        sa = await connect(gw)
        resp = await sa.request(onem2m(LIGHT1_AE))
        await sa.close()
    finally:
        await gw.close()
    assert (resp.status, resp.header("x-m2m-rsc")) == (404, "5103")


async def test_malformed_http_gets_400_and_gateway_keeps_serving(gateway: Gateway, backend: RecordingBackend) -> None:
    sa = await connect(gateway)
    sa.writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    data = await asyncio.wait_for(sa.reader.read(), 5)
    await sa.close()
    assert data.startswith(b"HTTP/1.1 400") and b"x-m2m-rsc: 4000" in data
    sa = await connect(gateway)
    assert (await sa.request(onem2m(LIGHT1_AE))).status == 200
    await sa.close()


async def test_body_over_limit_is_413(backend: RecordingBackend) -> None:
    gw = await start_gateway(backend.port, make_table(), max_body=1000)
    try:
        sa = await connect(gw)
        resp = await sa.request(onem2m(LIGHT1_AE, method="POST", body=b"x" * 5000))
        await sa.close()
    finally:
        await gw.close()
    assert resp.status == 413 and backend.requests == []


async def test_unknown_identity_refused_at_handshake(gateway: Gateway) -> None:
    with pytest.raises(HandshakeFailed) as info:  # answered as a wrong key is (RFC 4279 §2)
        await connect(gateway, "nobody@in.provider.com", "0011")
    assert info.value.alert == "bad_record_mac"


async def test_toml_reload_without_dropping_live_connections(backend: RecordingBackend, tmp_path: Path) -> None:
    path = tmp_path / "psk.toml"

    def write(*rows: tuple[str, str, str]) -> None:
        path.write_text("".join(f'[[psk]]\nidentity = "{i}"\nkey = "{k}"\nentity = "{e}"\n' for i, k, e in rows))
        path.chmod(0o600)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9 * (len(rows) + 1)))

    write((LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE))
    gw = await start_gateway(backend.port, TomlPSKTable(path), reload_interval=0.05)
    try:
        live = await connect(gw)
        with pytest.raises(HandshakeFailed) as refused:
            await connect(gw, LIGHT2_ID, LIGHT2_KEY)
        assert refused.value.alert in {"unknown_psk_identity", "bad_record_mac"}  # not in the table (told or hidden)
        write((LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE), (LIGHT2_ID, LIGHT2_KEY, "Clight-AE2"))  # Light 2 added
        for _ in range(100):
            await asyncio.sleep(0.05)
            if isinstance(gw.table, TomlPSKTable) and LIGHT2_ID in gw.table:
                break
        light2 = await connect(gw, LIGHT2_ID, LIGHT2_KEY)
        assert (await light2.request(onem2m("Clight-AE2"))).status == 200
        assert (await live.request(onem2m(LIGHT1_AE))).status == 200  # the live SA survived the reload
        # (removing an entry ends its live SAs: tests/gateway/test_revocation.py)
        path.write_text("[[psk]\nbroken")  # a broken edit keeps the last good table
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**10))
        await asyncio.sleep(0.3)
        again = await connect(gw, LIGHT2_ID, LIGHT2_KEY)
        await asyncio.gather(live.close(), light2.close(), again.close())
    finally:
        await gw.close()


async def test_connection_cap(backend: RecordingBackend) -> None:
    gw = await start_gateway(backend.port, make_table(), max_connections=2)
    try:
        idle = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(2)]  # half-open, never handshake
        await asyncio.sleep(0.05)
        with pytest.raises((HandshakeFailed, ConnectionError, OSError)):
            await connect(gw)  # the third is reset before any TLS
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.05)
        sa = await connect(gw)  # capacity is back once they are gone
        assert (await sa.request(onem2m(LIGHT1_AE))).status == 200
        await sa.close()
        await asyncio.sleep(0.1)  # the server side sees the close
        assert gw.limiter.refused >= 1 and gw.limiter.open == 0
    finally:
        await gw.close()


async def test_gateway_serves_on_a_given_listening_socket(backend: RecordingBackend) -> None:
    """The workers' seam: a listening socket made elsewhere (e.g. by a supervisor) is served as the configured one."""
    sock = socket.create_server(("127.0.0.1", 0))
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", backend.port), port=1), make_table())
    try:
        await gw.start(sock=sock)
        assert gw.port == sock.getsockname()[1]
        sa = await connect(gw)
        resp = await sa.request(onem2m(LIGHT1_AE))
        await sa.close()
        assert resp.status == 200 and resp.header("x-m2m-rsc") == "2000"
        assert [seen.header("x-m2msec-sa-identity") for seen in backend.requests] == [LIGHT1_AE]
    finally:
        await gw.close()
