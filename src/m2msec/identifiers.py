"""oneM2M security identifiers: validation, parsing and canonical wire forms.

Owns the text formats of TS-0003 §10.3.4 (KeID), §10.3.5 (MAF Key Identifier), §10.4 and §12.3.2.1
(Credential-ID, sec:credIDTypeID), §10.5 (KpsaID), §10.6 (KmID), §12.2 (sec:relKeyID) and TS-0004
Table 6.3.4.2.39-1 (m2m:suid), plus the shared FQDN rule they use.

The module is pure: no I/O, no global state, imports only the standard library and :mod:`m2msec.errors`.
Malformed input raises :class:`~m2msec.errors.IdentifierError` (a ``ValueError``) and nothing else; its
one-line message names the identifier and the problem (identifiers are not secrets; shown truncated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Self

from m2msec.errors import IdentifierError

__all__ = [
    "MAX_FQDN_LENGTH",
    "MAX_PSK_IDENTITY_LENGTH",
    "SUID",
    "CredIDType",
    "CredentialID",
    "KeID",
    "KmID",
    "KpsaID",
    "MAFKeyIdentifier",
    "SUIDKind",
    "SUIDScope",
    "validate_fqdn",
    "validate_rel_key_id",
]

#: Largest ``psk_identity`` in bytes (OpenSSL ``PSK_MAX_IDENTITY_LEN``). KpsaID, KmID, KeID and the MAF
#: Key Identifier are all sent verbatim as ``psk_identity``, so all four are bounded by it.
MAX_PSK_IDENTITY_LENGTH = 256
#: RFC 1123 host name limit (characters, without a trailing dot).
MAX_FQDN_LENGTH = 253
_MAX_LABEL_LENGTH = 63
_SHOW_LIMIT = 80

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_LABEL_CHAR = re.compile(r"[A-Za-z0-9-]")
_REL_CHAR = re.compile(r"[A-Za-z0-9._-]")
_CRED_VALUE_CHAR = re.compile(r"[A-Za-z0-9._@-]")
_HEX_CHAR = re.compile(r"[0-9A-Fa-f]")
_HEX_16_BYTES = re.compile(r"[0-9A-Fa-f]{32}")
_DECIMAL = re.compile(r"[0-9]+")
_REL_ALLOWED = "allowed: A-Z a-z 0-9 . _ -"


def _show(text: str) -> str:
    """``repr`` of *text*, at most about 80 characters (keeps messages on one line and short: the repr of a
    non-ASCII character can take ten)."""
    shown = repr(text[:_SHOW_LIMIT])
    if len(shown) > _SHOW_LIMIT + 2:
        return shown[:_SHOW_LIMIT] + "..."
    return shown + ("..." if len(text) > _SHOW_LIMIT else "")


def _error(what: str, text: str, problem: str) -> IdentifierError:
    return IdentifierError(f"malformed {what} {_show(text)}: {problem}")


def _first_bad_char(text: str, allowed: re.Pattern[str]) -> str | None:
    return next((ch for ch in text if not allowed.fullmatch(ch)), None)


def _require_str(what: str, text: object) -> str:
    if not isinstance(text, str):
        raise IdentifierError(f"malformed {what}: expected str, got {type(text).__name__}")
    return text


def _fqdn_problem(fqdn: str) -> str | None:
    """What is wrong with *fqdn* as an RFC 1123 host name (phrased to follow its role name), or None."""
    if not fqdn:
        return "is empty"
    if len(fqdn) > MAX_FQDN_LENGTH:
        return f"is {len(fqdn)} characters, longer than {MAX_FQDN_LENGTH}"
    if fqdn.endswith("."):
        return "has a trailing '.' (not accepted)"
    for label in fqdn.split("."):
        if not label:
            return "has an empty label"
        if len(label) > _MAX_LABEL_LENGTH:
            return f"label {_show(label)} is longer than {_MAX_LABEL_LENGTH} characters"
        if not _LABEL.fullmatch(label):
            bad = _first_bad_char(label, _LABEL_CHAR)
            if bad is not None:
                return f"label {_show(label)} contains {bad!r} (allowed: A-Z a-z 0-9 -)"
            return f"label {_show(label)} starts or ends with '-'"
    return None


def validate_fqdn(fqdn: str, *, role: str = "FQDN") -> str:
    """Check an RFC 1123 host name and return it lowercased (FQDNs compare case-insensitively).

    Labels are 1..63 characters of ``[A-Za-z0-9-]`` not starting or ending with ``-``; at most 253
    characters in total; no trailing dot; internationalised names must be given as A-labels.
    *role* names the FQDN in the error message (e.g. ``"MEF-FQDN"``).
    """
    problem = _fqdn_problem(_require_str(role, fqdn))
    if problem is not None:
        raise _error(role, fqdn, f"{role} {problem}")
    return fqdn.lower()


def validate_rel_key_id(s: str) -> str:
    """Check a ``sec:relKeyID`` (TS-0003 §12.2: Roman letters, digits, ``.``, ``_``, ``-``) and return it."""
    s = _require_str("sec:relKeyID", s)
    if not s:
        raise _error("sec:relKeyID", s, "empty")
    bad = _first_bad_char(s, _REL_CHAR)
    if bad is not None:
        raise _error("sec:relKeyID", s, f"contains {bad!r} ({_REL_ALLOWED})")
    return s


# --- <relative>@<FQDN> identifiers (psk_identity values) ---------------------------------------------------


class _AtForm(NamedTuple):
    what: str  # identifier name, e.g. "KpsaID"
    relative: str  # name of the part before '@'
    fqdn: str  # name of the part after '@'


def _split_at(form: _AtForm, text: object) -> tuple[str, str]:
    text = _require_str(form.what, text)
    count = text.count("@")
    if count == 0:
        raise _error(form.what, text, f"missing '@{form.fqdn}'")
    if count > 1:
        raise _error(form.what, text, f"more than one '@' ({count})")
    relative, _, fqdn = text.partition("@")
    return relative, fqdn


def _check_at(form: _AtForm, text: str, fqdn: str) -> str:
    """Check the FQDN part and the psk_identity length of *text*; return the lowercased FQDN."""
    problem = _fqdn_problem(fqdn)
    if problem is not None:
        raise _error(form.what, text, f"{form.fqdn} {problem}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_PSK_IDENTITY_LENGTH:
        raise _error(
            form.what, text, f"{size} bytes, over the {MAX_PSK_IDENTITY_LENGTH}-byte psk_identity limit"
        )
    return fqdn.lower()


def _check_relative_at(form: _AtForm, relative: str, fqdn: str) -> str:
    """Validate ``relative@fqdn`` with a ``[A-Za-z0-9._-]+`` relative part; return the lowercased FQDN."""
    text = f"{relative}@{fqdn}"
    if not relative:
        raise _error(form.what, text, f"empty {form.relative}")
    bad = _first_bad_char(relative, _REL_CHAR)
    if bad is not None:
        raise _error(form.what, text, f"{form.relative} contains {bad!r} ({_REL_ALLOWED})")
    return _check_at(form, text, fqdn)


def _check_hex_at(form: _AtForm, raw: bytes, fqdn: str) -> tuple[bytes, str]:
    """Validate ``hexBinary(raw)@fqdn`` with a 16-byte *raw*; return ``(bytes(raw), lowercased FQDN)``."""
    raw = bytes(raw)
    if len(raw) != 16:
        raise IdentifierError(f"malformed {form.what}: {form.relative} must be 16 bytes, got {len(raw)}")
    return raw, _check_at(form, f"{raw.hex()}@{fqdn}", fqdn)


def _parse_hex_at(form: _AtForm, text: object) -> tuple[bytes, str]:
    text = _require_str(form.what, text)
    hex_part, fqdn = _split_at(form, text)
    if not _HEX_16_BYTES.fullmatch(hex_part):
        problem = f"{form.relative} must be 32 hex digits (16 bytes), got {len(hex_part)} characters"
        bad = _first_bad_char(hex_part, _HEX_CHAR)
        raise _error(form.what, text, problem if bad is None else f"{form.relative} contains non-hex {bad!r}")
    return bytes.fromhex(hex_part), fqdn


_KPSA = _AtForm("KpsaID", "Issuer_Relative_KpsaID", "Issuer-FQDN")
_KM = _AtForm("KmID", "MAF_RELATIVE_KmID", "MAF-FQDN")
_KE = _AtForm("KeID", "RelativeKeID", "MEF-FQDN")
_MAF_KEY = _AtForm("MAF Key Identifier", "RelativeKeyID", "MAF-FQDN")


@dataclass(frozen=True)
class KpsaID:
    """Provisioned Secure Connection Key identifier, ``Issuer_Relative_KpsaID@Issuer-FQDN`` (TS-0003 §10.5).

    Used verbatim as TLS ``psk_identity`` in the PSK SAEF (§8.2.2.1). The relative part is ``[A-Za-z0-9._-]+``
    and compares case-sensitively; the Issuer-FQDN is stored lowercased.
    """

    relative: str
    issuer_fqdn: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "issuer_fqdn", _check_relative_at(_KPSA, self.relative, self.issuer_fqdn))

    @classmethod
    def parse(cls, text: str) -> Self:
        return cls(*_split_at(_KPSA, text))

    def __str__(self) -> str:
        return f"{self.relative}@{self.issuer_fqdn}"


@dataclass(frozen=True, eq=False)
class KmID:
    """Master Credential identifier, ``MAF_RELATIVE_KmID@MAF-FQDN`` (TS-0003 §10.6).

    ``psk_identity`` of the MAF Handshake (§8.8.2). The relative part is case-insensitive: equality and hash
    ignore its case while ``str()`` keeps the original spelling. The MAF-FQDN is stored lowercased.
    """

    relative: str
    maf_fqdn: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "maf_fqdn", _check_relative_at(_KM, self.relative, self.maf_fqdn))

    @classmethod
    def parse(cls, text: str) -> Self:
        return cls(*_split_at(_KM, text))

    def _key(self) -> tuple[str, str]:
        return self.relative.lower(), self.maf_fqdn

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KmID):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return f"{self.relative}@{self.maf_fqdn}"


@dataclass(frozen=True)
class KeID:
    """Enrolment Key identifier, ``hexBinary(RelativeKeID)@MEF-FQDN`` (TS-0003 §10.3.4).

    RelativeKeID is 16 bytes. The hex case is not fixed by the spec (notes §13 item 4): ``parse`` accepts
    either case, ``str()`` emits lowercase. The MEF-FQDN is stored lowercased.
    """

    relative_ke_id: bytes
    mef_fqdn: str

    def __post_init__(self) -> None:
        raw, fqdn = _check_hex_at(_KE, self.relative_ke_id, self.mef_fqdn)
        object.__setattr__(self, "relative_ke_id", raw)
        object.__setattr__(self, "mef_fqdn", fqdn)

    @classmethod
    def parse(cls, text: str) -> Self:
        return cls(*_parse_hex_at(_KE, text))

    @classmethod
    def from_parts(cls, relative: bytes, mef_fqdn: str) -> Self:
        return cls(relative, mef_fqdn)

    def __str__(self) -> str:
        return f"{self.relative_ke_id.hex()}@{self.mef_fqdn}"


@dataclass(frozen=True)
class MAFKeyIdentifier:
    """MAF Key Identifier ``RelativeKeyID@MAF-FQDN``, ``RelativeKeyID = hexBinary(KcID)`` (TS-0003 §10.3.5).

    KcID is 16 bytes; sent by Entity A as ``psk_identity`` to Entity B, which recognises the MAF-FQDN and runs
    MAF Key Retrieval. Same shape and rules as :class:`KeID` (either hex case accepted, lowercase emitted).
    """

    kc_id: bytes
    maf_fqdn: str

    def __post_init__(self) -> None:
        raw, fqdn = _check_hex_at(_MAF_KEY, self.kc_id, self.maf_fqdn)
        object.__setattr__(self, "kc_id", raw)
        object.__setattr__(self, "maf_fqdn", fqdn)

    @classmethod
    def parse(cls, text: str) -> Self:
        return cls(*_parse_hex_at(_MAF_KEY, text))

    @classmethod
    def from_parts(cls, kc_id: bytes, maf_fqdn: str) -> Self:
        return cls(kc_id, maf_fqdn)

    def __str__(self) -> str:
        return f"{self.kc_id.hex()}@{self.maf_fqdn}"


# --- Credential-ID ------------------------------------------------------------------------------------------


class CredIDType(IntEnum):
    """``sec:credIDTypeID`` (TS-0003 §12.3.2.1, Table 12.3.2.1-1): what kind of credential is identified."""

    SYMMETRIC_KEY_MEF = 10  # KpmID
    SYMMETRIC_KEY_MAF = 11  # KmID
    SYMMETRIC_KEY_SAEF = 12  # KpsaID or KcID
    SYMMETRIC_KEY_ESPRIM = 13  # pairwiseESPrimKeyID
    SYMMETRIC_KEY_ESDATA_ENCRYPTION = 14  # direct encryption
    SYMMETRIC_KEY_ESDATA_KEY_WRAP = 15
    SYMMETRIC_KEY_ESDATA_HMAC = 16
    RAW_PUBLIC_KEY_TLS = 30  # public key identifier
    DEVICE_CERTIFICATE_TLS = 31  # globally unique hardware instance identifier
    CSE_ID_CERTIFICATE_TLS = 32
    AE_ID_CERTIFICATE_TLS = 33
    NODE_ID_CERTIFICATE_TLS = 34
    RAW_PUBLIC_KEY_ESDATA_KEY_MANAGEMENT = 41
    DEVICE_CERTIFICATE_ESDATA_KEY_MANAGEMENT = 42
    CSE_ID_CERTIFICATE_ESDATA_KEY_MANAGEMENT = 43
    AE_ID_CERTIFICATE_ESDATA_KEY_MANAGEMENT = 44
    NODE_ID_CERTIFICATE_ESDATA_KEY_MANAGEMENT = 45
    RAW_PUBLIC_KEY_ESDATA_SIGNATURE = 51
    DEVICE_CERTIFICATE_ESDATA_SIGNATURE = 52
    CSE_ID_CERTIFICATE_ESDATA_SIGNATURE = 53
    AE_ID_CERTIFICATE_ESDATA_SIGNATURE = 54
    NODE_ID_CERTIFICATE_ESDATA_SIGNATURE = 55


_KNOWN_CRED_TYPES = frozenset(member.value for member in CredIDType)
_CRED = "Credential-ID"
_MAX_TYPE_DIGITS = 9


@dataclass(frozen=True)
class CredentialID:
    """Credential-ID ``<credIDTypeID>-<value>`` (TS-0003 §10.4, ``sec:credentialID`` §12.2, types §12.3.2.1).

    Split at the first ``-`` (the value may contain ``-``). The type is a positive decimal integer without
    leading zeros; known values become :class:`CredIDType`, unknown positive ones stay plain ``int``. Type 0
    is rejected, including the ``00-`` prefix of the TS-0013 TD_M2M_SE_01 example (notes §13 item 10).
    """

    type: CredIDType | int
    value: str

    def __post_init__(self) -> None:
        kind, value = self.type, self.value
        if isinstance(kind, bool) or not isinstance(kind, int) or kind <= 0:
            raise IdentifierError(f"malformed {_CRED}: credIDTypeID must be a positive integer, got {kind!r}")
        text = f"{int(kind)}-{value}"
        if not value:
            raise _error(_CRED, text, "empty value after credIDTypeID")
        bad = _first_bad_char(value, _CRED_VALUE_CHAR)
        if bad is not None:
            raise _error(_CRED, text, f"value contains {bad!r} (allowed: A-Z a-z 0-9 . _ @ -)")
        object.__setattr__(self, "type", CredIDType(kind) if kind in _KNOWN_CRED_TYPES else int(kind))

    @classmethod
    def parse(cls, text: str) -> Self:
        text = _require_str(_CRED, text)
        type_text, sep, value = text.partition("-")
        if not sep:
            raise _error(_CRED, text, "missing '-' between credIDTypeID and value")
        if not _DECIMAL.fullmatch(type_text):
            raise _error(_CRED, text, f"credIDTypeID {_show(type_text)} is not a decimal integer")
        if not type_text.strip("0"):
            raise _error(
                _CRED,
                text,
                "credIDTypeID 0 is not a valid sec:credIDTypeID (TS-0003 §12.3.2.1; the TS-0013 "
                "'00-' prefix is not accepted, a KpsaID uses 12)",
            )
        if type_text.startswith("0"):
            raise _error(_CRED, text, f"credIDTypeID {_show(type_text)} has a leading zero")
        if len(type_text) > _MAX_TYPE_DIGITS:
            raise _error(_CRED, text, f"credIDTypeID has more than {_MAX_TYPE_DIGITS} digits")
        return cls(int(type_text), value)

    @classmethod
    def for_kpsa_id(cls, kpsa_id: KpsaID | str) -> Self:
        """The Credential-ID "formed from KpsaId" (TS-0003 §8.2.2.1): type 12 and the KpsaID as value."""
        kpsa = KpsaID.parse(kpsa_id) if isinstance(kpsa_id, str) else kpsa_id
        return cls(CredIDType.SYMMETRIC_KEY_SAEF, str(kpsa))

    def __str__(self) -> str:
        return f"{int(self.type)}-{self.value}"


# --- SUID ---------------------------------------------------------------------------------------------------


class SUIDKind(IntEnum):
    """First digit of an SUID: how the credential was established (TS-0004 Table 6.3.4.2.39-1)."""

    PRE_PROVISIONED_SYMMETRIC = 1
    RSPF_SYMMETRIC = 2  # remotely provisioned by a MEF
    MAF_SYMMETRIC = 3  # distributed by a MAF
    CERTIFICATE = 4


class SUIDScope(IntEnum):
    """Second digit of an SUID: where the credential may be used (TS-0004 Table 6.3.4.2.39-1)."""

    MEF = 0
    MAF = 1
    SAEF = 2
    ESPRIM = 3
    ESDATA_ENCRYPTION = 4
    ESDATA_SIGNATURE = 5


class SUID(IntEnum):
    """Security Usage Identifier ``m2m:suid`` (TS-0004 Table 6.3.4.2.39-1); only the values defined there."""

    PRE_PROVISIONED_SYMMETRIC_MEF = 10
    PRE_PROVISIONED_SYMMETRIC_MAF = 11
    PRE_PROVISIONED_SYMMETRIC_SAEF = 12
    PRE_PROVISIONED_SYMMETRIC_ESPRIM = 13
    PRE_PROVISIONED_SYMMETRIC_ESDATA_ENCRYPTION = 14
    PRE_PROVISIONED_SYMMETRIC_ESDATA_SIGNATURE = 15
    RSPF_SYMMETRIC_MAF = 21
    RSPF_SYMMETRIC_SAEF = 22
    RSPF_SYMMETRIC_ESPRIM = 23
    RSPF_SYMMETRIC_ESDATA_ENCRYPTION = 24
    RSPF_SYMMETRIC_ESDATA_SIGNATURE = 25
    MAF_SYMMETRIC_SAEF = 32
    MAF_SYMMETRIC_ESPRIM = 33
    MAF_SYMMETRIC_ESDATA_ENCRYPTION = 34
    MAF_SYMMETRIC_ESDATA_SIGNATURE = 35
    CERTIFICATE_MEF = 40
    CERTIFICATE_MAF = 41
    CERTIFICATE_SAEF = 42
    CERTIFICATE_ESPRIM = 43
    CERTIFICATE_ESDATA_ENCRYPTION = 44
    CERTIFICATE_ESDATA_SIGNATURE = 45

    @property
    def kind(self) -> SUIDKind:
        return SUIDKind(self.value // 10)

    @property
    def scope(self) -> SUIDScope:
        return SUIDScope(self.value % 10)

    @classmethod
    def parse(cls, text: str) -> SUID:
        """Parse a decimal SUID (no sign, whitespace or leading zeros). 31 is rejected (notes §13 item 5)."""
        text = _require_str("SUID", text)
        if not _DECIMAL.fullmatch(text) or (len(text) > 1 and text.startswith("0")):
            raise _error("SUID", text, "not a decimal integer without leading zeros")
        if text == "31":
            raise _error(
                "SUID",
                text,
                "31 is not a m2m:suid value (TS-0004 Table 6.3.4.2.39-1) although TS-0003 "
                "§8.3.9.9.2 lists it; MAF client registration with an RSPF key uses 21 (§8.8.2.3)",
            )
        for member in cls:
            if str(member.value) == text:
                return member
        raise _error("SUID", text, "not a m2m:suid value (TS-0004 Table 6.3.4.2.39-1)")
