"""TR-0038 §7.1.2 end to end in front of a real oneM2M CSE: ACME (PyPI acmecse), HTTP binding on loopback.

Light 1 registers its AE through the gateway over TLS-PSK with its KpsaID; Light 2 cannot act as
Light 1 (4106, never reaches ACME). ACME runs from .venv-acme (scripts/install.sh).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from acme_cse import CSE_RN, needs_acme, running_acme

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY, make_table
from m2msec import http1
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.saef import PSKCredentials, establish_sa

pytestmark = needs_acme


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_acme(tmp_path_factory.mktemp("acme")) as (http_port, _):
        yield http_port


def primitive(origin: str, method: str, target: str, body: dict[str, object] | None = None,
              ty: int | None = None) -> http1.Message:
    headers = [("host", "127.0.0.1"), ("x-m2m-origin", origin), ("x-m2m-ri", f"ri-{time.monotonic_ns()}"),
               ("x-m2m-rvi", "3"), ("accept", "application/json")]
    if body is not None:
        headers.append(("content-type", f"application/json;ty={ty}" if ty else "application/json"))
    return http1.Message(headers=headers, body=json.dumps(body).encode() if body else b"", method=method,
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
