"""Service subscription rules for CREATE <AE> (m2msec.gateway.subscription, issue 17): pure, no sockets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2msec.errors import (
    AppRuleValidationFailed,
    ConfigurationError,
    OneM2MError,
    ServiceSubscriptionNotEstablished,
)
from m2msec.gateway.rules import CredentialResolver, UnboundPolicy, associate, check_originator
from m2msec.gateway.subscription import (
    MAX_PATTERN_LENGTH,
    MAX_PATTERNS_PER_FIELD,
    MAX_RULES,
    AppRule,
    RuleTable,
    check_ae_registration,
    covers_kind,
    load_rules,
    match,
    rules_from_json,
)
from m2msec.tls.engine import SessionInfo

# TS-0013 TD_M2M_SE_01: <m2m:asar rn="asar"><aci>00-test@onem2m.com</aci><aai>APP01</aai><aae>AE-ID</aae></m2m:asar>
TD_SE_01 = {"rn": "asar", "aci": "00-test@onem2m.com", "aai": "APP01", "aae": "AE-ID"}
CRED = "12-AE123456789012-Light@in.provider.com"  # Credential-ID of the TR-0038 KpsaID (D2)


def reference_match(pattern: str, subject: str) -> bool:
    """The obvious definition: each '*' is '.*', everything else escaped."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, subject, re.DOTALL) is not None


# --- the matcher -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "subject", "expected"), [
    ("C*", "C123", True), ("C*", "C", True), ("C*", "S123", False), ("C*", "xC1", False),
    ("S*", "Slight", True), ("S*", "C1", False),
    ("*", "", True), ("*", "anything at all", True),
    ("C123*X", "C123X", True), ("C123*X", "C123abcX", True), ("C123*X", "C123abc", False),
    ("C123*X", "C12X", False), ("C123*X", "C123XX", True), ("C123*X", "xC123X", False),
    ("AE-ID", "AE-ID", True), ("AE-ID", "AE-ID2", False), ("AE-ID", "ae-id", False),
    ("a.b", "axb", False), ("a+", "aa", False), ("[ab]", "a", False), ("?", "x", False),  # only '*' is special
    ("*@onem2m.com", "00-test@onem2m.com", True), ("*@onem2m.com", "00-test@onem2m.comx", False),
    ("a*b*c", "abc", True), ("a*b*c", "aXbYc", True), ("a*b*c", "acb", False), ("ab*ba", "aba", False),
])
def test_match_examples(pattern: str, subject: str, expected: bool) -> None:
    assert match(pattern, subject) is expected
    assert reference_match(pattern, subject) is expected


@given(st.text(alphabet="ab*.?[]", max_size=8), st.text(alphabet="ab*.?[]", max_size=12))
def test_match_agrees_with_reference(pattern: str, subject: str) -> None:
    assert match(pattern, subject) == reference_match(pattern, subject)


@given(st.text(alphabet="ab*", min_size=1, max_size=6), st.text(alphabet="ab", max_size=10))
def test_match_agrees_with_reference_on_matching_subjects(pattern: str, fill: str) -> None:
    subject = pattern.replace("*", fill)  # a subject that matches by construction
    assert match(pattern, subject) and reference_match(pattern, subject)


@given(st.text(alphabet="CS1*", min_size=1, max_size=6), st.sampled_from("CS"))
def test_covers_kind_means_every_stem_of_the_kind_matches(pattern: str, kind: str) -> None:
    stems = [kind + tail for tail in ("", "1", "S", "C", "C1S", "11CS")]
    if covers_kind(pattern, kind):
        assert all(match(pattern, s) for s in stems)
    else:  # some stem of that kind fails: one of these, or a long one avoiding the pattern's literals
        probes = [*stems, kind + "x" * 8]
        assert not all(match(pattern, s) for s in probes)


