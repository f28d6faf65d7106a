"""The coaps relay in process: a real CoapsGateway on loopback, our DTLS client (create_dtls_endpoint) and a tiny
asyncio CoAP backend that records what reaches it. Identity options, 4106, repeated options, RFC 7959 block-wise
transfer in both directions, and an unreachable CSE."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, make_table
from m2msec.gateway import coap
from m2msec.gateway.coap import Message, MessageType
from m2msec.gateway.coap_blockwise import ETAG, MAX_MESSAGE, Block, BlockwiseLimits
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK
from m2msec.transport.dtls import create_dtls_endpoint

CAP = 8 * 1024  # max_body for these tests
CSE_LEAK = b"leaked-by-cse"


class Backend(asyncio.DatagramProtocol):
    """A CoAP server: answers every request 2.05 (piggy-backed for CON) with ``body``, echoing RQI; for a
    request with a payload, the answer's payload is the request's length. With ``block_size`` it answers
    bodies over that size block-wise itself (Block2, as ACME's CoAPthon does)."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.body = b""
        self.block_size: int | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.mids = itertools.count(0x4000)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = Message.decode(data)
        self.received.append(msg)
        if not coap.is_request(msg.code) or self.transport is None:
            return
        body = str(len(msg.payload)).encode() if msg.payload else self.body
        options = [(coap.ONEM2M_RSC, coap.encode_uint(2000)), (coap.OPTION_SA_IDENTITY, CSE_LEAK)]
        rqi = msg.option(coap.ONEM2M_RQI)
        if rqi is not None:
            options.append((coap.ONEM2M_RQI, rqi))
        if self.block_size is not None and len(body) > self.block_size:
            asked = msg.option(coap.BLOCK2)
            num = Block.decode(asked).num if asked is not None else 0
            szx = self.block_size.bit_length() - 5
            more = (num + 1) * self.block_size < len(body)
            options.append((coap.BLOCK2, Block(num, more, szx).encode()))
            body = body[num * self.block_size:(num + 1) * self.block_size]
        kind, mid = ((MessageType.ACK, msg.message_id) if msg.type is MessageType.CON
                     else (MessageType.NON, next(self.mids)))
        self.transport.sendto(Message(kind, coap.make_code(2, 5), mid, msg.token, options, body).encode(), addr)

    @property
    def requests(self) -> list[Message]:
        return [m for m in self.received if coap.is_request(m.code)]


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.q.put_nowait(data)


@dataclasses.dataclass
class Client:
    transport: asyncio.DatagramTransport
    inbox: Inbox
    mids: itertools.count[int] = dataclasses.field(default_factory=lambda: itertools.count(0x100))
    tokens: itertools.count[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    async def send(self, msg: Message, timeout: float = 3.0) -> Message:
        """Send one message and return the answer with its token; the raw datagram must fit the DTLS record."""
        self.transport.sendto(msg.encode())
        while True:
            data = await asyncio.wait_for(self.inbox.q.get(), timeout)
            assert len(data) <= MAX_MESSAGE
            reply = Message.decode(data)
            if reply.token == msg.token:
                return reply

    def request(self, code: int, *options: tuple[int, bytes], payload: bytes = b"", frm: bytes = LIGHT1_AE.encode(),
                kind: MessageType = MessageType.CON, token: bytes | None = None) -> Message:
        opts = [(coap.URI_PATH, b"cse-in"), (coap.ONEM2M_RQI, b"rq-1"), *options]
        if frm:
            opts.append((coap.ONEM2M_FR, frm))
        tok = token if token is not None else next(self.tokens).to_bytes(2, "big")
        return Message(kind, code, next(self.mids) & 0xFFFF, tok, [], payload).with_options(*opts)


def client_context() -> TLSContext:
    return TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_DTLS_PSK,),
                                               peer_entity=HOME_GATEWAY_CSE_ID))


@pytest.fixture
async def backend() -> AsyncIterator[tuple[Backend, int]]:
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        Backend, local_addr=("127.0.0.1", 0))
    yield proto, int(transport.get_extra_info("sockname")[1])
    transport.close()


