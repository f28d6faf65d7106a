"""The MEF's key derivations (TS-0003 §10.3.1, §10.3.4, §10.3.7): pure functions, no I/O.

- Bootstrap (§10.3.1): both ends of the MEF Handshake export ``EXPORTER-oneM2M-Bootstrap``, 48 bytes, no context
  (D1); read as a big-endian string, RelativeKeID = bytes 0-15 and Ke = bytes 16-47 (the D82 split).
- KeID (§10.3.4): ``hexBinary(RelativeKeID)@MEF-FQDN`` (:class:`m2msec.identifiers.KeID`, D190).
- Usage-constrained key (§10.3.7): ``HMAC-SHA-256(Ke, label || SUID || Enrolment-Target-ID)`` with the SUID's
  decimal digits in ASCII (D184) and the target ID normalised by :func:`normalize_target_id` (D186).
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from typing import Final

from m2msec.errors import IdentifierError
from m2msec.identifiers import SUID, KeID, validate_fqdn
from m2msec.keys.secret import SecretKey

__all__ = [
    "BOOTSTRAP_EXPORT_LENGTH",
    "EXPORTER_BOOTSTRAP_LABEL",
    "KE_LENGTH",
    "RELATIVE_KE_ID_LENGTH",
    "SUID_ENCODING",
    "USAGE_CONSTRAINED_LABEL",
    "encode_suid",
    "key_id",
    "normalize_target_id",
    "split_bootstrap",
    "usage_constrained_key",
]

#: TS-0003 §10.3.1: the RFC 5705 label both ends of the MEF Handshake export Ke and RelativeKeID with
EXPORTER_BOOTSTRAP_LABEL: Final = "EXPORTER-oneM2M-Bootstrap"
#: TS-0003 §10.3.1: 48 bytes = RelativeKeID (16) || Ke (32); there is no Ker (D185)
BOOTSTRAP_EXPORT_LENGTH: Final = 48
RELATIVE_KE_ID_LENGTH: Final = 16
KE_LENGTH: Final = 32
#: TS-0003 §10.3.7: the label of the usage-constrained key derivation, ASCII, no terminator; used for every
#: credential the MEF provisions (Km with SUID 21, Kpsa with SUID 22), not §10.3.2/§10.3.3's labels (D187)
USAGE_CONSTRAINED_LABEL: Final = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"
#: D184: how the SUID enters §10.3.7's concatenation: its decimal digits in ASCII (m2m:suid 22 -> b"22")
SUID_ENCODING: Final = "ascii-decimal"


def split_bootstrap(exported: SecretKey) -> tuple[bytes, SecretKey]:
    """(RelativeKeID, Ke) from the 48 exported bytes: out[0:16], out[16:48] (§10.3.1, D82's byte order)."""
    raw = exported.reveal()
    if len(raw) != BOOTSTRAP_EXPORT_LENGTH:
        raise ValueError(f"the bootstrap export must be {BOOTSTRAP_EXPORT_LENGTH} bytes")
    return raw[:RELATIVE_KE_ID_LENGTH], SecretKey(raw[RELATIVE_KE_ID_LENGTH:])


def key_id(relative_ke_id: bytes, mef_fqdn: str) -> KeID:
    """The KeID ``hexBinary(RelativeKeID)@MEF-FQDN`` (§10.3.4)."""
    return KeID.from_parts(relative_ke_id, mef_fqdn)


def normalize_target_id(target_id: str) -> str:
    """An Enrolment-Target-ID as it enters §10.3.7 (D186): NFKC, no trailing dot, a valid FQDN, lowercased.

    Raises: IdentifierError: not an FQDN."""
    if not isinstance(target_id, str):
        raise IdentifierError("an Enrolment-Target-ID must be a string")
    text = unicodedata.normalize("NFKC", target_id).removesuffix(".")
    return validate_fqdn(text, role="Enrolment-Target-ID")


def encode_suid(suid: int) -> bytes:
    """The SUID's bytes in §10.3.7 (:data:`SUID_ENCODING`). Raises IdentifierError: not a TS-0004 SUID."""
    try:
        value = SUID(suid)
    except ValueError:
        raise IdentifierError(f"{suid!r} is not an m2m:suid of TS-0004 Table 6.3.4.2.39-1") from None
    return str(int(value)).encode("ascii")


def usage_constrained_key(ke: SecretKey, suid: int, target_id: str) -> SecretKey:
    """§10.3.7: ``HMAC-SHA-256(Ke, USAGE_CONSTRAINED_LABEL || SUID || Enrolment-Target-ID)``, 32 bytes."""
    message = USAGE_CONSTRAINED_LABEL + encode_suid(suid) + normalize_target_id(target_id).encode("utf-8")
    return SecretKey(hmac.new(ke.reveal(), message, hashlib.sha256).digest())
