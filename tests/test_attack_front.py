"""Hostile review of the HTTP gateway's callback protocol and its pooled connections to the CSE (branch
attack-front): each test reproduces a finding over loopback, with real TLS-PSK clients, a real gateway and a
scripted CSE on a real socket, and fails until it is fixed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11
import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_AE, LIGHT2_ID, LIGHT2_KEY, make_table
from m2msec import http1
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.saef import EstablishedSA, PSKCredentials, establish_sa
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_PSK
from m2msec.transport.tls import TLSAdapter, open_connection

SERVER = "127.0.0.1"


@dataclass
class Seen:
    """One request as the scripted CSE read it."""

    method: str
    headers: dict[str, str]
    body: bytes
    connection: int


Script = Callable[["ScriptedCSE", Seen, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class ScriptedCSE:
    """A CSE on a raw socket: it parses each request itself and answers as ``script`` says (so it can be broken
    in ways an HTTP library would not let it be)."""

    script: Script
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    late: tuple[asyncio.StreamWriter, bytes] | None = None  # bytes a script sends at the next request
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await read_head(reader)
                if head is None:
                    return
                self.seen.append(head_to_seen(head, await read_body(reader, head), number))
                await self.script(self, self.seen[-1], reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


async def read_head(reader: asyncio.StreamReader) -> list[str] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    return raw.decode("latin-1").split("\r\n")[:-2]


def head_to_seen(head: list[str], body: bytes, number: int) -> Seen:
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    return Seen(head[0].split(" ")[0], headers, body, number)


async def read_body(reader: asyncio.StreamReader, head: list[str]) -> bytes:
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return await reader.readexactly(int(value))
    return b""


def response(body: bytes, *, status: str = "200 OK", ri: str = "", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nx-m2m-rsc: 2000\r\nx-m2m-ri: {ri}\r\ncontent-type: application/json\r\n"
            f"{extra}content-length: {len(body)}\r\n\r\n").encode() + body


@pytest.fixture
async def start_cse() -> AsyncIterator[Callable[[Script], Awaitable[ScriptedCSE]]]:
    started: list[ScriptedCSE] = []

    async def start(script: Script) -> ScriptedCSE:
        cse = ScriptedCSE(script)
        cse.server = await asyncio.start_server(cse.handle, SERVER, 0)
        started.append(cse)
        return cse

    yield start
    for cse in started:
        assert cse.server is not None
        cse.server.close()


async def start_gateway(port: int, **kwargs: object) -> Gateway:
    gw = Gateway(GatewayConfig(backend=Backend(SERVER, port), port=0, **kwargs), make_table())  # type: ignore[arg-type]
    await gw.start()
    return gw


async def connect(gw: Gateway, identity: str = LIGHT1_ID, key: str = LIGHT1_KEY) -> EstablishedSA:
    return await establish_sa(SERVER, gw.port, PSKCredentials(identity, SecretKey.from_hex(key), HOME_GATEWAY_CSE_ID))


def onem2m(origin: str, ri: str, method: str = "GET", body: bytes = b"", extra: list[tuple[str, str]] | None = None
           ) -> http1.Message:
    headers = [("host", "gw"), ("x-m2m-origin", origin), ("x-m2m-ri", ri), ("x-m2m-rvi", "3")] + (extra or [])
    if body:
        headers.append(("content-type", "application/json;ty=4"))
    return http1.Message(headers=headers, body=body, method=method, target=f"/{HOME_GATEWAY_CSE_ID}")


# ------------------------------------------------------------------------------------------------------------
# 1. A HEAD response's body that a broken CSE sends late becomes the next client's response (cross-client)
#
# h11 knows a response to HEAD has no body, so the exchange ends with the head and the connection goes back to
# the pool. A CSE that (wrongly) writes the resource after the head in a second write sends those bytes on a
# connection that another client's request may already be using: they are read as *that* client's response.
# The resource is whatever its creator (client A) stored, e.g. a whole fake HTTP response.

FAKE = b"HTTP/1.1 200 OK\r\nx-m2m-rsc: 2000\r\ncontent-length: 14\r\n\r\n{\"forged\": 1}\n"


async def head_body_late(cse: ScriptedCSE, seen: Seen, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
    if seen.method == "HEAD":
        writer.write(response(b"", ri=seen.headers["x-m2m-ri"]).replace(b"content-length: 0",
                                                                         f"content-length: {len(FAKE)}".encode()))
        await writer.drain()
        cse.late = (writer, FAKE)
        return
    if cse.late is not None and cse.late[0] is writer:  # the late body of the HEAD, then the answer to this request
        writer.write(cse.late[1])
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.write(response(b"{\"real\": 1}", ri=seen.headers["x-m2m-ri"]))
    await writer.drain()


async def test_a_late_head_body_never_becomes_another_clients_response(
        start_cse: Callable[[Script], Awaitable[ScriptedCSE]]) -> None:
    cse = await start_cse(head_body_late)
    gw = await start_gateway(cse.port)
    try:
        a = await connect(gw)
        resp = await a.request(onem2m(LIGHT1_AE, "a-head", "HEAD"))
        assert resp.status == 200
        b = await connect(gw, LIGHT2_ID, LIGHT2_KEY)
        resp = await b.request(onem2m(LIGHT2_AE, "b-get"))
        assert resp.body == b"{\"real\": 1}" and resp.header("x-m2m-ri") == "b-get", resp.body
        await a.close()
        await b.close()
    finally:
        await gw.close()


# ------------------------------------------------------------------------------------------------------------
# 2. A 1xx interim response from the CSE turns an executed request into a 5xx (priority 2)
#
# RFC 9110 §15.2: a client MUST parse 1xx responses before the final one, even unasked. The pool took the
# first response event as the answer and failed on ``InformationalResponse``: the client was told 504/5103
# "not reachable" for a CREATE the CSE had executed (it may then create it again), and the connection was
# dropped. A client's ``Expect: 100-continue`` (forwarded as is) makes an HTTP/1.1 CSE send one (Python's
# http.server, Werkzeug, ...).


async def continue_first(cse: ScriptedCSE, seen: Seen, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
    if "expect" in seen.headers:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    writer.write(b"HTTP/1.1 102 Processing\r\n\r\n" + response(b"{}", ri=seen.headers["x-m2m-ri"],
                                                                 status="201 Created"))
    await writer.drain()


async def test_an_interim_1xx_response_is_skipped_and_the_final_one_forwarded(
        start_cse: Callable[[Script], Awaitable[ScriptedCSE]]) -> None:
    cse = await start_cse(continue_first)
    gw = await start_gateway(cse.port)
    try:
        sa = await connect(gw)
        resp = await sa.request(onem2m(LIGHT1_AE, "c0", "POST", b"{}", [("expect", "100-continue")]))
        assert resp.status == 201 and resp.header("x-m2m-rsc") == "2000", (resp.status, resp.body)
        for n in (1, 2):  # 102 before each answer: skipped, and the connection stays in sync for the next one
            resp = await sa.request(onem2m(LIGHT1_AE, f"c{n}"))
            assert resp.status == 201 and resp.header("x-m2m-ri") == f"c{n}", (resp.status, resp.body)
        assert [s.headers["x-m2m-ri"] for s in cse.seen] == ["c0", "c1", "c2"]  # each sent once
        assert cse.connections == 2  # the POST's own (a body: not reused, D69); the GETs share a pooled one
        await sa.close()
    finally:
        await gw.close()


# ------------------------------------------------------------------------------------------------------------
# 3. A client that stops reading keeps its connection (and its slot) forever once the idle timeout closes it
#
# The write timeout runs only while the transport is paused (over its high-water mark). A client that stops
# reading when less than that is still buffered sees its response "drained", then the idle timeout closes the
# connection: ``transport.close()`` waits for the buffer to be written, which never happens, so the connection
# is never lost: its per-source / per-credential / max_connections slot is held for good. Repeated, a handful of
# clients that never read fill max_connections (and the per-SA cap locks the credential's owner out).


async def big_answer(cse: ScriptedCSE, seen: Seen, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    writer.write(response(b"x" * 16000, ri=seen.headers["x-m2m-ri"]))
    await writer.drain()


async def test_a_client_that_never_reads_does_not_keep_its_connection_after_the_idle_timeout(
        start_cse: Callable[[Script], Awaitable[ScriptedCSE]]) -> None:
    cse = await start_cse(big_answer)
    gw = await start_gateway(cse.port, idle_timeout=0.5, write_timeout=0.5)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads slowly, then not at all
    sock.setblocking(False)
    adapter: TLSAdapter | None = None
    try:
        await loop.sock_connect(sock, (SERVER, gw.port))
        ctx = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_PSK,),
                                             peer_entity=HOME_GATEWAY_CSE_ID))
        _, adapter = await loop.create_connection(lambda: TLSAdapter(ctx, asyncio.Protocol), sock=sock)
        await adapter.handshake
        assert adapter.raw_transport is not None and adapter._app_transport is not None
        adapter.raw_transport.pause_reading()
        (client,) = gw._clients
        for n in range(2000):  # until the gateway holds some of a response the client has not read
            adapter._app_transport.write(f"GET /{HOME_GATEWAY_CSE_ID} HTTP/1.1\r\nhost: gw\r\nx-m2m-origin: "
                                         f"{LIGHT1_AE}\r\nx-m2m-ri: r{n}\r\n\r\n".encode())
            await until(lambda n=n: len(cse.seen) > n)  # type: ignore[misc]
            await asyncio.sleep(0.01)
            if client.transport is not None and client.transport.get_write_buffer_size() > 0:
                break
        assert client.transport is not None and client.transport.get_write_buffer_size() > 0
        await asyncio.sleep(0.7)  # idle timeout: the connection is closed...
        await until(lambda: client not in gw._clients, timeout=3.0)  # ...and ends, read or not
        await until(lambda: gw.limiter.open == 0, timeout=3.0)  # its slot is free again
    finally:
        if adapter is not None and adapter.raw_transport is not None:
            adapter.raw_transport.abort()
        else:
            sock.close()
        await gw.close()


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------------------------
# 4. A request the gateway gave up on still reaches the CSE later, whole (D58)
#
# When the backend timeout ends an exchange whose request is still buffered (a CSE slow to read a large body),
# the pool *closed* the connection: asyncio then keeps writing the buffer until the CSE has read it all (or
# forever, holding up to max_body bytes), and the CSE executes a request the client was told failed (504 /
# 5103): a client that retries gets it executed twice. An exchange cut short is aborted: what was not written
# is dropped.

BIG = 6 * 1024 * 1024


@dataclass
class SlowReader:
    """A CSE that reads nothing for ``delay`` seconds, then everything until the gateway ends the connection."""

    delay: float = 1.5
    received: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self.delay)
        try:
            while data := await reader.read(1 << 20):
                self.received += len(data)
        except ConnectionError:
            pass
        finally:
            self.ended.set()
            writer.close()


async def test_a_request_given_up_on_is_not_delivered_to_the_cse_later() -> None:
    cse = SlowReader()
    server = await asyncio.start_server(cse.handle, SERVER, 0)
    gw = await start_gateway(int(server.sockets[0].getsockname()[1]), backend_timeout=0.5)
    try:
        sa = await connect(gw)
        resp = await sa.request(onem2m(LIGHT1_AE, "create-1", "POST", b"x" * BIG))
        assert resp.header("x-m2m-rsc") == "5103", resp.status  # target not reachable
        async with asyncio.timeout(5):
            await cse.ended.wait()
        assert cse.received < BIG, "the CSE got the whole request the client was told had failed"
        await sa.close()
    finally:
        await gw.close()
        server.close()


# ------------------------------------------------------------------------------------------------------------
# What held (kept as regression tests): pipelined requests are checked one by one; a client gone while its
# request is at the CSE leaves the pooled connection in sync for the next client.


async def echo_ri_slowly(cse: ScriptedCSE, seen: Seen, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(0.2)
    ri = seen.headers["x-m2m-ri"]
    writer.write(response(f"{{\"ri\": \"{ri}\", \"as\": \"{seen.headers.get('x-m2msec-sa-identity')}\"}}".encode(),
                          ri=ri))
    await writer.drain()


async def test_pipelined_requests_are_each_checked_and_answered_in_order(
        start_cse: Callable[[Script], Awaitable[ScriptedCSE]]) -> None:
    cse = await start_cse(echo_ri_slowly)
    gw = await start_gateway(cse.port)
    try:
        ctx = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_PSK,),
                                             peer_entity=HOME_GATEWAY_CSE_ID))
        reader, writer, _ = await open_connection(SERVER, gw.port, ctx)
        heads = [f"GET /{HOME_GATEWAY_CSE_ID} HTTP/1.1\r\nhost: gw\r\nx-m2m-origin: {origin}\r\nx-m2m-ri: {ri}\r\n"
                 f"x-m2msec-sa-identity: {LIGHT2_AE}\r\n\r\n" for origin, ri in
                 ((LIGHT1_AE, "p1"), (LIGHT2_AE, "p2"), (LIGHT1_AE, "p3"))]
        writer.write("".join(heads).encode())  # three requests in one write, the second one forged
        conn = h11.Connection(h11.CLIENT)
        got = []
        for _ in heads:
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "gw")]))
            conn.send(h11.EndOfMessage())
            msg = await http1.read_message(conn, reader)
            assert msg is not None
            got.append((msg.status, msg.header("x-m2m-rsc"), msg.body))
            conn.start_next_cycle()
        assert [g[:2] for g in got] == [(200, "2000"), (403, "4106"), (200, "2000")], got
        assert [s.headers["x-m2m-ri"] for s in cse.seen] == ["p1", "p3"]
        assert all(s.headers["x-m2msec-sa-identity"] == LIGHT1_AE for s in cse.seen)
        writer.close()
    finally:
        await gw.close()


async def test_a_client_gone_while_its_request_is_at_the_cse_leaves_the_pool_in_sync(
        start_cse: Callable[[Script], Awaitable[ScriptedCSE]]) -> None:
    cse = await start_cse(echo_ri_slowly)
    gw = await start_gateway(cse.port)
    try:
        a = await connect(gw)
        with pytest.raises(TimeoutError):
            await a.request(onem2m(LIGHT1_AE, "a-1"), timeout=0.05)  # no body: its connection goes back to the pool
        a.writer.transport.abort()  # gone before the CSE answers
        await until(lambda: not gw._clients)  # the answer came and was dropped
        b = await connect(gw, LIGHT2_ID, LIGHT2_KEY)
        resp = await b.request(onem2m(LIGHT2_AE, "b-1"))
        assert resp.header("x-m2m-ri") == "b-1" and b'"as": "' + LIGHT2_AE.encode() in resp.body, resp.body
        assert cse.connections == 1 and [s.headers["x-m2m-ri"] for s in cse.seen] == ["a-1", "b-1"]
        await b.close()
    finally:
        await gw.close()


async def test_a_request_head_dribbled_byte_by_byte_is_cut_at_the_idle_timeout(
        start_cse: Callable[[Script], Awaitable[ScriptedCSE]]) -> None:
    cse = await start_cse(echo_ri_slowly)
    gw = await start_gateway(cse.port, idle_timeout=0.5)
    try:
        ctx = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_PSK,),
                                             peer_entity=HOME_GATEWAY_CSE_ID))
        reader, writer, _ = await open_connection(SERVER, gw.port, ctx)
        head = f"GET /{HOME_GATEWAY_CSE_ID} HTTP/1.1\r\nhost: gw\r\nx-m2m-origin: {LIGHT1_AE}\r\nx-m2m-ri: s\r\n\r\n"
        loop = asyncio.get_running_loop()
        start = loop.time()
        for char in head:  # always busy, never done: the whole request must come within the idle timeout
            if writer.transport.is_closing() or reader.at_eof():
                break
            writer.write(char.encode())
            await asyncio.sleep(0.05)
        async with asyncio.timeout(2):
            await reader.read()  # EOF: the gateway closed it
        assert loop.time() - start < 2 and not cse.seen
        writer.close()
    finally:
        await gw.close()


# ------------------------------------------------------------------------------------------------------------
# 5. A CSE that answers before it has read a request's body: the rest of the body went out ahead of the next
#    client's request on the reused connection (priority 2, defence in depth)
#
# A CSE that answers early (a 4xx after the head, say) must read and discard the body or close (RFC 9112 §9.3);
# one that keeps the connection and parses on reads the rest of client A's body as its next request: a request
# A wrote, with whatever X-M2MSEC-* headers A put in it, whose answer the pool gave to client B as B's response.
# The gateway cannot stop bytes already sent, but a connection whose request was not all written when the answer
# came is aborted (the unsent rest dropped), never reused.

SMUGGLED = (f"GET /{HOME_GATEWAY_CSE_ID}/smuggled HTTP/1.1\r\nhost: gw\r\nx-m2m-ri: smuggled\r\n"
            f"x-m2msec-sa-identity: {LIGHT2_AE}\r\ncontent-length: {{rest}}\r\n\r\n")


async def early_answer(cse: ScriptedCSE, seen: Seen, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
    writer.write(response(b"{}", ri=seen.headers["x-m2m-ri"]))
    await writer.drain()


class EarlyCSE(ScriptedCSE):
    """Answers a POST as soon as it has its head, and never reads its body; a GET after its body, 0.3 s later."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while (head := await read_head(reader)) is not None:
                seen = head_to_seen(head, b"", self.connections)
                self.seen.append(seen)
                if seen.method == "GET":  # a GET is answered after its body, and slowly
                    await read_body(reader, head)
                    await asyncio.sleep(0.3)
                await self.script(self, seen, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_an_early_answer_does_not_put_the_rest_of_a_request_before_the_next_clients() -> None:
    cse = EarlyCSE(early_answer)
    cse.server = await asyncio.start_server(cse.handle, SERVER, 0)
    gw = await start_gateway(cse.port, max_body=4 * BIG)
    try:
        a = await connect(gw)
        size = 2 * BIG  # more than loopback's kernel buffers hold while the CSE reads nothing
        resp = await a.request(onem2m(LIGHT1_AE, "a-big", "POST", SMUGGLED.format(rest=size).encode() + b"x" * size))
        assert resp.header("x-m2m-ri") == "a-big"
        b = await connect(gw, LIGHT2_ID, LIGHT2_KEY)
        resp = await b.request(onem2m(LIGHT2_AE, "b-1"))
        assert resp.header("x-m2m-ri") == "b-1", f"client B got the answer to {resp.header('x-m2m-ri')!r}"
        await a.close()
        await b.close()
    finally:
        await gw.close()
        cse.server.close()


class EarlyButClosingCSE(EarlyCSE):
    """Answers a POST as soon as it has its head and parses on, as EarlyCSE, unless the request said
    ``Connection: close`` (RFC 9112 §9.6: then nothing after it is read)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while (head := await read_head(reader)) is not None:
                seen = head_to_seen(head, b"", self.connections)
                self.seen.append(seen)
                await self.script(self, seen, reader, writer)
                if seen.headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_a_body_is_never_parsed_as_a_request_on_a_kept_connection() -> None:
    """D69: a small body (all of it reaches the CSE at once) holding a request with forged identity headers, to a CSE
    that answers early and parses on: the request it carries is never run, because the request said close."""
    cse = EarlyButClosingCSE(early_answer)
    cse.server = await asyncio.start_server(cse.handle, SERVER, 0)
    gw = await start_gateway(cse.port)
    try:
        a = await connect(gw)
        body = SMUGGLED.format(rest=0).encode()
        resp = await a.request(onem2m(LIGHT1_AE, "a-small", "POST", body))
        assert resp.header("x-m2m-ri") == "a-small"
        resp = await a.request(onem2m(LIGHT1_AE, "a-next"))  # the pool is used again afterwards
        assert resp.header("x-m2m-ri") == "a-next"
        await a.close()
        await asyncio.sleep(0.2)
        assert [s.headers.get("x-m2m-ri") for s in cse.seen] == ["a-small", "a-next"]
        assert cse.seen[0].headers.get("connection") == "close"
    finally:
        await gw.close()
        cse.server.close()
