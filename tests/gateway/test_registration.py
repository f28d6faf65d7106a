"""Registration upon SAE, the pure part (m2msec.gateway.registration): recognising CREATE <AE> as a CSE would
(TS-0009 Content-Type ``ty``, TS-0008 oneM2M-TY), the strict body read, the relay rule of CSE SAs and 4107
(TS-0004 §7.3.2.1), the order of the checks and the From forms of an assigned AE-ID (TS-0001 §7.2)."""

from __future__ import annotations

import json

import pytest

from m2msec.errors import (
    AppRuleValidationFailed,
    BadRequest,
    OriginatorNotAuthenticated,
    SecurityAssociationRequired,
    ServiceSubscriptionNotEstablished,
)
from m2msec.gateway.registration import (
    AECreate,
    aei_from_body,
    authorize,
    check_relayed,
    coap_ae_create,
    cse_id_of,
    http_ae_create,
    parse_ae_body,
    registered_forms,
)
from m2msec.gateway.rules import SecurityAssociation, UnboundPolicy
from m2msec.gateway.subscription import AppRule, RuleTable

CSE, SP = "mn-cse-123456", "in.provider.com"
CRED = "12-AE123456789012-Light@in.provider.com"  # TS-0003 §10.4: type 12 "symmetric key in SAEF" + KpsaID
AE_BODY = json.dumps({"m2m:ae": {"api": "Nlight", "rr": False, "srv": ["3"]}}).encode()
RULES = RuleTable([AppRule(credential_ids=("12-*@in.provider.com",), app_ids=("Nlight",), ae_ids=("C*",))])


def credential_sa(allowed: frozenset[str] = frozenset()) -> SecurityAssociation:
    return SecurityAssociation("'kpsa'", "AE123456789012-Light@in.provider.com", CRED, None, allowed)


def entity_sa(entity: str) -> SecurityAssociation:
    return SecurityAssociation("'kpsa'", "AE123456789012-Light@in.provider.com", CRED, entity, frozenset({entity}))


def cse_sa(cse: str = "/id-in") -> SecurityAssociation:
    return SecurityAssociation("CSE-ID certificate", None, None, cse, frozenset({cse}))


# --- recognising CREATE <AE> over HTTP ----------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["application/json;ty=2", "application/json; ty=2",
                                          "application/vnd.onem2m-res+json;ty=2", "Application/JSON;TY=2",
                                          "application/json;ty= 2 "])
def test_a_plain_create_ae_is_recognised(content_type: str) -> None:
    assert http_ae_create("POST", content_type, AE_BODY, "Clight") == AECreate("Nlight", "Clight")
    assert http_ae_create("post", content_type, AE_BODY, "Clight") == AECreate("Nlight", "Clight")  # Werkzeug: POST


@pytest.mark.parametrize(("method", "content_type"), [
    ("POST", "application/json;ty=3"), ("POST", "application/json"), ("POST", None), ("GET", "application/json;ty=2"),
    ("PUT", "application/json;ty=2"), ("POST", "application/json;ty=23"),
])
def test_other_requests_are_not_create_ae(method: str, content_type: str | None) -> None:
    assert http_ae_create(method, content_type, b"not even json", "C") is None


@pytest.mark.parametrize("content_type", [
    "application/json;x=2",  # ACME reads the value after the first '=' whatever the parameter's name
    "application/json;ty=02", "application/json;ty=+2", "application/json;ty=\u0662",  # int() reads all of these as 2
    "application/json;charset=utf-8;ty=2", "application/json;ty=2;ty=2", "application/json;ty=3;x=2",
])
def test_any_reading_that_gives_2_must_be_a_plain_create_ae(content_type: str) -> None:
    with pytest.raises(BadRequest, match="ty=2"):
        http_ae_create("POST", content_type, AE_BODY, "C")


@pytest.mark.parametrize("media", ["application/xml", "application/cbor", "application/vnd.onem2m-res+cbor",
                                   "text/plain", "application/jsonx"])
def test_create_ae_must_be_json(media: str) -> None:
    with pytest.raises(BadRequest, match="must be JSON"):
        http_ae_create("POST", f"{media};ty=2", AE_BODY, "C")


