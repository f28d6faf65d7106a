"""coap.decide on client messages that are not requests: the client's copies of the gateway's identity options
(D18) never reach the CSE, and messages of the code classes CoAP over UDP does not define are dropped
(coap.DROPPED_CODE_CLASSES; the coaps relay over real DTLS: tests/gateway/test_attack_identity.py)."""

from __future__ import annotations

import pytest

from m2msec.gateway import coap
from m2msec.gateway.coap import Message, MessageType
from m2msec.gateway.rules import SecurityAssociation, UnboundPolicy

AE_ID = "Clight-AE1"
BOUND = SecurityAssociation("'light'", "light@in.provider.com", "light@in.provider.com", AE_ID, frozenset({AE_ID}))
SPOOF = [(coap.OPTION_SA_IDENTITY, b"CAdmin"), (coap.OPTION_CREDENTIAL_ID, b"admin"),
         (coap.OPTION_PSK_IDENTITY, b"admin@in.provider.com")]


@pytest.mark.parametrize(("kind", "code"), [
    (MessageType.ACK, coap.make_code(2, 5)),  # a piggybacked response (e.g. to a NOTIFY)
    (MessageType.NON, coap.make_code(2, 4)),
    (MessageType.CON, coap.make_code(4, 4)),
    (MessageType.NON, coap.make_code(5, 0)),
])
def test_responses_lose_the_clients_identity_options(kind: MessageType, code: int) -> None:
    msg = Message(kind, code, 5, b"t", [(coap.ONEM2M_RSC, b"\x07\xd0"), *SPOOF], b"x")
    decision = coap.decide(msg, BOUND, UnboundPolicy.REJECT)
    assert isinstance(decision, coap.Pass)
    sent = Message.decode(decision.datagram)
    assert sent.options == [(coap.ONEM2M_RSC, b"\x07\xd0")]
    assert (sent.type, sent.code, sent.message_id, sent.token, sent.payload) == (kind, code, 5, b"t", b"x")


@pytest.mark.parametrize("cls", sorted(coap.DROPPED_CODE_CLASSES))
def test_reserved_code_classes_are_dropped_and_a_con_one_is_reset(cls: int) -> None:
    for kind in MessageType:
        msg = Message(kind, coap.make_code(cls, 1), 0x4242, b"\x01", [], b"x")
        decision = coap.decide(msg, BOUND, UnboundPolicy.REJECT, message_id=9)
        assert isinstance(decision, coap.Refuse), kind
        assert decision.error.rsc == 4000 and "reserved" in decision.error.detail
        if kind is MessageType.CON:  # RFC 7252 §4.2: rejected with an RST of its Message ID
            assert decision.datagram is not None
            assert Message.decode(decision.datagram) == Message(MessageType.RST, coap.EMPTY, 0x4242)
        else:  # §4.3: silently ignored (an ACK or RST is never answered)
            assert decision.datagram is None, kind
