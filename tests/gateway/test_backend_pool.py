"""Keep-alive connections to the CSE (gateway/backend_pool.py, D56-D58), against real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11
import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, make_table
from m2msec import http1
from m2msec.gateway.backend_pool import BackendPool
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.saef import PSKCredentials, establish_sa


@dataclass
class KeepAliveCSE:
    """An HTTP/1.1 server that keeps connections open; ``close_after``: it closes a connection (silently, no
    ``connection: close``) after that many responses; ``hang_up``: it closes on reading a request, unanswered;
    ``stall``: it leaves a request unanswered until the gateway closes the connection."""

    close_after: int = 0
    hang_up: bool = False
    stall: bool = False  # reads a request and never answers (until the connection is closed)
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    eofs: int = 0
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        answered = 0
        try:
            while True:
                req = await http1.read_message(conn, reader)
                if req is None:
                    self.eofs += 1
                    return
                self.requests.append(req.header("x-m2m-ri") or "")
                if self.hang_up:
                    return
                if self.stall:
                    await reader.read()
                    return
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("x-m2m-rsc", "2000"), ("x-m2m-ri", req.header("x-m2m-ri") or "")], body=b"{}",
                    status=200))
                answered += 1
                if answered == self.close_after:
                    return
                conn.start_next_cycle()
        except (http1.HTTPError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def cse() -> AsyncIterator[KeepAliveCSE]:
    stub = KeepAliveCSE()
    stub.server = await asyncio.start_server(stub.handle, "127.0.0.1", 0)
    yield stub
    stub.server.close()
    await stub.server.wait_closed()


def request(ri: str, method: str = "GET") -> http1.Message:
    return http1.Message(headers=[("host", "cse"), ("x-m2m-ri", ri), ("x-m2m-origin", LIGHT1_AE)], method=method,
                         target=f"/{HOME_GATEWAY_CSE_ID}")


async def until(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_requests_share_one_keep_alive_connection_opened_lazily(cse: KeepAliveCSE) -> None:
    pool = BackendPool("127.0.0.1", cse.port)
    assert pool.opened == 0 and cse.connections == 0  # nothing before the first request
    for n in range(3):
        resp = await pool.request(request(f"r{n}"))
        assert resp.status == 200 and resp.header("x-m2m-ri") == f"r{n}"
    assert pool.opened == 1 and pool.reused == 2 and cse.connections == 1 and cse.requests == ["r0", "r1", "r2"]
    pool.close()
    await until(lambda: cse.eofs == 1)


async def test_a_connection_the_cse_closed_while_idle_is_not_used(cse: KeepAliveCSE) -> None:
    cse.close_after = 1
    pool = BackendPool("127.0.0.1", cse.port)
    await pool.request(request("r1", "POST"))
    await until(lambda: pool.idle == 0)  # the CSE's FIN reached the idle connection: it left the pool
    resp = await pool.request(request("r2", "POST"))
    assert resp.status == 200 and pool.opened == 2 and cse.requests == ["r1", "r2"]
    pool.close()


async def test_a_request_cut_short_at_the_cse_is_never_sent_again(cse: KeepAliveCSE) -> None:
    cse.hang_up = True
    pool = BackendPool("127.0.0.1", cse.port)
    with pytest.raises(http1.HTTPError):
        await pool.request(request("create-1", "POST"))
    await asyncio.sleep(0.1)
    assert cse.requests == ["create-1"] and pool.opened == 1 and pool.idle == 0


async def test_a_connection_whose_exchange_was_cancelled_is_not_reused(cse: KeepAliveCSE) -> None:
    pool = BackendPool("127.0.0.1", cse.port)
    await pool.request(request("r1"))
    cse.stall = True  # this connection's next request gets no answer: the caller gives up
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await pool.request(request("r2"))
    cse.stall = False
    await pool.request(request("r3"))
    assert pool.opened == 2 and cse.requests == ["r1", "r2", "r3"]
    pool.close()


async def test_idle_connections_are_bounded_and_expire(cse: KeepAliveCSE) -> None:
    pool = BackendPool("127.0.0.1", cse.port, max_idle=1, idle_expiry=0.2)
    await asyncio.gather(*(pool.request(request(f"r{n}")) for n in range(3)))
    assert pool.opened == 3 and pool.idle == 1  # the others were closed, not kept
    await until(lambda: cse.eofs == 2)
    await until(lambda: pool.idle == 0 and cse.eofs == 3)  # the idle one expired


async def test_gateway_forwards_the_requests_of_its_clients_over_one_connection(cse: KeepAliveCSE) -> None:
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", cse.port), port=0), make_table())
    await gw.start()
    try:
        for n in range(2):  # two clients, one after the other
            sa = await establish_sa("127.0.0.1", gw.port, PSKCredentials(
                LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), HOME_GATEWAY_CSE_ID))
            for m in range(2):
                resp = await sa.request(request(f"c{n}-{m}"))
                assert resp.status == 200 and resp.header("x-m2m-rsc") == "2000"
            await sa.close()
        assert cse.connections == 1 and cse.requests == ["c0-0", "c0-1", "c1-0", "c1-1"]
    finally:
        await gw.close()
    await until(lambda: cse.eofs == 1)  # the gateway closed its idle connection