@pytest.mark.parametrize("body", [
    b'{"m2m:ae": {"api": "Nlight", "api": "Nevil"}}',  # which api would the CSE read?
    b'{"m2m:ae": {"api": "Nlight"}, "m2m:ae": {"api": "Nevil"}}',
    b'{"m2m:ae": {"api": "Nlight", "lbl": {"a": 1, "a": 2}}}',  # duplicates refused at every depth
    b'\xef\xbb\xbf{"m2m:ae": {"api": "Nlight"}}', '{"m2m:ae": {"api": "Nlight"}}'.encode("utf-16"),
    b'{"m2m:ae": {"api": "Nlight", "x": NaN}}', b'{"m2m:ae": {"api": 7}}', b'{"m2m:ae": []}', b"[]",
    b'{"m2m:ae": {"api": "Nlight"}, "m2m:cnt": {}}', b'{"m2m:cnt": {"api": "Nlight"}}', b"", b"{",
    b"[" * 100000,
])
def test_the_body_is_read_strictly(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_ae_body(body)


def test_a_create_ae_without_api_has_no_app_id() -> None:
    assert parse_ae_body(b'{"m2m:ae": {"rr": true}}') is None
    assert parse_ae_body('{"m2m:ae": {"api": "N\u00e9"}}'.encode()) == "N\u00e9"


# --- over CoAP (oneM2M-TY, Content-Format) ------------------------------------------------------------------

def test_coap_create_ae() -> None:
    assert coap_ae_create(True, 2, 50, AE_BODY, "C") == AECreate("Nlight", "C")
    assert coap_ae_create(True, 2, 10001, AE_BODY, None) == AECreate("Nlight", None)
    assert coap_ae_create(True, 2, None, AE_BODY, "C") == AECreate("Nlight", "C")
    assert coap_ae_create(True, 3, 50, b"x", "C") is None
    assert coap_ae_create(False, 2, 50, b"x", "C") is None
    for content_format in (41, 60, 10000, 10014):  # XML, CBOR, ...
        with pytest.raises(BadRequest, match="must be JSON"):
            coap_ae_create(True, 2, content_format, AE_BODY, "C")
    with pytest.raises(BadRequest, match="Block1"):
        coap_ae_create(True, 2, 50, AE_BODY[:16], "C", block1=True)


# --- identities -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("origin", "cse"), [
    ("/mn-cse-123456", "/mn-cse-123456"), ("//in.provider.com/id-in", "//in.provider.com/id-in"),
    ("//in.provider.com/Slight", None),  # an S-type Absolute AE-ID (D102)
    ("/mn-cse-123456/Clight", None), ("//in.provider.com/id-in/Cx", None), ("Clight", None), ("Slight", None),
    ("/", None), ("//", None), ("//sp/", None), ("", None), (None, None),
])
def test_cse_id_of(origin: str | None, cse: str | None) -> None:
    assert cse_id_of(origin) == cse


@pytest.mark.parametrize("origin", [
    "/id-in",  # its own CSE-ID
    "/id-in/Csmartphone", f"//{SP}/id-in/Csmartphone",  # AEs registered with the relaying CSE (D102)
])
def test_a_cse_sa_relays_its_own_aes(origin: str) -> None:
    check_relayed(cse_sa(), origin, CSE, SP)


@pytest.mark.parametrize("origin", [
    "/other-cse", "//in.provider.com/other-cse",  # another CSE-ID
    "/other-mn/Cx", f"//{SP}/other-mn/Cx",  # AEs of another (possibly registree) CSE (attack17 finding 7)
    "Ssmartphone", f"//{SP}/Ssmartphone",  # S-type AE-IDs are SP-wide: one may be registered here (finding 1)
    f"/{CSE}",  # the gateway's own CSE
    "Clight-AE1", "C", "x",  # CSE-relative stems name AEs of the receiving CSE
    f"/{CSE}/Clight-AE1", f"//{SP}/{CSE}/Clight-AE1", f"//other.sp.com/{CSE}/Cx",  # AEs of the gateway's CSE
    "/id-in/C", "/id-in/Cx/y", "/id-in/Sx", "//OTHER.sp/id-in/Cx", "/id-in//Cx",  # not one C-type AE of id-in
    "", None,
])
def test_a_cse_sa_cannot_speak_for_anyone_else(origin: str | None) -> None:
    with pytest.raises(OriginatorNotAuthenticated):
        check_relayed(cse_sa(), origin, CSE, SP)


