"""The MEF's derivations against computations written here from TS-0003's formulas (never m2msec.mef.kdf's)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from m2msec.errors import IdentifierError
from m2msec.identifiers import KeID
from m2msec.keys.secret import SecretKey
from m2msec.mef import kdf

# TS-0003 §10.3.7's label, typed here from the clause (66 ASCII bytes, no terminator)
LABEL = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"
KE = bytes(range(32))


def expected(ke: bytes, suid: str, target: str) -> bytes:
    return hmac.new(ke, LABEL + suid.encode("ascii") + target.encode("utf-8"), hashlib.sha256).digest()


def test_the_label_is_the_clause_s_66_bytes() -> None:
    assert len(LABEL) == 66 and kdf.USAGE_CONSTRAINED_LABEL == LABEL


@pytest.mark.parametrize(("suid", "target"), [(22, "in-cse.sp.example.com"), (21, "maf.example.com"),
                                              (23, "ae1.sp.example.com"), (25, "x.example")])
def test_usage_constrained_key_is_hmac_sha256_of_label_suid_target(suid: int, target: str) -> None:
    got = kdf.usage_constrained_key(SecretKey(KE), suid, target)
    assert got.reveal() == expected(KE, str(suid), target)
    assert len(got) == 32


def test_regression_values() -> None:
    # design notes §1.3 (self-computed with hmac/hashlib; the spec has no vectors)
    ke = SecretKey(KE)
    assert kdf.usage_constrained_key(ke, 22, "in-cse.sp.example.com").reveal().hex() == \
        "5b6f042d57a06cba3b75e7fecc7607133492a8cedcfa86923ee79a5c7b321551"
    assert kdf.usage_constrained_key(ke, 21, "maf.example.com").reveal().hex() == \
        "f8610e4d1a428f72308e2941f53a1a0fdc1afa7b1dde3ec59fc52381dcbeb66a"
    # the other SUID encoding (one byte 0x16) gives another key: the encoding decision (D184) matters
    assert hmac.new(KE, LABEL + b"\x16" + b"in-cse.sp.example.com", hashlib.sha256).hexdigest() == \
        "9c52be5adaca3564259d2d0468795dffb820dae4268e0866b42925c2a52cbc13"


def test_target_id_is_normalised_before_derivation() -> None:
    # D186: NFKC, no trailing dot, lowercase
    want = expected(KE, "22", "in-cse.sp.example.com")
    for variant in ("IN-CSE.sp.Example.COM", "in-cse.sp.example.com.", "\uff49\uff4e-cse.sp.example.com"):
        assert kdf.usage_constrained_key(SecretKey(KE), 22, variant).reveal() == want


@pytest.mark.parametrize("suid", [31, 0, 99, -1, 220])
def test_a_suid_not_in_ts0004_is_refused(suid: int) -> None:
    with pytest.raises(IdentifierError):
        kdf.usage_constrained_key(SecretKey(KE), suid, "in-cse.sp.example.com")


@pytest.mark.parametrize("target", ["", "not a host", "a..b", "-x.example"])
def test_a_target_that_is_no_fqdn_is_refused(target: str) -> None:
    with pytest.raises(IdentifierError):
        kdf.usage_constrained_key(SecretKey(KE), 22, target)


def test_bootstrap_split_is_id_first_then_key() -> None:
    out = bytes(range(48, 96))
    relative, ke = kdf.split_bootstrap(SecretKey(out))
    assert relative == out[0:16] and ke.reveal() == out[16:48]
    assert str(kdf.key_id(relative, "MEF.Example.com")) == out[0:16].hex() + "@mef.example.com"
    assert KeID.parse(out[0:16].hex().upper() + "@mef.example.com").relative_ke_id == out[0:16]
    with pytest.raises(ValueError):
        kdf.split_bootstrap(SecretKey(out[:47]))
    assert kdf.EXPORTER_BOOTSTRAP_LABEL == "EXPORTER-oneM2M-Bootstrap" and kdf.BOOTSTRAP_EXPORT_LENGTH == 48
