"""m2msec.tunnel over real loopback: a plain HTTP client -> Tunnel -> certificate / PSK gateway -> HTTP backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tunnel_env import (
    IN_CSE,
    MN_CSE,
    Certificates,
    EchoBackend,
    PlainClient,
    client_credentials,
    make_certificates,
    onem2m,
    start_gateway,
)

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY
from m2msec.gateway.http_gateway import Gateway
from m2msec.keys.secret import SecretKey
from m2msec.saef import CertificateCredentials, PSKCredentials
from m2msec.tunnel import Tunnel, TunnelConfig


@pytest.fixture(scope="module")
def certs() -> Certificates:
    return make_certificates()


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    rec = await EchoBackend().start()
    yield rec
    await rec.close()


@pytest.fixture
async def gateway(backend: EchoBackend, certs: Certificates) -> AsyncIterator[Gateway]:
    gw = await start_gateway(backend.port, certs)
    yield gw
    await gw.close()


def tunnel_to(port: int, credentials: PSKCredentials | CertificateCredentials, **kw: object) -> Tunnel:
    return Tunnel(TunnelConfig("127.0.0.1", port, credentials, **kw))  # type: ignore[arg-type]


async def test_certificate_tunnel_carries_the_identity_of_its_certificate(
    gateway: Gateway, backend: EchoBackend, certs: Certificates
) -> None:
    async with tunnel_to(gateway.port, client_credentials(certs)) as tunnel:
        client = await PlainClient.connect(tunnel.port)
        ok = await client.request(onem2m(f"/{MN_CSE}", body=b'{"m2m:csr": {}}'))
        assert (ok.status, ok.header("x-m2m-rsc"), ok.body) == (200, "2000", b'{"m2m:csr": {}}')
        # the gateway's originator check sees the tunnel's certificate identity, not what the plain client claims
        other = await client.request(onem2m("/other-cse", ri="req-2"))
        assert (other.status, other.header("x-m2m-rsc")) == (403, "4106")
        again = await client.request(onem2m(f"/{MN_CSE}", ri="req-3"))  # the same connection goes on
        assert again.status == 200
        await client.close()
    assert len(backend.requests) == 2
    assert {r.header("x-m2msec-sa-identity") for r in backend.requests} == {f"/{MN_CSE}"}
    assert tunnel.accepted == 1 and tunnel.failed == 0


async def test_psk_tunnel(gateway: Gateway, backend: EchoBackend) -> None:
    creds = PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), peer_entity=IN_CSE)
    async with tunnel_to(gateway.port, creds) as tunnel:
        client = await PlainClient.connect(tunnel.port)
        ok = await client.request(onem2m(LIGHT1_AE))
        assert (ok.status, ok.header("x-m2m-rsc")) == (200, "2000")
        bad = await client.request(onem2m("Cother", ri="req-2"))
        assert (bad.status, bad.header("x-m2m-rsc")) == (403, "4106")
        await client.close()
    [seen] = backend.requests
    assert seen.header("x-m2msec-sa-identity") == LIGHT1_AE
    assert seen.header("x-m2msec-psk-identity") == LIGHT1_ID
