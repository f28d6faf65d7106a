"""No key material in the ASGI server's logs (at DEBUG), in the extension's repr or in its errors, over requests
that succeed, fail in the application, are malformed, too large or abandoned."""

from __future__ import annotations

import asyncio
import logging

import pytest

from conftest import LIGHT1_KEY
from leaks import assert_no_secret
from m2msec.errors import TLSProtocolError
from m2msec.saef import EXPORTER_CONNECTION_LABEL

from .conftest import TIMEOUT, Recorder, connect, exchange_raw, psk_server_context, raw_app, request


async def test_no_key_material_in_logs_reprs_or_errors(rec: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    from m2msec.asgi import serve

    with caplog.at_level(logging.DEBUG):
        srv = await serve(raw_app(rec), psk_server_context(), "127.0.0.1", 0, max_body=1000)
        sa = await connect(srv.port)
        secrets = [bytes.fromhex(LIGHT1_KEY), sa.export_keying_material(EXPORTER_CONNECTION_LABEL, 48).reveal(),
                   sa.tls.master_secret().reveal()]
        assert (await sa.request(request("POST", "/", b"body"))).status == 200
        assert (await sa.request(request("GET", "/boom"))).status == 500
        await sa.close()
        for raw in (b"GARBAGE\r\n\r\n", b"POST / HTTP/1.1\r\nhost: m\r\ncontent-length: 5000\r\n\r\n"):
            bad = await connect(srv.port)
            await exchange_raw(bad, raw)
            await bad.close()
        gone = await connect(srv.port)
        rec.started.clear()
        gone.writer.write(b"GET /hang HTTP/1.1\r\nhost: m\r\n\r\n")
        async with asyncio.timeout(TIMEOUT):
            await rec.started.wait()
        gone.writer.transport.abort()
        await srv.aclose()
    ext = rec.scopes[0]["extensions"]["m2msec.tls"]
    with pytest.raises(TLSProtocolError) as closed:
        ext.export_keying_material(EXPORTER_CONNECTION_LABEL, 48)
    assert len(caplog.records) >= 3  # the failures were logged (and searched)
    assert_no_secret(caplog.text, secrets, where="the ASGI server's logs")
    assert_no_secret(repr(ext) + repr(ext.session) + str(closed.value), secrets, where="the extension")
