"""The connection's deadlines when they move: keep-alive and request timeouts counted from the latest event.

The server keeps one timer per connection and moves deadlines lazily (m2msec.asgi.protocol); these check that a
moved deadline is the one that counts, over real TLS connections.
"""

from __future__ import annotations

import asyncio
import time

from m2msec.asgi import serve

from .conftest import TIMEOUT, Recorder, connect, exchange_raw, psk_server_context, raw_app, request


async def test_keep_alive_counts_from_the_last_response(rec: Recorder) -> None:
    srv = await serve(raw_app(rec), psk_server_context(), "127.0.0.1", 0, keep_alive_timeout=0.4)
    try:
        sa = await connect(srv.port)
        start = time.monotonic()
        for _ in range(6):  # 0.9 s of requests 0.15 s apart: past the first idle deadline, never idle 0.4 s
            assert (await sa.request(request("GET", "/"))).status == 200
            await asyncio.sleep(0.15)
        assert time.monotonic() - start > 0.8
        last = time.monotonic()
        async with asyncio.timeout(TIMEOUT):
            assert await sa.reader.read() == b""  # then idle: closed 0.4 s after the last response
        assert time.monotonic() - last >= 0.2
        await sa.close()
    finally:
        await srv.aclose()


async def test_request_timeout_counts_from_the_request_after_keep_alive_use(rec: Recorder) -> None:
    srv = await serve(raw_app(rec), psk_server_context(), "127.0.0.1", 0, keep_alive_timeout=5.0,
                      request_timeout=0.4)
    try:
        sa = await connect(srv.port)
        for _ in range(4):  # requests in time, 0.2 s apart: each its own request deadline
            assert (await sa.request(request("GET", "/"))).status == 200
            await asyncio.sleep(0.2)
        start = time.monotonic()
        answer = await exchange_raw(sa, b"POST / HTTP/1.1\r\nhost: maf\r\ncontent-length: 10\r\n\r\nabc")
        assert answer.startswith(b"HTTP/1.1 408 ")  # the shorter request deadline replaces the idle one
        assert 0.3 <= time.monotonic() - start < 4.0
        await sa.close()
    finally:
        await srv.aclose()
