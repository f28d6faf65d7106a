"""Request smuggling and ambiguity at the HTTP gateway, over real TLS-PSK on loopback (issue 21 part 4).

Each case writes raw bytes on one SA and reads every answer; a recording CSE shows what was forwarded. An
ambiguous request is refused with 400 and never forwarded; every request on a connection is checked against the
SA on its own. Already covered elsewhere (not repeated): a repeated or comma-joined X-M2M-Origin, an obs-folded
X-M2M-Origin (tests/gateway/test_identity_hardening.py), pipelined requests with another X-M2M-Origin
(tests/test_attack_front.py), a body holding a request behind an early answer (tests/test_attack_front.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11
import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, make_table
from m2msec import http1
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_PSK
from m2msec.transport.tls import open_connection

SERVER = "127.0.0.1"
T = f"/{HOME_GATEWAY_CSE_ID}"
MAX_BODY = 64 * 1024


@dataclass
class RecordingCSE:
    """A keep-alive HTTP/1.1 CSE on loopback: records every request it parses, answers 2000 echoing X-M2M-RI."""

    requests: list[http1.Message] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (req := await http1.read_message(conn, reader)) is not None:
                self.requests.append(req)
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("content-type", "application/json"), ("x-m2m-rsc", "2000"),
                             ("x-m2m-ri", req.header("x-m2m-ri") or "")], body=b"{}", status=200))
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except Exception:  # the gateway hung up: nothing to record
            pass
        finally:
            writer.close()


@pytest.fixture
async def cse() -> AsyncIterator[RecordingCSE]:
    rec = RecordingCSE()
    rec.server = await asyncio.start_server(rec.handle, SERVER, 0)
    yield rec
    rec.server.close()
    await rec.server.wait_closed()


@pytest.fixture
async def gateway(cse: RecordingCSE) -> AsyncIterator[Gateway]:
    assert cse.server is not None
    port = int(cse.server.sockets[0].getsockname()[1])
    gw = Gateway(GatewayConfig(backend=Backend(SERVER, port), port=0, max_body=MAX_BODY), make_table())
    await gw.start()
    yield gw
    await gw.close()


@dataclass
class Answer:
    status: int
    rsc: str | None
    ri: str | None


async def exchange(gw: Gateway, raw: bytes, *, idle: float = 1.0) -> tuple[list[Answer], bool]:
    """Write ``raw`` on a new SA; every answer until the gateway closes or is idle, and whether it closed."""
    ctx = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_PSK,),
                                         peer_entity=HOME_GATEWAY_CSE_ID))
    reader, writer, _ = await open_connection(SERVER, gw.port, ctx)
    writer.write(raw)
    answers: list[Answer] = []
    closed = False
    buf = b""
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), idle)
            except TimeoutError:
                break
            except ConnectionError:  # refused mid-body: the gateway closed with unread bytes (RST)
                closed = True
                break
            if not chunk:
                closed = True
                break
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                length = int(headers.get("content-length", "0"))
                if len(rest) < length:
                    break
                buf = rest[length:]
                answers.append(Answer(int(lines[0].split()[1]), headers.get("x-m2m-rsc"), headers.get("x-m2m-ri")))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return answers, closed


def req(ri: str, *extra: str, method: str = "GET", origin: str = LIGHT1_AE, version: str = "1.1",
        body: bytes = b"") -> bytes:
    head = [f"{method} {T} HTTP/{version}", "Host: gw", f"X-M2M-RI: {ri}", f"X-M2M-Origin: {origin}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


REFUSED: list[tuple[str, bytes]] = [
    ("content-length and transfer-encoding",
     req("cl-te", "Content-Length: 4", "Transfer-Encoding: chunked", method="POST",
         body=b"0\r\n\r\n" + req("smuggled"))),
    ("transfer-encoding and content-length",
     req("te-cl", "Transfer-Encoding: chunked", "Content-Length: 40", method="POST",
         body=b"0\r\n\r\n" + req("smuggled"))),
    ("two content-lengths that differ",
     req("cl-cl", "Content-Length: 0", "Content-Length: 30", method="POST", body=req("smuggled"))),
    ("a content-length list that differs",
     req("cl-list", "Content-Length: 0, 30", method="POST", body=req("smuggled"))),
    ("a signed content-length", req("cl-sign", "Content-Length: +3", method="POST", body=b"abc")),
    ("a hex content-length", req("cl-hex", "Content-Length: 0x3", method="POST", body=b"abc")),
    ("transfer-encoding gzip, chunked", req("te-gzip", "Transfer-Encoding: gzip, chunked", method="POST",
                                             body=b"0\r\n\r\n")),
    ("transfer-encoding xchunked", req("te-x", "Transfer-Encoding: xchunked", method="POST", body=b"0\r\n\r\n")),
    ("transfer-encoding on HTTP/1.0", req("te-10", "Transfer-Encoding: chunked", method="POST", version="1.0",
                                          body=b"0\r\n\r\n")),
    ("whitespace before the colon", req("ws-colon", f"X-M2M-Origin : {LIGHT1_AE}x")),
    ("a NUL in a header value", req("nul", "X-Other: a\0b")),
    ("a bare CR in a header value", req("cr", "X-Other: a\rX-M2M-Origin: CAdmin")),
    ("a head larger than the limit", req("huge-head", *(f"X-Pad-{i}: {'a' * 100}" for i in range(200)))),
    ("an invalid chunk size", req("chunk-bad", "Transfer-Encoding: chunked", method="POST", body=b"zz\r\n\r\n")),
]


@pytest.mark.parametrize(("case", "raw"), REFUSED, ids=[c for c, _ in REFUSED])
async def test_an_ambiguous_request_is_refused_and_never_forwarded(gateway: Gateway, cse: RecordingCSE,
                                                                   case: str, raw: bytes) -> None:
    answers, _ = await exchange(gateway, raw)
    assert [a.status for a in answers][:1] in ([400], [431], [501]), (case, answers)
    assert cse.requests == [], case


async def test_a_refusal_closes_the_connection_so_nothing_after_it_is_read(gateway: Gateway,
                                                                           cse: RecordingCSE) -> None:
    raw = req("cl-te", "Content-Length: 4", "Transfer-Encoding: chunked", method="POST",
              body=b"0\r\n\r\n" + req("after"))
    answers, closed = await exchange(gateway, raw)
    assert [(a.status, a.rsc) for a in answers] == [(400, "4000")] and closed
    assert cse.requests == []


@pytest.mark.parametrize("size", [MAX_BODY + 1, 4 * MAX_BODY])
async def test_an_oversized_body_is_413_and_never_forwarded(gateway: Gateway, cse: RecordingCSE, size: int) -> None:
    declared = req("big", f"Content-Length: {size}", method="POST", body=b"x" * 1024)
    chunked = req("big-chunked", "Transfer-Encoding: chunked", method="POST",
                  body=f"{size:x}\r\n".encode() + b"x" * size + b"\r\n0\r\n\r\n")
    answers, closed = await exchange(gateway, declared)
    assert [a.status for a in answers] == [413] and closed  # refused from its head
    answers, closed = await exchange(gateway, chunked)
    # refused once the body passes the limit; the client, still writing, may see the reset before the 413
    assert [a.status for a in answers] in ([413], []) and closed
    assert cse.requests == []


async def test_a_head_just_under_the_limit_is_served(gateway: Gateway, cse: RecordingCSE) -> None:
    answers, _ = await exchange(gateway, req("big-ok", *(f"X-Pad-{i}: {'a' * 100}" for i in range(120))))
    assert [a.status for a in answers] == [200] and len(cse.requests) == 1


async def test_http10_keep_alive_answers_once_then_closes(gateway: Gateway, cse: RecordingCSE) -> None:
    """HTTP/1.0 keep-alive is not honoured (h11): the first request is answered, the connection closes, and the
    pipelined second one (another From) is never read, let alone forwarded."""
    raw = req("k1", "Connection: keep-alive", version="1.0") + req("k2", "Connection: keep-alive", version="1.0",
                                                                   origin="CAdmin")
    answers, closed = await exchange(gateway, raw)
    assert [(a.status, a.ri) for a in answers] == [(200, "k1")] and closed
    assert [r.header("x-m2m-ri") for r in cse.requests] == ["k1"]
    assert cse.requests[0].header("x-m2m-origin") == LIGHT1_AE


async def test_pipelined_requests_after_a_chunked_body_are_each_checked(gateway: Gateway, cse: RecordingCSE) -> None:
    """A chunked body, its trailer naming another originator, then two pipelined requests (the second forged):
    the trailer never reaches the CSE, the forged request is 4106 and not forwarded."""
    raw = (req("c1", "Transfer-Encoding: chunked", method="POST")[:-2] + b"\r\n3\r\nabc\r\n0\r\n"
           b"X-M2M-Origin: CAdmin\r\n\r\n" + req("c2", origin="CAdmin") + req("c3"))
    answers, _ = await exchange(gateway, raw)
    assert [(a.status, a.rsc, a.ri) for a in answers] == [(200, "2000", "c1"), (403, "4106", "c2"),
                                                           (200, "2000", "c3")]
    assert [r.header("x-m2m-ri") for r in cse.requests] == ["c1", "c3"]
    assert cse.requests[0].body == b"abc"
    assert all([v for k, v in r.headers if k == "x-m2m-origin"] == [LIGHT1_AE] for r in cse.requests)


async def test_an_obs_fold_never_becomes_a_header_of_its_own(gateway: Gateway, cse: RecordingCSE) -> None:
    """RFC 9112 §5.2: an obs-fold is replaced by a space (h11); a folded line that looks like X-M2M-Origin stays
    inside the previous header's value."""
    answers, _ = await exchange(gateway, req("fold", "X-Note: a\r\n X-M2M-Origin: CAdmin"))
    assert [a.status for a in answers] == [200]
    assert [v for k, v in cse.requests[0].headers if k == "x-m2m-origin"] == [LIGHT1_AE]


async def test_identical_repeated_content_length_is_reframed(gateway: Gateway, cse: RecordingCSE) -> None:
    """Not ambiguous (RFC 9110 §8.6: one length, repeated): h11 keeps one, and the gateway sends its own."""
    answers, _ = await exchange(gateway, req("cl2", "Content-Length: 3", "Content-Length: 3", method="POST",
                                             body=b"abc"))
    assert [a.status for a in answers] == [200]
    assert cse.requests[0].body == b"abc"
    assert [v for k, v in cse.requests[0].headers if k == "content-length"] == ["3"]
