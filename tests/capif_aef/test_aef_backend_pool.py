"""The AEF front's keep-alive pool to the backend (D177, D178) and the closing of a revoked invoker's idle
connections (D179), over real sockets: a real CCF (``world``), the front on m2msec.asgi, and a keep-alive HTTP/1.1
backend here that counts the TCP connections it accepts and can misbehave on demand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest

from ccf.ccf_env import World, world
from m2msec import http1
from m2msec.capif.aef.app import INVOKER_ID_HEADER, MAX_BACKEND_ANSWER
from m2msec.capif.aef.backend import BACKEND_MAX_CONNECTIONS, BackendPool
from m2msec.capif.aef.config import load_config
from m2msec.errors import ConfigurationError
from m2msec.idb import NOT_ONEM2M
from m2msec.tls.engine import TLSContext
from m2msec.transport.tls import open_connection

from .aef_server_env import AEF_HOST, Front, psk_context, psk_invoker, running_front
from .test_aef_revocation import OFFBOARD, Kept, notified
from .test_aef_server_config import GOOD, files

__all__ = ["world"]


@dataclass
class Seen:
    connection: int
    message: http1.Message


@dataclass
class CountingBackend:
    """Keep-alive HTTP/1.1: answers 200 echoing the invoker header; ``accepted`` counts TCP connections."""

    accepted: int = 0
    seen: list[Seen] = field(default_factory=list)
    busy: int = 0
    peak: int = 0
    delay: float = 0.0
    close_answers: bool = False  # answer with connection: close
    big: bool = False  # answer with a body past MAX_BACKEND_ANSWER
    drop_reused: int = 0  # that many requests on an already used connection: closed without an answer
    idle: dict[int, asyncio.StreamWriter] = field(default_factory=dict)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        number = self.accepted
        conn = h11.Connection(h11.SERVER)
        served = 0
        try:
            while True:
                self.idle[number] = writer
                msg = await http1.read_message(conn, reader)
                self.idle.pop(number, None)
                if msg is None:
                    return
                if served and self.drop_reused:
                    self.drop_reused -= 1
                    return  # the backend went away with the request unanswered
                self.seen.append(Seen(number, msg))
                self.busy += 1
                self.peak = max(self.peak, self.busy)
                await asyncio.sleep(self.delay)
                self.busy -= 1
                body = b"x" * (MAX_BACKEND_ANSWER + 1) if self.big else \
                    f'{{"invoker": "{msg.header(INVOKER_ID_HEADER)}"}}'.encode()
                headers = [("content-type", "application/json")]
                if self.close_answers:
                    headers.append(("connection", "close"))
                await http1.send_message(conn, writer, http1.Message(headers=headers, body=body, status=200))
                served += 1
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, http1.HTTPError):
            return
        finally:
            self.idle.pop(number, None)
            writer.close()

    async def close_idle(self) -> None:
        for writer in list(self.idle.values()):
            writer.close()
        await asyncio.sleep(0.1)  # the FIN reaches the front


@contextlib.asynccontextmanager
async def pooled_front(world: World, **kw: Any) -> AsyncIterator[tuple[Front, CountingBackend]]:
    """:func:`running_front` (``kw``: configuration) forwarding to a :class:`CountingBackend` instead of its own."""
    backend = CountingBackend()
    backend.server = await asyncio.start_server(backend.serve, "127.0.0.1", 0)
    try:
        async with running_front(world, **kw) as aef:
            app = aef.running.app
            await app.pool.aclose()
            app.backend = ("127.0.0.1", backend.port)
            app.pool = BackendPool("127.0.0.1", backend.port, max_answer=MAX_BACKEND_ANSWER,
                                   max_connections=aef.running.config.backend_connections)
            yield aef, backend
    finally:
        backend.server.close()
        await backend.server.wait_closed()


class Client:
    """One keep-alive TLS connection to the front."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, context: TLSContext) -> Client:
        reader, writer, _ = await open_connection("127.0.0.1", port, context, handshake_timeout=10,
                                                  peer_entity=NOT_ONEM2M)
        return cls(reader, writer)

    async def ask(self, method: str = "GET", body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()
                  ) -> http1.Message:
        conn = h11.Connection(h11.CLIENT)
        msg = http1.Message(headers=[("host", AEF_HOST), *headers], body=body, method=method, target="/api/items")
        await http1.send_message(conn, self.writer, msg)
        answer = await asyncio.wait_for(http1.read_message(conn, self.reader), 10)
        assert answer is not None
        return answer

    def close(self) -> None:
        self.writer.close()


async def test_calls_on_one_client_connection_share_one_backend_connection(world: World) -> None:
    async with pooled_front(world) as (aef, backend):
        inv = await psk_invoker(world, aef.iface, aef.p0)
        client = await Client.open(aef.port, psk_context(inv.id, inv.key))
        try:
            for _ in range(5):
                assert (await client.ask(headers=(("connection", "keep-alive"),))).status == 200
            assert (await client.ask("POST", b'{"a": 1}')).status == 200
        finally:
            client.close()
        assert backend.accepted == 1 and len(backend.seen) == 6
        assert all(s.message.header("connection") is None for s in backend.seen)  # the client's: never forwarded


async def test_concurrent_calls_are_bounded_by_the_maximum(world: World) -> None:
    async with pooled_front(world, backend_connections=2) as (aef, backend):
        backend.delay = 0.2
        inv = await psk_invoker(world, aef.iface, aef.p0)
        clients = [await Client.open(aef.port, psk_context(inv.id, inv.key)) for _ in range(6)]
        try:
            answers = await asyncio.gather(*(c.ask() for c in clients))
        finally:
            for c in clients:
                c.close()
        assert [a.status for a in answers] == [200] * 6
        assert backend.accepted == 2 and backend.peak == 2


