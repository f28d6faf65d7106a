"""TLSExtension.close(): the application ends its connection, an idle one at once (close_notify, EOF), a busy one
once the response in flight is complete (it carries ``connection: close``)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import MutableMapping
from typing import Any

from m2msec.asgi import TLSExtension, serve, tls_extension

from .conftest import TIMEOUT, connect, psk_server_context, request


class Closer:
    """An application that keeps each connection's extension; ``/close`` closes its own connection mid-request,
    then answers in two body parts after ``release``."""

    def __init__(self) -> None:
        self.extensions: list[TLSExtension] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        extension = tls_extension(scope)
        self.extensions.append(extension)
        if scope["path"] == "/close":
            extension.close()
            self.started.set()
            await self.release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await send({"type": "http.response.body", "body": b"-done"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_close_ends_an_idle_connection_at_once_and_leaves_the_others() -> None:
    app = Closer()
    srv = await serve(app, psk_server_context(), "127.0.0.1", 0, lifespan="off")
    first, second = await connect(srv.port), await connect(srv.port)
    try:
        assert (await first.request(request("GET", "/"))).status == 200
        assert (await second.request(request("GET", "/"))).status == 200
        mine, other = app.extensions
        mine.close()
        async with asyncio.timeout(TIMEOUT):
            assert await first.reader.read() == b""  # closed without the client sending anything
        # the other connection is still open and served
        answer = await second.request(request("GET", "/"))
        assert answer.status == 200 and answer.header("connection") is None
        mine.close()  # closed already: nothing
        ref = weakref.ref(other)  # weak references are allowed (the AEF front keeps them)
        assert ref() is other
    finally:
        await first.close()
        await second.close()
        await srv.aclose()


async def test_close_during_a_request_lets_its_response_finish_first() -> None:
    app = Closer()
    srv = await serve(app, psk_server_context(), "127.0.0.1", 0, lifespan="off")
    sa = await connect(srv.port)
    try:
        pending = asyncio.ensure_future(sa.request(request("GET", "/close")))
        async with asyncio.timeout(TIMEOUT):
            await app.started.wait()
            await asyncio.sleep(0.1)
            assert not pending.done()  # close() asked for, the connection still carries the request
            app.release.set()
            answer = await pending
            assert (answer.status, answer.body) == (200, b"first-done")
            assert answer.header("connection") == "close"
            assert await sa.reader.read() == b""  # then closed
    finally:
        await sa.close()
        await srv.aclose()
