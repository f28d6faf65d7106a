"""Tests for m2msec.identifiers (TS-0003 §10.3.4-§10.6, §12.2, §12.3.2.1; TS-0004 Table 6.3.4.2.39-1)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2msec.errors import IdentifierError
from m2msec.identifiers import (
    MAX_PSK_IDENTITY_LENGTH,
    SUID,
    CredentialID,
    CredIDType,
    KeID,
    KmID,
    KpsaID,
    MAFKeyIdentifier,
    SUIDKind,
    SUIDScope,
    validate_fqdn,
    validate_rel_key_id,
)

# --- strategies (canonical forms: FQDNs lowercase, hex lowercase) -------------------------------------------

labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)
fqdns = st.lists(labels, min_size=1, max_size=4).map(".".join)
relatives = st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True)
cred_values = st.from_regex(r"[A-Za-z0-9._@-]{1,60}", fullmatch=True)
key16 = st.binary(min_size=16, max_size=16)

ALL_PARSERS: list[Callable[[str], object]] = [
    KpsaID.parse,
    KmID.parse,
    KeID.parse,
    MAFKeyIdentifier.parse,
    CredentialID.parse,
    SUID.parse,
    validate_fqdn,
    validate_rel_key_id,
]


# --- spec examples ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "relative", "fqdn"),
    [
        # TS-0013 TD_M2M_SE_01 (PSK SAEF interop): KpsaId = test@onem2m.com
        ("test@onem2m.com", "test", "onem2m.com"),
        # TR-0038 example (notes §10; not verifiable in public sources)
        ("AE123456789012-Light@in.provider.com", "AE123456789012-Light", "in.provider.com"),
        ("AE123456789015-Light@in.provider.com", "AE123456789015-Light", "in.provider.com"),
        # IRIL (KICS UET Lahore) code, notes §10
        ("MN123_Gateway@in.provider.com", "MN123_Gateway", "in.provider.com"),
    ],
)
def test_kpsa_id_spec_examples(text: str, relative: str, fqdn: str) -> None:
    kpsa = KpsaID.parse(text)
    assert (kpsa.relative, kpsa.issuer_fqdn) == (relative, fqdn)
    assert str(kpsa) == text


def test_credential_id_spec_example() -> None:
    # TS-0003 §12.2, Table 12.2-1: sec:credentialID example
    cred = CredentialID.parse("10-thiskey@mymef.com")
    assert cred.type is CredIDType.SYMMETRIC_KEY_MEF
    assert cred.value == "thiskey@mymef.com"
    assert str(cred) == "10-thiskey@mymef.com"


@pytest.mark.parametrize("rel", ["1he83he", "my-key_name", "firstname.lastname"])  # TS-0003 §12.2 examples
def test_rel_key_id_spec_examples(rel: str) -> None:
    assert validate_rel_key_id(rel) == rel


@pytest.mark.parametrize("rel", ["", "a b", "a@b", "a/b", "é", "a\n"])
def test_rel_key_id_rejects(rel: str) -> None:
    with pytest.raises(IdentifierError, match="sec:relKeyID"):
        validate_rel_key_id(rel)


# --- FQDN ---------------------------------------------------------------------------------------------------


def test_fqdn_lowercased_and_single_label_accepted() -> None:
    assert validate_fqdn("In.Provider.COM") == "in.provider.com"
    assert validate_fqdn("localhost") == "localhost"
    assert validate_fqdn("a" * 63 + ".com") == "a" * 63 + ".com"
    assert KpsaID.parse("x@In.Provider.COM") == KpsaID.parse("x@in.provider.com")


@pytest.mark.parametrize(
    ("fqdn", "problem"),
    [
        ("", "is empty"),
        ("example.com.", "trailing '.'"),
        ("a..b", "empty label"),
        (".a", "empty label"),
        ("a" * 64 + ".com", "longer than 63"),
        (".".join(["a" * 63] * 4), "longer than 253"),
        ("-a.com", "starts or ends with '-'"),
        ("a-.com", "starts or ends with '-'"),
        ("a_b.com", "contains '_'"),
        ("bücher.de", "contains 'ü'"),
        ("a b.com", "contains ' '"),
    ],
)
def test_fqdn_rejects(fqdn: str, problem: str) -> None:
    with pytest.raises(IdentifierError, match="FQDN") as info:
        validate_fqdn(fqdn)
    assert problem in str(info.value)
    with pytest.raises(IdentifierError, match="Issuer-FQDN") as info:
        KpsaID.parse(f"x@{fqdn}")
    assert problem in str(info.value)


def test_fqdn_total_length_boundary() -> None:
    ok = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters
    assert len(ok) == 253
    assert validate_fqdn(ok) == ok
    with pytest.raises(IdentifierError):
        validate_fqdn(ok + "a")


# --- KpsaID -------------------------------------------------------------------------------------------------


def test_kpsa_id_message_format() -> None:
    with pytest.raises(IdentifierError) as info:
        KpsaID.parse("abc")
    assert str(info.value) == "malformed KpsaID 'abc': missing '@Issuer-FQDN'"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("@onem2m.com", "empty Issuer_Relative_KpsaID"),
        ("a@b@onem2m.com", "more than one '@'"),
        ("te st@onem2m.com", "contains ' '"),
        ("tést@onem2m.com", "contains 'é'"),
        ("test@", "Issuer-FQDN is empty"),
        ("test@onem2m.com.", "trailing '.'"),
    ],
)
def test_kpsa_id_rejects(text: str, problem: str) -> None:
    with pytest.raises(IdentifierError, match="malformed KpsaID") as info:
        KpsaID.parse(text)
    assert problem in str(info.value)


def test_kpsa_id_psk_identity_length_limit() -> None:
    fqdn = "x.com"
    at_limit = "a" * (MAX_PSK_IDENTITY_LENGTH - 1 - len(fqdn)) + "@" + fqdn
    assert MAX_PSK_IDENTITY_LENGTH == 256
    assert str(KpsaID.parse(at_limit)) == at_limit
    with pytest.raises(IdentifierError, match="257 bytes"):
        KpsaID.parse("a" + at_limit)


def test_message_truncates_long_identifier() -> None:
    text = "x" * 500
    with pytest.raises(IdentifierError) as info:
        KpsaID.parse(text)
    message = str(info.value)
    assert repr("x" * 80) + "..." in message
    assert "x" * 81 not in message
    assert "\n" not in message


def test_constructor_validates() -> None:
    with pytest.raises(IdentifierError):
        KpsaID("a@b", "onem2m.com")
    assert KpsaID("test", "OneM2M.com").issuer_fqdn == "onem2m.com"


@given(relatives, fqdns)
def test_kpsa_id_round_trip(relative: str, fqdn: str) -> None:
    text = f"{relative}@{fqdn}"
    kpsa = KpsaID.parse(text)
    assert str(kpsa) == text
    assert KpsaID.parse(str(kpsa)) == kpsa
    assert KpsaID.parse(f"{relative}@{fqdn.upper()}") == kpsa


# --- KmID ---------------------------------------------------------------------------------------------------


def test_km_id_relative_part_case_insensitive() -> None:
    a = KmID.parse("Device-01@maf.example.com")
    b = KmID.parse("dEVICE-01@MAF.Example.com")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert str(a) == "Device-01@maf.example.com"
    assert str(b) == "dEVICE-01@maf.example.com"
    assert a != KmID.parse("Device-02@maf.example.com")
    assert a != KpsaID.parse("Device-01@maf.example.com")


def test_km_id_rejects() -> None:
    with pytest.raises(IdentifierError, match=r"malformed KmID 'km': missing '@MAF-FQDN'"):
        KmID.parse("km")
    with pytest.raises(IdentifierError, match="MAF_RELATIVE_KmID contains"):
        KmID.parse("k+m@maf.example.com")


@given(relatives, fqdns)
def test_km_id_round_trip(relative: str, fqdn: str) -> None:
    text = f"{relative}@{fqdn}"
    km = KmID.parse(text)
    assert str(km) == text
    assert KmID.parse(str(km)) == km
    assert KmID.parse(f"{relative.swapcase()}@{fqdn}") == km


# --- KeID / MAF Key Identifier ------------------------------------------------------------------------------


def test_ke_id_accepts_uppercase_emits_lowercase() -> None:
    ke = KeID.parse("00112233445566778899AABBCCDDEEFF@MEF.Example.com")
    assert ke.relative_ke_id == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert ke.mef_fqdn == "mef.example.com"
    assert str(ke) == "00112233445566778899aabbccddeeff@mef.example.com"
    assert ke == KeID.parse(str(ke))
    assert KeID.from_parts(bytes(range(16)), "mef.example.com") == KeID.parse(
        "000102030405060708090a0b0c0d0e0f@mef.example.com"
    )


def test_maf_key_identifier_shape() -> None:
    key = MAFKeyIdentifier.parse("FFEEDDCCBBAA99887766554433221100@maf.example.com")
    assert key.kc_id == bytes.fromhex("ffeeddccbbaa99887766554433221100")
    assert key.maf_fqdn == "maf.example.com"
    assert str(key) == "ffeeddccbbaa99887766554433221100@maf.example.com"
    assert MAFKeyIdentifier.from_parts(key.kc_id, "MAF.example.com") == key


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("00" * 15 + "@mef.example.com", "must be 32 hex digits"),
        ("00" * 17 + "@mef.example.com", "must be 32 hex digits"),
        ("0" * 31 + "g@mef.example.com", "non-hex 'g'"),
        ("00" * 16, "missing '@MEF-FQDN'"),
        ("00" * 16 + "@mef_x.com", "MEF-FQDN label"),
    ],
)
def test_ke_id_rejects(text: str, problem: str) -> None:
    with pytest.raises(IdentifierError, match="malformed KeID") as info:
        KeID.parse(text)
    assert problem in str(info.value)


def test_ke_id_from_parts_rejects_wrong_length() -> None:
    with pytest.raises(IdentifierError, match="RelativeKeID must be 16 bytes, got 15"):
        KeID.from_parts(bytes(15), "mef.example.com")
    with pytest.raises(IdentifierError, match=r"RelativeKeyID must be 16 bytes, got 17"):
        MAFKeyIdentifier.from_parts(bytes(17), "maf.example.com")


@given(key16, fqdns)
def test_ke_id_round_trip(raw: bytes, fqdn: str) -> None:
    text = f"{raw.hex()}@{fqdn}"
    ke = KeID.parse(text)
    assert str(ke) == text
    assert KeID.parse(str(ke)) == ke == KeID.from_parts(raw, fqdn)
    assert KeID.parse(f"{raw.hex().upper()}@{fqdn}") == ke


@given(key16, fqdns)
def test_maf_key_identifier_round_trip(raw: bytes, fqdn: str) -> None:
    text = f"{raw.hex()}@{fqdn}"
    key = MAFKeyIdentifier.parse(text)
    assert str(key) == text
    assert MAFKeyIdentifier.parse(str(key)) == key == MAFKeyIdentifier.from_parts(raw, fqdn)


# --- Credential-ID ------------------------------------------------------------------------------------------


def test_cred_id_type_values() -> None:
    # TS-0003 §12.3.2.1, Table 12.3.2.1-1
    expected = {10, 11, 12, 13, 14, 15, 16, 30, 31, 32, 33, 34, 41, 42, 43, 44, 45, 51, 52, 53, 54, 55}
    assert {int(t) for t in CredIDType} == expected
    assert int(CredIDType.SYMMETRIC_KEY_SAEF) == 12
    assert int(CredIDType.RAW_PUBLIC_KEY_TLS) == 30
    assert int(CredIDType.NODE_ID_CERTIFICATE_TLS) == 34


def test_credential_id_splits_at_first_dash() -> None:
    cred = CredentialID.parse("12-AE-1@x.com")
    assert cred.type is CredIDType.SYMMETRIC_KEY_SAEF
    assert cred.value == "AE-1@x.com"
    assert str(cred) == "12-AE-1@x.com"


def test_credential_id_unknown_type_kept_as_int() -> None:
    cred = CredentialID.parse("99-abc")
    assert cred.type == 99
    assert not isinstance(cred.type, CredIDType)
    assert str(cred) == "99-abc"


def test_credential_id_rejects_ts0013_type_00() -> None:
    # TS-0013 TD_M2M_SE_01: <aci>00-test@onem2m.com</aci> -- 0 is not a sec:credIDTypeID
    with pytest.raises(IdentifierError, match="credIDTypeID 0 is not a valid sec:credIDTypeID"):
        CredentialID.parse("00-test@onem2m.com")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("12", "missing '-'"),
        ("-abc", "is not a decimal integer"),
        ("ab-c", "is not a decimal integer"),
        ("+12-abc", "is not a decimal integer"),
        ("012-abc", "leading zero"),
        ("12-", "empty value"),
        ("12-a b", "contains ' '"),
        ("12-a/b", "contains '/'"),
        ("1" * 10 + "-abc", "more than 9 digits"),
        ("١٢-abc", "is not a decimal integer"),  # Arabic-Indic digits
    ],
)
def test_credential_id_rejects(text: str, problem: str) -> None:
    with pytest.raises(IdentifierError, match="malformed Credential-ID") as info:
        CredentialID.parse(text)
    assert problem in str(info.value)


def test_credential_id_constructor_validates_type() -> None:
    with pytest.raises(IdentifierError, match="positive integer"):
        CredentialID(0, "abc")
    with pytest.raises(IdentifierError, match="positive integer"):
        CredentialID(True, "abc")
    assert CredentialID(12, "x").type is CredIDType.SYMMETRIC_KEY_SAEF
    assert CredentialID(12, "x") == CredentialID(CredIDType.SYMMETRIC_KEY_SAEF, "x")


def test_credential_id_for_kpsa_id() -> None:
    # TS-0003 §8.2.2.1: "Credential-ID formed from KpsaId" -> type 12 (KpsaID or KcID, §12.3.2.1)
    cred = CredentialID.for_kpsa_id("test@onem2m.com")
    assert str(cred) == "12-test@onem2m.com"
    assert CredentialID.for_kpsa_id(KpsaID.parse("AE123-LOCK@In.Provider.com")) == CredentialID.parse(
        "12-AE123-LOCK@in.provider.com"
    )
    with pytest.raises(IdentifierError, match="KpsaID"):
        CredentialID.for_kpsa_id("no-at-sign")


@given(st.integers(min_value=1, max_value=999_999_999), cred_values)
def test_credential_id_round_trip(type_id: int, value: str) -> None:
    text = f"{type_id}-{value}"
    cred = CredentialID.parse(text)
    assert (int(cred.type), cred.value) == (type_id, value)
    assert str(cred) == text
    assert CredentialID.parse(str(cred)) == cred


# --- SUID ---------------------------------------------------------------------------------------------------


def test_suid_values_and_digits() -> None:
    # TS-0004 Table 6.3.4.2.39-1
    expected = {10, 11, 12, 13, 14, 15, 21, 22, 23, 24, 25, 32, 33, 34, 35, 40, 41, 42, 43, 44, 45}
    assert {int(s) for s in SUID} == expected
    for suid in SUID:
        assert SUID.parse(str(int(suid))) is suid
        assert int(suid) == 10 * suid.kind + suid.scope
    assert SUID.parse("22").kind is SUIDKind.RSPF_SYMMETRIC
    assert SUID.parse("22").scope is SUIDScope.SAEF
    assert SUID.parse("32") is SUID.MAF_SYMMETRIC_SAEF
    assert SUID.parse("21") is SUID.RSPF_SYMMETRIC_MAF


def test_suid_rejects_31_with_spec_reference() -> None:
    with pytest.raises(IdentifierError, match=r"8\.3\.9\.9\.2"):
        SUID.parse("31")


@pytest.mark.parametrize(
    "text", ["", "0", "20", "30", "36", "46", "022", " 22", "22 ", "+22", "2 2", "x", "1" * 5000]
)
def test_suid_rejects(text: str) -> None:
    with pytest.raises(IdentifierError, match="malformed SUID"):
        SUID.parse(text)


# --- fuzz: parse returns or raises IdentifierError, nothing else --------------------------------------------


def _parse_or_identifier_error(parser: Callable[[str], object], text: str) -> None:
    try:
        result = parser(text)
    except IdentifierError as exc:
        message = str(exc)
        assert "\n" not in message
        assert len(message) < 400
    else:
        assert result is not None


@pytest.mark.parametrize("parser", ALL_PARSERS)
@given(text=st.text())
def test_fuzz_any_text(parser: Callable[[str], object], text: str) -> None:
    _parse_or_identifier_error(parser, text)


@pytest.mark.parametrize("parser", ALL_PARSERS)
@given(text=st.text(alphabet="aZ09.-_@fF \n0", max_size=300))
def test_fuzz_identifier_alphabet(parser: Callable[[str], object], text: str) -> None:
    _parse_or_identifier_error(parser, text)


@pytest.mark.parametrize("parser", ALL_PARSERS)
@pytest.mark.parametrize("bad", [None, 12, b"test@onem2m.com"])
def test_non_str_input_is_identifier_error(parser: Callable[[str], object], bad: object) -> None:
    with pytest.raises(IdentifierError, match="expected str"):
        parser(bad)  # type: ignore[arg-type]