async def start(backend_port: int, **config: object) -> CoapsGateway:
    cfg = CoapsConfig(backend_host="127.0.0.1", backend_port=backend_port, port=0,
                      blockwise=BlockwiseLimits(max_body=CAP), **config)  # type: ignore[arg-type]
    gw = CoapsGateway(cfg, make_table())
    await gw.start()
    return gw


@pytest.fixture
async def relay(backend: tuple[Backend, int]) -> AsyncIterator[tuple[Client, Backend, CoapsGateway]]:
    gw = await start(backend[1])
    ctx = client_context()
    transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, ctx)
    yield Client(transport, inbox), backend[0], gw  # type: ignore[arg-type]
    transport.close()
    await gw.close()


def rsc(msg: Message) -> int:
    return coap.decode_uint(msg.option(coap.ONEM2M_RSC) or b"")


# --- identity options, 4106, repeated options ---


async def test_identity_options_injected_and_copies_stripped(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    client, backend, _ = relay
    backend.body = b"ok"
    forged = [(coap.OPTION_SA_IDENTITY, b"CAdmin"), (coap.OPTION_CREDENTIAL_ID, b"12-forged"),
              (coap.OPTION_PSK_IDENTITY, b"forged@x.com")]
    reply = await client.send(client.request(coap.GET, *forged))
    assert coap.format_code(reply.code) == "2.05" and reply.payload == b"ok"
    assert not any(n in coap.IDENTITY_OPTIONS for n, _ in reply.options)  # the CSE's copy is stripped
    (got,) = backend.requests
    assert got.options_of(coap.OPTION_SA_IDENTITY) == [LIGHT1_AE.encode()]
    assert got.options_of(coap.OPTION_CREDENTIAL_ID) == [f"12-{LIGHT1_ID}".encode()]
    assert got.options_of(coap.OPTION_PSK_IDENTITY) == [LIGHT1_ID.encode()]


async def test_wrong_originator_refused_4106_not_forwarded(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    client, backend, _ = relay
    reply = await client.send(client.request(coap.GET, frm=b"CAdmin"))
    assert coap.format_code(reply.code) == "4.03" and rsc(reply) == 4106
    assert reply.type is MessageType.ACK and backend.received == []


async def test_refusal_echoing_a_huge_rqi_still_fits(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    client, backend, _ = relay
    huge = client.request(coap.GET, frm=b"CAdmin").without_options((coap.ONEM2M_RQI,)).with_options(
        (coap.ONEM2M_RQI, b"q" * 1080))  # the request fits a record; echoed with a diagnostic, its refusal would not
    reply = await client.send(huge)
    assert coap.format_code(reply.code) == "4.03" and rsc(reply) == 4106 and reply.option(coap.ONEM2M_RQI) is None
    backend.body = b"still here"  # the SA survived
    ok = await client.send(client.request(coap.GET))
    assert ok.payload == b"still here"


@pytest.mark.parametrize("number", [coap.ONEM2M_FR, coap.ONEM2M_RQI, coap.ONEM2M_RVI, coap.ONEM2M_AUS,
                                    coap.BLOCK2])
async def test_repeated_identity_option_refused(relay: tuple[Client, Backend, CoapsGateway], number: int) -> None:
    client, backend, _ = relay
    value = LIGHT1_AE.encode() if number == coap.ONEM2M_FR else b"\x03"
    msg = client.request(coap.GET, (number, value), (number, value))
    reply = await client.send(msg)
    assert coap.format_code(reply.code) == "4.00" and rsc(reply) == 4000
    assert f"option {number} repeated".encode() in reply.payload
    await asyncio.sleep(0.05)
    assert backend.received == []


# --- Block2: responses larger than one DTLS record ---


async def fetch(client: Client, szx: int | None = None, token: bytes | None = None) -> tuple[bytes, list[Message]]:
    """GET block by block the way an RFC 7959 client does (a new Message ID per block)."""
    extra = [(coap.BLOCK2, Block(0, False, szx).encode())] if szx is not None else []
    tok = token or next(client.tokens).to_bytes(2, "big")
    replies = [await client.send(client.request(coap.GET, *extra, token=tok))]
    body = bytearray(replies[0].payload)
    while (value := replies[-1].option(coap.BLOCK2)) is not None and Block.decode(value).more:
        last = Block.decode(value)
        nxt = Block(last.num + 1, False, last.szx).encode()
        replies.append(await client.send(client.request(coap.GET, (coap.BLOCK2, nxt), token=tok)))
        assert coap.format_code(replies[-1].code) == "2.05", replies[-1].payload
    return bytes(body) + b"".join(r.payload for r in replies[1:]), replies


@pytest.mark.parametrize("size", [0, 1024, 3 * 1024, 3 * 1024 + 1, CAP])
async def test_block2_response(relay: tuple[Client, Backend, CoapsGateway], size: int) -> None:
    client, backend, gw = relay
    backend.body = bytes(i % 251 for i in range(size))
    body, replies = await fetch(client)
    assert body == backend.body
    assert len(backend.requests) == 1  # later blocks come from the gateway's copy
    assert not any(n in coap.IDENTITY_OPTIONS for r in replies for n, _ in r.options)
    assert all(r.type is MessageType.ACK and rsc(r) == 2000 for r in replies)
    if size <= 1024:  # one datagram: relayed whole
        assert len(replies) == 1 and replies[0].option(coap.BLOCK2) is None
    else:
        assert len(replies) == -(-size // 1024)
        assert coap.decode_uint(replies[0].option(coap.SIZE2) or b"") == size
        etags = {r.option(ETAG) for r in replies}  # one representation, one ETag (RFC 7959 §2.4)
        assert len(etags) == 1 and None not in etags
    assert gw.budget.used == (size if size > 1024 else 0)  # the stored copy is all that is held


async def test_block2_response_over_cap(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    client, backend, _ = relay
    backend.body = b"x" * (CAP + 1)
    reply = await client.send(client.request(coap.GET))
    assert coap.format_code(reply.code) == "5.02" and b"over" in reply.payload


async def test_block2_early_negotiation_and_smaller_szx(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    client, backend, _ = relay
    backend.body = bytes(range(256)) * 10
    body, replies = await fetch(client, szx=2)  # 64-byte blocks asked in the first request
    assert body == backend.body and len(replies) == 40
    assert all(Block.decode(r.option(coap.BLOCK2) or b"").szx == 2 for r in replies)
    # the client switches to 32-byte blocks: block 5 at SZX 1 is bytes 160..191
    tok = next(client.tokens).to_bytes(2, "big")
    first = await client.send(client.request(coap.GET, token=tok))
    assert Block.decode(first.option(coap.BLOCK2) or b"") == Block(0, True, 6)
    five = await client.send(client.request(coap.GET, (coap.BLOCK2, Block(5, False, 1).encode()), token=tok))
    assert five.payload == backend.body[160:192]
    beyond = await client.send(client.request(coap.GET, (coap.BLOCK2, Block(99, False, 6).encode()), token=tok))
    assert coap.format_code(beyond.code) == "4.02"


async def test_block2_non_request(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    client, backend, _ = relay
    backend.body = b"n" * 2000
    reply = await client.send(client.request(coap.GET, kind=MessageType.NON))
    assert reply.type is MessageType.NON and Block.decode(reply.option(coap.BLOCK2) or b"") == Block(0, True, 6)
    second = await client.send(client.request(coap.GET, (coap.BLOCK2, Block(1, False, 6).encode()),
                                              kind=MessageType.NON))
    assert second.type is MessageType.NON and second.payload == b"n" * (2000 - 1024)


async def test_block2_fetched_from_a_block_wise_cse(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    client, backend, _ = relay
    backend.block_size = 256  # the CSE answers block-wise itself; the gateway collects all blocks first
    backend.body = bytes(i % 253 for i in range(3000))
    body, replies = await fetch(client)
    assert body == backend.body and len(replies) == 3
    follow_ups = backend.requests[1:]
    assert [Block.decode(m.option(coap.BLOCK2) or b"").num for m in follow_ups] == list(range(1, 12))
    assert all(m.option(coap.OPTION_SA_IDENTITY) == LIGHT1_AE.encode() for m in backend.requests)


# --- Block1: requests larger than one DTLS record ---


async def upload(client: Client, payload: bytes, szx: int = 5, frm_later: bytes = LIGHT1_AE.encode()
                 ) -> list[Message]:
    size = 1 << (szx + 4)
    chunks = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
    tok = next(client.tokens).to_bytes(2, "big")
    replies = []
    for num, chunk in enumerate(chunks):
        block = Block(num, num + 1 < len(chunks), szx)
        opts = [(coap.BLOCK1, block.encode())]
        if num == 0:
            opts.append((coap.SIZE1, coap.encode_uint(len(payload))))
        reply = await client.send(client.request(coap.POST, *opts, payload=chunk, token=tok,
                                                 frm=LIGHT1_AE.encode() if num == 0 else frm_later))
        replies.append(reply)
        if coap.format_code(reply.code) != "2.31":
            break
    return replies


@pytest.mark.parametrize("size", [0, 512, 3 * 512, 3 * 512 + 1, CAP])
async def test_block1_request(relay: tuple[Client, Backend, CoapsGateway], size: int) -> None:
    client, backend, gw = relay
    payload = bytes(i % 249 for i in range(size))
    replies = await upload(client, payload)
    blocks = max(1, -(-size // 512))
    assert [coap.format_code(r.code) for r in replies] == ["2.31"] * (blocks - 1) + ["2.05"]
    assert Block.decode(replies[-1].option(coap.BLOCK1) or b"") == Block(blocks - 1, False, 5)
    (got,) = backend.requests  # one request, whole
    assert got.payload == payload and got.option(coap.BLOCK1) is None and got.option(coap.SIZE1) is None
    assert got.option(coap.OPTION_SA_IDENTITY) == LIGHT1_AE.encode()
    assert replies[-1].payload == (str(size).encode() if size else b"")
    assert gw.budget.used == 0


async def test_block1_over_cap_is_4_13(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    client, backend, _ = relay
    replies = await upload(client, b"y" * (CAP + 1))
    assert coap.format_code(replies[-1].code) == "4.13" and len(replies) == 1  # Size1 told us up front
    assert coap.decode_uint(replies[-1].option(coap.SIZE1) or b"") == CAP
    tok = next(client.tokens).to_bytes(2, "big")  # without Size1: refused when the body passes the cap
    for num in range(CAP // 1024 + 1):
        reply = await client.send(client.request(coap.POST, (coap.BLOCK1, Block(num, True, 6).encode()),
                                                 payload=b"y" * 1024, token=tok))
        if coap.format_code(reply.code) != "2.31":
            break
    assert coap.format_code(reply.code) == "4.13" and num == CAP // 1024
    assert backend.requests == []


async def test_block1_out_of_sequence_is_4_08(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    client, backend, _ = relay
    reply = await client.send(client.request(coap.POST, (coap.BLOCK1, Block(2, False, 5).encode()), payload=b"z"))
    assert coap.format_code(reply.code) == "4.08"
    assert backend.requests == []


async def test_block1_later_block_without_originator_refused(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    client, backend, _ = relay
    replies = await upload(client, b"w" * 1500, frm_later=b"")
    assert [coap.format_code(r.code) for r in replies] == ["2.31", "4.03"] and rsc(replies[-1]) == 4106
    replies = await upload(client, b"w" * 1500, frm_later=b"Cother")
    assert coap.format_code(replies[-1].code) == "4.03" and rsc(replies[-1]) == 4106
    assert backend.requests == []


# --- an unreachable CSE ---


async def test_unreachable_cse_answers_5_03_and_retries(backend: tuple[Backend, int]) -> None:
    gw = await start(backend[1], backend_retry=0.3)
    gw.config = dataclasses.replace(gw.config, backend_host="cse.invalid")  # RFC 6761: never resolves
    ctx = client_context()
    transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, ctx)
    client = Client(transport, inbox)  # type: ignore[arg-type]
    try:
        reply = await client.send(client.request(coap.GET), timeout=10)
        assert coap.format_code(reply.code) == "5.03" and rsc(reply) == 5103
        assert coap.decode_uint(reply.option(coap.MAX_AGE) or b"") == 1
        again = await client.send(client.request(coap.GET))  # inside backend_retry: answered at once
        assert coap.format_code(again.code) == "5.03"
        gw.config = dataclasses.replace(gw.config, backend_host="127.0.0.1")  # the CSE is back
        await asyncio.sleep(0.4)
        backend[0].body = b"back"
        ok = await client.send(client.request(coap.GET))
        assert coap.format_code(ok.code) == "2.05" and ok.payload == b"back"
    finally:
        transport.close()
        await gw.close()


async def test_cli_refuses_a_bad_max_body(tmp_path: Path) -> None:
    table = tmp_path / "psk.toml"
    table.write_text(f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\nentity = "{LIGHT1_AE}"\n')
    table.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "m2msec.cli.main", "gateway", "--psk-table", str(table), "--coap-backend",
        "127.0.0.1:5683", "--coaps-listen", "127.0.0.1:0", "--coaps-max-body", "0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--coaps-max-body must be a positive" in lines[0], lines


async def test_pending_queue_is_bounded(relay: tuple[Client, Backend, CoapsGateway]) -> None:
    from m2msec.gateway.coaps_gateway import MAX_PENDING

    client, backend, gw = relay
    assert gw.protocol is not None
    (peer,) = gw.protocol.peers.values()
    app = peer.app
    assert app is not None
    opening = asyncio.get_running_loop().create_future()
    app._task = opening  # type: ignore[attr-defined]  # the CSE-side socket is "still being opened"
    requests = [client.request(coap.GET) for _ in range(MAX_PENDING + 8)]
    for msg in requests:
        client.transport.sendto(msg.encode())
    replies = [Message.decode(await asyncio.wait_for(client.inbox.q.get(), 3)) for _ in range(8)]
    assert all(coap.format_code(r.code) == "5.03" and rsc(r) == 5103 for r in replies)
    assert {r.token for r in replies} == {m.token for m in requests[MAX_PENDING:]}  # the overflow, answered at once
    assert len(app.pending) == MAX_PENDING  # type: ignore[attr-defined]
    opening.cancel()
    app._task = None  # type: ignore[attr-defined]
    await app._open_backend()  # type: ignore[attr-defined]  # the socket opens: the queue goes to the CSE
    await asyncio.sleep(0.2)
    assert len(backend.requests) == MAX_PENDING and app.pending == []  # type: ignore[attr-defined]


async def test_blockwise_memory_is_owned_by_the_same_key_as_the_per_credential_cap(
    relay: tuple[Client, Backend, CoapsGateway],
) -> None:
    """D48's owner is D47's ``sa_key`` (one rule: PSK identity, else the certificate's fingerprint), not the SA's
    display credential, which for certificates names the issuer and serial and collides across CAs."""
    client, backend, gw = relay
    backend.body = b"ok"
    reply = await client.send(client.request(coap.GET))
    assert coap.format_code(reply.code) == "2.05"
    assert {p.owner for p in gw.budget.peers} == {"psk:" + LIGHT1_ID}



async def test_coaps_gateway_serves_on_a_given_udp_socket(backend: tuple[Backend, int]) -> None:
    """The workers' seam: a bound UDP socket made elsewhere (e.g. by a supervisor) is served as the configured one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=backend[1], port=1), make_table())
    try:
        await gw.start(sock=sock)
        assert gw.port == sock.getsockname()[1]
        transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, client_context())
        client = Client(transport, inbox)  # type: ignore[arg-type]
        backend[0].body = b"via the given socket"
        reply = await client.send(client.request(coap.GET))
        transport.close()
        assert coap.format_code(reply.code) == "2.05" and reply.payload == b"via the given socket"
    finally:
        await gw.close()
