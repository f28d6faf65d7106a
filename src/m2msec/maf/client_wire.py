"""The MAF client's side of the wire contract (docs/maf.md), pure: request bodies, response parsing, timestamps,
problems, and the Kc a client derives from its own MAF Handshake. The I/O is :mod:`m2msec.maf.client`.

Every answer of the MAF is checked against the contract before use: a member of the wrong type, a missing one,
or a body that is not JSON raises :class:`~m2msec.errors.MAFError` with status 0 (``bad-response``); a refusal
(RFC 9457 ``application/problem+json``) raises it with the HTTP status and the problem name, never the MAF's
detail text (it could hold anything) nor a body.
"""

from __future__ import annotations

import json
from calendar import timegm
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from m2msec.errors import MAFError
from m2msec.keys.secret import SecretKey

__all__ = [
    "BAD_RESPONSE",
    "KC_EXPORT_LENGTH",
    "MAF_PREFIX",
    "PROBLEM_PREFIX",
    "SUID_SAEF",
    "RegisteredKey",
    "Registration",
    "RetrievedKey",
    "check_relative_key_id",
    "decode_json",
    "encode_json",
    "format_timestamp",
    "optional_members",
    "parse_timestamp",
    "problem_from",
    "registered_key_from",
    "registration_from",
    "retrieved_key_from",
    "split_exported",
]

#: the path prefix of every MAF procedure
MAF_PREFIX: Final = "/maf/v1"
#: the type URI prefix of the MAF's problems (RFC 9457)
PROBLEM_PREFIX: Final = "urn:m2msec:maf:"
#: the problem name a client gives an answer that breaks the contract (with status 0)
BAD_RESPONSE: Final = "bad-response"
#: TS-0003 §8.8.2.7: the SUID of a key for the MAF-based SAEF (§8.2.2.3)
SUID_SAEF: Final = 32
#: TS-0003 §10.3.1: EXPORTER-oneM2M-Connection output, KcID = bytes 0-15, Kc = bytes 16-47
KC_EXPORT_LENGTH: Final = 48
_KC_ID_LENGTH = 16
_TIMESTAMP = "%Y%m%dT%H%M%S"


def _broken(what: str) -> MAFError:
    return MAFError(0, BAD_RESPONSE, f"the MAF's answer breaks the contract: {what}")


def format_timestamp(when: float) -> str:
    """Unix seconds as an ``m2m:timestamp`` in UTC, basic format ``YYYYMMDDThhmmss`` (fractions dropped)."""
    return datetime.fromtimestamp(int(when), UTC).strftime(_TIMESTAMP)


def parse_timestamp(text: object) -> float:
    """An ``m2m:timestamp`` (``YYYYMMDDThhmmss``, UTC; fractions and a trailing ``Z`` tolerated) as Unix seconds.

    Raises: MAFError: not such a timestamp (status 0)."""
    if not isinstance(text, str):
        raise _broken("a timestamp is not a string")
    core = text.removesuffix("Z").partition(",")[0].partition(".")[0]
    try:
        parsed = datetime.strptime(core, _TIMESTAMP)
    except ValueError:
        raise _broken(f"malformed timestamp {text[:40]!r}") from None
    return float(timegm(parsed.timetuple()))


def encode_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(body: bytes) -> dict[str, Any]:
    """A JSON object. Raises: MAFError: anything else (status 0)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting (issue 21)
        raise _broken("the body is not JSON") from None
    if not isinstance(obj, dict):
        raise _broken("the body is not a JSON object")
    return obj


def problem_from(status: int, body: bytes) -> MAFError:
    """The error a refusal of the MAF raises: its status and problem name (the ``type`` after
    ``urn:m2msec:maf:``, else ``http-<status>``). The MAF's ``detail`` is not copied."""
    name = f"http-{status}"
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting (issue 21)
        obj = None
    if isinstance(obj, dict):
        kind = obj.get("type")
        if isinstance(kind, str) and kind.startswith(PROBLEM_PREFIX) and 0 < len(kind) <= 120:
            suffix = kind.removeprefix(PROBLEM_PREFIX)
            if suffix and all(c.isalnum() or c == "-" for c in suffix):
                name = suffix
    return MAFError(status, name)


