"""RFC 7959 block-wise transfer between the coaps gateway and its DTLS clients (pure: no sockets, no clock).

One DTLS record is one datagram of at most 1200 bytes (decision D19), so a CoAP message to a DTLS client must
stay under :data:`MAX_MESSAGE`. The CSE sits on loopback, where datagrams can be larger. :class:`PeerBlockwise`
is one peer's state machine between the two:

* **Block2 (responses).** Each request the gateway forwards is remembered by token. When the CSE's answer does
  not fit one client datagram (or the client asked for blocks, §2.4 early negotiation), the whole body is kept
  per (peer, request key) and the client gets block 0 with Block2 and Size2; later block requests are answered
  by the gateway from that copy (piggy-backed ACK for CON, NON with a new Message ID for NON). The block size
  is the largest SZX, at most the client's, whose message fits :data:`MAX_MESSAGE`; a block number asked at a
  larger SZX is converted (§2.4). When the CSE itself answers with Block2 (ACME does for bodies over 1024
  bytes), the gateway fetches the remaining blocks of a GET/FETCH from the CSE first, with the same token.
  A later block of a stored answer that is gone (shed, expired) is fetched again for a GET/FETCH; for any other
  method it is answered 4.08 (:data:`UNSTORED_FOLLOW_UP`, D52), unless the CSE answers that request block-wise.
* **Block1 (requests).** Blocks are reassembled in order and answered 2.31 Continue; a gap, an unknown transfer
  or changed request options give 4.08 Request Entity Incomplete; a body over ``max_body`` 4.13 Request Entity
  Too Large with Size1. The complete request goes to the CSE in one datagram, so the body is also capped at
  :data:`MAX_BLOCK1_BODY` (decision D49); its answer echoes the last Block1.

The caller runs the oneM2M checks (:func:`m2msec.gateway.coap.decide`) on every block before handing a request
here, so the originator check applies to the first block and a later block with other identity options is
refused (4106) or, with different but valid options, matches no transfer (4.08). All state is bounded in
entries, bytes per peer, bytes in total (:class:`ByteBudget`, shared fairly per client credential, D48) and age
(decision D24).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from m2msec.gateway.blockwise_budget import ByteBudget
from m2msec.gateway.coap import (
    BLOCK1,
    BLOCK2,
    EMPTY,
    IDENTITY_OPTIONS,
    MAX_AGE,
    SIZE1,
    SIZE2,
    CoAPFormatError,
    Message,
    MessageType,
    decode_uint,
    encode_uint,
    make_code,
)
from m2msec.tls.engine import DEFAULT_DTLS_MTU

__all__ = [
    "CSE_HEADER_ROOM", "ETAG", "FETCH", "MAX_BLOCK1_BODY", "MAX_MESSAGE", "MAX_SZX", "MAX_UDP_PAYLOAD",
    "UNSTORED_FOLLOW_UP", "Action", "Block", "BlockwiseLimits", "ByteBudget", "PeerBlockwise", "ToCSE", "ToClient",
    "request_key",
]

#: Largest CoAP message sent to a DTLS client: the D19 datagram minus the worst DTLS 1.2 record overhead of the
#: suites m2msec offers (13-byte header + 16-byte IV + 48-byte SHA-384 MAC + 16 bytes of CBC padding = 93; the
#: AEAD suites of the oneM2M DTLS profiles need 37). Decision D24.
MAX_MESSAGE = DEFAULT_DTLS_MTU - 96
#: RFC 7959 §2.2: SZX 6 is 1024 bytes, the largest block (7 is BERT, reserved outside TCP)
MAX_SZX = 6
#: the largest UDP payload over IPv4 (65,535 - 8 UDP - 20 IP header bytes): one datagram to the CSE
MAX_UDP_PAYLOAD = 65507
#: room kept in that datagram for the CoAP header, token and options of a reassembled request (its URI, the
#: oneM2M options and the identity options the gateway adds); the body gets the rest
CSE_HEADER_ROOM = 4096
#: largest request body reassembled from Block1, whatever ``max_body`` says: the whole request goes to the CSE
#: in one datagram (decision D49). Above it the client gets 4.13 with this Size1.
MAX_BLOCK1_BODY = MAX_UDP_PAYLOAD - CSE_HEADER_ROOM
FETCH = make_code(0, 5)  # RFC 8132
_FOLLOW_UP_METHODS = frozenset({make_code(0, 1), FETCH})  # safe to repeat for the CSE's next Block2
_BLOCK_OPTIONS = frozenset({BLOCK1, BLOCK2, SIZE1, SIZE2})
ETAG = 4  # RFC 7252 §5.10.6
_CONTINUE, _BAD_OPTION = make_code(2, 31), make_code(4, 2)
_INCOMPLETE, _TOO_LARGE = make_code(4, 8), make_code(4, 13)
_BAD_GATEWAY, _UNAVAILABLE = make_code(5, 2), make_code(5, 3)
#: the gateway's answer to a later Block2 request (NUM > 0) of a POST/PUT/DELETE... whose answer it no longer holds
#: (shed, expired) and that the CSE did not answer block-wise itself: 4.08 Request Entity Incomplete. Sent to the
#: CSE, the block request would be executed as a new request (a second CREATE). Decision D52.
UNSTORED_FOLLOW_UP = _INCOMPLETE


@dataclass(frozen=True)
class BlockwiseLimits:
    """Decision D24: bounds of the block-wise state (the gateway's ``--coaps-max-body`` sets ``max_body``)."""

    #: largest request body reassembled from Block1 (4.13 above) and largest response body kept for Block2
    max_body: int = 1024 * 1024
    #: bytes one peer may hold in reassembly, fetched and stored bodies together
    max_peer_bytes: int = 2 * 1024 * 1024
    #: bytes all peers may hold together
    max_total_bytes: int = 64 * 1024 * 1024
    #: transfers of each kind (uploads, stored responses, requests awaiting the CSE) per peer
    max_entries: int = 16
    #: seconds a transfer or a stored response lives after it started
    lifetime: float = 60.0

    @classmethod
    def for_max_body(cls, max_body: int) -> BlockwiseLimits:
        """The defaults with ``max_body`` (a peer may hold two such bodies at once)."""
        return cls(max_body=max_body, max_peer_bytes=max(cls.max_peer_bytes, 2 * max_body),
                   max_total_bytes=max(cls.max_total_bytes, 2 * max_body))


@dataclass(frozen=True)
class Block:
    """A Block1/Block2 option value (RFC 7959 §2.2): block number, More flag, size exponent."""

    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        return 1 << (self.szx + 4)

    @property
    def offset(self) -> int:
        return self.num * self.size

    def encode(self) -> bytes:
        return encode_uint(self.num << 4 | int(self.more) << 3 | self.szx)

    @classmethod
    def decode(cls, value: bytes) -> Block:
        if len(value) > 3:
            raise CoAPFormatError("Block option longer than 3 bytes")
        raw = decode_uint(value)
        if raw & 7 == 7:
            raise CoAPFormatError("Block option with SZX 7 (BERT is for CoAP over TCP)")
        return cls(raw >> 4, bool(raw & 8), raw & 7)


def _block(msg: Message, number: int) -> Block | None:
    value = msg.option(number)
    return None if value is None else Block.decode(value)


def request_key(msg: Message) -> tuple[int, tuple[tuple[int, bytes], ...]]:
    """What identifies one block-wise request across its blocks: the method and every option except the block
    options and the gateway's identity options (RFC 7959 §2.4, the options a client repeats in each block)."""
    return msg.code, tuple(o for o in msg.options if o[0] not in _BLOCK_OPTIONS and o[0] not in IDENTITY_OPTIONS)


Key = tuple[int, tuple[tuple[int, bytes], ...]]


@dataclass(frozen=True)
class ToClient:
    """Send ``message`` to the DTLS client."""

    message: Message


@dataclass(frozen=True)
class ToCSE:
    """Send ``message`` to the CSE (a request gets the SA's identity options on the way)."""

    message: Message


Action = ToClient | ToCSE


@dataclass
class _Exchange:
    """A request forwarded to the CSE, awaiting its answer (by token)."""

    request: Message
    key: Key
    block2: Block | None  # what the client asked for, if anything
    block1: Block | None  # the last Block1 of a reassembled request, echoed in the answer
    started: float
    first: Message | None = None  # the CSE's first response when it answered block-wise
    body: bytearray = field(default_factory=bytearray)
    follow_mid: int | None = None


@dataclass
class _Upload:
    body: bytearray
    started: float


@dataclass
class _Stored:
    response: Message  # code and options (no payload, no block options)
    body: bytes
    started: float


class PeerBlockwise:
    """One DTLS peer's block-wise state; ``now`` is the caller's monotonic clock, ``new_mid`` its Message IDs."""

    def __init__(self, limits: BlockwiseLimits, budget: ByteBudget, new_mid: Callable[[], int],
                 owner: str = "") -> None:
        self.limits = limits
        self.budget = budget
        self.owner = owner  # whose share this peer's bytes count against (the SA's credential, D48)
        budget.peers.add(self)
        self.too_large: dict[Key, float] = {}  # Block1 transfers refused 4.13: later blocks get 4.13 again
        self.relayed: dict[Key, float] = {}  # POST/PUT/DELETE... the CSE answers block-wise itself (D52)
        self.new_mid = new_mid
        self.exchanges: dict[bytes, _Exchange] = {}
        self.uploads: dict[Key, _Upload] = {}
        self.stored: dict[Key, _Stored] = {}
        self.held = 0  # bytes of this peer in the budget

    # --- bookkeeping ---

    def _take(self, size: int) -> bool:
        if self.held + size > self.limits.max_peer_bytes:
            self._evict_oldest()
            if self.held + size > self.limits.max_peer_bytes:
                return False
        if not self.budget.take(size, self):
            return False
        self.held += size
        return True

    @property
    def max_upload(self) -> int:
        """The largest Block1 body accepted: ``max_body``, at most what one datagram to the CSE holds (D49)."""
        return min(self.limits.max_body, MAX_BLOCK1_BODY)

    def shed(self) -> bool:
        """Drop this peer's oldest upload or stored response (another owner needs the memory, D48); False if none."""
        uploads = [k for k, up in self.uploads.items() if up.body]
        stored = [k for k, st in self.stored.items() if st.body]
        oldest_up = min(uploads, key=lambda k: self.uploads[k].started, default=None)
        oldest_st = min(stored, key=lambda k: self.stored[k].started, default=None)
        if oldest_st is not None and (oldest_up is None
                                      or self.stored[oldest_st].started <= self.uploads[oldest_up].started):
            self._give(len(self.stored.pop(oldest_st).body))  # GET/FETCH: fetched again; else 4.08 (D52)
            return True
        if oldest_up is not None:
            self._give(len(self.uploads.pop(oldest_up).body))  # its next block gets 4.08
            return True
        return False

    def _give(self, size: int) -> None:
        self.budget.give(size)
        self.held = max(0, self.held - size)

    def _evict_oldest(self) -> None:
        """Drop the oldest stored response (they can be fetched again) to make room."""
        if self.stored:
            key = min(self.stored, key=lambda k: self.stored[k].started)
            self._give(len(self.stored.pop(key).body))

    def expire(self, now: float) -> None:
        cutoff = now - self.limits.lifetime
        for token in [t for t, ex in self.exchanges.items() if ex.started < cutoff]:
            self._give(len(self.exchanges.pop(token).body))
        for key in [k for k, up in self.uploads.items() if up.started < cutoff]:
            self._give(len(self.uploads.pop(key).body))
        for key in [k for k, st in self.stored.items() if st.started < cutoff]:
            self._give(len(self.stored.pop(key).body))
        for seen in (self.too_large, self.relayed):
            for key in [k for k, started in seen.items() if started < cutoff]:
                del seen[key]

    def close(self) -> None:
        """Release everything (the peer went away)."""
        self._give(self.held)
        self.budget.peers.discard(self)
        self.too_large.clear()
        self.relayed.clear()
        self.exchanges.clear()
        self.uploads.clear()
        self.stored.clear()

    # --- answers the gateway makes itself ---

    def _reply(self, request: Message, code: int, options: list[tuple[int, bytes]], payload: bytes = b"") -> Message:
        """Piggy-backed ACK for CON (RFC 7252 §5.2.1), NON with a new Message ID for NON (§5.2.3)."""
        if request.type is MessageType.CON:
            kind, mid = MessageType.ACK, request.message_id
        else:
            kind, mid = MessageType.NON, self.new_mid()
        return Message(kind, code, mid, request.token, sorted(options, key=lambda o: o[0]), payload)

    def _error(self, request: Message, code: int, reason: str, options: list[tuple[int, bytes]] | None = None
               ) -> list[Action]:
        return [ToClient(self._reply(request, code, options or [], reason.encode("utf-8")[:128]))]

    # --- from the client ---

    def from_client(self, msg: Message, now: float) -> list[Action]:
        """An accepted request from the client (already checked by :func:`m2msec.gateway.coap.decide`)."""
        self.expire(now)
        pending = self.exchanges.get(msg.token)
        if pending is not None and pending.request.message_id == msg.message_id and pending.request.type is msg.type:
            return []  # a retransmission while the CSE's answer is being collected: that answer will do
        try:
            block1, block2 = _block(msg, BLOCK1), _block(msg, BLOCK2)
            size1 = msg.option(SIZE1)
        except CoAPFormatError as exc:
            return self._error(msg, _BAD_OPTION, str(exc))  # RFC 7252 §5.4.1: a malformed critical option
        key = request_key(msg)
        echo: Block | None = None
        if block1 is not None:
            if size1 is not None and decode_uint(size1) > self.max_upload:
                return self._too_large(msg)
            if block1.more or block1.num > 0:
                done = self._upload(msg, key, block1, now)
                if isinstance(done, list):
                    return done
                msg = replace(msg, payload=done)
            msg, echo = msg.without_options((BLOCK1, SIZE1)), block1
        if block2 is not None and block2.num > 0:
            stored = self.stored.get(key)
            if stored is not None:
                return [ToClient(self._serve(msg, stored.response, stored.body, block2))]
            if msg.code not in _FOLLOW_UP_METHODS and key not in self.relayed:  # never repeat it to the CSE (D52)
                return self._error(msg, UNSTORED_FOLLOW_UP, "block-wise answer no longer held: request not repeated")
        return self._forward(msg, key, block2, echo, now)

    def _too_large(self, msg: Message) -> list[Action]:
        return self._error(msg, _TOO_LARGE, f"request body over {self.max_upload} bytes",
                           [(SIZE1, encode_uint(self.max_upload))])

    def too_large_answer(self, msg: Message) -> list[Action]:
        """4.13 with Size1 for a request that does not fit one datagram to the CSE (CON: piggy-backed)."""
        return self._too_large(msg)

    def _refuse_too_large(self, msg: Message, key: Key, now: float) -> list[Action]:
        """4.13, and remember the transfer so that its next blocks get 4.13 too (not 4.08)."""
        self._remember(self.too_large, key, now)
        return self._too_large(msg)

    def _remember(self, seen: dict[Key, float], key: Key, now: float) -> None:
        seen.pop(key, None)
        if len(seen) >= self.limits.max_entries:
            del seen[min(seen, key=lambda k: seen[k])]
        seen[key] = now

    def _upload(self, msg: Message, key: Key, block: Block, now: float) -> list[Action] | bytes:
        """Add one Block1 block; the whole body once the last block is in, else the answer to send."""
        upload = self.uploads.get(key)
        if block.num == 0:
            if upload is not None:  # the client restarted the transfer
                self._give(len(self.uploads.pop(key).body))
            if len(self.uploads) >= self.limits.max_entries:
                oldest = min(self.uploads, key=lambda k: self.uploads[k].started)
                self._give(len(self.uploads.pop(oldest).body))
            upload = self.uploads[key] = _Upload(bytearray(), now)
        elif upload is None and key in self.too_large:
            return self._too_large(msg)
        elif upload is None or block.offset != len(upload.body):
            if upload is not None and block.offset + len(msg.payload) == len(upload.body):
                return [ToClient(self._reply(msg, _CONTINUE, [(BLOCK1, block.encode())]))]  # a retransmission
            return self._error(msg, _INCOMPLETE, "block-wise request: block out of sequence or unknown transfer")
        if block.more and len(msg.payload) != block.size:
            self._give(len(self.uploads.pop(key).body))
            return self._error(msg, make_code(4, 0), "Block1 block with M set is not of the block size")
        if len(upload.body) + len(msg.payload) > self.max_upload:
            self._give(len(self.uploads.pop(key).body))
            return self._refuse_too_large(msg, key, now)
        if not self._take(len(msg.payload)):
            self._give(len(self.uploads.pop(key).body))
            return self._error(msg, _UNAVAILABLE, "block-wise buffers full", [(MAX_AGE, encode_uint(5))])
        upload.body += msg.payload
        if block.more:
            return [ToClient(self._reply(msg, _CONTINUE, [(BLOCK1, block.encode())]))]
        body = bytes(self.uploads.pop(key).body)
        self._give(len(body))
        return body

    def _forward(self, msg: Message, key: Key, block2: Block | None, echo: Block | None, now: float) -> list[Action]:
        old = self.exchanges.pop(msg.token, None)
        if old is not None:
            self._give(len(old.body))
        if len(self.exchanges) >= self.limits.max_entries:
            oldest = min(self.exchanges, key=lambda t: self.exchanges[t].started)
            self._give(len(self.exchanges.pop(oldest).body))
        if block2 is not None and block2.num > 0 and msg.code not in _FOLLOW_UP_METHODS:
            forwarded = msg  # the next block of a CSE's block-wise answer to a POST/PUT/DELETE (see from_cse, D52)
            block2 = None
        else:
            forwarded = msg.without_options((BLOCK2,))
        self.exchanges[msg.token] = _Exchange(forwarded, key, block2, echo, now)
        return [ToCSE(forwarded)]

    # --- from the CSE ---

    def from_cse(self, msg: Message, now: float) -> list[Action]:
        """A message from the CSE: relayed, consumed (a block of an answer being fetched) or re-blocked."""
        self.expire(now)
        ex = self.exchanges.get(msg.token) if msg.code >> 5 in (2, 4, 5) else None
        if ex is None:
            return [ToClient(msg)]  # Empty, RST, requests (notifications), answers the gateway did not track
        expected = ex.request.message_id if ex.follow_mid is None else ex.follow_mid
        if msg.type is MessageType.ACK and msg.message_id != expected:
            return [ToClient(msg)] if ex.follow_mid is None else []
        actions: list[Action] = []
        if ex.follow_mid is not None and msg.type is MessageType.CON:
            actions.append(ToCSE(Message(MessageType.ACK, EMPTY, msg.message_id)))
        try:
            block2 = _block(msg, BLOCK2)
        except CoAPFormatError:
            block2 = None
        if block2 is None or not (block2.more or block2.num > 0) or msg.code >> 5 != 2:
            del self.exchanges[msg.token]
            self._give(len(ex.body))
            return actions + self._answer(ex, msg, msg.payload, now)
        if ex.request.code not in _FOLLOW_UP_METHODS:  # repeating it could repeat its effect: relay the CSE's
            del self.exchanges[msg.token]  # blocks as they are; the client's next Block2 requests go to the CSE
            self._give(len(ex.body))
            self._remember(self.relayed, ex.key, now)
            return [*actions, ToClient(msg)]
        # the CSE answers a GET/FETCH block-wise itself: collect its blocks first
        if block2.offset != len(ex.body) or len(ex.body) + len(msg.payload) > self.limits.max_body \
                or not self._take(len(msg.payload)):
            del self.exchanges[msg.token]
            self._give(len(ex.body))
            return actions + self._error(ex.request, _BAD_GATEWAY, "the CSE's block-wise answer cannot be relayed")
        ex.body += msg.payload
        if ex.first is None:
            ex.first = msg
        if block2.more:
            ex.follow_mid = self.new_mid()
            follow = Message(MessageType.CON, ex.request.code, ex.follow_mid, ex.request.token,
                             ex.request.options, b"").with_options((BLOCK2, Block(block2.num + 1, False,
                                                                                  block2.szx).encode()))
            return [*actions, ToCSE(follow)]
        del self.exchanges[msg.token]
        self._give(len(ex.body))
        return actions + self._answer(ex, ex.first, bytes(ex.body), now)

    def _answer(self, ex: _Exchange, first: Message, body: bytes, now: float) -> list[Action]:
        """The CSE's complete answer to ``ex``: whole when it fits, else stored and served block by block."""
        options = [o for o in first.options if o[0] not in _BLOCK_OPTIONS]
        if ex.block1 is not None:
            options.append((BLOCK1, Block(ex.block1.num, False, ex.block1.szx).encode()))
        if first.type is MessageType.ACK or ex.follow_mid is not None:
            kind = MessageType.ACK if ex.request.type is MessageType.CON else MessageType.NON
            mid = ex.request.message_id if kind is MessageType.ACK else self.new_mid()
        else:
            kind, mid = first.type, first.message_id  # a separate response keeps the CSE's type and Message ID
        whole = Message(kind, first.code, mid, ex.request.token, sorted(options, key=lambda o: o[0]), body)
        if ex.block2 is None and len(whole.encode()) <= MAX_MESSAGE:
            return [ToClient(whole)]
        template = replace(whole, payload=b"")
        if template.option(ETAG) is None:  # RFC 7959 §2.4: lets the client tell that blocks belong together
            template = template.with_options((ETAG, hashlib.sha256(body).digest()[:8]))
        if len(body) > self.limits.max_body:
            return self._error(ex.request, _BAD_GATEWAY, f"the CSE's answer is over {self.limits.max_body} bytes")
        asked = ex.block2 or Block(0, False, MAX_SZX)
        reply = self._serve(ex.request, template, body, asked, kind=kind, mid=mid)
        served = _block(reply, BLOCK2)
        if served is not None and served.more:
            self._store(ex.key, _Stored(template, body, now))
        return [ToClient(reply)]

    def _store(self, key: Key, entry: _Stored) -> None:
        old = self.stored.pop(key, None)
        if old is not None:
            self._give(len(old.body))
        while len(self.stored) >= self.limits.max_entries:
            self._evict_oldest()
        if self._take(len(entry.body)):
            self.stored[key] = entry  # else GET/FETCH blocks are fetched again (RFC 7959 §2.4), others get 4.08 (D52)

    def _serve(self, request: Message, template: Message, body: bytes, asked: Block, *,
               kind: MessageType | None = None, mid: int | None = None) -> Message:
        """Block ``asked`` of ``body`` in the largest SZX (at most the one asked for) that fits MAX_MESSAGE."""
        if kind is None or mid is None:
            base = self._reply(request, template.code, template.options)
        else:
            base = replace(template, type=kind, message_id=mid, token=request.token)
        if asked.offset >= len(body) and asked.num > 0:  # no such block: the option value cannot be honoured
            return replace(base, code=_BAD_OPTION, options=[], payload=b"Block2 beyond the end of the body")
        for szx in range(min(asked.szx, MAX_SZX), -1, -1):
            size = 1 << (szx + 4)
            num = asked.offset // size
            chunk = body[num * size:(num + 1) * size]
            block = Block(num, (num + 1) * size < len(body), szx)
            extra = [(BLOCK2, block.encode())]
            if num == 0 or request.option(SIZE2) is not None:
                extra.append((SIZE2, encode_uint(len(body))))
            reply = replace(base, payload=chunk).with_options(*extra)
            if len(reply.encode()) <= MAX_MESSAGE:
                return reply
        return replace(base, code=make_code(5, 0), options=[], payload=b"response options too large for a block")
