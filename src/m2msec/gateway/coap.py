"""CoAP messages and relay rules for the gateway's oneM2M CoAP binding (pure: no sockets, no asyncio).

This module owns

* the CoAP message format of RFC 7252 §3 (4-byte header, 0-8 byte token, delta-encoded options with the 13/14
  extended forms, 0xFF payload marker) and the message types of §4, decoded strictly and encoded canonically
  (the option nibbles admit one encoding per value, so ``Message.decode(b).encode() == b``);
* the oneM2M option numbers of TS-0008 V3.9.0 Table 6.2.2.4.0-1 and its Response Status Code -> CoAP Response
  Code mapping (Table 6.2.4-1);
* the rules Entity B (TS-0003 §7.2.1) applies to each CoAP message after DTLS: a request whose ``From``
  (oneM2M-FR, TS-0008 §6.2.2.4.1) is not the identity bound to the security association is answered by the
  gateway with 4106 ORIGINATOR_NOT_AUTHENTICATED (4.03) and not forwarded (:func:`decide`, :func:`refusal`);
  an accepted request is forwarded with the gateway's identity options, the CoAP counterpart of
  :data:`m2msec.gateway.rules.IDENTITY_HEADERS`, replacing any the client sent (:func:`prepare_forward`);
  whatever comes back from the CSE loses those options before it reaches the client (:func:`prepare_response`).

DTLS, sockets, Message-ID allocation, deduplication and retransmission (RFC 7252 §4) belong to the caller.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from m2msec.errors import BadRequest, M2MSecError, OneM2MError
from m2msec.gateway.registration import AECreate, authorize, coap_ae_create
from m2msec.gateway.rules import SecurityAssociation, UnboundPolicy, identity_fields

if TYPE_CHECKING:
    from m2msec.gateway.registrar import Registrar

__all__ = [
    "BLOCK1", "BLOCK2", "DELETE", "DROPPED_CODE_CLASSES", "EMPTY", "GET", "IDENTITY_OPTIONS",
    "KNOWN_CRITICAL_OPTIONS", "MAX_AGE", "NON_REPEATABLE_OPTIONS", "ONEM2M_FR",
    "ONEM2M_RQI", "ONEM2M_RSC", "ONEM2M_RVI", "ONEM2M_TY", "OPTION_CREDENTIAL_ID", "OPTION_PSK_IDENTITY",
    "OPTION_SA_IDENTITY", "POST", "PROXY_OPTIONS", "PUT", "RSC_TO_COAP",
    "SIZE1", "SIZE2", "UNREACHABLE_CODE", "URI_PATH",
    "CoAPFormatError", "Decision", "Forward", "Message", "MessageType", "Pass", "Refuse", "check_repeats",
    "coap_code_for", "created_aei", "decide", "decode_uint", "encode_uint", "format_code", "is_empty", "is_request",
    "make_code", "originator", "prepare_forward", "prepare_response", "refusal", "reset", "split_code",
]


class CoAPFormatError(M2MSecError):
    """Not a well-formed CoAP message (RFC 7252 §3), not encodable, or a malformed oneM2M option in it."""


class MessageType(enum.IntEnum):
    """RFC 7252 §3 T field, §4.2-4.3."""

    CON = 0
    NON = 1
    ACK = 2
    RST = 3


def make_code(cls: int, detail: int) -> int:
    """RFC 7252 §3: the Code byte of ``c.dd`` (3-bit class, 5-bit detail); ``make_code(4, 3)`` is 4.03."""
    if not (0 <= cls <= 7 and 0 <= detail <= 31):
        raise ValueError(f"no CoAP code {cls}.{detail:02d}")
    return cls << 5 | detail


def split_code(code: int) -> tuple[int, int]:
    return code >> 5, code & 0x1F  # (class, detail)


def format_code(code: int) -> str:
    return "{}.{:02d}".format(*split_code(code))


def is_request(code: int) -> bool:
    """RFC 7252 §12.1: class 0 with detail 1..31 is a method (0.00 is the Empty message)."""
    return code >> 5 == 0 and code & 0x1F != 0


def is_empty(code: int) -> bool:
    return code == 0


EMPTY, GET, POST, PUT, DELETE = 0, make_code(0, 1), make_code(0, 2), make_code(0, 3), make_code(0, 4)

# RFC 7252 §5.10, Table 4 (those this module's users are likely to touch)
URI_HOST, URI_PORT, LOCATION_PATH, URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY, ACCEPT = 3, 7, 8, 11, 12, 14, 15, 17
# RFC 7959 §2.1 and §4 (block-wise transfer: m2msec.gateway.coap_blockwise)
BLOCK2, BLOCK1, SIZE2, SIZE1 = 23, 27, 28, 60

# TS-0008 V3.9.0 Table 6.2.2.4.0-1 "Definition of New Options" (all Critical and Unsafe, none Repeatable)
ONEM2M_OT = 259  # Originating Timestamp, string (15)
ONEM2M_RTURI = 263  # notificationURI of Response Type, string
ONEM2M_TY = 267  # Resource Type, uint (2)
ONEM2M_RVI = 271  # Release Version Indicator, string (1-2)
ONEM2M_ASRI = 275  # Authorization Signature Request Information, string
ONEM2M_FR = 279  # From, string (0-255)
ONEM2M_RQI = 283  # Request Identifier, string (0-255)
ONEM2M_RQET = 291  # Request Expiration Timestamp, string (15)
ONEM2M_RSET = 295  # Result Expiration Timestamp, string (15)
ONEM2M_OET = 299  # Operation Execution Time, string (15)
ONEM2M_EC = 303  # Event Category, uint (1)
ONEM2M_RSC = 307  # Response Status Code, uint (2)
ONEM2M_GID = 311  # Group Request Identifier, string
ONEM2M_CTO = 319  # Content Offset, uint (2)
ONEM2M_CTS = 323  # Content Status, uint (2)
ONEM2M_ATI = 327  # Assigned Token Identifiers, string
ONEM2M_VSI = 331  # Vendor Information, string
ONEM2M_GTM = 335  # Group Request Target Members, string (0-512)
ONEM2M_AUS = 339  # Authorization Signatures, string

# The gateway's identity options (UTF-8 strings), from RFC 7252 §12.2's "Experimental use" range 65000-65535.
# RFC 7252 §5.4.6: bit 0 of the number is Critical, bit 1 Unsafe, bits 2-4 all set NoCacheKey (Safe-to-Forward
# only). Each number here is even, so *elective* (§5.4.1): a CSE that does not implement them ignores them
# silently instead of answering 4.02 Bad Option, and the relay still works. The Unsafe bit does not matter on
# the gateway's single hop to the CSE; it is set (numbers = 2 mod 4) so that a proxy unaware of them refuses to
# relay (§5.4.2, §5.7.1) rather than carrying an identity assertion further, and NoCacheKey then does not apply.
OPTION_SA_IDENTITY = 65002  # the AE-ID / CSE-ID the SA is associated with (rules.HEADER_SA_IDENTITY)
OPTION_CREDENTIAL_ID = 65006  # TS-0003 §10.4 Credential-ID (rules.HEADER_CREDENTIAL_ID)
OPTION_PSK_IDENTITY = 65010  # the KpsaID the client authenticated with (rules.HEADER_PSK_IDENTITY)
IDENTITY_OPTIONS = (OPTION_SA_IDENTITY, OPTION_CREDENTIAL_ID, OPTION_PSK_IDENTITY)

# Options a client may send at most once (decision D25). Every option of TS-0008 Table 6.2.2.4.0-1 is
# non-Repeatable, and several carry identity or correlate a response with its originator: From (FR), the
# Request Identifier (RQI), the Release Version (RVI, it selects how FR is read), the authorization signatures
# and their request information (AUS, ASRI), the assigned token identifiers (ATI), the group request identifier
# (GID) and the notification URI (RTURI). A repeat lets the gateway and the CSE read different values (the
# gateway checks one FR, the CSE might use another), so the whole table is refused with 4.00 / rsc 4000 rather
# than only FR; RFC 7959's Block1/Block2/Size1/Size2 are non-repeatable as well, and the gateway interprets them.
NON_REPEATABLE_OPTIONS: frozenset[int] = frozenset({
    ONEM2M_OT, ONEM2M_RTURI, ONEM2M_TY, ONEM2M_RVI, ONEM2M_ASRI, ONEM2M_FR, ONEM2M_RQI, ONEM2M_RQET, ONEM2M_RSET,
    ONEM2M_OET, ONEM2M_EC, ONEM2M_RSC, ONEM2M_GID, ONEM2M_CTO, ONEM2M_CTS, ONEM2M_ATI, ONEM2M_VSI, ONEM2M_GTM,
    ONEM2M_AUS, BLOCK2, BLOCK1, SIZE2, SIZE1,
    # RFC 7252 §5.10 Table 4: not Repeatable (D227: a repeat is refused like a repeated oneM2M option; Proxy-Uri
    # and Proxy-Scheme are refused whatever their count, PROXY_OPTIONS)
    URI_HOST, 5, URI_PORT, CONTENT_FORMAT, MAX_AGE, ACCEPT,
})

# Critical options the gateway knows (D227, RFC 7252 §5.4.1: an unrecognized critical option must not be
# ignored): RFC 7252's If-Match, Uri-Host, If-None-Match, Uri-Port, Uri-Path, Uri-Query, Accept, RFC 7959's
# Block2/Block1 and every oneM2M option of TS-0008 Table 6.2.2.4.0-1. A request with another critical option
# (OSCORE, Q-Block, an experimental one the CSE might read as an identity) is refused with 4.00 / rsc 4000
# rather than forwarded for the CSE to interpret unchecked.
KNOWN_CRITICAL_OPTIONS: frozenset[int] = frozenset(
    {1, URI_HOST, 5, URI_PORT, URI_PATH, URI_QUERY, ACCEPT, BLOCK2, BLOCK1} | NON_REPEATABLE_OPTIONS)

# RFC 7252 §5.7.2 Proxy-Uri and Proxy-Scheme: the gateway relays to its one CSE and is no forward proxy; a CSE
# that is one would carry the gateway's identity options to another host. Refused (D228).
PROXY_OPTIONS: frozenset[int] = frozenset({35, 39})

# What the gateway answers when it cannot reach the CSE (decision D26): 5.03 Service Unavailable with Max-Age
# (RFC 7252 §5.9.3.4: retry after that many seconds) and oneM2M-RSC 5103 TARGET_NOT_REACHABLE. TS-0008 Table
# 6.2.4-1 maps 5103 to 4.04, which tells a CoAP client the resource does not exist; the CSE behind the gateway
# is what is missing, and the condition is temporary.
UNREACHABLE_CODE = make_code(5, 3)

# TS-0008 V3.9.0 Table 6.2.4-1, grouped by CoAP Response Code. Not listed: 1000 (not used), 1002 (2.01 or 2.04)
# and 2000 (2.05 for RETRIEVE, 2.04 for NOTIFY), which depend on the request. Added: 4128
# SERVICE_SUBSCRIPTION_NOT_ESTABLISHED (later than V3.9.0) as 4.03, as its sibling 4126, TS-0009 (403) and ACME do.
_RSC_TABLE: dict[int, tuple[int, ...]] = {
    make_code(2, 1): (1001, 2001),
    make_code(2, 2): (2002,),
    make_code(2, 4): (2004,),
    make_code(4, 0): (4000, 4102, 4104, 4110, 4123, 4124, 4143, 5106, 5219, 5220, 6010, 6022, 6023, 6024, 6028,
                      6029),
    make_code(4, 2): (4120, 4122),
    make_code(4, 3): (4101, 4103, 4105, 4106, 4107, 4108, 4109, 4111, 4112, 4113, 4114, 4115, 4116, 4117, 4126,
                      4127, 4128, 5105, 5203, 5205, 5208, 5214, 5215, 5218, 5222),
    make_code(4, 4): (4004, 4118, 4119, 4121, 5103, 5107, 6003, 6005),
    make_code(4, 5): (4005,),
    make_code(4, 6): (5207,),
    make_code(4, 15): (4015,),
    make_code(5, 0): (5000, 5204, 5209, 5210, 5211, 5212, 5216, 5217, 5221, 6020, 6021, 6025, 6026),
    make_code(5, 1): (4001, 4125, 5001, 5206),
    make_code(5, 4): (4008, 6030, 6031),
}
RSC_TO_COAP: dict[int, int] = {rsc: coap for coap, rscs in _RSC_TABLE.items() for rsc in rscs}


def coap_code_for(rsc: int) -> int:
    """The CoAP Response Code for a oneM2M RSC (Table 6.2.4-1); codes the table lacks fall back to 4.00 (4xxx)
    or 5.00 (anything else), the oneM2M-RSC option then carrying the exact value (TS-0008 §6.2.4)."""
    return RSC_TO_COAP.get(rsc, make_code(4, 0) if rsc // 1000 == 4 else make_code(5, 0))


def encode_uint(value: int) -> bytes:
    """RFC 7252 §3.2 uint option value: network byte order, as few bytes as possible (0 is empty)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode_uint(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _extended(nibble: int, data: bytes, pos: int) -> tuple[int, int]:
    """RFC 7252 §3.1: a delta/length nibble and its extension; returns (value, position after it)."""
    if nibble < 13:
        return nibble, pos
    size = {13: 1, 14: 2}.get(nibble)
    if size is None:
        raise CoAPFormatError("option nibble 15 outside a payload marker")
    if pos + size > len(data):
        raise CoAPFormatError("truncated extended option field")
    return (13 if size == 1 else 269) + int.from_bytes(data[pos:pos + size], "big"), pos + size


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    if value < 269 + 0x10000:
        return 14, (value - 269).to_bytes(2, "big")
    raise CoAPFormatError("option value too long")


@dataclass
class Message:
    """One CoAP message (RFC 7252 §3). ``options`` are (number, value) pairs; order among equal numbers matters."""

    type: MessageType
    code: int
    message_id: int
    token: bytes = b""
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Message:
        """Parse one datagram; any deviation from RFC 7252 §3 raises :class:`CoAPFormatError`."""
        data = bytes(data)
        if len(data) < 4:
            raise CoAPFormatError("shorter than the 4-byte CoAP header")
        first, code = data[0], data[1]
        if first >> 6 != 1:
            raise CoAPFormatError(f"CoAP version {first >> 6}, not 1")
        tkl = first & 0x0F
        if tkl > 8:
            raise CoAPFormatError(f"token length {tkl} is reserved")
        if code == EMPTY and len(data) > 4:
            raise CoAPFormatError("Empty message (0.00) with bytes after the header")  # §4.1
        pos = 4 + tkl
        if len(data) < pos:
            raise CoAPFormatError("truncated token")
        options: list[tuple[int, bytes]] = []
        number, payload = 0, b""
        while pos < len(data):
            byte = data[pos]
            if byte == 0xFF:
                payload = data[pos + 1:]
                if not payload:
                    raise CoAPFormatError("payload marker followed by an empty payload")
                break
            delta, pos = _extended(byte >> 4, data, pos + 1)
            length, pos = _extended(byte & 0x0F, data, pos)
            number += delta
            if number > 0xFFFF:
                raise CoAPFormatError("option number above 65535")
            if pos + length > len(data):
                raise CoAPFormatError("truncated option value")
            options.append((number, data[pos:pos + length]))
            pos += length
        return cls(MessageType(first >> 4 & 3), code, int.from_bytes(data[2:4], "big"), data[4:4 + tkl], options,
                   payload)

    def encode(self) -> bytes:
        """The datagram: options sorted stably by number and delta-encoded (RFC 7252 §3.1)."""
        if not (0 <= self.code <= 0xFF and 0 <= self.message_id <= 0xFFFF and len(self.token) <= 8):
            raise CoAPFormatError("code, Message ID or token length out of range")
        if self.code == EMPTY and (self.token or self.options or self.payload):
            raise CoAPFormatError("an Empty message (0.00) is the header only")
        out = bytearray((0x40 | MessageType(self.type) << 4 | len(self.token), self.code))
        out += self.message_id.to_bytes(2, "big") + self.token
        previous = 0
        for number, value in sorted(self.options, key=_number):
            if not 0 <= number <= 0xFFFF:
                raise CoAPFormatError(f"option number {number} out of range")
            delta, delta_ext = _nibble(number - previous)
            length, length_ext = _nibble(len(value))
            out += bytes((delta << 4 | length,)) + delta_ext + length_ext + value
            previous = number
        if self.payload:
            out += b"\xff" + self.payload
        return bytes(out)

    def option(self, number: int) -> bytes | None:
        """The first value of option ``number``, or None."""
        return next((value for n, value in self.options if n == number), None)

    def options_of(self, number: int) -> list[bytes]:
        return [value for n, value in self.options if n == number]

    def with_options(self, *options: tuple[int, bytes]) -> Message:
        """A copy with ``options`` added (after existing ones of the same number), kept sorted by number."""
        return replace(self, options=sorted([*self.options, *options], key=_number))

    def without_options(self, numbers: Iterable[int]) -> Message:
        drop = frozenset(numbers)
        return replace(self, options=[(n, value) for n, value in self.options if n not in drop])


def _number(opt: tuple[int, bytes]) -> int:
    return opt[0]


def originator(msg: Message) -> str | None:
    """The oneM2M ``From`` parameter (oneM2M-FR, TS-0008 §6.2.2.4.1), or None when absent."""
    values = msg.options_of(ONEM2M_FR)
    if not values:
        return None
    if len(values) > 1:  # not Repeatable (Table 6.2.2.4.0-1): refuse rather than guess which one the CSE uses
        raise CoAPFormatError("oneM2M-FR option repeated")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise CoAPFormatError("oneM2M-FR option is not UTF-8") from None


def check_repeats(msg: Message) -> None:
    """Raise :class:`CoAPFormatError` when ``msg`` repeats an option of :data:`NON_REPEATABLE_OPTIONS`, carries
    an unknown critical option (:data:`KNOWN_CRITICAL_OPTIONS`) or a proxy option (:data:`PROXY_OPTIONS`)."""
    seen: set[int] = set()
    for number, _ in msg.options:
        if number in PROXY_OPTIONS:
            raise CoAPFormatError(f"option {number} (Proxy-Uri/Proxy-Scheme): the gateway is not a forward proxy")
        if number & 1 and number not in KNOWN_CRITICAL_OPTIONS:
            raise CoAPFormatError(f"unrecognized critical option {number}")
        if number in NON_REPEATABLE_OPTIONS:
            if number in seen:
                raise CoAPFormatError(f"option {number} repeated")
            seen.add(number)


def prepare_forward(msg: Message, sa: SecurityAssociation) -> bytes:
    """The datagram for the CSE: client-supplied identity options removed, the SA's own added."""
    added = [(number, value.encode("utf-8")) for number, value in identity_fields(sa, IDENTITY_OPTIONS)]
    return msg.without_options(IDENTITY_OPTIONS).with_options(*added).encode()


def prepare_response(datagram: bytes) -> bytes:
    """A datagram from the CSE, for the client, without gateway identity options (defence in depth)."""
    msg = Message.decode(datagram)
    if not any(number in IDENTITY_OPTIONS for number, _ in msg.options):
        return bytes(datagram)
    return msg.without_options(IDENTITY_OPTIONS).encode()


_MAX_DIAGNOSTIC = 128  # bytes
_MAX_REFUSAL = 1024  # bytes: within the coaps side's datagram limit (m2msec.gateway.coap_blockwise.MAX_MESSAGE)


def refusal(msg: Message, exc: OneM2MError, message_id: int | None = None, *, code: int | None = None,
            max_age: int | None = None) -> bytes | None:
    """The response the gateway itself sends for a refused request, or None when ``msg`` must not be answered.

    CON request: piggybacked ACK with its Message ID and token (RFC 7252 §5.2.1); NON request: a NON response
    with ``message_id`` (new, from the caller) and its token (§5.2.3, TS-0008 §6.3.1). Code from Table 6.2.4-1,
    oneM2M-RSC as uint (Table 6.2.2.4.0-1, §6.2.4), oneM2M-RQI echoed, and a UTF-8 diagnostic payload without
    Content-Format (RFC 7252 §5.5.2); both dropped when an echoed RQI would make the answer larger than one
    DTLS record. ``code`` overrides the table's CoAP code; ``max_age`` adds Max-Age.
    """
    if not is_request(msg.code) or msg.type not in (MessageType.CON, MessageType.NON):
        return None
    if msg.type is MessageType.CON:
        kind, mid = MessageType.ACK, msg.message_id
    elif message_id is None:
        raise ValueError("a NON request is answered in a NON response, which needs a new Message ID")
    else:
        kind, mid = MessageType.NON, message_id
    options = [(ONEM2M_RSC, encode_uint(exc.rsc))]
    if max_age is not None:
        options.append((MAX_AGE, encode_uint(max_age)))
    rqi = msg.option(ONEM2M_RQI)
    if rqi is not None:
        options.append((ONEM2M_RQI, rqi))
    diagnostic = exc.detail.encode("utf-8")[:_MAX_DIAGNOSTIC].decode("utf-8", "ignore").encode("utf-8")
    code = coap_code_for(exc.rsc) if code is None else code
    reply = Message(kind, code, mid, msg.token, sorted(options, key=_number), diagnostic)
    if len(reply.encode()) > _MAX_REFUSAL:  # a huge RQI: the answer must still fit one DTLS record
        reply = replace(reply, payload=b"").without_options((ONEM2M_RQI,))
    return reply.encode()


def reset(datagram: bytes) -> bytes | None:
    """RST for a malformed Confirmable datagram whose header is readable (RFC 7252 §4.2, TS-0008 §5.1), else None
    (a malformed NON is silently ignored, §4.3)."""
    if len(datagram) < 4 or datagram[0] >> 6 != 1 or datagram[0] >> 4 & 3 != MessageType.CON:
        return None
    return Message(MessageType.RST, EMPTY, int.from_bytes(datagram[2:4], "big")).encode()


@dataclass(frozen=True)
class Forward:
    """Send ``datagram`` to the CSE (``message``: the accepted request as the client sent it; ``sa``: the SA from now
    on when the check re-read the registrations; ``create``: the CREATE <AE> it is, whose answer binds an AE-ID)."""

    datagram: bytes
    message: Message | None = None
    sa: SecurityAssociation | None = None
    create: AECreate | None = None


@dataclass(frozen=True)
class Refuse:
    """Do not forward; send ``datagram`` (when not None) back to the client."""

    error: OneM2MError
    datagram: bytes | None


@dataclass(frozen=True)
class Pass:
    """Not a request: relay ``datagram`` (the message without client identity options) to the CSE."""

    datagram: bytes


Decision = Forward | Refuse | Pass


#: RFC 7252 §12.1 code classes with nothing defined for CoAP over UDP (1.xx, 6.xx, 7.xx; RFC 8323 signalling is
#: 7.xx over reliable transports only): a message from the client with one never reaches the CSE. A CON one is
#: rejected with RST (RFC 7252 §4.2), any other is silently dropped (§4.3; an ACK or RST is never answered).
DROPPED_CODE_CLASSES = frozenset({1, 6, 7})


def _ae_create(msg: Message, origin: str | None) -> AECreate | None:
    """The CREATE <AE> ``msg`` is (POST with oneM2M-TY 2), else None; BadRequest when it cannot be checked."""
    ty, cf = msg.option(ONEM2M_TY), msg.option(CONTENT_FORMAT)
    return coap_ae_create(msg.code == POST, None if ty is None else decode_uint(ty),
                          None if cf is None else decode_uint(cf), msg.payload, origin,
                          block1=msg.option(BLOCK1) is not None,
                          queries=[q.decode("utf-8", "replace") for q in msg.options_of(URI_QUERY)],
                          accept=[decode_uint(a) for a in msg.options_of(ACCEPT)])


def created_aei(msg: Message) -> bool:
    """True when ``msg`` is the CSE's 2.01 / oneM2M-RSC 2001 answer (a CREATE <AE> succeeded)."""
    rsc = msg.option(ONEM2M_RSC)
    return msg.code == make_code(2, 1) and rsc is not None and decode_uint(rsc) == 2001


def decide(msg: Message, sa: SecurityAssociation, policy: UnboundPolicy, message_id: int | None = None, *,
           registrar: Registrar | None = None, cse_id: str | None = None, sp_id: str | None = None) -> Decision:
    """What the gateway does with a message from the client (``message_id``: for refusing a NON request).

    Every message that reaches the CSE loses the client's copies of :data:`IDENTITY_OPTIONS` (D18): a request
    gets the SA's own (:func:`prepare_forward`), anything else (Empty, ACK, RST, responses) none."""
    if msg.code >> 5 in DROPPED_CODE_CLASSES:
        rst = Message(MessageType.RST, EMPTY, msg.message_id).encode() if msg.type is MessageType.CON else None
        return Refuse(BadRequest(f"CoAP code class {msg.code >> 5} is reserved"), rst)
    if not is_request(msg.code):
        if any(number in IDENTITY_OPTIONS for number, _ in msg.options):
            return Pass(msg.without_options(IDENTITY_OPTIONS).encode())
        return Pass(msg.encode())  # Empty, ACK, RST and responses (decode/encode is byte-exact)
    error: OneM2MError
    try:
        if msg.type not in (MessageType.CON, MessageType.NON):
            raise BadRequest("a request in an ACK or RST message")  # RFC 7252 §4.2, §4.3
        check_repeats(msg)
        origin = originator(msg)
        create = None
        checked = sa
        if registrar is not None:  # --app-rules: registration checks and bindings (issue 17)
            create = _ae_create(msg, origin)
            checked = registrar.authorize(sa, origin, policy, create)
        else:
            authorize(sa, origin, policy, cse_id=cse_id, sp_id=sp_id)
    except CoAPFormatError as exc:
        error = BadRequest(str(exc))
    except OneM2MError as exc:
        error = exc
    else:
        return Forward(prepare_forward(msg, checked), msg, checked if checked is not sa else None, create)
    return Refuse(error, refusal(msg, error, message_id))
