"""RFC 7959 block-wise state machine of the coaps gateway (m2msec.gateway.coap_blockwise), without sockets:
option encoding, block size choice, bounds (bytes per peer and in total, entries, age) and message handling."""

from __future__ import annotations

import itertools

import pytest

from m2msec.gateway import coap
from m2msec.gateway.coap import CoAPFormatError, Message, MessageType
from m2msec.gateway.coap_blockwise import (
    MAX_BLOCK1_BODY,
    MAX_MESSAGE,
    MAX_UDP_PAYLOAD,
    Block,
    BlockwiseLimits,
    ByteBudget,
    PeerBlockwise,
    ToClient,
    ToCSE,
    request_key,
)

CONTENT = coap.make_code(2, 5)


def peer(limits: BlockwiseLimits | None = None, budget: ByteBudget | None = None) -> PeerBlockwise:
    limits = limits or BlockwiseLimits()
    mids = itertools.count(0x7000)
    return PeerBlockwise(limits, budget or ByteBudget(limits.max_total_bytes), lambda: next(mids))


def get(mid: int, token: bytes = b"\x01", *options: tuple[int, bytes], kind: MessageType = MessageType.CON,
        code: int = coap.GET, payload: bytes = b"") -> Message:
    return Message(kind, code, mid, token, [(coap.URI_PATH, b"cse-in")], payload).with_options(*options)


def answer(request: Message, body: bytes, *options: tuple[int, bytes]) -> Message:
    return Message(MessageType.ACK, CONTENT, request.message_id, request.token, [], body).with_options(*options)


def only(actions: list[ToClient | ToCSE]) -> Message:
    (action,) = actions
    return action.message


# --- the Block option (RFC 7959 §2.2) ---


@pytest.mark.parametrize(("block", "wire"), [
    (Block(0, False, 0), b""),  # all zero: the empty uint
    (Block(0, True, 6), b"\x0e"),  # NUM 0, M 1, SZX 6
    (Block(1, False, 6), b"\x16"),
    (Block(16, True, 2), b"\x01\x0a"),  # NUM 16 needs 12 bits
    (Block(0xFFFFF, False, 6), b"\xff\xff\xf6"),  # the largest NUM (20 bits)
])
def test_block_option_vectors(block: Block, wire: bytes) -> None:
    assert block.encode() == wire and Block.decode(wire) == block


@pytest.mark.parametrize("wire", [b"\x07", b"\x01\x02\x03\x04"])
def test_block_option_malformed(wire: bytes) -> None:
    with pytest.raises(CoAPFormatError):
        Block.decode(wire)


def test_request_key_ignores_block_and_identity_options() -> None:
    a = get(1, b"\x01", (coap.BLOCK2, Block(3, False, 6).encode()), (coap.OPTION_SA_IDENTITY, b"x"))
    b = get(2, b"\x02", (coap.SIZE2, b""))
    assert request_key(a) == request_key(b)
    assert request_key(a) != request_key(get(3, b"\x01", (coap.ONEM2M_FR, b"Cother")))


# --- block size and message layout ---


def test_block_size_shrinks_to_fit_large_options() -> None:
    p = peer()
    req = get(1, b"\x01", (coap.ONEM2M_RQI, b"r" * 255))  # 255-byte RQI: 1024 + options exceed MAX_MESSAGE
    assert isinstance(only(p.from_client(req, 0.0)), Message)
    first = only(p.from_cse(answer(req, b"b" * 3000, (coap.ONEM2M_RQI, b"r" * 255)), 0.0))
    assert Block.decode(first.option(coap.BLOCK2) or b"") == Block(0, True, 5)
    assert len(first.encode()) <= MAX_MESSAGE and first.payload == b"b" * 512
    assert coap.decode_uint(first.option(coap.SIZE2) or b"") == 3000


def test_whole_answer_when_it_fits() -> None:
    p = peer()
    req = get(1)
    only(p.from_client(req, 0.0))
    reply = only(p.from_cse(answer(req, b"a" * 1000), 0.0))
    assert reply.payload == b"a" * 1000 and reply.option(coap.BLOCK2) is None and p.stored == {}


