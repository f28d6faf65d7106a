"""Entity B's association and originator rules (pure: no I/O).

TS-0003 §8.2.2.1 (seed 002): after authenticating Entity A, Entity B associates the security context

* with the CSE-ID or AE-ID it was given for the KpsaID (the ``entity`` column of the PSK table), else
* with the Credential-ID formed from the KpsaID (TS-0003 §10.4, type 12 "symmetric key in SAEF"),
  from which B determines the CSE-ID or AE-ID as described in §8.2.1 (e.g. the
  ``<serviceSubscribedAppRule>`` resources of the IN-CSE). That resolution is the
  :class:`CredentialResolver` seam; the gateway has none built in yet.

TS-0003 §7.2.1: a request inside the SA whose ``From`` (``X-M2M-Origin``) is not the associated
identity is refused with ORIGINATOR_NOT_AUTHENTICATED (4106) and is not forwarded.

Certificate identities carry their service provider (the SP-ID of an Absolute AE-ID, the SP domain of a
CSE-ID certificate's ``<CSE-ID>.<SP domain>``); only those of the gateway's own SP (``sp_id``) may use the
SP-relative and CSE-relative forms; others are associated with their absolute form (:data:`FOREIGN_CSE_FORM`).
That SP counts only when every CA of the verified chain permits it (D40, :data:`m2msec.pki.CA_MUST_BIND_SP`);
a dNSName certificate without the CSE-ID marker is an FQDN certificate with no identity (D41).
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from m2msec.errors import IdentifierError, OriginatorNotAuthenticated
from m2msec.identifiers import CredentialID, validate_fqdn
from m2msec.tls.engine import SessionInfo

__all__ = [
    "FOREIGN_CSE_FORM",
    "HEADER_CREDENTIAL_ID",
    "HEADER_PSK_IDENTITY",
    "HEADER_SA_IDENTITY",
    "IDENTITY_HEADERS",
    "CredentialResolver",
    "SecurityAssociation",
    "UnboundPolicy",
    "ae_id_forms",
    "associate",
    "check_originator",
    "entity_forms",
    "identity_fields",
    "normalize_sp_id",
]

#: Headers the gateway adds to each forwarded request (any copy sent by the client is removed first).
HEADER_SA_IDENTITY = "x-m2msec-sa-identity"  # the AE-ID / CSE-ID the SA is associated with
HEADER_CREDENTIAL_ID = "x-m2msec-credential-id"  # TS-0003 §10.4 Credential-ID of the SA credential
HEADER_PSK_IDENTITY = "x-m2msec-psk-identity"  # the KpsaID the client authenticated with
IDENTITY_HEADERS = (HEADER_SA_IDENTITY, HEADER_CREDENTIAL_ID, HEADER_PSK_IDENTITY)

#: D215: a session that authenticated the server only (a certificate suite whose client sent no certificate, as a
#: ServerConfig with optional_client_certificate allows) gets an SA bound to nothing: each request is refused as
#: for a certificate without a oneM2M identity (TS-0003 §8.2.2.2), instead of failing an assertion.
NO_CLIENT_CREDENTIAL = "no client credential (server-authenticated session)"

#: docs/decisions.md D22: an AE-ID or CSE-ID certificate of another service provider (any trusted CA may
#: issue one) is associated with its absolute form only: the Absolute AE-ID ``//sp/cse/Cx`` and, for a CSE,
#: this absolute CSE-ID (TS-0001 §7.2). The SP-relative and CSE-relative forms name an entity of *our* SP:
#: accepted only when the certificate's SP is the gateway's ``sp_id``; without an ``sp_id`` every
#: certificate identity is foreign.
FOREIGN_CSE_FORM: Final = "//{sp}/{cse_id}"


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
    """Entity B's view of one established SA.

    ``credential`` names what authenticated the client (for logs and errors); ``associated`` is the
    AE-ID or CSE-ID the context is associated with, when one is known; ``allowed_originators`` are the
    ``From`` values accepted on this SA (TS-0003 §7.2.1, TS-0004 §7.3.2.1).
    """

    credential: str
    psk_identity: str | None
    credential_id: str | None
    associated: str | None
    allowed_originators: frozenset[str]

    @property
    def bound(self) -> bool:
        return bool(self.allowed_originators)

    @property
    def identity(self) -> str | None:
        """The identity the context is associated with, else its Credential-ID."""
        return self.associated if self.associated is not None else self.credential_id


@functools.lru_cache(maxsize=65536)
def _credential_id(psk_identity: str) -> str | None:
    # one parse per identity, not per connection (the regexes were a visible share of a handshake's cost)
    try:
        return str(CredentialID.for_kpsa_id(psk_identity))
    except IdentifierError:
        return None  # not a §10.5 KpsaID: no Credential-ID can be formed from it


def normalize_sp_id(sp_id: str) -> str:
    """An SP-ID as its domain, lower case: ``//m2m.Provider.com`` and ``m2m.provider.com`` -> ``m2m.provider.com``.

    Raises: IdentifierError: not a domain name.
    """
    return validate_fqdn(sp_id.removeprefix("//"), role="SP-ID")


def _own_sp(sp: str, sp_id: str | None) -> bool:
    return sp_id is not None and sp.lower() == sp_id.removeprefix("//").lower()


def ae_id_forms(absolute_ae_id: str, registrar_cse_id: str | None = None, sp_id: str | None = None) -> frozenset[str]:
    """The ``From`` forms of one Absolute AE-ID (TS-0001 §7.2): absolute and, when the AE belongs to our SP
    ``sp_id``, SP-relative and (when the AE is registered here) the CSE-relative AE-ID-Stem.
    ``//sp/cse/Cx`` -> ``/cse/Cx``, ``Cx``; ``//sp/Sx`` -> ``Sx``. Another SP's AE keeps only ``//sp/...`` (D22)."""
    parts = absolute_ae_id[2:].split("/")
    forms = {absolute_ae_id}
    if not _own_sp(parts[0], sp_id):
        return frozenset(forms)
    if len(parts) == 3:  # C-type: //SP-ID/CSE-ID/AE-ID-Stem
        forms.add("/" + "/".join(parts[1:]))
        if registrar_cse_id is not None and parts[1] == registrar_cse_id.lstrip("/"):
            forms.add(parts[2])
    elif len(parts) == 2:  # S-type: //SP-ID/S-AE-ID-Stem
        forms.add(parts[1])
    return frozenset(forms)


