"""``--metrics`` on the coaps side: real DTLS handshakes over loopback against a real CoapsGateway, scraped and
parsed with the Prometheus client's own parser; counts exact."""

from __future__ import annotations

import argparse

import pytest
from test_coaps_relay import Backend, Client, Inbox, backend, rsc  # noqa: F401 (backend: a fixture)
from test_metrics import samples, until, value

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_ID, LIGHT1_KEY, LIGHT2_KEY, make_table
from m2msec.errors import HandshakeFailed, HandshakeTimeout
from m2msec.gateway import coap
from m2msec.gateway.coap_blockwise import BlockwiseLimits
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.keys.secret import SecretKey
from m2msec.metrics import FAILURE_REASONS, start_observability
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK
from m2msec.transport.dtls import create_dtls_endpoint


def client(identity: str, key: str) -> TLSContext:
    return TLSContext.dtls_client(ClientConfig(identity, SecretKey.from_hex(key), profiles=(ONEM2M_DTLS_PSK,),
                                               peer_entity=HOME_GATEWAY_CSE_ID))


async def test_dtls_handshakes_and_refusals_counted_exactly(backend: tuple[Backend, int]) -> None:  # noqa: F811
    cfg = CoapsConfig(backend_host="127.0.0.1", backend_port=backend[1], port=0, handshake_timeout=0.5,
                      max_peers_per_source=1,
                      blockwise=BlockwiseLimits(max_body=8192))
    gw = CoapsGateway(cfg, make_table())
    obs = start_observability(argparse.Namespace(metrics="127.0.0.1:0", metrics_identity_labels=False), None, gw)
    assert obs is not None
    await gw.start()
    port = obs.server.port
    try:
        transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, client(LIGHT1_ID, LIGHT1_KEY))
        c = Client(transport, inbox)  # type: ignore[arg-type]
        assert rsc(await c.send(c.request(coap.GET))) == 2000
        assert rsc(await c.send(c.request(coap.GET, frm=b"CAdmin"))) == 4106
        found = await samples(port)
        assert value(found, "m2msec_gateway_open_connections", transport="dtls") == 1
        # a second peer of the same source while the first is open: over --max-connections-per-source 1, its
        # ClientHello (after the cookie) is dropped; the client gives up before it would retransmit (1 s)
        with pytest.raises((HandshakeFailed, HandshakeTimeout)):
            await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, client(LIGHT1_ID, LIGHT1_KEY),
                                       handshake_timeout=0.8)
        transport.close()
        # a wrong key and an unknown identity both get silence (RFC 4279 §2, D34): the server's timeout ends them
        for identity, key in [(LIGHT1_ID, LIGHT2_KEY), ("nobody@in.provider.com", LIGHT1_KEY)]:
            with pytest.raises((HandshakeFailed, HandshakeTimeout)):
                await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, client(identity, key), handshake_timeout=1.0)
        await until(port, "m2msec_gateway_handshake_failures_total", 1, transport="dtls", reason="unknown_identity")
        found = await until(port, "m2msec_gateway_open_connections", 0, transport="dtls")
    finally:
        await gw.close()
        await obs.close()
    want = {"unknown_identity": 1, "timeout": 1, "refused_by_limit": 1}
    for reason in FAILURE_REASONS:
        assert value(found, "m2msec_gateway_handshake_failures_total", transport="dtls",
                     reason=reason) == want.get(reason, 0), reason
    assert value(found, "m2msec_gateway_handshakes_total", transport="dtls", authentication="psk") == 1
    assert value(found, "m2msec_gateway_handshake_duration_seconds_count", transport="dtls") == 1
    assert value(found, "m2msec_gateway_requests_total", transport="coap") == 2
    assert value(found, "m2msec_gateway_refusals_total", transport="coap", rsc="4106") == 1
    assert value(found, "m2msec_gateway_psk_table_identities") == 3
    assert value(found, "m2msec_gateway_handshakes_total", transport="tls", authentication="psk") == 0
