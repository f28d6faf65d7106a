"""The ASGI server over real TLS-PSK connections on loopback, with a raw ASGI application: the scope and the
``m2msec.tls`` extension, keep-alive, chunked uploads, 100-continue, the limits, failures and disconnects."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import MutableMapping
from typing import Any

import h11
import pytest

from conftest import LIGHT1_AE, LIGHT1_ID
from m2msec.asgi import Server, serve
from m2msec.saef import EXPORTER_CONNECTION_LABEL

from .conftest import (
    TIMEOUT,
    Recorder,
    connect,
    exchange_raw,
    psk_client_context,
    psk_server_context,
    raw_app,
    read_response,
    request,
)


def report(body: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(body)
    return result


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
async def test_scope_and_tls_extension(rec: Recorder, tls13: bool) -> None:
    srv = await serve(raw_app(rec), psk_server_context(tls13=tls13), "127.0.0.1", 0)
    try:
        sa = await connect(srv.port, psk_client_context(tls13=tls13))
        resp = await sa.request(request("POST", "/a%20b/%C3%A9?x=1&y=%20", b"hello", [("X-Custom", "V")]))
        assert resp.status == 200
        seen = report(resp.body)
        assert seen["method"] == "POST" and seen["scheme"] == "https" and seen["http_version"] == "1.1"
        assert seen["path"] == "/a b/é" and seen["raw_path"] == "/a%20b/%C3%A9"
        assert seen["query"] == "x=1&y=%20" and seen["root_path"] == ""
        assert seen["asgi"] == {"version": "3.0", "spec_version": "2.3"}
        assert ["x-custom", "V"] in seen["headers"]  # names lowercased, values untouched
        assert seen["server"] == ["127.0.0.1", srv.port]
        local = sa.writer.get_extra_info("sockname")
        assert seen["client"] == [local[0], local[1]]
        # who authenticated, from the handshake; the exporter of *this* connection, as the client computes it
        assert seen["identity"] == LIGHT1_ID and seen["entity"] == LIGHT1_AE
        mine = sa.export_keying_material(EXPORTER_CONNECTION_LABEL, 48).reveal().hex()
        assert seen["exported"] == mine
        assert seen["body_len"] == 5 and seen["state"] == {"greeting": "hello"}
        # a second connection has another exporter value
        other = await connect(srv.port, psk_client_context(tls13=tls13))
        again = report((await other.request(request("GET", "/"))).body)
        assert again["exported"] != mine
        assert again["exported"] == other.export_keying_material(EXPORTER_CONNECTION_LABEL, 48).reveal().hex()
        await sa.close()
        await other.close()
    finally:
        await srv.aclose()
    assert rec.events == ["lifespan.startup", "lifespan.shutdown"]


async def test_extension_refuses_after_the_connection_closed(rec: Recorder, server: Server) -> None:
    sa = await connect(server.port)
    await sa.request(request("GET", "/"))
    ext = rec.scopes[0]["extensions"]["m2msec.tls"]
    assert not hasattr(ext, "tls") and not hasattr(ext, "connection") and set(dir(ext)) >= {"session"}
    assert LIGHT1_ID in repr(ext)
    await sa.close()
    from m2msec.errors import TLSProtocolError

    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                ext.export_keying_material(EXPORTER_CONNECTION_LABEL, 48)
            except TLSProtocolError:
                break
            await asyncio.sleep(0.01)


async def test_keep_alive_serves_several_requests_on_one_connection(rec: Recorder, server: Server) -> None:
    sa = await connect(server.port)
    exported = set()
    for i in range(5):
        resp = await sa.request(request("POST", f"/n{i}", b"x" * i))
        assert resp.status == 200
        seen = report(resp.body)
        assert seen["path"] == f"/n{i}" and seen["body_len"] == i
        exported.add(seen["exported"])
    assert len(exported) == 1 and len({s["client"] for s in rec.scopes}) == 1  # one connection
    await sa.close()


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    sa = await connect(server.port)
    raw = b"".join(f"GET /p{i} HTTP/1.1\r\nhost: maf\r\n\r\n".encode() for i in range(3))
    sa.writer.write(raw + b"GET /last HTTP/1.1\r\nhost: maf\r\nconnection: close\r\n\r\n")
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "maf")]))  # mirror the client's state
    paths = []
    for i in range(4):
        response, body = await read_response(sa, conn)
        assert response.status_code == 200
        paths.append(report(body)["path"])
        if i < 3:
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "maf")]))
    assert paths == ["/p0", "/p1", "/p2", "/last"]
    assert await sa.reader.read() == b""  # connection: close honoured
    await sa.close()


async def test_chunked_upload_is_delivered_whole(server: Server) -> None:
    sa = await connect(server.port)
    conn = h11.Connection(h11.CLIENT)
    sa.writer.write(conn.send(h11.Request(method="PUT", target="/up",
                                          headers=[("host", "maf"), ("transfer-encoding", "chunked")])))
    for i in range(20):
        sa.writer.write(conn.send(h11.Data(data=bytes([65 + i]) * 1000)))
        await sa.writer.drain()
    sa.writer.write(conn.send(h11.EndOfMessage()))
    response, body = await read_response(sa, conn)
    assert response.status_code == 200
    seen = report(body)
    assert seen["body_len"] == 20000 and seen["body_tail"] == "T" * 16
    await sa.close()


async def test_large_body_flows_through_the_high_water_mark(rec: Recorder) -> None:
    srv = await serve(raw_app(rec), psk_server_context(), "127.0.0.1", 0, max_body=4 * 1024 * 1024)
    try:
        sa = await connect(srv.port)
        resp = await sa.request(request("POST", "/big", b"z" * (3 * 1024 * 1024)))
        assert report(resp.body)["body_len"] == 3 * 1024 * 1024
        await sa.close()
    finally:
        await srv.aclose()


async def test_100_continue_is_sent_when_the_application_reads(server: Server) -> None:
    sa = await connect(server.port)
    head = b"POST /c HTTP/1.1\r\nhost: maf\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
    first = await exchange_raw(sa, head, until_eof=False)
    assert first.startswith(b"HTTP/1.1 100 ")
    sa.writer.write(b"abcd")
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/c", headers=[("host", "maf"), ("content-length", "4")]))
    conn.receive_data(first)
    response, body = await read_response(sa, conn)
    assert response.status_code == 200 and report(body)["body_len"] == 4
    await sa.close()


async def test_413_before_the_body_is_sent(rec: Recorder, server: Server) -> None:
    sa = await connect(server.port)
    head = b"POST /big HTTP/1.1\r\nhost: maf\r\ncontent-length: 65537\r\nexpect: 100-continue\r\n\r\n"
    answer = await exchange_raw(sa, head)  # read to EOF: the server answers and closes, no body was sent
    assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer
    assert rec.scopes == []  # the application never ran
    await sa.close()
    # without Expect too: the answer comes from the head alone
    sa = await connect(server.port)
    answer = await exchange_raw(sa, b"POST /big HTTP/1.1\r\nhost: maf\r\ncontent-length: 9999999\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")
    await sa.close()


async def test_chunked_body_is_cut_at_the_cap(rec: Recorder, server: Server) -> None:
    sa = await connect(server.port)
    conn = h11.Connection(h11.CLIENT)
    sa.writer.write(conn.send(h11.Request(method="POST", target="/up",
                                          headers=[("host", "maf"), ("transfer-encoding", "chunked")])))
    answer = b""
    async with asyncio.timeout(TIMEOUT):
        for _ in range(200):  # 200 x 1000 bytes, far over the 64 KiB cap: the server stops reading at the cap
            try:
                sa.writer.write(conn.send(h11.Data(data=b"y" * 1000)))
                await sa.writer.drain()
            except (ConnectionError, OSError):
                break
            if sa.reader.at_eof() or sa.reader._buffer:  # type: ignore[attr-defined]
                break
        answer = await sa.reader.read()
    assert answer.startswith(b"HTTP/1.1 413 ")
    await sa.close()


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: maf\r\nbad header\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: maf\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nhost: maf\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    # RFC 9112 §6.1, §6.3: ambiguous framing (request smuggling) is refused, not read as chunked
    b"POST / HTTP/1.1\r\nhost: maf\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: maf\r\nhost: other\r\n\r\n",  # RFC 9112 §3.2
])
async def test_malformed_http_is_refused_with_400(rec: Recorder, server: Server, raw: bytes,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    sa = await connect(server.port)
    with caplog.at_level(logging.DEBUG, logger="m2msec"):
        answer = await exchange_raw(sa, raw)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(r.exc_info for r in caplog.records)
    assert not any(b"GARBAGE" in r.getMessage().encode() or "zz" in r.getMessage() for r in caplog.records)
    await sa.close()
    ok = await connect(server.port)  # the server still serves
    assert (await ok.request(request("GET", "/"))).status == 200
    await ok.close()


async def test_oversize_head_is_refused_with_431(server: Server) -> None:
    sa = await connect(server.port)
    answer = await exchange_raw(sa, b"GET / HTTP/1.1\r\nhost: maf\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    await sa.close()


async def test_application_exception_gives_500_and_the_server_still_serves(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    sa = await connect(server.port)
    with caplog.at_level(logging.INFO, logger="m2msec"):
        resp = await sa.request(request("POST", "/boom", b"secret-body-value"))
    assert resp.status == 500 and b"secret" not in resp.body and b"failed" not in resp.body
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "/boom" in failures[0].getMessage()
    assert "secret-body-value" not in caplog.text
    await sa.close()
    sa = await connect(server.port)
    assert (await sa.request(request("GET", "/"))).status == 200
    await sa.close()


async def test_streaming_response(server: Server) -> None:
    sa = await connect(server.port)
    resp = await sa.request(request("GET", "/stream"))
    assert resp.status == 200 and resp.header("transfer-encoding") == "chunked"
    assert resp.body == b"".join(f"part {i}\n".encode() for i in range(5))
    assert (await sa.request(request("HEAD", "/stream"))).body == b""
    assert (await sa.request(request("GET", "/"))).status == 200  # still alive after both
    await sa.close()


async def test_client_going_away_cancels_an_application_that_never_answers(rec: Recorder, server: Server) -> None:
    sa = await connect(server.port)
    sa.writer.write(b"GET /hang HTTP/1.1\r\nhost: maf\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        await rec.started.wait()
        await sa.close()
        await rec.ended.wait()
    assert "cancelled" in rec.events


async def test_client_going_away_mid_request_gives_http_disconnect(rec: Recorder, server: Server) -> None:
    sa = await connect(server.port)
    sa.writer.write(b"POST /wait-disconnect HTTP/1.1\r\nhost: maf\r\ncontent-length: 100\r\n\r\npartial")
    async with asyncio.timeout(TIMEOUT):
        await rec.started.wait()
        await asyncio.sleep(0.05)
        sa.writer.transport.abort()
        await rec.ended.wait()
    assert rec.events[-1] == "disconnect"
    await asyncio.sleep(0)
    assert server._state.tasks == set() and server._state.connections == set()


async def test_idle_and_request_timeouts(rec: Recorder) -> None:
    srv = await serve(raw_app(rec), psk_server_context(), "127.0.0.1", 0, keep_alive_timeout=0.3)
    try:
        sa = await connect(srv.port)  # and says nothing
        async with asyncio.timeout(TIMEOUT):
            assert await sa.reader.read() == b""  # idle: closed after 0.3 s
        await sa.close()
    finally:
        await srv.aclose()
    srv = await serve(raw_app(rec), psk_server_context(), "127.0.0.1", 0, request_timeout=0.3)
    try:
        slow = await connect(srv.port)
        assert (await slow.request(request("GET", "/"))).status == 200  # a whole request in time is served
        answer = await exchange_raw(slow, b"POST / HTTP/1.1\r\nhost: maf\r\ncontent-length: 10\r\n\r\nabc")
        assert answer.startswith(b"HTTP/1.1 408 ")
        await slow.close()
    finally:
        await srv.aclose()


async def test_a_client_that_does_not_read_is_dropped_after_the_write_timeout() -> None:
    sent: list[int] = []

    async def flood(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        for _ in range(4000):  # 256 MiB, far more than the socket buffers hold
            await send({"type": "http.response.body", "body": b"f" * 65536, "more_body": True})
            sent.append(1)
        await send({"type": "http.response.body"})

    srv = await serve(flood, psk_server_context(), "127.0.0.1", 0, write_timeout=0.3)
    try:
        sa = await connect(srv.port)
        sa.writer.write(b"GET / HTTP/1.1\r\nhost: maf\r\n\r\n")  # and never read
        async with asyncio.timeout(TIMEOUT):
            while srv._state.connections or srv._state.tasks:
                await asyncio.sleep(0.05)
        assert 0 < len(sent) < 4000  # the application was stopped, long before sending it all
        sa.writer.transport.abort()
    finally:
        await srv.aclose()


async def test_an_invalid_response_header_gives_500() -> None:
    async def bad(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"bad header", b"x")]})

    srv = await serve(bad, psk_server_context(), "127.0.0.1", 0)
    try:
        sa = await connect(srv.port)
        assert (await sa.request(request("GET", "/"))).status == 500
        await sa.close()
    finally:
        await srv.aclose()


async def test_a_body_the_application_did_not_read_is_dropped_and_the_connection_reused(server: Server) -> None:
    sa = await connect(server.port)
    conn = h11.Connection(h11.CLIENT)
    sa.writer.write(conn.send(h11.Request(method="POST", target="/stream",
                                          headers=[("host", "maf"), ("content-length", "10")])))
    response, body = await read_response(sa, conn)  # /stream answers without reading the body
    assert response.status_code == 200 and body.startswith(b"part 0")
    sa.writer.write(conn.send(h11.Data(data=b"0123456789")) + conn.send(h11.EndOfMessage()))
    conn.start_next_cycle()
    sa.writer.write(conn.send(h11.Request(method="GET", target="/after", headers=[("host", "maf")])))
    conn.send(h11.EndOfMessage())
    response, body = await read_response(sa, conn)
    assert response.status_code == 200 and report(body)["path"] == "/after"
    await sa.close()


async def test_reading_pauses_while_the_application_does_not_take_the_body() -> None:
    from m2msec.asgi.protocol import HIGH_WATER, HTTPProtocol

    go = asyncio.Event()
    seen: list[int] = []

    async def hold(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await go.wait()
        total = 0
        while True:
            message = await receive()
            total += len(message["body"])
            if not message["more_body"]:
                break
        seen.append(total)
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    srv = await serve(hold, psk_server_context(), "127.0.0.1", 0, max_body=8 * 1024 * 1024)
    try:
        sa = await connect(srv.port)
        pending = asyncio.ensure_future(sa.request(request("POST", "/", b"b" * (4 * 1024 * 1024))))
        await asyncio.sleep(0.5)  # the client writes as fast as the server lets it
        (protocol,) = srv._state.connections
        assert isinstance(protocol, HTTPProtocol) and protocol.cycle is not None
        # paused: at most the high-water mark plus what one socket read decrypted, not the 4 MiB
        buffered = protocol.cycle.buffered
        assert buffered <= HIGH_WATER + 512 * 1024, f"{buffered} bytes buffered"
        go.set()
        async with asyncio.timeout(TIMEOUT):
            assert (await pending).status == 204
        assert seen == [4 * 1024 * 1024]
        await sa.close()
    finally:
        await srv.aclose()


async def test_100_continue_unanswered_by_the_application_closes_after_the_response(server: Server) -> None:
    sa = await connect(server.port)
    answer = await exchange_raw(sa, b"POST /stream HTTP/1.1\r\nhost: maf\r\ncontent-length: 4\r\n"
                                    b"expect: 100-continue\r\n\r\n")  # to EOF: the server closes
    assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer.lower()
    assert b" 100 " not in answer  # the application never read: no 100 Continue
    await sa.close()


async def test_http_1_0_request_is_answered_and_closed(server: Server) -> None:
    sa = await connect(server.port)
    answer = await exchange_raw(sa, b"GET /old HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"http_version": "1.0"' in answer
    await sa.close()


async def test_an_incomplete_head_times_out_with_408(rec: Recorder) -> None:
    srv = await serve(raw_app(rec), psk_server_context(), "127.0.0.1", 0, request_timeout=0.3)
    try:
        sa = await connect(srv.port)
        answer = await exchange_raw(sa, b"GET / HTTP/1.1\r\nhost: m")
        assert answer.startswith(b"HTTP/1.1 408 ") and rec.scopes == []
        await sa.close()
    finally:
        await srv.aclose()