def test_the_relay_rule_needs_no_cse_id_or_sp_id() -> None:
    """Attack17 finding 2: without --cse-id / --sp-id the gateway cannot recognise its own AEs; the rule names what
    the relaying CSE may claim instead, so nothing depends on them."""
    for origin in (f"/{CSE}/Clight-AE1", f"//{SP}/{CSE}/Clight-AE1", "Clight-AE1", f"//{SP}/id-in/Cx"):
        with pytest.raises(OriginatorNotAuthenticated):
            check_relayed(cse_sa(), origin, None, None)
    check_relayed(cse_sa(), "/id-in/Cx", None, None)
    foreign = SecurityAssociation("CSE-ID certificate", None, None, "//other.sp/id-x", frozenset({"//other.sp/id-x"}))
    check_relayed(foreign, "//other.sp/id-x/Cx", CSE, SP)
    for origin in ("/id-x/Cx", f"//{SP}/id-x/Cx"):
        with pytest.raises(OriginatorNotAuthenticated):
            check_relayed(foreign, origin, CSE, SP)
    own = SecurityAssociation("CSE-ID certificate", None, None, f"/{CSE}", frozenset({f"/{CSE}"}))
    with pytest.raises(OriginatorNotAuthenticated):  # a certificate of the gateway's own CSE-ID relays nothing
        check_relayed(own, f"/{CSE}/Cx", CSE, SP)


def test_a_cse_sa_registers_no_ae_when_rules_apply() -> None:
    """Attack17 finding 5: a CREATE <AE> on a CSE's SA would skip the rules (any App-ID, a squatted stem)."""
    with pytest.raises(ServiceSubscriptionNotEstablished):
        authorize(cse_sa(), "/id-in/Cx", UnboundPolicy.REJECT, create=AECreate("Nevil", "/id-in/Cx"), rules=RULES)
    authorize(cse_sa(), "/id-in/Cx", UnboundPolicy.REJECT, create=AECreate("Nevil", "/id-in/Cx"))  # no rules


# --- the order of the checks --------------------------------------------------------------------------------

def test_rules_decide_the_from_of_a_create_ae_on_a_credential_only_sa() -> None:
    sa = credential_sa()
    for origin in ("Clight", "C", None, ""):  # explicit, or assigned by the registrar (D98)
        authorize(sa, origin, UnboundPolicy.REJECT, create=AECreate("Nlight", origin), rules=RULES)
    with pytest.raises(AppRuleValidationFailed):
        authorize(sa, "Slight", UnboundPolicy.REJECT, create=AECreate("Nlight", "Slight"), rules=RULES)
    with pytest.raises(AppRuleValidationFailed):
        authorize(sa, "Clight", UnboundPolicy.REJECT, create=AECreate("Nother", "Clight"), rules=RULES)
    with pytest.raises(SecurityAssociationRequired):
        authorize(sa, "/mn-cse-9", UnboundPolicy.REJECT, create=AECreate("Nlight", "/mn-cse-9"), rules=RULES)


def test_no_applicable_rule_is_4128_before_any_from_check() -> None:
    other = SecurityAssociation("'k'", "k@elsewhere.com", "12-k@elsewhere.com", None, frozenset())
    with pytest.raises(ServiceSubscriptionNotEstablished):
        authorize(other, "Clight", UnboundPolicy.REJECT, create=AECreate("Nlight", "Clight"), rules=RULES)


def test_an_entity_bound_sa_must_also_register_as_its_entity() -> None:
    sa = entity_sa("Clight-AE1")
    authorize(sa, "Clight-AE1", UnboundPolicy.REJECT, create=AECreate("Nlight", "Clight-AE1"), rules=RULES)
    with pytest.raises(OriginatorNotAuthenticated):  # the rules admit C*, the SA is associated with Clight-AE1
        authorize(sa, "Clight-AE2", UnboundPolicy.REJECT, create=AECreate("Nlight", "Clight-AE2"), rules=RULES)
    with pytest.raises(AppRuleValidationFailed):  # the rules are checked first
        authorize(sa, "Clight-AE1", UnboundPolicy.REJECT, create=AECreate("Nevil", "Clight-AE1"), rules=RULES)


def test_4107_for_a_cse_id_on_a_credential_only_sa_whatever_the_policy() -> None:
    for policy in UnboundPolicy:
        with pytest.raises(SecurityAssociationRequired):
            authorize(credential_sa(), "/mn-cse-9", policy)
        with pytest.raises(SecurityAssociationRequired):
            authorize(credential_sa(), "//in.provider.com/id-in", policy)
    authorize(credential_sa(), "Clight", UnboundPolicy.FORWARD)  # D4 unchanged for AE-IDs
    with pytest.raises(OriginatorNotAuthenticated):
        authorize(credential_sa(), "Clight", UnboundPolicy.REJECT)
    with pytest.raises(OriginatorNotAuthenticated):  # an SA associated with an AE: the registree is an AE (4106)
        authorize(entity_sa("Clight-AE1"), "/mn-cse-9", UnboundPolicy.REJECT)


