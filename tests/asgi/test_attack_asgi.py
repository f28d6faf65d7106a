"""Hostile review of the ASGI server (issue 16): attacks that worked, over real TLS connections."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import pytest

from m2msec.asgi import serve

from .conftest import connect, exchange_raw, psk_server_context


async def _failing_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        raise RuntimeError("the application failed")


@pytest.mark.parametrize("target", ["/a%0AERROR%20m2msec.asgi%20forged%20line", "/a%0D%1B[2Jb"])
async def test_a_failing_request_cannot_forge_log_lines(target: str, caplog: pytest.LogCaptureFixture) -> None:
    # the server logged the request's decoded path with %s: a client whose request made the application fail
    # wrote line breaks and terminal escapes of its choice into the operator's log
    server = await serve(_failing_app, psk_server_context(), lifespan="off")
    try:
        sa = await connect(server.port)
        with caplog.at_level(logging.ERROR, logger="m2msec.asgi"):
            raw = await exchange_raw(sa, f"GET {target} HTTP/1.1\r\nhost: maf\r\n\r\n".encode(), until_eof=False)
        assert raw.startswith(b"HTTP/1.1 500")
        [failure] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        message = failure.getMessage()
        assert "/a" in message
        assert not any(c in message for c in "\n\r\x1b"), message
        await sa.close()
    finally:
        await server.aclose()
