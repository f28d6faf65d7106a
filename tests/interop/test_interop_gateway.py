"""``openssl s_client`` → the TLS-PSK gateway → a CSE stand-in, with the TR-0038 §7.1.2 Light credentials."""

from __future__ import annotations

import re

import pytest

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.table import MemoryPSKTable

from .conftest import ONEM2M, http_backend, needs_openssl, s_client

pytestmark = [pytest.mark.interop, needs_openssl]


def _request(origin: str) -> bytes:
    """A raw oneM2M HTTP retrieve that also carries a forged identity header the gateway must drop."""
    return (
        "GET /~/mn-cse-123456/light HTTP/1.1\r\n"
        "Host: mn-cse-123456.test\r\n"
        f"X-M2M-Origin: {origin}\r\n"
        "X-M2M-RI: req-0001\r\n"
        "X-M2M-RVI: 3\r\n"
        "x-m2msec-sa-identity: Cforged-AE\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


async def _exchange(port: int, identity: str, key: str, origin: str) -> tuple[int, dict[str, str]]:
    """One request through s_client (-quiet: only the response is printed); returns (status, headers)."""
    async with s_client(port, "-quiet", identity=identity, key=key) as peer:
        await peer.send(_request(origin))
        await peer.wait()  # the gateway answers, then closes (Connection: close)
    match = re.search(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n(.*?)\r\n\r\n", peer.output, re.S)
    assert match is not None, peer.output.decode(errors="replace")
    headers = dict(line.split(": ", 1) for line in match[2].decode("latin-1").lower().split("\r\n"))
    return int(match[1]), headers


async def test_s_client_through_gateway(table: MemoryPSKTable) -> None:
    async with http_backend() as (backend_port, requests):
        gateway = Gateway(GatewayConfig(backend=Backend("127.0.0.1", backend_port), host="127.0.0.1", port=0,
                                        profiles=(ONEM2M.profile,), handshake_timeout=5, backend_timeout=5), table)
        await gateway.start()
        try:
            status, headers = await _exchange(gateway.port, LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE)
            assert (status, headers["x-m2m-rsc"]) == (200, "2000")
            [forwarded] = requests
            assert (forwarded.method, forwarded.target) == ("GET", "/~/mn-cse-123456/light")
            assert forwarded.values("x-m2msec-sa-identity") == [LIGHT1_AE]  # the forged copy is gone
            assert forwarded.values("x-m2msec-psk-identity") == [LIGHT1_ID]
            assert forwarded.values("x-m2m-origin") == [LIGHT1_AE]

            # Light 2's key, claiming to be Light 1: TS-0003 §7.2.1 ORIGINATOR_NOT_AUTHENTICATED, not forwarded
            status, headers = await _exchange(gateway.port, LIGHT2_ID, LIGHT2_KEY, LIGHT1_AE)
            assert (status, headers["x-m2m-rsc"], headers["x-m2m-ri"]) == (403, "4106", "req-0001")
            assert len(requests) == 1
        finally:
            await gateway.close()