def entity_forms(entity: str, registrar_cse_id: str | None = None, sp_id: str | None = None) -> frozenset[str]:
    """The ``From`` forms of an identity a PSK is bound to (a PSK table's ``entity``, a MAF's ``sourceMAFClientID``):
    an absolute AE-ID or CSE-ID of our SP also in its SP-relative (and, registered here, stem) forms, as for
    certificates (D94, :func:`ae_id_forms`); any other value as written."""
    if not entity.startswith("//"):
        return frozenset({entity})
    parts = entity[2:].split("/")
    if len(parts) == 2 and parts[1] and not parts[1].startswith("S"):  # an absolute CSE-ID //sp/cse
        return frozenset({entity, "/" + parts[1]}) if _own_sp(parts[0], sp_id) else frozenset({entity})
    return ae_id_forms(entity, registrar_cse_id, sp_id)


def _associate_certificate(
    session: SessionInfo, resolver: CredentialResolver | None, registrar_cse_id: str | None, sp_id: str | None
) -> SecurityAssociation:
    from m2msec.pki import (
        CertificateFlavour,
        check_service_provider,
        identity_from_certificate,
        identity_service_provider,
    )

    if session.peer_certificate is None:  # D215: a server-authenticated session (no PSK, no client certificate)
        return SecurityAssociation(NO_CLIENT_CREDENTIAL, None, None, None, frozenset())
    try:
        ident = identity_from_certificate(session.peer_certificate)  # an unmarked dNSName is an FQDN (D41)
        sp = identity_service_provider(session.peer_certificate, ident)
        if sp is not None:  # D40: the CAs that verified it must all vouch for the SP it names
            check_service_provider(session.peer_chain, sp)
    except IdentifierError as exc:
        return SecurityAssociation(f"certificate without a oneM2M identity ({exc})", None, None, None, frozenset())
    credential = f"{ident.flavour.value} certificate {ident.value!r}"
    if ident.flavour is CertificateFlavour.CSE_ID and sp is not None:
        # TS-0003 §8.2.2.2: associate with the CSE-ID in the certificate; a registree CSE of our SP uses its
        # SP-relative CSE-ID as From, one of another SP its absolute CSE-ID //<SP>/<CSE-ID> (D22)
        cse = "/" + ident.value if _own_sp(sp, sp_id) else FOREIGN_CSE_FORM.format(sp=sp, cse_id=ident.value)
        return SecurityAssociation(f"{credential} of SP {sp!r}", None, None, cse, frozenset({cse}))
    if ident.flavour is CertificateFlavour.AE_ID:
        forms = ae_id_forms(ident.value, registrar_cse_id, sp_id)
        return SecurityAssociation(credential, None, None, ident.value, forms)
    # device / Node-ID certificates: Credential-ID, then §8.2.1 resolution (FQDN certificates have none)
    allowed: frozenset[str] = frozenset()
    if ident.credential_id is not None and resolver is not None:
        allowed = resolver.resolve(ident.credential_id) or frozenset()
    return SecurityAssociation(credential, None, ident.credential_id, None, allowed)