def test_match_is_not_quadratic_on_a_hostile_subject() -> None:
    # a backtracking matcher tries every split of the a's between the wildcards before giving up (never ends)
    pattern = "*a" * (MAX_PATTERN_LENGTH // 2 - 2) + "*b*"
    assert not match(pattern, "a" * 100_000)  # greedy segments: one pass, no backtracking
    assert match(pattern, "a" * 100_000 + "b")


# --- the registration check --------------------------------------------------------------------------------

LIGHTS = AppRule(credential_ids=(CRED,), app_ids=("Nlight*",), ae_ids=("C*",))
SENSORS = AppRule(credential_ids=("12-*@in.provider.com",), app_ids=("Nsensor",), ae_ids=("Csensor1", "C123*X"))


def test_allowed() -> None:
    check_ae_registration(CRED, "Nlight01", "Clight-AE1", [LIGHTS])
    check_ae_registration(CRED, "Nsensor", "C123abcX", [LIGHTS, SENSORS])  # the second applicable rule admits it
    check_ae_registration(CRED, "Nsensor", "Csensor1", [SENSORS])


def test_4128_when_no_rule_applies_to_the_credential() -> None:
    with pytest.raises(ServiceSubscriptionNotEstablished) as info:
        check_ae_registration("12-other@elsewhere.com", "Nlight01", "Clight-AE1", [LIGHTS, SENSORS])
    assert info.value.rsc == 4128 and info.value.http_status == 403
    with pytest.raises(ServiceSubscriptionNotEstablished):
        check_ae_registration(CRED, "Nlight01", "Clight-AE1", [])
    with pytest.raises(ServiceSubscriptionNotEstablished):  # an SA without a Credential-ID
        check_ae_registration(None, "Nlight01", "Clight-AE1", [LIGHTS])


@pytest.mark.parametrize(("app_id", "from_"), [
    ("Nsensor", "Clight-AE1"),  # App-ID of no applicable rule
    ("Nlight01", "Slight"),  # AE-ID not admitted (C* only)
    ("Nsensor", "C123abc"),  # C123*X needs the final X
    ("Nlight01", "Csensor1X"),  # each part admitted by a different rule: not enough
    (None, "Clight-AE1"), ("", "Clight-AE1"),  # no App-ID admits nothing
])
def test_4126_when_applicable_rules_do_not_admit(app_id: str | None, from_: str) -> None:
    rules = [LIGHTS, AppRule(("*",), ("Nsensor",), ("Csensor1X",))]
    if from_ == "Csensor1X":
        rules = [AppRule((CRED,), ("Nlight01",), ("Cother",)), AppRule((CRED,), ("Nother",), ("Csensor1X",))]
    with pytest.raises(AppRuleValidationFailed) as info:
        check_ae_registration(CRED, app_id, from_, rules)
    assert info.value.rsc == 4126 and info.value.http_status == 403
    assert isinstance(info.value, OneM2MError)


@pytest.mark.parametrize("from_", [None, "", "C"])
def test_registrar_assigned_c_stem_needs_a_pattern_covering_every_c_stem(from_: str | None) -> None:
    for aae in ("C*", "*", "*C*", "C**"):
        check_ae_registration(CRED, "Nlight01", from_, [AppRule((CRED,), ("Nlight01",), (aae,))])
    for aae in ("C123", "C1*", "S*", "*X", "C"):
        with pytest.raises(AppRuleValidationFailed):
            check_ae_registration(CRED, "Nlight01", from_, [AppRule((CRED,), ("Nlight01",), (aae,))])


def test_registrar_assigned_s_stem() -> None:
    check_ae_registration(CRED, "Nlight01", "S", [AppRule((CRED,), ("Nlight01",), ("S*",))])
    with pytest.raises(AppRuleValidationFailed):
        check_ae_registration(CRED, "Nlight01", "S", [AppRule((CRED,), ("Nlight01",), ("C*",))])


def test_ts_0013_td_m2m_se_01_example() -> None:
    (rule,) = rules_from_json([{"m2m:ignored": 1, **TD_SE_01}])
    assert rule == AppRule(("00-test@onem2m.com",), ("APP01",), ("AE-ID",))
    check_ae_registration("00-test@onem2m.com", "APP01", "AE-ID", [rule])
    with pytest.raises(AppRuleValidationFailed):
        check_ae_registration("00-test@onem2m.com", "APP02", "AE-ID", [rule])
    with pytest.raises(AppRuleValidationFailed):
        check_ae_registration("00-test@onem2m.com", "APP01", "AE-ID2", [rule])
    with pytest.raises(ServiceSubscriptionNotEstablished):
        check_ae_registration("00-other@onem2m.com", "APP01", "AE-ID", [rule])


# --- parsing -----------------------------------------------------------------------------------------------

def test_json_apci_and_aci_alias_lists_and_single_strings() -> None:
    new = AppRule.from_json({"apci": ["a", "b*"], "aai": "APP01", "aae": ["C*", "S*"], "ari": ["r1"]})
    old = AppRule.from_json({"aci": ["a", "b*"], "aai": ["APP01"], "aae": ["C*", "S*"], "ari": "r1"})
    assert new == old == AppRule(("a", "b*"), ("APP01",), ("C*", "S*"), ("r1",))
    assert AppRule.from_json({"apci": "a", "aai": "x", "aae": "C*"}).role_ids == ()


@pytest.mark.parametrize(("data", "message"), [
    ({"aai": "x", "aae": "C*"}, "rule 0: missing field apci"),
    ({"apci": "a", "aae": "C*"}, "rule 0: missing field aai"),
    ({"apci": "a", "aai": "x"}, "rule 0: missing field aae"),
    ({"apci": "a", "aci": "a", "aai": "x", "aae": "C*"}, "both apci and aci"),
    ({"apci": [], "aai": "x", "aae": "C*"}, "rule 0.apci: no pattern"),
    ({"aci": "", "aai": "x", "aae": "C*"}, "rule 0.aci[0]: empty pattern"),
    ({"apci": "a", "aai": ["x", 3], "aae": "C*"}, "rule 0.aai[1]: a pattern must be a string"),
    ({"apci": "a", "aai": "x", "aae": {"C*": 1}}, "rule 0.aae: must be a string or a list"),
    ({"apci": "a", "aai": "x\n", "aae": "C*"}, "rule 0.aai[0]: pattern 'x\\n' contains a control character"),
    ({"apci": "a", "aai": "x", "aae": "C\x85"}, "control character"),
    ({"apci": "a" * (MAX_PATTERN_LENGTH + 1), "aai": "x", "aae": "C*"}, f"longer than {MAX_PATTERN_LENGTH}"),
    ({"apci": ["a"] * (MAX_PATTERNS_PER_FIELD + 1), "aai": "x", "aae": "C*"}, f"more than {MAX_PATTERNS_PER_FIELD}"),
    ({"apci": "a", "aai": "x", "aae": "C*", "ari": 5}, "rule 0.ari: must be a string or a list"),
])
def test_json_errors_name_the_rule_and_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        rules_from_json([data], "CSE resources")


def test_json_at_most_max_rules() -> None:
    rule = {"apci": "a", "aai": "x", "aae": "C*"}
    assert len(rules_from_json([rule] * MAX_RULES)) == MAX_RULES
    with pytest.raises(ConfigurationError, match=f"more than {MAX_RULES} rules"):
        rules_from_json([rule] * (MAX_RULES + 1))


def test_pattern_at_the_length_limit_is_accepted() -> None:
    rule = AppRule.from_json({"apci": "a" * MAX_PATTERN_LENGTH, "aai": "x", "aae": "C*"})
    assert rule.credential_ids == ("a" * MAX_PATTERN_LENGTH,)


RULE_FILE = """\
# two rules
[[app_rule]]
apci = ["12-AE123456789012-Light@in.provider.com"]
aai = ["Nlight*"]
aae = ["C*"]

[[app_rule]]
aci = "00-test@onem2m.com"   # TS-0013 name
aai = "APP01"
aae = "AE-ID"
ari = ["role1"]
"""


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(RULE_FILE, encoding="utf-8")
    table = RuleTable.from_file(path)
    assert table.rules == (LIGHTS, AppRule(("00-test@onem2m.com",), ("APP01",), ("AE-ID",), ("role1",)))
    table.check_ae_registration(CRED, "Nlight01", None)
    table.check_ae_registration("00-test@onem2m.com", "APP01", "AE-ID")
    with pytest.raises(ServiceSubscriptionNotEstablished):
        table.check_ae_registration("12-x@y.com", "APP01", "AE-ID")
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    assert len(RuleTable.from_file(empty)) == 0


@pytest.mark.parametrize(("text", "message"), [
    ("[[app_rule]]\napci = 'a'\naai = 'x'\naae = 'C*'\nallowedAEs = 'S*'\n", "app_rule 0: unknown field 'allowedAEs'"),
    ("[[app_rule]]\napci = 'a'\naai = 'x'\naae = 'C*'\n[[app_rule]]\napci = 'a'\naae = 'C*'\n",
     "app_rule 1: missing field aai"),
    ("[[app_rule]]\napci = 'a'\naai = 'x'\naae = ['C*', 7]\n", "app_rule 0.aae[1]: a pattern must be a string"),
    ("[[app_rule]]\napci = 'a'\naai = 'x'\naae = ''\n", "app_rule 0.aae[0]: empty pattern"),
    ("[app_rule]\napci = 'a'\naai = 'x'\naae = 'C*'\n", "app_rule must be an array of tables"),
    ("[[rule]]\napci = 'a'\n", "unknown key 'rule'"),
    ("[[app_rule]\n", "not valid TOML"),
])
def test_bad_toml_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError) as info:
        load_rules(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_rules(tmp_path / "missing.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[[app_rule]]\napci = '\xe9'\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_rules(path)


# --- the CredentialResolver seam ---------------------------------------------------------------------------

def test_rule_table_resolves_the_literal_allowed_aes() -> None:
    table = RuleTable([LIGHTS, SENSORS, AppRule(("other",), ("x",), ("Cother",))])
    resolver: CredentialResolver = table
    assert resolver.resolve(CRED) == frozenset({"Csensor1"})  # C* and C123*X name no identity (D99)
    assert resolver.resolve("12-nobody@elsewhere.com") is None
    assert RuleTable([LIGHTS]).resolve(CRED) == frozenset()


def test_rule_table_binds_a_psk_sa_through_associate() -> None:
    session = SessionInfo(is_server=True, version="TLSv1.2", cipher="PSK-AES128-CBC-SHA256",
                          psk_identity="AE123456789012-Light@in.provider.com", entity=None, server_name=None,
                          identity_hint=None, session_id=b"")
    table = RuleTable([AppRule((CRED,), ("Nlight*",), ("Clight-AE1",))])
    sa = associate(session, table)
    assert sa.credential_id == CRED and sa.allowed_originators == frozenset({"Clight-AE1"})
    check_originator(sa, "Clight-AE1", UnboundPolicy.REJECT)
    unbound = associate(session, RuleTable([LIGHTS]))  # only a wildcard aae: no identity to bind
    assert not unbound.bound
