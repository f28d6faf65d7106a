"""Identity bypasses through HTTP headers (issue 14): a real TLS-PSK client over loopback, the gateway, and a
tiny HTTP backend that records what reached it and answers with headers of our choosing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11
import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, TD_ID, TD_KEY, make_table
from m2msec.errors import BadRequest
from m2msec.gateway import http
from m2msec.gateway.headers import check_request_headers, is_single_valued, strip_gateway_headers
from m2msec.gateway.rules import UnboundPolicy
from m2msec.gateway.server import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.saef import EstablishedSA, PSKCredentials, establish_sa


@dataclass
class RecordingCSE:
    """A real HTTP/1.1 server on loopback: records requests, answers 2000 with ``extra`` response headers."""

    extra: list[tuple[str, str]] = field(default_factory=list)
    requests: list[http.Message] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            req = await http.read_message(conn, reader)
            if req is not None:
                self.requests.append(req)
                await http.send_message(conn, writer, http.Message(
                    headers=[("content-type", "application/json"), ("x-m2m-rsc", "2000"), *self.extra],
                    body=json.dumps({"m2m:cb": {"rn": HOME_GATEWAY_CSE_ID}}).encode(), status=200))
        finally:
            writer.close()


@pytest.fixture
async def cse() -> AsyncIterator[RecordingCSE]:
    rec = RecordingCSE()
    rec.server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    yield rec
    rec.server.close()
    await rec.server.wait_closed()


async def start(cse: RecordingCSE, unbound: UnboundPolicy = UnboundPolicy.REJECT) -> Gateway:
    assert cse.server is not None
    port = int(cse.server.sockets[0].getsockname()[1])
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", port), port=0, unbound_policy=unbound), make_table())
    await gw.start()
    return gw


@pytest.fixture
async def gateway(cse: RecordingCSE) -> AsyncIterator[Gateway]:
    gw = await start(cse)
    yield gw
    await gw.close()


async def connect(gw: Gateway, identity: str = LIGHT1_ID, key: str = LIGHT1_KEY) -> EstablishedSA:
    return await establish_sa("127.0.0.1", gw.port,
                              PSKCredentials(identity, SecretKey.from_hex(key), HOME_GATEWAY_CSE_ID))


def request(headers: list[tuple[str, str]]) -> http.Message:
    base = [("host", HOME_GATEWAY_CSE_ID), ("x-m2m-rvi", "3")]
    return http.Message(headers=base + headers, method="GET", target=f"/{HOME_GATEWAY_CSE_ID}")


async def send(gw: Gateway, headers: list[tuple[str, str]]) -> http.Message:
    sa = await connect(gw)
    try:
        return await sa.request(request(headers))
    finally:
        await sa.close()


def assert_bad_request(resp: http.Message, reason: str) -> None:
    assert (resp.status, resp.header("x-m2m-rsc")) == (400, "4000")
    assert reason in json.loads(resp.body)["m2m:dbg"]


async def test_duplicate_origin_is_refused_and_never_forwarded(gateway: Gateway, cse: RecordingCSE) -> None:
    for first, second in ((LIGHT1_AE, "CAdmin"), ("CAdmin", LIGHT1_AE), (LIGHT1_AE, LIGHT1_AE)):
        resp = await send(gateway, [("x-m2m-ri", "r1"), ("X-M2M-Origin", first), ("X-M2M-Origin", second)])
        assert_bad_request(resp, "'x-m2m-origin' is repeated")
    assert cse.requests == []
    ok = await send(gateway, [("x-m2m-ri", "r2"), ("x-m2m-origin", LIGHT1_AE)])  # the same SA, one From: fine
    assert ok.status == 200 and [r.header("x-m2m-origin") for r in cse.requests] == [LIGHT1_AE]


@pytest.mark.parametrize("value", [f"{LIGHT1_AE},CAdmin", f"{LIGHT1_AE}, CAdmin", f"{LIGHT1_AE} CAdmin"])
async def test_list_or_folded_origin_is_refused(cse: RecordingCSE, value: str) -> None:
    # with --unbound forward the gateway does not compare From at all: the ambiguity check must still hold
    gw = await start(cse, UnboundPolicy.FORWARD)
    try:
        sa = await connect(gw, TD_ID, TD_KEY)
        resp = await sa.request(request([("x-m2m-ri", "r1"), ("x-m2m-origin", value)]))
        await sa.close()
    finally:
        await gw.close()
    assert_bad_request(resp, "holds a list or a folded value")
    assert cse.requests == []


async def _raw_exchange(sa: EstablishedSA, head: bytes) -> tuple[int, dict[str, str], bytes]:
    sa.writer.write(head)
    raw = await asyncio.wait_for(sa.reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
    body = await asyncio.wait_for(sa.reader.readexactly(int(headers["content-length"])), 10)
    return int(status_line.split()[1]), headers, body


async def test_obs_folded_origin_is_refused(gateway: Gateway, cse: RecordingCSE) -> None:
    sa = await connect(gateway)
    head = (f"GET /{HOME_GATEWAY_CSE_ID} HTTP/1.1\r\nHost: x\r\nX-M2M-RI: r1\r\n"
            f"X-M2M-Origin: {LIGHT1_AE}\r\n CAdmin\r\n\r\n").encode()
    status, headers, body = await _raw_exchange(sa, head)
    await sa.close()
    assert (status, headers["x-m2m-rsc"]) == (400, "4000")
    assert "folded value" in json.loads(body)["m2m:dbg"]
    assert cse.requests == []


@pytest.mark.parametrize("extra", [
    [("x_m2m_origin", "CAdmin")],  # a WSGI/CGI CSE reads HTTP_X_M2M_ORIGIN for both spellings
    [("x-m2m-ri", "r2")],
    [("x-m2m-rvi", "2a")],
    [("x-m2m-gid", "g1"), ("x-m2m-gid", "g2")],
    [("authorization", "Bearer a"), ("authorization", "Bearer b")],
    [("content-type", "application/json;ty=2"), ("content-type", "application/json;ty=16")],
])
async def test_other_single_valued_headers(gateway: Gateway, cse: RecordingCSE, extra: list[tuple[str, str]]) -> None:
    resp = await send(gateway, [("x-m2m-ri", "r1"), ("x-m2m-origin", LIGHT1_AE), *extra])
    assert_bad_request(resp, "disguised" if "_" in extra[0][0] else "is repeated")
    assert cse.requests == []


async def test_client_gateway_namespace_headers_are_stripped(gateway: Gateway, cse: RecordingCSE) -> None:
    spoof = [("x-m2msec-role", "admin"), ("X-M2MSEC-SA-Identity", "CAdmin"), ("x_m2msec_sa_identity", "CAdmin"),
             ("x-m2msec-psk-identity", "admin@x.com")]
    resp = await send(gateway, [("x-m2m-ri", "r1"), ("x-m2m-origin", LIGHT1_AE), *spoof])
    assert resp.status == 200
    [seen] = cse.requests
    ours = [(k, v) for k, v in seen.headers if k.replace("_", "-").startswith("x-m2msec-")]
    assert sorted(ours) == sorted([("x-m2msec-sa-identity", LIGHT1_AE), ("x-m2msec-credential-id", f"12-{LIGHT1_ID}"),
                                   ("x-m2msec-psk-identity", LIGHT1_ID)])


async def test_cse_gateway_namespace_headers_are_stripped_from_responses(gateway: Gateway, cse: RecordingCSE) -> None:
    cse.extra = [("x-m2msec-sa-identity", "CAdmin"), ("X-M2MSEC-Debug", "internal"), ("x_m2msec_note", "n"),
                 ("x-m2m-ri", "r1")]
    resp = await send(gateway, [("x-m2m-ri", "r1"), ("x-m2m-origin", LIGHT1_AE)])
    assert resp.status == 200 and resp.header("x-m2m-ri") == "r1"
    assert [k for k, _ in resp.headers if k.replace("_", "-").startswith("x-m2msec")] == []


def test_header_rules_are_pure() -> None:
    assert is_single_valued("X-M2M-Origin") and is_single_valued("x_m2m_ri") and is_single_valued("x-m2m-utcmd")
    assert not is_single_valued("accept") and not is_single_valued("x-m2msec-sa-identity")
    check_request_headers([("x-m2m-origin", "Cx"), ("accept", "a"), ("accept", "b")])  # Accept is a list
    with pytest.raises(BadRequest, match="repeated"):
        check_request_headers([("x-m2m-ri", "1"), ("x-m2m-ri", "1")])
    assert strip_gateway_headers([("X-M2MSEC-A", "1"), ("x_m2msec_b", "2"), ("x-m2m-ri", "3")]) == [("x-m2m-ri", "3")]