def associate(
    session: SessionInfo, resolver: CredentialResolver | None = None, registrar_cse_id: str | None = None,
    sp_id: str | None = None, credential_id: str | None = None,
) -> SecurityAssociation:
    """Associate a server-side session with an identity (TS-0003 §8.2.2.1 PSK, §8.2.2.2 certificates).

    ``registrar_cse_id`` is the CSE behind the gateway, ``sp_id`` its service provider (``//domain`` or
    ``domain``): certificate identities of other SPs get their absolute form only (D22). ``credential_id``: the
    Credential-ID of a PSK not formed from its identity (``PSKEntry.credential_id``: a MAF-distributed Kc,
    associated through its source's Credential-ID, §8.2.2.3)."""
    if session.psk_identity is None:
        return _associate_certificate(session, resolver, registrar_cse_id, sp_id)
    if credential_id is None:
        credential_id = _credential_id(session.psk_identity)
    if session.entity:
        allowed = entity_forms(session.entity, registrar_cse_id, sp_id)
    elif credential_id is not None and resolver is not None:
        allowed = resolver.resolve(credential_id) or frozenset()
    else:
        allowed = frozenset()
    return SecurityAssociation(repr(session.psk_identity), session.psk_identity, credential_id,
                               session.entity or None, allowed)


def check_originator(sa: SecurityAssociation, origin: str | None, policy: UnboundPolicy) -> None:
    """Raise :class:`OriginatorNotAuthenticated` unless ``origin`` may be used on this SA (§7.2.1)."""
    if not sa.bound:
        if policy is UnboundPolicy.FORWARD and sa.credential_id is not None:
            return
        raise OriginatorNotAuthenticated(
            f"the security association ({sa.credential}) is not bound to any AE-ID or CSE-ID"
        )
    if origin is None or origin == "":
        raise OriginatorNotAuthenticated("request has no X-M2M-Origin inside a security association")
    if origin not in sa.allowed_originators:
        raise OriginatorNotAuthenticated(
            f"originator {origin[:80]!r} does not match the identity associated with the security association"
        )


K = TypeVar("K")


def identity_fields(sa: SecurityAssociation, names: tuple[K, K, K]) -> list[tuple[K, str]]:
    """The SA's identity for the CSE as ``(name, value)`` pairs, the names in :data:`IDENTITY_HEADERS` order
    (the HTTP headers, or the CoAP options): its associated AE-ID/CSE-ID, Credential-ID and PSK identity, each
    only when it has one."""
    values = (sa.associated, sa.credential_id, sa.psk_identity)
    return [(name, value) for name, value in zip(names, values, strict=True) if value is not None]