def test_retransmission_while_collecting_is_absorbed() -> None:
    p = peer()
    req = get(1)
    assert isinstance(p.from_client(req, 0.0)[0], ToCSE)
    assert p.from_client(req, 0.5) == []  # same token, Message ID and type
    follow = only(p.from_cse(answer(req, b"c" * 1024, (coap.BLOCK2, Block(0, True, 6).encode())), 0.6))
    assert follow.type is MessageType.CON and follow.message_id == 0x7000
    assert Block.decode(follow.option(coap.BLOCK2) or b"") == Block(1, False, 6)
    assert p.from_client(req, 0.7) == []
    separate = Message(MessageType.CON, CONTENT, 0x5555, req.token, [(coap.BLOCK2, Block(1, False, 6).encode())],
                       b"d" * 10)
    ack, reply = p.from_cse(separate, 0.8)
    assert isinstance(ack, ToCSE) and ack.message == Message(MessageType.ACK, coap.EMPTY, 0x5555)
    assert isinstance(reply, ToClient)
    assert reply.message.type is MessageType.ACK and reply.message.message_id == 1  # the client's CON
    assert reply.message.payload == b"c" * 1024 + b"d" * 10 and reply.message.option(coap.BLOCK2) is None  # fits


# --- bounds ---


def test_stored_answers_expire() -> None:
    p = peer(BlockwiseLimits(lifetime=10.0))
    req = get(1)
    p.from_client(req, 0.0)
    p.from_cse(answer(req, b"e" * 2000), 0.0)
    assert p.held == 2000 and p.budget.used == 2000
    second = get(2, b"\x01", (coap.BLOCK2, Block(1, False, 6).encode()))
    assert isinstance(only(p.from_client(second, 9.0)), Message)
    assert isinstance(p.from_client(get(3, b"\x01", (coap.BLOCK2, Block(1, False, 6).encode())), 11.0)[0], ToCSE)
    assert p.stored == {} and p.budget.used == 0  # expired: the CSE is asked again (stateless fallback)


def test_entries_per_peer_are_bounded() -> None:
    p = peer(BlockwiseLimits(max_entries=2))
    for i in range(4):
        req = get(i, bytes([i]), (coap.URI_QUERY, bytes([i])))
        p.from_client(req, float(i))
        p.from_cse(answer(req, b"f" * 1500), float(i))
    assert len(p.stored) == 2 and p.held == 3000 and p.budget.used == 3000
    p.close()
    assert p.budget.used == 0 and p.held == 0


def test_total_budget_is_shared_between_peers() -> None:
    budget = ByteBudget(4000)
    a, b = peer(budget=budget), peer(budget=budget)
    for p in (a, b):
        req = get(1)
        p.from_client(req, 0.0)
        p.from_cse(answer(req, b"g" * 2500), 0.0)
    assert a.held == 2500 and b.held == 0 and budget.used == 2500  # b's copy did not fit: not kept
    blk = Block(0, True, 6).encode()
    up = get(5, b"\x05", (coap.BLOCK1, blk), code=coap.POST, payload=b"h" * 1024)
    assert coap.format_code(only(b.from_client(up, 0.0)).code) == "2.31"
    second = get(6, b"\x05", (coap.BLOCK1, Block(1, True, 6).encode()), code=coap.POST, payload=b"h" * 1024)
    reply = only(b.from_client(second, 0.0))
    assert coap.format_code(reply.code) == "5.03" and reply.option(coap.MAX_AGE) == b"\x05"
    assert budget.used == 2500 and b.held == 0


def upload_block(p: PeerBlockwise, token: bytes, num: int, more: bool = True, size: int = 1024) -> Message:
    msg = get(0x100 + num, token, (coap.BLOCK1, Block(num, more, 6).encode()), code=coap.POST, payload=b"u" * size)
    return only(p.from_client(msg, float(num)))