async def test_a_backend_closing_idle_connections_is_noticed_and_a_failed_reuse_retried_for_get_only(
        world: World) -> None:
    async with pooled_front(world) as (aef, backend):
        inv = await psk_invoker(world, aef.iface, aef.p0)
        client = await Client.open(aef.port, psk_context(inv.id, inv.key))
        try:
            assert (await client.ask()).status == 200
            # the backend closed the idle connection: the pool sees it before reuse, GET and POST both served
            await backend.close_idle()
            assert (await client.ask()).status == 200
            await backend.close_idle()
            assert (await client.ask("POST", b"{}")).status == 200
            assert backend.accepted == 3
            # the reused connection fails before any answer byte: a GET is sent again on a new connection (D178)
            backend.drop_reused = 1
            assert (await client.ask()).status == 200
            assert backend.accepted == 4 and aef.running.app.pool.retried == 1
            # ... a POST is not: 502, and the backend saw it at most once
            backend.drop_reused = 1
            posted = len(backend.seen)
            assert (await client.ask("POST", b'{"once": true}')).status == 502
            assert len(backend.seen) == posted and aef.running.app.pool.retried == 1
            assert (await client.ask()).status == 200  # and the pool recovers
        finally:
            client.close()


async def test_connection_close_answers_are_not_reused(world: World) -> None:
    async with pooled_front(world) as (aef, backend):
        backend.close_answers = True
        inv = await psk_invoker(world, aef.iface, aef.p0)
        client = await Client.open(aef.port, psk_context(inv.id, inv.key))
        try:
            for _ in range(3):
                assert (await client.ask()).status == 200
        finally:
            client.close()
        assert backend.accepted == 3 and len({s.connection for s in backend.seen}) == 3


async def test_an_oversized_answer_is_502_and_its_connection_discarded(world: World) -> None:
    async with pooled_front(world) as (aef, backend):
        inv = await psk_invoker(world, aef.iface, aef.p0)
        client = await Client.open(aef.port, psk_context(inv.id, inv.key))
        try:
            backend.big = True
            answer = await client.ask()
            assert answer.status == 502 and b"x" * 100 not in answer.body
            backend.big = False
            assert (await client.ask()).status == 200
        finally:
            client.close()
        assert backend.accepted == 2 and [s.connection for s in backend.seen] == [1, 2]


async def test_the_invoker_header_of_one_call_never_reaches_the_next(world: World) -> None:
    async with pooled_front(world) as (aef, backend):
        first = await psk_invoker(world, aef.iface, aef.p0)
        second = await psk_invoker(world, aef.iface, aef.p0)
        for inv in (first, second, first):
            client = await Client.open(aef.port, psk_context(inv.id, inv.key))
            try:
                assert (await client.ask()).status == 200
            finally:
                client.close()
        assert backend.accepted == 1  # one pooled backend connection carried the three calls
        assert [s.message.headers.count((INVOKER_ID_HEADER, inv.id)) for s, inv in
                zip(backend.seen, (first, second, first), strict=True)] == [1, 1, 1]
        assert [[v for k, v in s.message.headers if k.lower() == INVOKER_ID_HEADER] for s in backend.seen] == \
            [[first.id], [second.id], [first.id]]


async def test_offboarding_closes_the_invokers_idle_connection_at_once(world: World) -> None:
    async with pooled_front(world) as (aef, _):
        gone = await psk_invoker(world, aef.iface, aef.p0)
        stays = await psk_invoker(world, aef.iface, aef.p0)
        kept_gone = await Kept.open(aef.port, psk_context(gone.id, gone.key))
        kept_stays = await Kept.open(aef.port, psk_context(stays.id, stays.key))
        try:
            assert (await kept_gone.get()).status == 200
            assert (await kept_stays.get()).status == 200
            assert (await world.call(gone.identity, "DELETE", OFFBOARD.format(gone.id))).status == 204
            await notified(aef, 1)
            # the client sends nothing: the front closes the connection (close_notify, then EOF)
            async with asyncio.timeout(5):
                assert await kept_gone.reader.read(1) == b""
            # the other invoker's idle connection stays open, and is served
            try:
                async with asyncio.timeout(0.5):
                    await kept_stays.reader.read(1)
                raise AssertionError("the other invoker's connection was closed or sent something")
            except TimeoutError:
                pass
            assert (await kept_stays.get()).status == 200
        finally:
            kept_gone.close()
            kept_stays.close()


def test_backend_connections_in_the_configuration(tmp_path: Path) -> None:
    assert load_config(files(tmp_path)).backend_connections == BACKEND_MAX_CONNECTIONS == 64
    assert load_config(files(tmp_path, "backend_connections = 3\n" + GOOD)).backend_connections == 3
    for bad in ("0", "-1", "4097", '"8"', "2.5", "true"):
        with pytest.raises(ConfigurationError, match="backend_connections"):
            load_config(files(tmp_path, f"backend_connections = {bad}\n" + GOOD))


async def test_a_revocation_during_a_call_closes_the_connection_after_its_answer(world: World) -> None:
    async with pooled_front(world) as (aef, backend):
        backend.delay = 0.5
        inv = await psk_invoker(world, aef.iface, aef.p0)
        client = await Client.open(aef.port, psk_context(inv.id, inv.key))
        try:
            pending = asyncio.ensure_future(client.ask())
            async with asyncio.timeout(5):
                while backend.busy == 0:
                    await asyncio.sleep(0.01)
                aef.running.app.revoke(inv.id)  # what a notification does (D171, D179)
                answer = await pending
                assert answer.status == 200 and answer.header("connection") == "close"
                assert await client.reader.read(1) == b""
        finally:
            client.close()
