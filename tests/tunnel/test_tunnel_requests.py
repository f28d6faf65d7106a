"""The HTTP client ACME sends its requests with (``requests``, in .venv-acme) through the tunnel: a keep-alive
session carries several requests over one tunnelled connection, the gateway's 4106 comes back, and when the
client's socket closes (requests closes it at exit, not at ``Session.close()``) the tunnelled connection ends at
once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tunnel_env import MN_CSE, Certificates, EchoBackend, client_credentials, make_certificates, start_gateway

from m2msec.tunnel import Tunnel, TunnelConfig

ACME_PYTHON = Path(__file__).resolve().parents[2] / ".venv-acme" / "bin" / "python"
pytestmark = pytest.mark.skipif(not ACME_PYTHON.exists(), reason="ACME not installed: run bash scripts/install.sh")

SCRIPT = """
import sys, requests
port, origin = int(sys.argv[1]), sys.argv[2]
s = requests.Session()
for i, who in enumerate([origin, origin, "/other-cse", origin]):
    r = s.post(f"http://127.0.0.1:{port}/in-cse", data=b'{"m2m:csr": {"rn": "mn"}}', timeout=10,
               headers={"X-M2M-Origin": who, "X-M2M-RI": str(i), "X-M2M-RVI": "3",
                        "Content-Type": "application/json;ty=16"})
    print(r.status_code, r.headers.get("X-M2M-RSC"), len(r.content), flush=True)
s.close()
"""


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    rec = await EchoBackend().start()
    yield rec
    await rec.close()


async def test_requests_session_through_the_tunnel(backend: EchoBackend) -> None:
    certs: Certificates = make_certificates()
    gw = await start_gateway(backend.port, certs)
    try:
        async with Tunnel(TunnelConfig("127.0.0.1", gw.port, client_credentials(certs))) as tunnel:
            proc = await asyncio.create_subprocess_exec(str(ACME_PYTHON), "-c", SCRIPT, str(tunnel.port), f"/{MN_CSE}",
                                                        stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0
            lines = [line.split() for line in out.decode().splitlines()]
            assert [line[:2] for line in lines] == [["200", "2000"], ["200", "2000"], ["403", "4106"], ["200", "2000"]]
            assert lines[0][2] == "25"  # the body, echoed by the backend
            assert tunnel.accepted == 1  # one keep-alive connection for the whole session
            for _ in range(100):  # the client's socket closed: the tunnelled connection ends at once
                if tunnel.active == 0:
                    break
                await asyncio.sleep(0.02)
            assert tunnel.active == 0
    finally:
        await gw.close()
    assert len(backend.requests) == 3
    assert {r.header("x-m2msec-sa-identity") for r in backend.requests} == {f"/{MN_CSE}"}
