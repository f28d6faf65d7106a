# ruff: noqa: N815 - the members carry the TS-0003 §8.8 parameter names, the wire names of docs/maf.md
"""The MAF's wire format (docs/maf.md): request and response bodies, timestamps, problems, identities.

TS-0032, oneM2M's MAF protocol, is not public (docs/decisions.md D80): m2msec's MAF speaks JSON over HTTP/1.1
inside the MAF Handshake, with the parameter names of TS-0003 §8.8. The pydantic models here are the contract the
FastAPI application validates against and publishes as OpenAPI 3.1; they refuse unknown members.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from m2msec.errors import IdentifierError, M2MSecError
from m2msec.identifiers import validate_fqdn

__all__ = [
    "API_PREFIX",
    "MAX_BODY",
    "MAX_LABELS",
    "MAX_TARGET_IDS",
    "PROBLEM_TYPE_PREFIX",
    "TIMESTAMP_FORMAT",
    "MAFProblem",
    "absolute_id",
    "decode_key_value",
    "format_timestamp",
    "parse_timestamp",
]

#: Where the MAF's resources live (D80)
API_PREFIX = "/maf/v1"
#: RFC 9457 ``type`` of every MAF problem: this prefix and the problem's name (docs/maf.md "Errors")
PROBLEM_TYPE_PREFIX = "urn:m2msec:maf:"
#: The largest request body the MAF reads; larger ones are refused with 413 before any storage work (D89)
MAX_BODY = 64 * 1024
#: targetIDs of one ESData key (SUID 34/35; SAEF and ESPrim keys have exactly one) (D89)
MAX_TARGET_IDS = 64
#: labels of one registration or key, and the length of one label (D89)
MAX_LABELS = 32
MAX_LABEL_LENGTH = 128
#: ``m2m:timestamp`` (TS-0004 §6.3.3), UTC, ISO 8601 basic format, whole seconds (D86)
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%S"
_TIMESTAMP = re.compile(r"[0-9]{8}T[0-9]{6}")
#: An AE-ID / CSE-ID path segment: RFC 3986 unreserved characters
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
_MAX_ID_LENGTH = 256


class MAFProblem(M2MSecError):
    """A refusal the MAF sends as ``application/problem+json`` (RFC 9457). ``detail`` never holds key material."""

    def __init__(self, status: int, name: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.name = name
        self.detail = detail

    @property
    def type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.name


def parse_timestamp(text: str, what: str = "expirationTime") -> float:
    """An ``m2m:timestamp`` (``20261202T041200``, UTC) as POSIX seconds; 400 ``bad-expiration-time`` else."""
    if not _TIMESTAMP.fullmatch(text):
        raise MAFProblem(400, "bad-expiration-time", f"{what} is not an m2m:timestamp (YYYYMMDDThhmmss, UTC)")
    try:
        return float(calendar.timegm(time.strptime(text, TIMESTAMP_FORMAT)))
    except ValueError:
        raise MAFProblem(400, "bad-expiration-time", f"{what} is not a valid date and time") from None


def format_timestamp(when: float) -> str:
    return time.strftime(TIMESTAMP_FORMAT, time.gmtime(int(when)))


def decode_key_value(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise MAFProblem(400, "bad-key-value", "keyValue is not base64 (RFC 4648 §4)") from None


def encode_key_value(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def absolute_id(text: str, sp_id: str, what: str = "identity") -> str:
    """An AE-ID or CSE-ID in absolute form ``//SP-ID/...`` (docs/maf.md "Transport").

    ``//sp/x/y`` is kept (SP-ID lowercased); ``/x/y`` (SP-relative) and ``x`` (a bare CSE-ID) get the MAF's own
    ``sp_id``. Raises MAFProblem 400 ``bad-target-ids`` for anything else."""
    def bad(problem: str) -> MAFProblem:
        return MAFProblem(400, "bad-target-ids", f"{what} is not an AE-ID or CSE-ID: {problem}")

    if not isinstance(text, str) or not text or len(text) > _MAX_ID_LENGTH:
        raise bad(f"empty or longer than {_MAX_ID_LENGTH} characters")
    if text.startswith("//"):
        domain, _, rest = text[2:].partition("/")
        try:
            domain = validate_fqdn(domain, role="SP-ID")
        except IdentifierError:
            raise bad("the SP-ID is not a domain name") from None
    else:
        domain, rest = sp_id, text.removeprefix("/")
    segments = rest.split("/")
    if not rest or len(segments) > 2 or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise bad("expected /CSE-ID, /CSE-ID/AE-ID-Stem, //SP-ID/... (RFC 3986 unreserved characters)")
    return f"//{domain}/{rest}"


_Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_LENGTH)]
_Labels = Annotated[list[_Label], Field(max_length=MAX_LABELS)]
_Timestamp = Annotated[str, Field(pattern=r"^[0-9]{8}T[0-9]{6}$", examples=["20261202T120000"])]
_FQDN = Annotated[str, Field(min_length=1, max_length=253)]
_ID = Annotated[str, Field(min_length=1, max_length=_MAX_ID_LENGTH)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)


class ClientRegistrationRequest(_Body):
    """MAF Client Registration (TS-0003 §8.8.2.3)."""

    mafFQDN: _FQDN
    expirationTime: _Timestamp
    labels: _Labels | None = None
    adminFQDN: _FQDN


class ClientRegistrationResponse(_Body):
    mafClientRegID: str
    expirationTime: str
    mafClientID: str
    adminFQDN: str
    labels: list[str] | None = None
    assignedSymmKeyID: str | None = None


class ClientRegCfg(_Body):
    """``sec:clientRegCfg`` (TS-0003 §12.4.1); ports are 16-bit (the spec's xs:unsignedByte is a bug, D85)."""

    fqdn: str
    adminFQDN: str
    expirationTime: str | None = None
    labels: list[str] | None = None
    httpPort: Annotated[int, Field(ge=1, le=65535)] | None = None


class KeyRegCfg(_Body):
    """``sec:keyRegCfg`` (TS-0003 §12.4.1)."""

    adminFQDN: str
    SUID: int
    expirationTime: str | None = None
    labels: list[str] | None = None
    targetIDs: list[str] | None = None


class MAFClientCfg(_Body):
    mafClientRegCfg: ClientRegCfg
    mafKeyRegCfg: KeyRegCfg


class ClientConfigResponse(_Body):
    """MAF Client Configuration Retrieval (TS-0003 §8.8.2.4)."""

    mafClientCfg: MAFClientCfg


class RegistrationUpdateRequest(_Body):
    """MAF Client Registration Update (TS-0003 §8.8.2.5): at least one of expirationTime, labels."""

    mafFQDN: _FQDN
    expirationTime: _Timestamp | None = None
    labels: _Labels | None = None


class RegistrationUpdateResponse(_Body):
    expirationTime: str | None = None
    labels: list[str] | None = None
    assignedSymmKeyID: str | None = None


class KeyRegistrationRequest(_Body):
    """MAF Key Registration (TS-0003 §8.8.2.7); without keyValue, Kc comes from the MAF Handshake's exporter."""

    mafFQDN: _FQDN
    expirationTime: _Timestamp
    labels: _Labels | None = None
    adminFQDN: _FQDN
    SUID: int
    targetIDs: Annotated[list[_ID], Field(max_length=MAX_TARGET_IDS)] | None = None
    keyValue: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class KeyRegistrationResponse(_Body):
    relativeKeyID: str
    expirationTime: str
    sourceMAFClientID: str
    adminFQDN: str
    SUID: int
    targetIDs: list[str]
    labels: list[str] | None = None


class KeyRetrievalResponse(_Body):
    """MAF Key Retrieval (TS-0003 §8.8.2.8)."""

    expirationTime: str
    sourceMAFClientID: str
    adminFQDN: str
    SUID: int
    keyValue: str
    labels: list[str] | None = None


class KeyUpdateRequest(_Body):
    """MAF Key Registration Update (TS-0003 §8.8.2.9): at least one of expirationTime, labels, targetIDs."""

    mafFQDN: _FQDN
    expirationTime: _Timestamp | None = None
    labels: _Labels | None = None
    targetIDs: Annotated[list[_ID], Field(max_length=MAX_TARGET_IDS)] | None = None


class KeyUpdateResponse(_Body):
    expirationTime: str | None = None
    labels: list[str] | None = None
    targetIDs: list[str] | None = None


class Problem(_Body):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