def test_non_registration_requests_ignore_rules() -> None:
    authorize(entity_sa("Clight-AE1"), "Clight-AE1", UnboundPolicy.REJECT, rules=RULES)
    with pytest.raises(OriginatorNotAuthenticated):
        authorize(credential_sa(), "Clight", UnboundPolicy.REJECT, rules=RULES)


# --- after the CSE answered ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b'{"m2m:ae": {"api": "Nlight", "lbl": ["a\\\\"]}}', b'{"m2m:ae": {"api": "N\\\\"}}',
    b'{"m2m:ae": {"api": "Nlight", "x\\\\": 1}}',
])
def test_a_string_ending_in_a_backslash_is_refused(body: bytes) -> None:
    """Attack17 finding 3: ACME strips comments from JSON text with a regex that reads ``\\"`` as an escaped quote."""
    with pytest.raises(BadRequest, match="backslash"):
        parse_ae_body(body)
    assert parse_ae_body(b'{"m2m:ae": {"api": "N\\\\x", "lbl": ["\\"a"]}}') == "N\\x"


@pytest.mark.parametrize(("query", "ok"), [
    ("", True), ("?rcn=1", True), ("?rn=x&rcn=1", True), ("?rcn=0", False), ("?rcn=3", False), ("?rcn=", False),
    ("?rcn=1&rcn=2", False), ("?r%63n=0", False), ("?RCN=0", False), ("?rcn=%30", False),
    ("?rt=3", True), ("?rt=1", False), ("?rt=2", False), ("?rt=4", False), ("?rcn=1&rt=3", True),
])
def test_a_create_ae_must_ask_for_the_resource(query: str, ok: bool) -> None:
    """D106 (attack17 findings 8, 9): an answer without the aei binds and counts nothing."""
    if ok:
        assert http_ae_create("POST", "application/json;ty=2", AE_BODY, "C", f"/{CSE}{query}") is not None
        assert coap_ae_create(True, 2, 50, AE_BODY, "C", queries=query.lstrip("?").split("&") if query else ()) \
            is not None
    else:
        with pytest.raises(BadRequest, match=r"rcn|rt"):
            http_ae_create("POST", "application/json;ty=2", AE_BODY, "C", f"/{CSE}{query}")
        if "%" not in query:
            with pytest.raises(BadRequest, match=r"rcn|rt"):
                coap_ae_create(True, 2, 50, AE_BODY, "C", queries=query.lstrip("?").split("&"))


def test_aei_from_the_response() -> None:
    assert aei_from_body(b'{"m2m:ae": {"aei": "C9f2", "api": "Nlight"}}') == "C9f2"
    for bad in (b'{"m2m:ae": {"aei": "C*"}}', b'{"m2m:ae": {"aei": ""}}', b'{"m2m:ae": {"aei": 5}}',
                b'{"m2m:ae": {}}', b'{"m2m:dbg": "x"}', b"", b"<xml/>", b'{"m2m:ae": {"aei": "C a"}}',
                b'{"m2m:ae": {"aei": "C1", "aei": "C2"}}', ('{"m2m:ae": {"aei": "C' + "x" * 300 + '"}}').encode()):
        assert aei_from_body(bad) is None, bad