def test_full_budget_sheds_the_largest_other_owner_first() -> None:
    budget = ByteBudget(4096)
    hog, hog2, other = peer(budget=budget), peer(budget=budget), peer(budget=budget)
    hog.owner = hog2.owner = "light1@in.provider.com"  # one client, two DTLS sessions
    other.owner = "light2@in.provider.com"
    for num in range(2):
        assert coap.format_code(upload_block(hog, b"a", num).code) == "2.31"
        assert coap.format_code(upload_block(hog2, b"b", num).code) == "2.31"
    assert budget.used == 4096 and budget.held_by(hog.owner) == 4096
    reply = upload_block(other, b"c", 0)  # D48: the other client gets in, the hog's oldest upload goes
    assert coap.format_code(reply.code) == "2.31" and other.held == 1024
    assert budget.used == 4096 - 2048 + 1024 and (hog.uploads == {} or hog2.uploads == {})
    shed = hog if hog.uploads == {} else hog2
    assert coap.format_code(upload_block(shed, b"a" if shed is hog else b"b", 2).code) == "4.08"


def test_full_budget_refuses_the_owner_holding_most() -> None:
    budget = ByteBudget(2048)
    first, second = peer(budget=budget), peer(budget=budget)
    first.owner, second.owner = "light1@in.provider.com", "light2@in.provider.com"
    for num in range(2):
        upload_block(first, b"a", num)
    assert coap.format_code(upload_block(second, b"b", 0).code) == "2.31"  # takes from light 1
    assert coap.format_code(upload_block(second, b"b", 1).code) == "2.31"  # 1024 each: even
    reply = upload_block(second, b"b", 2)  # light 2 would hold more than light 1: refused, nothing shed
    assert coap.format_code(reply.code) == "5.03" and budget.used <= 2048


def test_block1_body_is_capped_at_one_datagram_to_the_cse() -> None:
    assert MAX_BLOCK1_BODY < MAX_UDP_PAYLOAD
    p = peer()  # max_body 1 MiB: Block1 bodies are still capped at one datagram (D49)
    assert p.max_upload == MAX_BLOCK1_BODY
    last = MAX_BLOCK1_BODY // 1024
    for num in range(last):
        assert coap.format_code(upload_block(p, b"a", num).code) == "2.31"
    reply = upload_block(p, b"a", last)
    assert coap.format_code(reply.code) == "4.13"
    assert coap.decode_uint(reply.option(coap.SIZE1) or b"") == MAX_BLOCK1_BODY and p.held == 0
    again = upload_block(p, b"a", last + 1, more=False)  # the client carries on: 4.13 again, not 4.08
    assert coap.format_code(again.code) == "4.13"
    size1 = get(9, b"b", (coap.BLOCK1, Block(0, True, 6).encode()), (coap.SIZE1, coap.encode_uint(70 * 1024)),
                code=coap.POST, payload=b"u" * 1024)
    assert coap.format_code(only(p.from_client(size1, 0.0)).code) == "4.13"  # announced too large at once


def test_upload_per_peer_bytes() -> None:
    p = peer(BlockwiseLimits(max_peer_bytes=1500))
    first = get(1, b"\x01", (coap.BLOCK1, Block(0, True, 6).encode()), code=coap.POST, payload=b"i" * 1024)
    assert coap.format_code(only(p.from_client(first, 0.0)).code) == "2.31"
    second = get(2, b"\x01", (coap.BLOCK1, Block(1, True, 6).encode()), code=coap.POST, payload=b"i" * 1024)
    assert coap.format_code(only(p.from_client(second, 0.0)).code) == "5.03"
    assert p.uploads == {} and p.held == 0


def test_upload_expires_then_4_08() -> None:
    p = peer(BlockwiseLimits(lifetime=5.0))
    first = get(1, b"\x01", (coap.BLOCK1, Block(0, True, 4).encode()), code=coap.POST, payload=b"j" * 256)
    p.from_client(first, 0.0)
    late = get(2, b"\x01", (coap.BLOCK1, Block(1, False, 4).encode()), code=coap.POST, payload=b"j")
    assert coap.format_code(only(p.from_client(late, 6.0)).code) == "4.08" and p.held == 0


