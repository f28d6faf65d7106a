"""Entity B's association and originator rules (pure: no I/O).

TS-0003 §8.2.2.1 (seed 002): after authenticating Entity A, Entity B associates the security context

* with the CSE-ID or AE-ID it was given for the KpsaID (the ``entity`` column of the PSK table), else
* with the Credential-ID formed from the KpsaID (TS-0003 §10.4, type 12 "symmetric key in SAEF"),
  from which B determines the CSE-ID or AE-ID as described in §8.2.1 (e.g. the
  ``<serviceSubscribedAppRule>`` resources of the IN-CSE). That resolution is the
  :class:`CredentialResolver` seam; the gateway has none built in yet.

TS-0003 §7.2.1: a request inside the SA whose ``From`` (``X-M2M-Origin``) is not the associated
identity is refused with ORIGINATOR_NOT_AUTHENTICATED (4106) and is not forwarded.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Protocol

from m2msec.errors import IdentifierError, OriginatorNotAuthenticated
from m2msec.identifiers import CredentialID
from m2msec.tls.engine import SessionInfo

__all__ = [
    "HEADER_CREDENTIAL_ID",
    "HEADER_PSK_IDENTITY",
    "HEADER_SA_IDENTITY",
    "IDENTITY_HEADERS",
    "CredentialResolver",
    "SecurityAssociation",
    "UnboundPolicy",
    "associate",
    "check_originator",
]

#: Headers the gateway adds to each forwarded request (any copy sent by the client is removed first).
HEADER_SA_IDENTITY = "x-m2msec-sa-identity"  # the AE-ID / CSE-ID the SA is associated with
HEADER_CREDENTIAL_ID = "x-m2msec-credential-id"  # TS-0003 §10.4 Credential-ID of the SA credential
HEADER_PSK_IDENTITY = "x-m2msec-psk-identity"  # the KpsaID the client authenticated with
IDENTITY_HEADERS = (HEADER_SA_IDENTITY, HEADER_CREDENTIAL_ID, HEADER_PSK_IDENTITY)


class UnboundPolicy(enum.Enum):
    """What to do with a request on an SA whose KpsaID has no bound AE-ID/CSE-ID and no resolver answer.

    ``REJECT`` (default): refuse with 4106, since no ``From`` can be checked.
    ``FORWARD``: forward with the Credential-ID header only and leave the TS-0001 §10.2.2.2
    registration checks to the CSE (which must then enforce them).
    """

    REJECT = "reject"
    FORWARD = "forward"


class CredentialResolver(Protocol):
    """TS-0003 §8.2.1: the identities a Credential-ID may act as (None: not known)."""

    def resolve(self, credential_id: str) -> frozenset[str] | None: ...


@dataclass(frozen=True)
class SecurityAssociation:
    """Entity B's view of one established SA."""

    psk_identity: str
    credential_id: str | None
    allowed_originators: frozenset[str]

    @property
    def bound(self) -> bool:
        return bool(self.allowed_originators)

    @property
    def identity(self) -> str | None:
        """The identity the context is associated with: the single allowed originator, else the
        Credential-ID."""
        if len(self.allowed_originators) == 1:
            return next(iter(self.allowed_originators))
        return self.credential_id


@functools.lru_cache(maxsize=65536)
def _credential_id(psk_identity: str) -> str | None:
    # one parse per identity, not per connection (the regexes were a visible share of a handshake's cost)
    try:
        return str(CredentialID.for_kpsa_id(psk_identity))
    except IdentifierError:
        return None  # not a §10.5 KpsaID: no Credential-ID can be formed from it


def associate(session: SessionInfo, resolver: CredentialResolver | None = None) -> SecurityAssociation:
    """Associate a server-side session with an identity (TS-0003 §8.2.2.1)."""
    credential_id = _credential_id(session.psk_identity)
    if session.entity:
        allowed = frozenset({session.entity})
    elif credential_id is not None and resolver is not None:
        allowed = resolver.resolve(credential_id) or frozenset()
    else:
        allowed = frozenset()
    return SecurityAssociation(session.psk_identity, credential_id, allowed)


def check_originator(sa: SecurityAssociation, origin: str | None, policy: UnboundPolicy) -> None:
    """Raise :class:`OriginatorNotAuthenticated` unless ``origin`` may be used on this SA (§7.2.1)."""
    if not sa.bound:
        if policy is UnboundPolicy.FORWARD and sa.credential_id is not None:
            return
        raise OriginatorNotAuthenticated(
            f"the security association ({sa.psk_identity!r}) is not bound to any AE-ID or CSE-ID"
        )
    if origin is None or origin == "":
        raise OriginatorNotAuthenticated("request has no X-M2M-Origin inside a security association")
    if origin not in sa.allowed_originators:
        raise OriginatorNotAuthenticated(
            f"originator {origin[:80]!r} does not match the identity associated with the security association"
        )
