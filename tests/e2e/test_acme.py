"""TR-0038 §7.1.2 end to end in front of a real oneM2M CSE: ACME (PyPI acmecse), HTTP binding on loopback.

Light 1 registers its AE through the gateway over TLS-PSK with its KpsaID; Light 2 cannot act as
Light 1 (4106, never reaches ACME). ACME runs from .venv-acme (scripts/install.sh).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY, make_table
from m2msec.gateway import http
from m2msec.gateway.server import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.saef import PSKCredentials, establish_sa

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / ".venv-acme" / "bin" / "acmecse"
CSE_RN = "cse-mn"
pytestmark = pytest.mark.skipif(not ACME.exists(), reason="ACME not installed: run bash scripts/install.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    work = tmp_path_factory.mktemp("acme")
    port = free_port()
    (work / "acme.ini").write_text(
        "[basic.config]\n"
        f"cseType=MN\ncseID={HOME_GATEWAY_CSE_ID}\ncseName={CSE_RN}\nadminID=CAdmin\n"
        f"networkInterface=127.0.0.1\ncseHost=127.0.0.1\nhttpPort={port}\n"
        "databaseType=memory\nlogLevel=warn\n"
    )
    proc = subprocess.Popen(
        [str(ACME), "--config", "acme.ini", "--headless", "--http", "--no-mqtt", "--no-coap", "--no-ws",
         "--db-type", "memory", "--base-directory", str(work)],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/{HOME_GATEWAY_CSE_ID}",
                                             headers={"X-M2M-Origin": "CAdmin", "X-M2M-RI": "probe",
                                                      "X-M2M-RVI": "3", "Accept": "application/json"})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ACME did not start")
            time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def primitive(origin: str, method: str, target: str, body: dict[str, object] | None = None,
              ty: int | None = None) -> http.Message:
    headers = [("host", "127.0.0.1"), ("x-m2m-origin", origin), ("x-m2m-ri", f"ri-{time.monotonic_ns()}"),
               ("x-m2m-rvi", "3"), ("accept", "application/json")]
    if body is not None:
        headers.append(("content-type", f"application/json;ty={ty}" if ty else "application/json"))
    return http.Message(headers=headers, body=json.dumps(body).encode() if body else b"", method=method,
                        target=target)


async def test_lights_register_through_the_gateway(acme: int) -> None:
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", acme), port=0), make_table())
    await gw.start()
    try:
        light1 = await establish_sa("127.0.0.1", gw.port,
                                    PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), HOME_GATEWAY_CSE_ID))
        ae = {"m2m:ae": {"rn": "light1", "api": "Nlight", "rr": False, "srv": ["3"]}}
        created = await light1.request(primitive(LIGHT1_AE, "POST", f"/{CSE_RN}", ae, ty=2))
        assert (created.status, created.header("x-m2m-rsc")) == (201, "2001"), created.body
        assert json.loads(created.body)["m2m:ae"]["aei"] == LIGHT1_AE

        light2 = await establish_sa("127.0.0.1", gw.port,
                                    PSKCredentials(LIGHT2_ID, SecretKey.from_hex(LIGHT2_KEY), HOME_GATEWAY_CSE_ID))
        cnt = {"m2m:cnt": {"rn": "hijack"}}
        refused = await light2.request(primitive(LIGHT1_AE, "POST", f"/{CSE_RN}/light1", cnt, ty=3))
        assert (refused.status, refused.header("x-m2m-rsc")) == (403, "4106")

        # the impersonation never reached ACME: the container does not exist, while Light 1 can create it
        made = await light1.request(primitive(LIGHT1_AE, "POST", f"/{CSE_RN}/light1", {"m2m:cnt": {"rn": "state"}},
                                              ty=3))
        assert made.header("x-m2m-rsc") == "2001", made.body
        check = await light1.request(primitive(LIGHT1_AE, "GET", f"/{CSE_RN}/light1/hijack"))
        assert check.header("x-m2m-rsc") == "4004"
        own = await light1.request(primitive(LIGHT1_AE, "GET", f"/{CSE_RN}/light1"))
        assert own.header("x-m2m-rsc") == "2000"
        await asyncio.gather(light1.close(), light2.close())
    finally:
        await gw.close()
