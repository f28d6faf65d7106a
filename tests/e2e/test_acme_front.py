"""The HTTP gateway's backend pool in front of a real CSE (ACME, Werkzeug, HTTP/1.1 keep-alive): the attack-front
findings that ACME itself triggers. ACME runs from .venv-acme (scripts/install.sh)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from acme_cse import CSE_RN, needs_acme, running_acme

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, make_table
from m2msec import http1
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.saef import PSKCredentials, establish_sa

pytestmark = needs_acme


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_acme(tmp_path_factory.mktemp("acme")) as (http_port, _):
        yield http_port


async def test_a_create_with_expect_100_continue_is_answered_not_reported_unreachable(acme: int) -> None:
    """ACME answers ``Expect: 100-continue`` with interim 100 responses: the gateway reported 5103 (not
    reachable) for the AE ACME had just created (a client retrying it would then meet a conflict)."""
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", acme), port=0), make_table())
    await gw.start()
    try:
        light1 = await establish_sa("127.0.0.1", gw.port,
                                    PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), HOME_GATEWAY_CSE_ID))
        ae = {"m2m:ae": {"rn": "light1e", "api": "Nlight", "rr": False, "srv": ["3"]}}
        created = await light1.request(http1.Message(
            headers=[("host", "gw"), ("x-m2m-origin", LIGHT1_AE), ("x-m2m-ri", f"ri-{time.monotonic_ns()}"),
                     ("x-m2m-rvi", "3"), ("content-type", "application/json;ty=2"), ("expect", "100-continue")],
            body=json.dumps(ae).encode(), method="POST", target=f"/{CSE_RN}"))
        assert (created.status, created.header("x-m2m-rsc")) == (201, "2001"), created.body
        await light1.close()
    finally:
        await gw.close()