def _str(obj: Mapping[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise _broken(f"{key} missing or not a string")
    return value


def _labels(obj: Mapping[str, Any]) -> tuple[str, ...] | None:
    value = obj.get("labels")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise _broken("labels is not a list of strings")
    return tuple(value)


def _suid(obj: Mapping[str, Any]) -> int:
    value = obj.get("SUID")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _broken("SUID missing or not an integer")
    return value


def _targets(obj: Mapping[str, Any]) -> tuple[str, ...]:
    value = obj.get("targetIDs")
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise _broken("targetIDs is not a list of identities")
    return tuple(value)


@dataclass(frozen=True)
class Registration:
    """A Client Registration (§8.8.2.3) as the MAF granted it; ``expiration`` in Unix seconds."""

    reg_id: str
    expiration: float
    maf_client_id: str
    admin_fqdn: str
    labels: tuple[str, ...] | None = None
    assigned_symm_key_id: str | None = None


@dataclass(frozen=True)
class RegisteredKey:
    """A Key Registration (§8.8.2.7) as the MAF granted it. ``kc`` is the key itself when the client computed
    it from its MAF Handshake (no ``keyValue`` sent), else None; redacted in repr."""

    relative_key_id: str
    expiration: float
    source_maf_client_id: str
    admin_fqdn: str
    suid: int
    target_ids: tuple[str, ...]
    labels: tuple[str, ...] | None = None
    kc: SecretKey | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RetrievedKey:
    """A Key Retrieval (§8.8.2.8) answer; ``key`` is redacted in repr."""

    relative_key_id: str
    expiration: float
    source_maf_client_id: str
    admin_fqdn: str
    suid: int
    key: SecretKey = field(repr=False)
    labels: tuple[str, ...] | None = None


def registration_from(obj: Mapping[str, Any]) -> Registration:
    reg_id = _str(obj, "mafClientRegID")
    assert reg_id is not None
    if "/" in reg_id or "?" in reg_id or len(reg_id) > 256:
        raise _broken("mafClientRegID is not a path segment")
    client, admin = _str(obj, "mafClientID"), _str(obj, "adminFQDN")
    assert client is not None and admin is not None
    return Registration(reg_id, parse_timestamp(obj.get("expirationTime")), client, admin, _labels(obj),
                        _str(obj, "assignedSymmKeyID", optional=True))


def check_relative_key_id(text: str) -> str:
    """A RelativeKeyID usable as a path segment and as the left part of ``<id>@<MAF-FQDN>``.

    Raises: MAFError: anything else (status 0)."""
    if not text or len(text) > 200 or not all(c.isascii() and (c.isalnum() or c in "-._~") for c in text):
        raise _broken("relativeKeyID is not a plain identifier")
    return text


def registered_key_from(obj: Mapping[str, Any], kc: SecretKey | None = None) -> RegisteredKey:
    rel, source, admin = _str(obj, "relativeKeyID"), _str(obj, "sourceMAFClientID"), _str(obj, "adminFQDN")
    assert rel is not None and source is not None and admin is not None
    return RegisteredKey(check_relative_key_id(rel), parse_timestamp(obj.get("expirationTime")), source, admin,
                         _suid(obj), _targets(obj), _labels(obj), kc)


def retrieved_key_from(relative_key_id: str, obj: Mapping[str, Any]) -> RetrievedKey:
    import base64
    import binascii

    source, admin, value = _str(obj, "sourceMAFClientID"), _str(obj, "adminFQDN"), _str(obj, "keyValue")
    assert source is not None and admin is not None and value is not None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _broken("keyValue is not base64") from None
    if not 16 <= len(raw) <= 64:
        raise _broken("keyValue is not 16 to 64 bytes")
    return RetrievedKey(relative_key_id, parse_timestamp(obj.get("expirationTime")), source, admin, _suid(obj),
                        SecretKey(raw), _labels(obj))


def split_exported(material: SecretKey) -> tuple[bytes, SecretKey]:
    """TS-0003 §10.3.1/§10.3.5: (KcID, Kc) from the 48 exported bytes: KcID = bytes 0-15, Kc = bytes 16-47."""
    raw = material.reveal()
    if len(raw) != KC_EXPORT_LENGTH:
        raise ValueError(f"the exporter output must be {KC_EXPORT_LENGTH} bytes")
    return raw[:_KC_ID_LENGTH], SecretKey(raw[_KC_ID_LENGTH:])


def optional_members(**members: object) -> dict[str, Any]:
    """The members that are not None (the contract refuses null for an absent optional member)."""
    return {k: (list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
            for k, v in members.items() if v is not None}