@pytest.mark.parametrize(("aei", "cse_id", "sp_id", "forms"), [
    # TS-0001 §7.2: stem, SP-relative /CSE-ID/stem, absolute //SP-ID/CSE-ID/stem; S-type: stem and //SP-ID/stem
    ("Cx", CSE, SP, {"Cx", f"/{CSE}/Cx", f"//{SP}/{CSE}/Cx"}),
    ("Cx", CSE, None, {"Cx", f"/{CSE}/Cx"}),
    ("Cx", None, None, {"Cx"}),
    (f"/{CSE}/Cx", CSE, SP, {"Cx", f"/{CSE}/Cx", f"//{SP}/{CSE}/Cx"}),
    (f"/{CSE}/Cx", CSE, None, {"Cx", f"/{CSE}/Cx"}),
    (f"//{SP}/{CSE}/Cx", CSE, SP, {"Cx", f"/{CSE}/Cx", f"//{SP}/{CSE}/Cx"}),
    ("Sx", CSE, SP, {"Sx", f"//{SP}/Sx"}),
    ("Sx", CSE, None, {"Sx"}),
    (f"//other.sp/{CSE}/Cx", CSE, SP, {f"//other.sp/{CSE}/Cx"}),  # another SP's: absolute only (D22)
    ("/Cx", CSE, SP, {"/Cx"}), (f"/{CSE}/Sx", CSE, SP, {f"/{CSE}/Sx"}), ("/a/b/Cx", CSE, SP, {"/a/b/Cx"}),  # odd
])
def test_registered_forms(aei: str, cse_id: str | None, sp_id: str | None, forms: set[str]) -> None:
    assert registered_forms(aei, cse_id, sp_id) == forms


# --- D94: an absolute identity a PSK is bound to (a MAF's sourceMAFClientID) --------------------------------

@pytest.mark.parametrize(("entity", "forms"), [
    (f"//{SP}/{CSE}/CAE1", {f"//{SP}/{CSE}/CAE1", f"/{CSE}/CAE1", "CAE1"}),  # our SP, registered here
    (f"//{SP}/id-in/CAE1", {f"//{SP}/id-in/CAE1", "/id-in/CAE1"}),  # our SP, another CSE: no stem form
    (f"//{SP}/Sphone", {f"//{SP}/Sphone", "Sphone"}),
    (f"//{SP}/id-in", {f"//{SP}/id-in", "/id-in"}),  # an absolute CSE-ID
    (f"//other.sp/{CSE}/CAE1", {f"//other.sp/{CSE}/CAE1"}),  # another SP: the absolute form only (D22)
    ("//other.sp/id-in", {"//other.sp/id-in"}),
    ("Clight-AE1", {"Clight-AE1"}), ("/mn-cse-1", {"/mn-cse-1"}),  # not absolute: as written
])
def test_entity_forms(entity: str, forms: set[str]) -> None:
    from m2msec.gateway.rules import entity_forms

    assert entity_forms(entity, CSE, SP) == forms
    assert entity_forms(entity, CSE, None) == {entity}  # without an SP-ID every absolute identity is foreign


# --- attack17b: the answer's format, the From the gateway can bind ------------------------------------------

@pytest.mark.parametrize(("accept", "ok"), [
    ([], True), (["application/json"], True), (["application/vnd.onem2m-res+json; q=1"], True), (["*/*"], True),
    (["application/json, */*;q=0.1"], True), (["application/cbor"], False), (["application/xml"], False),
    (["application/json, application/cbor"], False), (["application/json", "application/cbor"], False),
    (["application/*"], False), (["APPLICATION/VND.ONEM2M-RES+CBOR"], False),
])
def test_a_create_ae_must_accept_a_json_answer(accept: list[str], ok: bool) -> None:
    """ACME answers a CREATE <AE> in CBOR or XML when asked: the gateway would read no aei (attack17b finding 3)."""
    def create() -> object:
        return http_ae_create("POST", "application/json;ty=2", AE_BODY, "C", "/", accept)
    if ok:
        assert create() is not None
    else:
        with pytest.raises(BadRequest, match="JSON answer"):
            create()


def test_coap_accept_must_be_json() -> None:
    assert coap_ae_create(True, 2, 50, AE_BODY, "C", accept=[50]) is not None
    assert coap_ae_create(True, 2, 50, AE_BODY, "C", accept=[10001]) is not None
    for accept in ([60], [41], [10000], [50, 60]):
        with pytest.raises(BadRequest, match="JSON answer"):
            coap_ae_create(True, 2, 50, AE_BODY, "C", accept=accept)


@pytest.mark.parametrize("origin", ["C" + "x" * 300, "Cx*", "C a", 'C"x', "C,x", "C\\x", "Cé"])
def test_an_explicit_from_the_gateway_cannot_bind_is_refused(origin: str) -> None:
    """It would register at the CSE and never count against D103 (attack17b finding 4)."""
    with pytest.raises(BadRequest, match="From of a CREATE"):
        http_ae_create("POST", "application/json;ty=2", AE_BODY, origin)
    for assigned in (None, "", "C", "S"):
        assert http_ae_create("POST", "application/json;ty=2", AE_BODY, assigned) is not None
