"""IdB, the identity Entity A associates a security association with (TS-0003 §8.2.2), and its check.

Association Configuration gives Entity A the identity of Entity B (IdB). With certificates, any server
whose chain the trust anchors accept would otherwise be taken as Entity B, another AE's or another CSE's
certificate included; so Entity A (:func:`m2msec.saef.establish_sa` over TLS,
:func:`m2msec.transport.dtls.create_dtls_endpoint` over DTLS) needs an IdB and refuses to start without
one, before any packet is sent (docs/decisions.md D23). The explicit opt-out is :data:`ANY_ENTITY`; it
logs a warning.

With a PSK the key is the check: Kpsa is provisioned for one (KpsaID, IdB) pair, so the handshake itself
proves B holds it, and IdB is what the SA is associated with (``SessionInfo.entity``); it is required all
the same, so that both SAEFs behave alike.

IdB takes one of the forms of :data:`IDB_FORMS`. An SP-relative IdB (``cse`` or ``/cse``) names a CSE of
Entity A's own SP (TS-0001 §7.2), so with certificates it is pinned to the SP of Entity A's own certificate
(docs/decisions.md D39): another SP's CSE of the same name is not IdB. Both client transports check IdB
themselves (:func:`client_idb`, then :func:`check_peer_entity`), so no session reports an unchecked IdB.
"""

from __future__ import annotations

import enum
import logging
from typing import Final

from cryptography import x509

from m2msec.errors import ConfigurationError, HandshakeFailed, IdentifierError
from m2msec.tls.engine import ClientConfig, SessionInfo

__all__ = [
    "ANY_ENTITY",
    "IDB_FORMS",
    "NOT_ONEM2M",
    "AnyEntity",
    "check_peer_entity",
    "client_idb",
    "own_sp_domain",
    "parse_idb",
    "pin_idb",
    "require_idb",
]

log = logging.getLogger("m2msec.idb")


class AnyEntity(enum.Enum):
    """The type of :data:`ANY_ENTITY` (an enum, so it is one value and cannot be mistaken for an identity)."""

    INSECURE_ANY_ENTITY = "insecure-any-entity"
    NOT_ONEM2M = "not-onem2m"


#: docs/decisions.md D23: Entity A without an IdB is refused before any packet is sent (TLS and DTLS,
#: certificates and PSK alike). Pass this as ``peer_entity`` to accept any Entity B the credentials
#: authenticate instead. Insecure: with certificates, any entity the trust anchors certify (another AE,
#: another CSE) is accepted as B.
ANY_ENTITY: Final = AnyEntity.INSECURE_ANY_ENTITY
#: the server is no oneM2M entity (the CAPIF CCF): there is no IdB, and the caller checks the server's identity
#: itself (m2msec.capif.client checks the CCF's host name in its certificate); no warning, unlike ANY_ENTITY
NOT_ONEM2M: Final = AnyEntity.NOT_ONEM2M


#: docs/decisions.md D39: the forms of IdB. The SP-relative ones (first two) name a CSE of Entity A's own SP:
#: with certificates they are pinned to the SP of Entity A's own certificate (the SP-ID of its AE-ID, or the SP
#: domain of its CSE-ID certificate); when that certificate names no SP, only the absolute form is accepted.
IDB_FORMS: Final = ("<CSE-ID>", "/<CSE-ID>", "//<SP domain>/<CSE-ID>")


def require_idb(peer_entity: str | AnyEntity | None, *, own_chain_pem: bytes | None = None) -> str | None:
    """Check, before connecting, that Entity A has an IdB. Returns it, or None for :data:`ANY_ENTITY`.

    With ``own_chain_pem`` (Entity A's own certificate chain: B may authenticate with a certificate), also check
    that IdB can be pinned to an SP (:func:`pin_idb`).

    Raises: ConfigurationError: no IdB (``None`` or empty), a malformed one, or an SP-relative one that cannot
        be pinned.
    """
    if peer_entity is NOT_ONEM2M:
        return None
    if peer_entity is ANY_ENTITY:
        log.warning("IdB check disabled (ANY_ENTITY): any server the credentials authenticate is taken as Entity B")
        return None
    if isinstance(peer_entity, str) and peer_entity.strip("/"):
        pin_idb(peer_entity, own_chain_pem)
        return peer_entity
    raise ConfigurationError("no IdB: give the CSE-ID of Entity B (peer_entity, --entity-id), or ANY_ENTITY "
                             "(--insecure-any-entity) to accept any server")


def parse_idb(idb: str) -> tuple[str | None, str]:
    """Split IdB into (SP domain, lower case, or None when SP-relative; CSE-ID).

    Raises: ConfigurationError: not one of :data:`IDB_FORMS` (e.g. ``///cse``, ``//sp/``, ``//sp/cse/x``).
    """
    sp: str | None = None
    if idb.startswith("//"):
        sp, sep, cse = idb[2:].partition("/")
        if not sp or not sep:
            cse = ""
    else:
        cse = idb[1:] if idb.startswith("/") else idb
    if not cse or "/" in cse or any(c.isspace() for c in idb) or (sp is not None and not sp.strip(".")):
        raise ConfigurationError(f"malformed IdB {idb[:80]!r}: give {', '.join(IDB_FORMS)}")
    return (sp.lower() if sp is not None else None), cse