def test_upload_block_retransmission_is_acknowledged_again() -> None:
    p = peer()
    first = get(1, b"\x01", (coap.BLOCK1, Block(0, True, 4).encode()), code=coap.POST, payload=b"k" * 256)
    p.from_client(first, 0.0)
    again = only(p.from_client(first, 0.1))
    assert coap.format_code(again.code) == "2.31" and p.held == 256  # the restart keeps one copy


def test_upload_non_gets_non_continue() -> None:
    p = peer()
    first = get(1, b"\x01", (coap.BLOCK1, Block(0, True, 4).encode()), code=coap.POST, payload=b"l" * 256,
                kind=MessageType.NON)
    reply = only(p.from_client(first, 0.0))
    assert reply.type is MessageType.NON and reply.message_id == 0x7000 and reply.token == b"\x01"
    assert Block.decode(reply.option(coap.BLOCK1) or b"") == Block(0, True, 4)


def test_malformed_block_option_is_4_02() -> None:
    reply = only(peer().from_client(get(1, b"\x01", (coap.BLOCK2, b"\x07")), 0.0))
    assert coap.format_code(reply.code) == "4.02" and b"SZX 7" in reply.payload


def test_size2_asked_is_echoed_in_every_block() -> None:
    p = peer()
    req = get(1, b"\x01", (coap.SIZE2, b""))  # RFC 7959 §4: Size2 0 in a request asks for the size
    p.from_client(req, 0.0)
    first = only(p.from_cse(answer(req, b"s" * 2500), 0.0))
    nxt = only(p.from_client(get(2, b"\x01", (coap.SIZE2, b""), (coap.BLOCK2, Block(1, False, 6).encode())), 0.0))
    assert coap.decode_uint(first.option(coap.SIZE2) or b"") == coap.decode_uint(nxt.option(coap.SIZE2) or b"") == 2500
    assert first.option(4) == nxt.option(4) is not None  # the gateway's ETag, the same for both blocks


# --- D52: a later Block2 request of a POST is never repeated to the CSE as a new POST ---


def test_expired_stored_post_answer_gets_4_08_not_a_second_post() -> None:
    p = peer(BlockwiseLimits(lifetime=10.0))
    post = get(1, b"\x01", code=coap.POST, payload=b"{}")
    assert isinstance(p.from_client(post, 0.0)[0], ToCSE)
    first = only(p.from_cse(answer(post, b"c" * 3000), 0.0))  # the CSE answered whole: the gateway blocks it
    assert Block.decode(first.option(coap.BLOCK2) or b"").more and p.stored
    again = get(2, b"\x02", (coap.BLOCK2, Block(1, False, 6).encode()), code=coap.POST, payload=b"{}")
    reply = only(p.from_client(again, 11.0))  # the stored answer expired
    assert coap.format_code(reply.code) == "4.08" and b"not repeated" in reply.payload


def test_post_answered_block_wise_by_the_cse_still_fetches_its_blocks_from_the_cse() -> None:
    p = peer()
    post = get(1, b"\x01", code=coap.POST, payload=b"{}")
    p.from_client(post, 0.0)
    block0 = only(p.from_cse(answer(post, b"c" * 1024, (coap.BLOCK2, Block(0, True, 6).encode())), 0.0))
    assert block0.option(coap.BLOCK2) == Block(0, True, 6).encode()  # relayed as the CSE sent it
    again = get(2, b"\x02", (coap.BLOCK2, Block(1, False, 6).encode()), code=coap.POST, payload=b"{}")
    (to_cse,) = p.from_client(again, 1.0)
    assert isinstance(to_cse, ToCSE) and to_cse.message.option(coap.BLOCK2) == Block(1, False, 6).encode()
