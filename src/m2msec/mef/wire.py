# ruff: noqa: N815 - the members carry the TS-0003 §8.3.2.1 parameter names, the wire names of docs/mef.md
"""The Mmef wire (docs/mef.md "Resources"): JSON over HTTP/1.1 inside the MEF Handshake (D188, D193).

TS-0032 (the Mmef protocol) is not public; the resources follow TS-0003 §8.3.2.1's parameters camel-cased.
Every refusal is RFC 9457 problem+json with type ``urn:m2msec:mef:<name>``, plus ``status: false`` and
``errorString: <name>`` (§8.3.2.1's failure answer). No body or detail ever holds key material.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from m2msec.errors import M2MSecError

__all__ = [
    "API_PREFIX",
    "MAX_BODY",
    "PROBLEMS",
    "PROBLEM_TYPE_PREFIX",
    "EnrolmentRequest",
    "EnrolmentResponse",
    "FetchResponse",
    "Instruction",
    "MEFProblem",
]

#: D188: every MEF resource is under this prefix (TS-0032's Mmef binding is not public)
API_PREFIX: Final = "/mef/v1"
PROBLEM_TYPE_PREFIX: Final = "urn:m2msec:mef:"
#: largest request body (as the MAF's)
MAX_BODY: Final = 64 * 1024

#: every refusal of the MEF: name -> (status, meaning); docs/mef.md's errors table
PROBLEMS: Final[dict[str, tuple[int, str]]] = {
    "unknown-keid": (404, "no Enrolment Key has this KeID (never issued, purged, or another MEF-FQDN)"),
    "not-the-target": (403, "the requester is not an Enrolment Target of the KeID's enrolee"),
    "suid-not-allowed": (403, "the SUID is not one the enrolee allows this target, or not one its kind may fetch"),
    "bad-suid": (400, "the SUID is not an m2m:suid of TS-0004 Table 6.3.4.2.39-1"),
    "ke-expired": (410, "the Enrolment Key has expired: the enrolee must enrol again"),
    "enrolee-revoked": (403, "the enrolee of this KeID (or the requesting enrolee) is revoked"),
    "not-an-enrolee": (403, "the requester's MEF Handshake credential is not an enrolee's"),
    "originator-mismatch": (403, "X-M2M-Origin differs from the identity the MEF Handshake authenticated"),
    "unidentified-client": (403, "no MEF Handshake identity (or a certificate naming none)"),
    "storage-unavailable": (503, "the key store cannot be used now"),
    "bad-request": (400, "the body does not follow the contract"),
    "body-too-large": (413, "the body is larger than 64 KiB"),
    "unsupported-media-type": (415, "the body is not JSON"),
    "not-found": (404, "no such resource"),
    "method-not-allowed": (405, "the resource does not take this method"),
    # refusals the HTTP server makes itself, before the app (m2msec.asgi, answered by server_problem)
    "request-timeout": (408, "the request did not arrive in time"),
    "header-too-large": (431, "the request head is larger than the server takes"),
}


class MEFProblem(M2MSecError):
    """A refusal the MEF sends as problem+json; ``detail`` never holds key material."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(detail)
        self.status = PROBLEMS[name][0]
        self.name = name
        self.detail = detail


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EnrolmentRequest(_Body):
    """Enrolment Exchange step 1 (§8.3.2.1): the three indications (D193)."""

    certificateEnrolment: bool = False
    mafEnrolment: bool = False
    remoteManagement: bool = False


_ID = Annotated[str, Field(min_length=1, max_length=256)]


class Instruction(_Body):
    """One instruction of the Enrolment Exchange (§8.3.2.1 steps 2-4; D193)."""

    instructionType: Literal["enrolmentTarget", "mafEnrolment", "remoteManagement"]
    targetID: _ID | None = None
    suids: list[int] | None = None
    credentialType: Literal["symmetric"] | None = None
    mafFQDN: _ID | None = None
    uri: _ID | None = None


class EnrolmentResponse(_Body):
    keID: str
    #: m2m:timestamp (UTC) of the Enrolment Key's expiry (D191)
    lifetime: str
    enroleeID: str
    instructions: list[Instruction]


class FetchResponse(_Body):
    """fetchCredentials' answer (§8.3.2.1 "Use of Remotely Provisioned Credential")."""

    status: bool
    credential: str  # base64 of the 32-byte usage-constrained key
    enroleeID: str
    lifetime: str  # m2m:timestamp (UTC): the credential's expiry, never after the Ke's (§10.7)