def own_sp_domain(chain_pem: bytes) -> str | None:
    """The SP domain of Entity A's own certificate (the first of ``chain_pem``): the SP-ID of an AE-ID
    certificate's Absolute AE-ID, or the ``<SP domain>`` of a CSE-ID certificate; None for any other."""
    from m2msec.pki import identity_from_certificate, identity_service_provider

    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except (ValueError, IndexError):
        raise ConfigurationError("own certificate chain is not valid PEM") from None
    try:
        return identity_service_provider(leaf, identity_from_certificate(leaf))
    except IdentifierError:
        return None


def pin_idb(idb: str, own_chain_pem: bytes | None) -> str:
    """IdB as B's certificate must match it: ``//sp/cse``, an SP-relative IdB taking the SP of Entity A's own
    certificate (D39). Without ``own_chain_pem`` (a PSK client: the key is the check) IdB is returned as given.

    Raises: ConfigurationError: malformed IdB, or an SP-relative one while Entity A's certificate names no SP.
    """
    sp, cse = parse_idb(idb)
    if sp is None and own_chain_pem is not None:
        sp = own_sp_domain(own_chain_pem)
        if sp is None:
            raise ConfigurationError(f"IdB {idb[:80]!r} is SP-relative but Entity A's own certificate names no SP: "
                                     f"give it as //<SP domain>/{cse[:80]}")
    return idb if sp is None else f"//{sp}/{cse}"


def client_idb(config: ClientConfig, peer_entity: str | AnyEntity | None) -> tuple[str | AnyEntity, bytes | None]:
    """The IdB a client transport checks, before connecting: ``peer_entity``, else the ClientConfig's; and
    Entity A's own chain when B may authenticate with a certificate (A has trust anchors). A ``peer_entity``
    (ANY_ENTITY included) that differs from the ClientConfig's IdB is refused, never silently preferred.

    Raises: ConfigurationError: no IdB, a malformed or unpinnable one, or the contradiction; nothing is sent.
    """
    if peer_entity is None:
        peer_entity = config.peer_entity
    elif config.peer_entity is not None and peer_entity != config.peer_entity:
        raise ConfigurationError("peer_entity differs from the IdB in the context's ClientConfig")
    cert = config.certificate
    own = cert.chain_pem if cert is not None and cert.trust_anchors_pem is not None else None
    if require_idb(peer_entity, own_chain_pem=own) is None:
        return ANY_ENTITY, own
    assert isinstance(peer_entity, str)
    return peer_entity, own


def check_peer_entity(session: SessionInfo, peer_entity: str | AnyEntity | None, *,
                      own_chain_pem: bytes | None = None) -> None:
    """TS-0003 §8.2.2.2: after the handshake, Entity A authenticates B *as IdB*.

    A certificate-authenticated B must present a CSE-ID certificate for IdB, SP included: ``//sp-domain/cse``,
    or ``cse`` / ``/cse`` for a CSE of Entity A's own SP, the SP of Entity A's certificate ``own_chain_pem``
    (D39; without it an SP-relative IdB cannot be checked and B is refused). A PSK-authenticated B proved it
    holds the Kpsa provisioned for IdB: nothing more to check. :data:`ANY_ENTITY` skips the check.

    Raises: HandshakeFailed: B is not IdB, or was authenticated by neither the PSK nor a verified certificate;
        ConfigurationError: no IdB at all, or a malformed one.
    """
    if peer_entity is ANY_ENTITY:
        return
    idb = require_idb(peer_entity)
    if idb is None or session.psk_identity is not None:
        return
    if session.peer_certificate is None:  # the engine reports only a verified certificate
        raise HandshakeFailed("the server was authenticated neither by the PSK nor by a verified certificate")
    want_sp, want_cse = parse_idb(pin_idb(idb, own_chain_pem))
    if want_sp is None:
        raise HandshakeFailed(f"IdB {idb[:80]!r} is SP-relative and Entity A's own SP is unknown: give "
                              f"//<SP domain>/{want_cse[:80]}")
    from m2msec.pki import CertificateFlavour, identity_from_certificate, identity_service_provider

    try:
        ident = identity_from_certificate(session.peer_certificate)
        sp = identity_service_provider(session.peer_certificate, ident) or ""
    except IdentifierError as exc:
        raise HandshakeFailed(f"the server certificate names no CSE-ID ({exc})") from None
    if ident.flavour is not CertificateFlavour.CSE_ID:
        raise HandshakeFailed(f"the server certificate is a {ident.flavour.value} certificate for "
                              f"{ident.value[:80]!r}, not IdB {idb[:80]!r}")
    if ident.value != want_cse or want_sp != sp:
        raise HandshakeFailed(f"the server certificate is for {ident.value!r} of SP {sp!r}, not IdB {idb[:80]!r}")
    from m2msec.pki import check_service_provider

    try:  # D40 on Entity A's side too: every CA of the verified chain must vouch for the server's SP
        check_service_provider(session.peer_chain, sp)
    except IdentifierError as exc:
        raise HandshakeFailed(f"the server certificate for {ident.value!r} is not vouched for: {exc}") from None
