"""The CoAP message codec and the gateway's CoAP relay rules (m2msec.gateway.coap).

Byte vectors are built by hand from the layout of RFC 7252 §3 (Figure 7 header, §3.1 option format), not taken
from another implementation; each is annotated byte by byte.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2msec.errors import BadRequest, OriginatorNotAuthenticated
from m2msec.gateway import coap
from m2msec.gateway.coap import CoAPFormatError, Message, MessageType
from m2msec.gateway.rules import SecurityAssociation, UnboundPolicy

# TR-0038 Table 7.1.2-1 identity and its bound AE (published example values)
KPSA_ID, AE_ID = "AE123456789012-Light@in.provider.com", "Clight-AE1"
CRED_ID = "AE123456789012-Light@in.provider.com"  # any string will do for these rules
BOUND = SecurityAssociation(repr(KPSA_ID), KPSA_ID, CRED_ID, AE_ID, frozenset({AE_ID}))
UNBOUND = SecurityAssociation("'test@onem2m.com'", "test@onem2m.com", "cred-td", None, frozenset())

# CON GET, Message ID 0x1234, token 01 02, Uri-Path "a" "bc", oneM2M-FR "Cae1" (delta 268: 13 form, extension
# byte 0xFF, which must not be read as a payload marker), option 65002 "Cae1" (delta 64723: 14 form), payload "hi"
VECTOR = bytes.fromhex(
    "42" "01" "1234" "0102"  # Ver 1, T 0 (CON), TKL 2 | 0.01 GET | Message ID | token
    "b1" "61"  # delta 11 (Uri-Path), length 1, "a"
    "02" "6263"  # delta 0 (Uri-Path again), length 2, "bc"
    "d4" "ff" "43616531"  # delta 13 + 0xFF = 268 -> 279 (oneM2M-FR), length 4, "Cae1"
    "e4" "fbc6" "43616531"  # delta 269 + 0xFBC6 = 64723 -> 65002, length 4, "Cae1"
    "ff" "6869"  # payload marker, "hi"
)
VECTOR_MESSAGE = Message(MessageType.CON, coap.GET, 0x1234, b"\x01\x02",
                         [(11, b"a"), (11, b"bc"), (279, b"Cae1"), (65002, b"Cae1")], b"hi")


def request(frm: str | None = AE_ID, *, kind: MessageType = MessageType.CON, extra: tuple[tuple[int, bytes], ...] = (),
            rqi: bytes | None = b"req-1") -> Message:
    options = [(coap.URI_PATH, b"cse-in")]
    if frm is not None:
        options.append((coap.ONEM2M_FR, frm.encode()))
    if rqi is not None:
        options.append((coap.ONEM2M_RQI, rqi))
    return Message(kind, coap.GET, 0x0BAD, b"\xca\xfe", options).with_options(*extra)


# --- codec: hand-built RFC 7252 vectors ---


def test_decode_vector() -> None:
    assert Message.decode(VECTOR) == VECTOR_MESSAGE


def test_encode_vector_sorts_options_stably() -> None:
    shuffled = Message(MessageType.CON, coap.GET, 0x1234, b"\x01\x02",
                       [(65002, b"Cae1"), (11, b"a"), (279, b"Cae1"), (11, b"bc")], b"hi")
    assert shuffled.encode() == VECTOR
    assert VECTOR_MESSAGE.encode() == VECTOR


def test_extended_lengths() -> None:
    # NON POST, Message ID 1, no token; Uri-Path of 13 bytes (length 13 form, extension 0) and Uri-Query of
    # 300 bytes (length 14 form, extension 300 - 269 = 31)
    msg = Message(MessageType.NON, coap.POST, 1, b"", [(11, b"m" * 13), (15, b"q" * 300)], b"{}")
    wire = bytes.fromhex("50" "02" "0001" "bd00") + b"m" * 13 + bytes.fromhex("4e001f") + b"q" * 300 + b"\xff{}"
    assert msg.encode() == wire
    assert Message.decode(wire) == msg


@pytest.mark.parametrize(("wire", "kind"), [
    (bytes.fromhex("60001234"), MessageType.ACK),  # Ver 1, T 2, TKL 0, 0.00, Message ID: an empty ACK
    (bytes.fromhex("70001234"), MessageType.RST),
    (bytes.fromhex("40001234"), MessageType.CON),  # CoAP ping (§4.3)
])
def test_empty_messages(wire: bytes, kind: MessageType) -> None:
    msg = Message.decode(wire)
    assert (msg.type, msg.code, msg.message_id, msg.token, msg.options, msg.payload) == (kind, 0, 0x1234, b"", [], b"")
    assert coap.is_empty(msg.code) and not coap.is_request(msg.code)
    assert msg.encode() == wire


@pytest.mark.parametrize("wire", [
    b"", bytes.fromhex("400112"),  # shorter than the header
    bytes.fromhex("00010001"), bytes.fromhex("80010001"),  # version 0, version 2
    bytes.fromhex("49010001") + bytes(9),  # TKL 9 is reserved
    bytes.fromhex("4201000101"),  # token shorter than TKL
    bytes.fromhex("40000001ff61"),  # Empty message with bytes after the header (§4.1)
    bytes.fromhex("40010001f0"),  # delta nibble 15 without being the payload marker
    bytes.fromhex("40010001bf"),  # length nibble 15
    bytes.fromhex("40010001ff"),  # payload marker, empty payload
    bytes.fromhex("40010001d0"), bytes.fromhex("40010001e000"),  # truncated 13 / 14 extensions
    bytes.fromhex("40010001b361"),  # option value shorter than its length
    bytes.fromhex("40010001e0ffff"),  # option number 65804
])
def test_decode_rejects(wire: bytes) -> None:
    with pytest.raises(CoAPFormatError):
        Message.decode(wire)


@pytest.mark.parametrize("msg", [
    Message(MessageType.CON, coap.GET, 1, bytes(9)),
    Message(MessageType.CON, coap.GET, 0x10000),
    Message(MessageType.CON, 256, 1),
    Message(MessageType.ACK, coap.EMPTY, 1, payload=b"x"),
    Message(MessageType.CON, coap.GET, 1, options=[(65536, b"")]),
    Message(MessageType.CON, coap.GET, 1, options=[(1, bytes(65805))]),
])
def test_encode_rejects(msg: Message) -> None:
    with pytest.raises(CoAPFormatError):
        msg.encode()


def test_code_helpers() -> None:
    assert coap.make_code(4, 3) == 0x83 and coap.split_code(0x83) == (4, 3) and coap.format_code(0x83) == "4.03"
    assert coap.format_code(coap.make_code(2, 5)) == "2.05"
    assert [coap.is_request(c) for c in (0x00, 0x01, 0x1F, 0x20, 0x45)] == [False, True, True, False, False]
    with pytest.raises(ValueError):
        coap.make_code(8, 0)


def test_option_helpers() -> None:
    msg = VECTOR_MESSAGE
    assert msg.option(11) == b"a" and msg.option(12) is None
    assert msg.options_of(11) == [b"a", b"bc"]
    assert msg.with_options((11, b"d"), (3, b"h")).options[:4] == [(3, b"h"), (11, b"a"), (11, b"bc"), (11, b"d")]
    assert msg.without_options([11, 65002]).options == [(279, b"Cae1")]
    assert msg.options == VECTOR_MESSAGE.options  # helpers copy


def test_uint() -> None:
    assert coap.encode_uint(0) == b"" and coap.encode_uint(4106) == b"\x10\x0a"
    assert coap.decode_uint(b"\x0f\xa0") == 4000 and coap.decode_uint(b"") == 0


# --- codec: properties ---

options = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=300)), max_size=8)
messages = st.one_of(
    st.builds(Message, st.sampled_from(MessageType), st.just(0), st.integers(0, 0xFFFF)),
    st.builds(Message, st.sampled_from(MessageType), st.integers(1, 255), st.integers(0, 0xFFFF),
              st.binary(max_size=8), options, st.binary(max_size=64)),
)


@given(messages)
def test_round_trip(msg: Message) -> None:
    expected = Message(msg.type, msg.code, msg.message_id, msg.token, sorted(msg.options, key=lambda o: o[0]),
                       msg.payload)
    assert Message.decode(msg.encode()) == expected


@given(st.binary(max_size=64) | st.binary(min_size=4, max_size=64).map(lambda b: bytes([0x40 | b[0] & 0x3F]) + b[1:]))
def test_decode_fuzz(data: bytes) -> None:
    try:
        msg = Message.decode(data)
    except CoAPFormatError:
        return
    assert msg.encode() == data  # canonical: what decodes re-encodes to the same bytes
    try:
        coap.decide(msg, BOUND, UnboundPolicy.REJECT, message_id=7)
    except CoAPFormatError:
        pytest.fail("decide() turns format errors into refusals")


# --- oneM2M tables (TS-0008 V3.9.0) ---


def test_onem2m_options_are_critical_and_unsafe() -> None:
    # Table 6.2.2.4.0-1 marks every new option C and U: number & 3 == 3 (RFC 7252 §5.4.6)
    numbers = [v for k, v in vars(coap).items() if k.startswith("ONEM2M_")]
    assert len(numbers) == 19 and all(n & 3 == 3 for n in numbers)
    assert (coap.ONEM2M_FR, coap.ONEM2M_RQI, coap.ONEM2M_RSC, coap.ONEM2M_RVI, coap.ONEM2M_TY) == (
        279, 283, 307, 271, 267)


def test_identity_options_are_experimental_elective_unsafe() -> None:
    for n in coap.IDENTITY_OPTIONS:
        assert 65000 <= n <= 65535 and n & 1 == 0 and n & 2 == 2  # RFC 7252 §12.2, §5.4.6
    assert len(set(coap.IDENTITY_OPTIONS)) == 3


def test_rsc_mapping() -> None:
    f = coap.format_code
    assert f(coap.coap_code_for(4106)) == "4.03" and f(coap.coap_code_for(4000)) == "4.00"
    assert f(coap.coap_code_for(5103)) == "4.04" and f(coap.coap_code_for(4008)) == "5.04"
    assert f(coap.coap_code_for(4001)) == "5.01" and f(coap.coap_code_for(5207)) == "4.06"
    assert f(coap.coap_code_for(4128)) == "4.03"  # SERVICE_SUBSCRIPTION_NOT_ESTABLISHED, 403 in TS-0009
    assert f(coap.coap_code_for(4999)) == "4.00" and f(coap.coap_code_for(5999)) == "5.00"  # not in the table
    # 81 rows in Table 6.2.4-1 less 1000, 1002 and the two 2000 rows, plus 4128; no RSC listed twice
    assert sum(len(v) for v in coap._RSC_TABLE.values()) == len(coap.RSC_TO_COAP) == 78


# --- relay rules ---


def test_originator() -> None:
    assert coap.originator(request()) == AE_ID
    assert coap.originator(request(None)) is None
    with pytest.raises(CoAPFormatError):
        coap.originator(request(None, extra=((coap.ONEM2M_FR, b"\xff"),)))
    with pytest.raises(CoAPFormatError):
        coap.originator(request(extra=((coap.ONEM2M_FR, b"Cother"),)))


def test_forward_matching_origin_replaces_client_identity_options() -> None:
    forged = ((coap.OPTION_SA_IDENTITY, b"CAdmin"), (coap.OPTION_PSK_IDENTITY, b"x"), (coap.OPTION_SA_IDENTITY, b"y"))
    msg = request(extra=forged)
    decision = coap.decide(msg, BOUND, UnboundPolicy.REJECT)
    assert isinstance(decision, coap.Forward)
    sent = Message.decode(decision.datagram)
    assert sent.options_of(coap.OPTION_SA_IDENTITY) == [AE_ID.encode()]
    assert sent.options_of(coap.OPTION_CREDENTIAL_ID) == [CRED_ID.encode()]
    assert sent.options_of(coap.OPTION_PSK_IDENTITY) == [KPSA_ID.encode()]
    assert sent.without_options(coap.IDENTITY_OPTIONS) == request()
    assert coap.prepare_forward(msg, BOUND) == decision.datagram


@given(st.text(max_size=20), st.sampled_from([MessageType.CON, MessageType.NON]))
def test_decide_forwards_exactly_the_bound_origin(frm: str, kind: MessageType) -> None:
    decision = coap.decide(request(frm, kind=kind), BOUND, UnboundPolicy.REJECT, message_id=1)
    assert isinstance(decision, coap.Forward) == (frm == AE_ID)
    assert isinstance(decision, coap.Refuse) == (frm != AE_ID)


def refused(decision: coap.Decision) -> tuple[Message, coap.Refuse]:
    assert isinstance(decision, coap.Refuse) and decision.datagram is not None
    return Message.decode(decision.datagram), decision


@pytest.mark.parametrize("frm", ["Cintruder", None, ""])
def test_refuse_mismatching_or_missing_origin(frm: str | None) -> None:
    reply, decision = refused(coap.decide(request(frm), BOUND, UnboundPolicy.REJECT))
    assert isinstance(decision.error, OriginatorNotAuthenticated)
    # piggybacked ACK (RFC 7252 §5.2.1): same Message ID and token, 4.03 (Table 6.2.4-1), RSC 4106 as uint
    assert (reply.type, coap.format_code(reply.code), reply.message_id, reply.token) == (
        MessageType.ACK, "4.03", 0x0BAD, b"\xca\xfe")
    assert reply.options == [(coap.ONEM2M_RQI, b"req-1"), (coap.ONEM2M_RSC, b"\x10\x0a")]  # by number
    assert reply.payload.decode("utf-8") == decision.error.detail


def test_refusal_for_non_request() -> None:
    msg = request("Cintruder", kind=MessageType.NON, rqi=None)
    reply, _ = refused(coap.decide(msg, BOUND, UnboundPolicy.REJECT, message_id=0x4242))
    assert (reply.type, reply.code, reply.message_id, reply.token) == (MessageType.NON, 0x83, 0x4242, b"\xca\xfe")
    assert reply.options == [(coap.ONEM2M_RSC, b"\x10\x0a")]
    with pytest.raises(ValueError):
        coap.refusal(msg, OriginatorNotAuthenticated("x"))


def test_refusal_bad_request_and_long_diagnostic() -> None:
    data = coap.refusal(request(), BadRequest("é" * 200))
    assert data is not None
    reply = Message.decode(data)
    assert coap.format_code(reply.code) == "4.00" and reply.option(coap.ONEM2M_RSC) == b"\x0f\xa0"
    assert reply.payload.decode("utf-8") == "é" * 64  # cut at 128 bytes on a character boundary


@pytest.mark.parametrize("msg", [
    Message(MessageType.ACK, coap.EMPTY, 1),
    Message(MessageType.RST, coap.EMPTY, 1),
    Message(MessageType.ACK, coap.make_code(2, 5), 1, b"t", payload=b"x"),
    Message(MessageType.CON, coap.make_code(2, 5), 1, b"t"),
])
def test_no_refusal_for_non_requests(msg: Message) -> None:
    assert coap.refusal(msg, OriginatorNotAuthenticated("x"), message_id=9) is None


def test_malformed_fr_refused_as_bad_request() -> None:
    for msg in (request(None, extra=((coap.ONEM2M_FR, b"\xc3"),)), request(extra=((coap.ONEM2M_FR, AE_ID.encode()),))):
        reply, decision = refused(coap.decide(msg, BOUND, UnboundPolicy.REJECT))
        assert isinstance(decision.error, BadRequest) and coap.format_code(reply.code) == "4.00"


def test_unbound_policy() -> None:
    reply, decision = refused(coap.decide(request("Canything"), UNBOUND, UnboundPolicy.REJECT))
    assert decision.error.rsc == 4106 and reply.code == 0x83
    forwarded = coap.decide(request("Canything"), UNBOUND, UnboundPolicy.FORWARD)
    assert isinstance(forwarded, coap.Forward)
    sent = Message.decode(forwarded.datagram)
    assert sent.option(coap.OPTION_SA_IDENTITY) is None
    assert sent.option(coap.OPTION_CREDENTIAL_ID) == b"cred-td"
    assert sent.option(coap.OPTION_PSK_IDENTITY) == b"test@onem2m.com"


@pytest.mark.parametrize("msg", [
    Message(MessageType.ACK, coap.EMPTY, 5),
    Message(MessageType.RST, coap.EMPTY, 5),
    Message(MessageType.CON, coap.EMPTY, 5),
    # a piggybacked response from the client (e.g. to a NOTIFY), passed unchanged
    Message(MessageType.ACK, coap.make_code(2, 4), 5, b"t", [(coap.ONEM2M_RSC, b"\x07\xd0")]),
    Message(MessageType.NON, coap.make_code(2, 4), 5, b"t", [(coap.ONEM2M_FR, b"Cintruder")]),
])
def test_non_requests_pass_unchanged(msg: Message) -> None:
    assert coap.decide(msg, BOUND, UnboundPolicy.REJECT) == coap.Pass(msg.encode())


def test_request_code_in_ack_is_dropped() -> None:
    decision = coap.decide(Message(MessageType.ACK, coap.GET, 5, b"", [(coap.ONEM2M_FR, AE_ID.encode())]), BOUND,
                           UnboundPolicy.REJECT)
    assert isinstance(decision, coap.Refuse) and decision.datagram is None
    assert isinstance(decision.error, BadRequest)


def test_prepare_response_strips_identity_options() -> None:
    leaked = Message(MessageType.ACK, coap.make_code(2, 5), 3, b"t", [
        (coap.ONEM2M_RSC, b"\x07\xd0"), (coap.OPTION_SA_IDENTITY, b"CAdmin"), (coap.OPTION_CREDENTIAL_ID, b"c"),
        (coap.OPTION_PSK_IDENTITY, b"p")], b"{}")
    assert Message.decode(coap.prepare_response(leaked.encode())) == leaked.without_options(coap.IDENTITY_OPTIONS)
    clean = leaked.without_options(coap.IDENTITY_OPTIONS).encode()
    assert coap.prepare_response(clean) == clean
    with pytest.raises(CoAPFormatError):
        coap.prepare_response(b"\x40")


def test_reset_for_malformed_con() -> None:
    assert coap.reset(bytes.fromhex("40011234ff")) == bytes.fromhex("70001234")  # RST, same Message ID
    assert coap.reset(bytes.fromhex("50011234ff")) is None  # NON: ignored
    assert coap.reset(b"\x40\x01") is None


# --- repeated options and the gateway's own answers (issue 14) ---


@pytest.mark.parametrize("number", sorted(coap.NON_REPEATABLE_OPTIONS))
def test_repeated_non_repeatable_option_refused(number: int) -> None:
    value = AE_ID.encode() if number == coap.ONEM2M_FR else b"\x01"
    extra = ((number, value),) if number in (coap.ONEM2M_FR, coap.ONEM2M_RQI) else ((number, value), (number, value))
    reply, decision = refused(coap.decide(request(extra=extra), BOUND, UnboundPolicy.REJECT))
    assert isinstance(decision.error, BadRequest) and decision.error.detail == f"option {number} repeated"
    assert coap.format_code(reply.code) == "4.00" and coap.decode_uint(reply.option(coap.ONEM2M_RSC) or b"") == 4000


def test_non_repeatable_set_covers_identity_options_of_ts_0008() -> None:
    onem2m = {v for k, v in vars(coap).items() if k.startswith("ONEM2M_")}
    assert onem2m <= coap.NON_REPEATABLE_OPTIONS  # none of Table 6.2.2.4.0-1 is Repeatable
    assert coap.URI_PATH not in coap.NON_REPEATABLE_OPTIONS
    repeated_path = request(extra=((coap.URI_PATH, b"x"), (coap.URI_PATH, b"y")))
    assert isinstance(coap.decide(repeated_path, BOUND, UnboundPolicy.REJECT), coap.Forward)


def test_unreachable_answer_code_and_max_age() -> None:
    from m2msec.errors import TargetNotReachable

    wire = coap.refusal(request(), TargetNotReachable("down"), code=coap.UNREACHABLE_CODE, max_age=3)
    assert wire is not None
    reply = Message.decode(wire)
    assert coap.format_code(reply.code) == "5.03" and reply.option(coap.MAX_AGE) == b"\x03"
    assert coap.decode_uint(reply.option(coap.ONEM2M_RSC) or b"") == 5103
