"""CoAP ambiguity at the coaps relay (issue 21 part 4), over real DTLS-PSK on loopback: options the gateway and
the CSE could read differently. Already covered in test_coaps_relay.py (not repeated): a repeated oneM2M option
(FR, RQI, RVI, AUS) or Block2, a later Block1 block without or with another originator, out-of-sequence and
oversized Block1 transfers."""

from __future__ import annotations

import asyncio

import pytest
from test_coaps_relay import Backend, Client, backend, relay, rsc  # noqa: F401  (fixtures re-used)

from m2msec.gateway import coap
from m2msec.gateway.coap_blockwise import Block
from m2msec.gateway.coaps_gateway import CoapsGateway

Relay = tuple[Client, Backend, CoapsGateway]


@pytest.fixture
def coaps(relay: Relay) -> Relay:  # noqa: F811  (the relay fixture of test_coaps_relay)
    return relay


REFUSED = [
    ("OSCORE, critical and not implemented", [(9, b"x")], "unrecognized critical option 9"),
    ("Q-Block1 (RFC 9177), critical", [(19, b"\x03")], "unrecognized critical option 19"),
    ("an unknown critical option", [(2049, b"x")], "unrecognized critical option 2049"),
    ("an experimental critical option next to the identity options", [(65001, b"CAdmin")],
     "unrecognized critical option 65001"),
    ("two Uri-Host", [(coap.URI_HOST, b"a"), (coap.URI_HOST, b"b")], "option 3 repeated"),
    ("two Uri-Port", [(coap.URI_PORT, b"\x16\x33"), (coap.URI_PORT, b"\x00\x50")], "option 7 repeated"),
    ("two Content-Format", [(coap.CONTENT_FORMAT, b"\x32"), (coap.CONTENT_FORMAT, b"")], "option 12 repeated"),
    ("two Accept", [(coap.ACCEPT, b"\x32"), (coap.ACCEPT, b"")], "option 17 repeated"),
    ("Proxy-Uri", [(35, b"coap://other.example/cse")], "not a forward proxy"),
    ("Proxy-Scheme", [(39, b"coap")], "not a forward proxy"),
]


@pytest.mark.parametrize(("case", "options", "reason"), REFUSED, ids=[c for c, _, _ in REFUSED])
async def test_an_ambiguous_or_unknown_critical_option_is_refused_and_not_forwarded(
        coaps: tuple[Client, Backend, CoapsGateway], case: str, options: list[tuple[int, bytes]], reason: str) -> None:
    client, cse, _ = coaps
    reply = await client.send(client.request(coap.GET, *options))
    assert coap.format_code(reply.code) == "4.00" and rsc(reply) == 4000, case
    assert reason.encode() in reply.payload
    await asyncio.sleep(0.05)
    assert cse.received == []
    ok = await client.send(client.request(coap.GET))  # the SA is still served
    assert coap.format_code(ok.code) == "2.05"


@pytest.mark.parametrize("options", [[(2050, b"x")], [(coap.URI_QUERY, b"a=1"), (coap.URI_QUERY, b"b=2")],
                                     [(6, b"")]], ids=["unknown elective", "two Uri-Query", "Observe"])
async def test_elective_and_repeatable_options_are_relayed(coaps: tuple[Client, Backend, CoapsGateway],
                                                           options: list[tuple[int, bytes]]) -> None:
    client, cse, _ = coaps
    reply = await client.send(client.request(coap.GET, *options))
    assert coap.format_code(reply.code) == "2.05"
    (got,) = cse.requests
    assert [o for o in got.options if o[0] == options[0][0]] == options


async def test_an_unknown_critical_option_in_a_later_block1_block_is_refused(
        coaps: tuple[Client, Backend, CoapsGateway]) -> None:
    """Every block is checked on its own: block 0 is fine, block 1 carries an unknown critical option."""
    client, cse, _ = coaps
    tok = next(client.tokens).to_bytes(2, "big")
    first = await client.send(client.request(coap.POST, (coap.BLOCK1, Block(0, True, 5).encode()),
                                             payload=b"a" * 512, token=tok))
    assert coap.format_code(first.code) == "2.31"
    second = await client.send(client.request(coap.POST, (coap.BLOCK1, Block(1, False, 5).encode()), (2049, b"x"),
                                              payload=b"b" * 10, token=tok))
    assert coap.format_code(second.code) == "4.00" and rsc(second) == 4000
    await asyncio.sleep(0.05)
    assert cse.requests == []
