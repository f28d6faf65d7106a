"""Starting and stopping: lifespan startup failure (nothing listens), applications without lifespan, serving on a
given socket, and the graceful stop (requests in flight finish, idle connections close, the rest is cancelled)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import MutableMapping
from typing import Any

import pytest

from m2msec.asgi import LifespanFailed, serve
from m2msec.errors import ConfigurationError

from .conftest import TIMEOUT, Recorder, connect, exchange_raw, psk_server_context, raw_app, request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_lifespan_startup_failure_refuses_to_start(rec: Recorder) -> None:
    rec.fail_startup = "database unreachable"
    port = free_port()
    with pytest.raises(LifespanFailed, match="database unreachable"):
        await serve(raw_app(rec), psk_server_context(), "127.0.0.1", port)
    with socket.socket() as s:  # nothing listens
        assert s.connect_ex(("127.0.0.1", port)) != 0


async def test_an_application_raising_at_startup() -> None:
    async def no_lifespan(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("only http")
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    # auto (the default): no lifespan support, served without it
    srv = await serve(no_lifespan, psk_server_context(), "127.0.0.1", 0)
    sa = await connect(srv.port)
    assert (await sa.request(request("GET", "/"))).status == 204
    await sa.close()
    await srv.aclose()
    # on: a failure, with the reason
    with pytest.raises(LifespanFailed, match="ValueError: only http"):
        await serve(no_lifespan, psk_server_context(), "127.0.0.1", 0, lifespan="on")
    # off: the application never sees a lifespan scope
    srv = await serve(no_lifespan, psk_server_context(), "127.0.0.1", 0, lifespan="off")
    await srv.aclose()


async def test_bad_settings_are_refused_before_anything_starts(rec: Recorder) -> None:
    with pytest.raises(ConfigurationError, match="max_body"):
        await serve(raw_app(rec), psk_server_context(), max_body=-1)
    with pytest.raises(ConfigurationError, match="request_timeout"):
        await serve(raw_app(rec), psk_server_context(), request_timeout=0)
    assert rec.events == []


async def test_serve_on_a_given_socket(rec: Recorder) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    srv = await serve(raw_app(rec), psk_server_context(), sock=sock)
    async with srv:
        assert srv.port == sock.getsockname()[1] and len(srv.sockets) == 1
        sa = await connect(srv.port)
        assert (await sa.request(request("GET", "/"))).status == 200
        await sa.close()


async def test_graceful_stop_finishes_requests_in_flight(rec: Recorder) -> None:
    srv = await serve(raw_app(rec), psk_server_context(), "127.0.0.1", 0)
    busy = await connect(srv.port)
    idle = await connect(srv.port)
    assert (await idle.request(request("GET", "/"))).status == 200
    pending = asyncio.ensure_future(busy.request(request("GET", "/slow")))
    async with asyncio.timeout(TIMEOUT):
        await rec.started.wait()
        srv.close()
        assert await idle.reader.read() == b""  # the idle connection is closed at once
        with pytest.raises(OSError):  # no new connections
            await connect(srv.port)
        assert not pending.done()
        rec.release.set()
        resp = await pending
        await srv.wait_closed()
    assert resp.status == 200 and resp.header("connection") == "close"
    assert rec.events == ["lifespan.startup", "lifespan.shutdown"]
    await busy.close()
    await idle.close()


async def test_graceful_stop_cancels_what_outlasts_the_timeout(rec: Recorder) -> None:
    srv = await serve(raw_app(rec), psk_server_context(), "127.0.0.1", 0, shutdown_timeout=0.3)
    sa = await connect(srv.port)
    sa.writer.write(b"GET /hang HTTP/1.1\r\nhost: maf\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        await rec.started.wait()
        await srv.aclose()
        assert await exchange_raw(sa, b"") == b""  # aborted
    assert "cancelled" in rec.events and rec.events[-1] == "lifespan.shutdown"
    await sa.close()
